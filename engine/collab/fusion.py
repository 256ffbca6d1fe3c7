"""The fused next-token distribution of SLM and general-LLM rows, and the GPU's fuse-and-sample.

``log_linear``: (1 - alpha) log p_slm + alpha log p_llm; ``proxy`` (proxy tuning):
llm + alpha * (slm - base), with base the SLM's untuned base model. LLM rows may be full or
top-k only (an endpoint): then fusion runs over the union of both top-k sets (engine/llm/topk.py).

One tokenizer may come with logit widths that differ by padding (Qwen2.5: 151936 rows for 0.5B-3B,
152064 for 7B and up). Fusion runs over the ids both models have rows for, ``[0, shared_width)``:
the wider model's extra rows are padding, which the fused distribution gives probability zero by
leaving them out (a fused row is ``shared_width`` wide).
"""
from __future__ import annotations

import torch

from gboost.llm.base import TokenLogprobs
from gboost.llm.topk import union_support
from gboost.kernels.fused_sampling import fuse_logprobs, fused_sample, make_noise


def shared_width(slm_width: int, llm_rows: list[TokenLogprobs]) -> int:
    """Ids the SLM and the LLM both have rows for (a full row is its model's whole width)."""
    return min([slm_width] + [len(r) for r in llm_rows if r.full])


def head(row: TokenLogprobs, n: int) -> TokenLogprobs:
    """A full row cut to the ids below ``n`` (still full: it covers [0, n)). A top-k row is kept
    as it is: its client dropped the ids past the fusion width (RemoteLLM.vocab_size)."""
    if not row.full or len(row) == n:
        return row
    keep = row.ids < n
    return TokenLogprobs(row.ids[keep], row.logprobs[keep], row.full)


def vocab_rows(rows: list[TokenLogprobs], like: torch.Tensor) -> torch.Tensor:
    """Full rows as one [R, V] tensor on ``like``'s device, in vocabulary order (an endpoint's
    rows may come in any id order; a local model's are already on the device: no copy)."""
    lp = torch.stack([r.logprobs for r in rows]).to(like.device, torch.float32)
    ids = torch.stack([r.ids for r in rows]).to(like.device)
    return torch.empty_like(like).scatter_(1, ids, lp)


def fused_logp(slm_logits: torch.Tensor, llm_rows: list[TokenLogprobs], alpha: float,
               base_rows: list[TokenLogprobs] | None = None, topk_support: int = 20) -> torch.Tensor:
    """Fused log-probs [R, n] of SLM logits rows and LLM rows (full or top-k) over the ids both
    have (n = shared_width); with ``base_rows`` (full rows of the SLM's base) the rule is proxy,
    else log-linear."""
    n = shared_width(slm_logits.shape[-1], llm_rows)
    slm_logits, llm_rows = slm_logits[..., :n], [head(r, n) for r in llm_rows]
    base_rows = None if base_rows is None else [head(r, n) for r in base_rows]
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
    n = shared_width(slm_logits.shape[-1], [row])
    row, base_rows = head(row, n), None if base_rows is None else [head(r, n) for r in base_rows]
    slm = slm_logits[None, :n].float()
    llm = vocab_rows([row], slm)
    noise = make_noise(1, slm.shape[-1], gen, slm.device)
    if base_rows is None:
        tok = fused_sample(slm, llm, alpha, "loglinear", temperature, 0, top_p, noise)
    else:
        tok = fused_sample(slm, llm, alpha, "proxy", temperature, 0, top_p, noise, vocab_rows(base_rows, slm))
    return int(tok[0])
