"""The fused next-token distribution of SLM and general-LLM rows, and the GPU's fuse-and-sample.

``log_linear``: (1 - alpha) log p_slm + alpha log p_llm; ``proxy`` (proxy tuning):
llm + alpha * (slm - base), with base the SLM's untuned base model. LLM rows may be full or
top-k only (an endpoint): then fusion runs over the union of both top-k sets (engine/llm/topk.py).
"""
from __future__ import annotations

import torch

from engine.llm.base import TokenLogprobs
from engine.llm.topk import union_support
from kernels.fused_sampling import fuse_logprobs, fused_sample, make_noise


def vocab_rows(rows: list[TokenLogprobs], like: torch.Tensor) -> torch.Tensor:
    """Full rows as one [R, V] tensor on ``like``'s device, in vocabulary order (an endpoint's
    rows may come in any id order; a local model's are already on the device: no copy)."""
    lp = torch.stack([r.logprobs for r in rows]).to(like.device, torch.float32)
    ids = torch.stack([r.ids for r in rows]).to(like.device)
    return torch.empty_like(like).scatter_(1, ids, lp)


def fused_logp(slm_logits: torch.Tensor, llm_rows: list[TokenLogprobs], alpha: float,
               base_rows: list[TokenLogprobs] | None = None, topk_support: int = 20) -> torch.Tensor:
    """Fused log-probs [R, V] of SLM logits rows and LLM rows (full or top-k); with ``base_rows``
    (full rows of the SLM's base) the rule is proxy, else log-linear."""
    slm_lp = torch.log_softmax(slm_logits.float(), -1)
    base_lp = None if base_rows is None else vocab_rows(base_rows, slm_lp)
    if all(r.full for r in llm_rows):
        llm_lp = vocab_rows(llm_rows, slm_lp)
    else:  # top-k endpoint: fuse over the union of both top-k sets (see engine/llm/topk.py)
        u = union_support(slm_lp, llm_rows, topk_support)
        slm_lp, llm_lp = u.slm_logp, u.llm_logp
        if base_lp is not None:  # off the support llm is -inf: 0 - 0 there keeps proxy's z at -inf, not NaN
            zero = torch.zeros_like(slm_lp)
            slm_lp, base_lp = torch.where(u.support, slm_lp, zero), torch.where(u.support, base_lp, zero)
    if base_lp is None:
        return fuse_logprobs(slm_lp, llm_lp, alpha, "loglinear")
    return fuse_logprobs(slm_lp, llm_lp, alpha, "proxy", base_lp)


def fuse_and_sample(slm_logits: torch.Tensor, row: TokenLogprobs, alpha: float,
                    base_rows: list[TokenLogprobs] | None, gen: torch.Generator,
                    temperature: float, top_p: float) -> int:
    """GPU: fusion and sampling in one launch (kernels/fused_sampling.fused_sample), no fused [V]
    row in between. It fuses raw SLM logits: log-softmax shifts a row by a constant, and both
    rules are linear in the SLM row, so the fused distribution is fused_logp's."""
    slm = slm_logits[None].float()
    llm = vocab_rows([row], slm)
    noise = make_noise(1, slm.shape[-1], gen, slm.device)
    if base_rows is None:
        tok = fused_sample(slm, llm, alpha, "loglinear", temperature, 0, top_p, noise)
    else:
        tok = fused_sample(slm, llm, alpha, "proxy", temperature, 0, top_p, noise, vocab_rows(base_rows, slm))
    return int(tok[0])
