"""``gboost bench``: does the engine pay for itself?

In one process, the engine against the obvious implementation on plain transformers
(naive.py: fresh HF caches per tree node from its full prefix, two separate models per
fused token, the judge re-reading its whole prompt for every step, requests one after another),
both driven by the same search code, and one table:

  end to end  fusion and gboost: seconds per request one at a time, and with N requests in flight
              for the engine; tokens computed per request; whether both chose the same steps and
              answers; the share of a request's wall time outside model forward passes
  decode      greedy tokens/s of the SLM at batch 1 and 8, the engine against transformers' generate
  per action  one SLM step, collaborative step (exact, speculative), LLM step and PRM score: latency
              and share of it outside forward passes; the search's own bookkeeping per request; the
              speculative step's LLM calls, tokens per call and draft acceptance

``--quick`` writes two tiny random Qwen2 checkpoints (HF directories, one tokenizer) and runs on
them; without it, the demo pair (0.5B SLM, 1.5B LLM and judge PRM). Everything runs greedy
(temperature 0) in float32 unless told otherwise, so the two implementations must agree.
Ratios are engine speedups: naive seconds / engine seconds, engine tok/s / transformers tok/s.

  checkpoints.py  the quick pair: two related tiny random Qwen2 checkpoints
  naive.py        the baseline: the same search on plain transformers
  report.py       the forward-pass clock and the table
  runs.py         the setups and the timed runs; ``main`` is ``gboost bench``
"""
from __future__ import annotations

from .checkpoints import write_pair
from .report import Row, print_table
from .runs import forget_cached_prefixes, main

__all__ = ["Row", "forget_cached_prefixes", "load_naive", "main", "print_table", "write_pair"]


def load_naive():
    """The naive baseline module (gboost.bench.naive): NaiveExecutor, load_hf, hf_greedy."""
    from . import naive
    return naive
