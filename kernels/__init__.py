"""gboost Triton kernels. Each module holds the kernel, its PyTorch reference `*_ref`, a `*_triton`
launcher and the public dispatcher: Triton for CUDA tensors (or GBOOST_FORCE_TRITON=1, which the tests
use with TRITON_INTERPRET=1 on CPU), the reference otherwise. Layouts: docs/CONTRACTS.md."""
from .fused_sampling import fuse_logprobs, fused_sample, make_noise, sample
from .kv_write import store_kv
from .paged_attention import paged_attention, paged_attention_shared_prefix
from .spec_verify import spec_verify
from .step_scoring import aggregate_rewards, step_rewards

__all__ = [
    "store_kv", "paged_attention", "paged_attention_shared_prefix", "step_rewards", "aggregate_rewards",
    "fuse_logprobs", "sample", "fused_sample", "make_noise", "spec_verify",
]
