"""Wire format of ``choices[i].logprobs`` in ``/v1/completions`` responses.

gboost's server answers in the OpenAI legacy-completions shape, with tokens
identified by id (vLLM's ``return_tokens_as_token_ids`` convention) plus two
explicit id fields::

    "logprobs": {
      "tokens":          ["token_id:791", "token_id:6864", ...],   # one per position
      "token_logprobs":  [null, -2.31, ...],                      # log p(token) at that position
      "top_logprobs":    [null, {"token_id:6864": -2.31, "token_id:374": -2.9, ...}, ...],
      "text_offset":     [0, 3, ...],                             # char offset of each token in `text`
      "token_ids":       [791, 6864, ...],                        # gboost extension
      "top_logprob_ids": [null, {"ids": [6864, 374, ...], "logprobs": [-2.31, -2.9, ...]}, ...]
    }

* Positions are the echoed prompt tokens (when ``echo``) followed by the
  generated tokens. Entry ``i`` of ``top_logprobs`` / ``top_logprob_ids`` is the
  model's distribution of token ``i`` given tokens ``0..i-1``; the first prompt
  position has none (``null``), exactly like vLLM / OpenAI.
* Each top entry holds the ``logprobs`` most likely tokens, sorted by decreasing
  log-prob, plus the actual token of that position when it is not among them
  (so up to ``logprobs + 1`` entries, as in vLLM).
* Log-probs are natural logs of the raw model distribution (independent of
  temperature / top_p). ``-inf`` is written as ``-9999.0`` (JSON has no
  infinities; vLLM does the same).
* ``tokens`` and the ``top_logprobs`` keys are ``"token_id:<id>"`` unless the
  request sets ``return_tokens_as_token_ids: false``, in which case they are
  decoded token strings (ambiguous: distinct ids may decode to the same string).
  ``token_ids`` / ``top_logprob_ids`` are always ids.

:mod:`gboost.llm.remote` reads ``top_logprob_ids`` when present, else
``top_logprobs`` with ``token_id:<id>`` keys (gboost, or vLLM with
``return_tokens_as_token_ids``), else token-string keys through a caller-given
``token_to_id`` mapping.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from gboost.llm.base import TokenLogprobs

__all__ = ["TOKEN_ID_PREFIX", "NEG_INF_LOGPROB", "token_key", "json_logprob", "select_row", "build_logprobs"]

TOKEN_ID_PREFIX = "token_id:"
NEG_INF_LOGPROB = -9999.0


def token_key(token_id: int) -> str:
    return f"{TOKEN_ID_PREFIX}{token_id}"


def json_logprob(x: float) -> float:
    """A JSON-safe log-prob: -inf / NaN / anything below -9999 become -9999.0."""
    if math.isnan(x) or x < NEG_INF_LOGPROB:
        return NEG_INF_LOGPROB
    return float(x)


def select_row(row: TokenLogprobs, top_k: int, actual: Optional[int]) -> tuple[list[int], list[float], Optional[float]]:
    """The ``top_k`` best entries of ``row`` (sorted), plus ``actual`` if missing.

    Returns ``(ids, logprobs, actual_logprob)``; ``actual_logprob`` is None when the
    row does not contain ``actual`` (or ``actual`` is None).
    """
    ids_t = row.ids.detach().to("cpu", torch.int64).flatten()
    lps_t = row.logprobs.detach().to("cpu", torch.float32).flatten()
    n = ids_t.numel()
    k = max(0, min(int(top_k), n))
    if k < n:
        vals, idx = torch.topk(lps_t, k)
    else:
        vals, idx = torch.sort(lps_t, descending=True)
    ids = ids_t[idx].tolist()
    lps = vals.tolist()
    actual_lp: Optional[float] = None
    if actual is not None:
        if actual in ids:
            actual_lp = lps[ids.index(actual)]
        else:
            hit = torch.nonzero(ids_t == actual).flatten()
            if hit.numel():
                actual_lp = float(lps_t[int(hit[0])])
                ids.append(int(actual))
                lps.append(actual_lp)
    return ids, [json_logprob(v) for v in lps], (None if actual_lp is None else json_logprob(actual_lp))


def build_logprobs(
    token_ids: Sequence[int],
    rows: Sequence[Optional[TokenLogprobs]],
    top_k: int,
    text_offsets: Sequence[int],
    as_token_ids: bool = True,
    token_str: Optional[Callable[[int], str]] = None,
) -> dict:
    """The ``logprobs`` object for one choice; ``rows[i]`` is position ``i``'s
    distribution (None for the first prompt position)."""
    if len(rows) != len(token_ids) or len(text_offsets) != len(token_ids):
        raise ValueError("token_ids, rows and text_offsets must be aligned")
    if as_token_ids or token_str is None:
        name: Callable[[int], str] = token_key
    else:
        name = token_str
    tokens, token_lps, tops, top_ids = [], [], [], []
    for tid, row in zip(token_ids, rows):
        tokens.append(name(tid))
        if row is None:
            token_lps.append(None)
            tops.append(None)
            top_ids.append(None)
            continue
        ids, lps, actual_lp = select_row(row, top_k, tid)
        token_lps.append(actual_lp)
        top: dict[str, float] = {}
        for i, lp in zip(ids, lps):
            top.setdefault(name(i), lp)  # string keys may collide: keep the best
        tops.append(top)
        top_ids.append({"ids": ids, "logprobs": lps})
    return {
        "tokens": tokens,
        "token_logprobs": token_lps,
        "top_logprobs": tops,
        "text_offset": list(text_offsets),
        "token_ids": list(token_ids),
        "top_logprob_ids": top_ids,
    }
