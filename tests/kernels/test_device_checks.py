"""Every kernel dispatcher refuses tensor arguments on two devices and names the odd one out (a
Triton launch would refuse a CPU pointer among CUDA ones, or read it as a device address)."""
import pytest
import torch

from gboost.kernels.fused_sampling import fuse_logprobs, fused_sample, sample
from gboost.kernels.kv_write import store_kv
from gboost.kernels.paged_attention import paged_attention
from gboost.kernels.spec_verify import spec_verify
from gboost.kernels.step_scoring import step_rewards


def _meta(t):
    return torch.empty_like(t, device="meta")


def _attention_args():
    kc = torch.zeros(4, 16, 2, 8)
    return dict(q=torch.zeros(3, 4, 8), k_cache=kc, v_cache=kc.clone(), block_tables=torch.zeros(1, 2, dtype=torch.int32),
                seq_lens=torch.tensor([3], dtype=torch.int32), cu_seqlens_q=torch.tensor([0, 3], dtype=torch.int32))


CASES = {
    "store_kv": (lambda a: store_kv(a["k"], a["v"], a["k_cache"], a["v_cache"], a["slot_mapping"]),
                 lambda: dict(k=torch.zeros(3, 2, 8), v=torch.zeros(3, 2, 8), k_cache=torch.zeros(4, 16, 2, 8),
                              v_cache=torch.zeros(4, 16, 2, 8), slot_mapping=torch.arange(3))),
    "paged_attention": (lambda a: paged_attention(a["q"], a["k_cache"], a["v_cache"], a["block_tables"], a["seq_lens"],
                                                  a["cu_seqlens_q"], 0.3), _attention_args),
    "fuse_logprobs": (lambda a: fuse_logprobs(a["slm_logits"], a["llm_logits"], 0.5, "proxy", a["base_logits"]),
                      lambda: dict(slm_logits=torch.zeros(2, 9), llm_logits=torch.zeros(2, 9), base_logits=torch.zeros(2, 9))),
    "sample": (lambda a: sample(a["logits"], 1.0, 0, 0.9, a["noise"]),
               lambda: dict(logits=torch.zeros(2, 9), noise=torch.zeros(2, 9))),
    "fused_sample": (lambda a: fused_sample(a["slm_logits"], a["llm_logits"], 0.5, "loglinear", 1.0, 0, 1.0, a["noise"]),
                     lambda: dict(slm_logits=torch.zeros(2, 9), llm_logits=torch.zeros(2, 9), noise=torch.zeros(2, 9))),
    "spec_verify": (lambda a: spec_verify(a["draft_tokens"], a["draft_lens"], a["q"], a["p"], a["accept_noise"],
                                          a["resample_noise"]),
                    lambda: dict(p=torch.full((1, 4, 9), 1 / 9), q=torch.full((1, 3, 9), 1 / 9),
                                 draft_tokens=torch.zeros(1, 3, dtype=torch.int64), draft_lens=torch.tensor([3], dtype=torch.int32),
                                 accept_noise=torch.zeros(1, 3), resample_noise=torch.zeros(1, 9))),
    "step_rewards": (lambda a: step_rewards(a["scores"], a["rows"], "judge", yes_id=1),
                     lambda: dict(scores=torch.zeros(3, 9), rows=torch.arange(2))),
}


@pytest.mark.parametrize("kernel", list(CASES))
def test_dispatcher_names_the_argument_on_another_device(kernel):
    call, make = CASES[kernel]
    call(make())  # all on the CPU: runs
    names = list(make())  # the first is the one whose device the dispatcher takes as the kernel's
    for name in names[1:]:  # each other argument, alone on 'meta'
        args = make()
        args[name] = _meta(args[name])
        with pytest.raises(ValueError, match=rf"^{name} is on meta but {names[0]} is on cpu"):
            call(args)
