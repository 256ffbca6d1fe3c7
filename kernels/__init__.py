"""gboost Triton kernels, one module per kernel: the Triton kernel, its PyTorch reference `*_ref`, a
`*_triton` launcher and the public dispatcher (Triton for CUDA tensors, or everywhere with
GBOOST_FORCE_TRITON=1, which the tests use with TRITON_INTERPRET=1 on CPU; the reference otherwise).

  kv_write.store_kv                      paged_attention.paged_attention / paged_attention_shared_prefix
  step_scoring.step_rewards
  fused_sampling.fuse_logprobs / sample / fused_sample / make_noise
  spec_verify.spec_verify

Nothing is imported here on purpose: re-exporting `paged_attention` / `spec_verify` would shadow the
submodules of the same name, and importing triton must wait until TRITON_INTERPRET is settled.
Layouts and signatures: docs/CONTRACTS.md and each module's docstring.
"""
