"""Dense views of top-k rows, and the union-of-top-k support used for fusion.

Why this module exists
----------------------
A local general LLM gives the full next-token distribution, so the SLM and LLM
distributions can be fused over the whole vocabulary. An OpenAI-compatible
endpoint (vLLM, SGLang, ``gboost serve``, a hosted API) only returns the top-k
log-probs of each position (``logprobs=k``, typically k <= 20). Fusion then has
to work on a *restricted support*.

The approximation (read this before changing fusion code)
---------------------------------------------------------
When the LLM only returns top-k log-probs, the fused distribution is restricted
to the **union of the SLM's top-k and the LLM's top-k tokens** of that position::

    S = topk_ids(SLM, k)  U  returned_ids(LLM)

* Tokens outside ``S`` get probability 0 in the fused distribution (``-inf``).
  Both models consider them unlikely (neither ranks them in its top-k), so the
  mass lost is small whenever k is moderate; fusion code renormalises over ``S``.
* Inside ``S``, the SLM log-probs are exact (the SLM is local, full vocabulary).
* Inside ``S``, the LLM log-probs of the tokens the endpoint returned are exact.
* Inside ``S``, the LLM log-probs of tokens the SLM proposed but the endpoint did
  *not* return are unknown. All we know is that each of them has probability at
  most ``p_min``, the smallest probability the endpoint did return (it is not in
  the LLM's top-k, so it ranks below the k-th token). We fill them with::

        fill = min(returned LLM log-probs) - log(2)     # i.e. p_min / 2

  Why ``p_min / 2``:
    - the true value lies in ``(0, p_min]``; half of the upper bound is the
      midpoint of that interval and a simple, scale-free guess;
    - it ranks every unreturned token strictly *below* every token the LLM did
      rank, which preserves the LLM's ordering (using ``p_min`` itself would tie
      them with the k-th token and overstate them);
    - it stays finite: using ``-inf`` (probability 0) would let the LLM veto every
      SLM candidate it merely did not list, so log-linear fusion would collapse to
      the LLM's top-k and the SLM's contribution would vanish exactly where the
      two models disagree, which is where collaboration matters;
    - it is cheap and needs no knowledge of the LLM's vocabulary size or of the
      un-returned tail mass (hosted APIs do not report it, and ``1 - sum(p)``
      spread evenly over V-k tokens gives absurdly small values for large V).

  The fill is an *estimate*, not a bound-preserving quantity: fused probabilities
  of such tokens can be over- or under-estimated by up to a factor of 2 in the
  LLM term (exactly within ``log 2`` nats of any value in ``[p_min/2, p_min]``).

* When an LLM row is full (``TokenLogprobs.full``, e.g. a local model, or an
  endpoint asked for ``logprobs >= V``), nothing is approximated: the support is
  the whole vocabulary.

Pass the same ``k`` for the SLM that the endpoint was asked for (``top_logprobs``
of :class:`gboost.llm.remote.RemoteLLM`) so that both models contribute equally
to the support. Returned arrays are *not* renormalised: fusion combines them and
then renormalises over the support (e.g. ``log_softmax`` of the masked result).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch

from .base import TokenLogprobs

__all__ = ["dense_from_topk", "union_support", "UnionSupport", "MISSING_LOGPROB_PENALTY"]

#: Amount subtracted from the LLM's smallest returned log-prob to fill missing entries.
MISSING_LOGPROB_PENALTY = math.log(2.0)


def _check_row(row: TokenLogprobs, vocab_size: int, r: int) -> None:
    if row.ids.numel() == 0:
        raise ValueError(f"row {r}: empty TokenLogprobs")
    lo, hi = int(row.ids.min()), int(row.ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"row {r}: token id out of range [0, {vocab_size}): min={lo} max={hi}")


def dense_from_topk(
    rows: Sequence[TokenLogprobs], vocab_size: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter rows into dense ``[R, V]`` tensors.

    Returns ``(logp, support)``: ``logp`` float32 ``[R, V]`` with each row's returned
    log-probs at its ids and ``-inf`` elsewhere; ``support`` bool ``[R, V]``, True
    where the row returned a value. Full rows fill the whole line. Ids outside
    ``[0, vocab_size)`` raise ``ValueError``.
    """
    R = len(rows)
    dev = torch.device(device) if device is not None else (rows[0].ids.device if R else torch.device("cpu"))
    logp = torch.full((R, vocab_size), float("-inf"), dtype=torch.float32, device=dev)
    support = torch.zeros((R, vocab_size), dtype=torch.bool, device=dev)
    if R == 0:
        return logp, support
    for r, row in enumerate(rows):
        _check_row(row, vocab_size, r)
    ids = torch.cat([row.ids.to(dev, torch.int64) for row in rows])
    vals = torch.cat([row.logprobs.to(dev, torch.float32) for row in rows])
    lengths = torch.tensor([row.ids.numel() for row in rows], device=dev)
    ridx = torch.repeat_interleave(torch.arange(R, device=dev), lengths)
    logp[ridx, ids] = vals
    support[ridx, ids] = True
    return logp, support


class UnionSupport(NamedTuple):
    """Result of :func:`union_support` (all ``[R, V]``, on the SLM tensor's device).

    support:  bool, the union of the SLM's top-k and the LLM's returned ids.
    slm_logp: float32, the SLM log-probs on ``support``, ``-inf`` outside.
    llm_logp: float32, the LLM's returned log-probs; inside ``support`` but not
              returned: ``min(returned) - log(2)``; ``-inf`` outside ``support``.
    """

    support: torch.Tensor
    slm_logp: torch.Tensor
    llm_logp: torch.Tensor


def union_support(slm_logp: torch.Tensor, llm_rows: Sequence[TokenLogprobs], k: int) -> UnionSupport:
    """Restrict SLM and LLM distributions to the union of their top-k sets.

    ``slm_logp``: ``[R, V]`` full SLM log-probs (one row per position).
    ``llm_rows``: ``R`` LLM rows (top-k from an endpoint, or full).
    ``k``:        how many of the SLM's most likely tokens enter the support.

    See the module docstring for the approximation and the ``- log(2)`` fill.
    """
    if slm_logp.dim() != 2:
        raise ValueError(f"slm_logp must be [R, V], got {tuple(slm_logp.shape)}")
    R, V = slm_logp.shape
    if len(llm_rows) != R:
        raise ValueError(f"got {len(llm_rows)} LLM rows for {R} SLM rows")
    dev = slm_logp.device
    slm = slm_logp.to(torch.float32)
    llm_logp, llm_sup = dense_from_topk(llm_rows, V, device=dev)

    support = llm_sup.clone()
    kk = max(0, min(int(k), V))
    if kk > 0:
        top = torch.topk(slm, kk, dim=-1).indices
        support.scatter_(1, top, True)

    # Per-row fill value: smallest finite returned LLM log-prob minus log(2).
    finite = torch.isfinite(llm_logp) & llm_sup
    masked = torch.where(finite, llm_logp, torch.full_like(llm_logp, float("inf")))
    row_min = masked.min(dim=-1).values  # +inf when a row has no finite value
    if not bool(torch.isfinite(row_min).all()):
        bad = torch.nonzero(~torch.isfinite(row_min)).flatten().tolist()
        raise ValueError(f"LLM rows {bad} have no finite log-prob")
    fill = (row_min - MISSING_LOGPROB_PENALTY).unsqueeze(1).expand(R, V)

    neg_inf = torch.full_like(slm, float("-inf"))
    llm_out = torch.where(llm_sup, llm_logp, torch.where(support, fill, neg_inf))
    slm_out = torch.where(support, slm, neg_inf)
    return UnionSupport(support=support, slm_logp=slm_out, llm_logp=llm_out)
