"""Cost accounting shared by the search policy and the model backend.

One :class:`CostRecord` type is used at two levels:

* ``backend.cost`` -- what the backend really computed, over every request it
  served (prefill included, cache hits counted separately).  It is written by
  the backend (engine/collab/executor.py & prm.py).
* ``SolveResult.cost`` -- what one request asked for, counted by the search
  from the :class:`~engine.search.protocol.StepOut` objects it received (see
  :func:`count_step`).  Per-request budgets (``max_llm_tokens``,
  ``max_llm_calls``) are enforced against this record, because the backend's
  record is shared by all concurrent requests.  ``llm_retries`` counts the remote LLM's
  retried attempts for the request (charged by :mod:`engine.llm.remote` through
  :func:`charge`), whatever the backend.

Token conventions used by the search for a generated step of ``k`` tokens:

=========  ===============  ===============
action     slm_tokens       llm_tokens
=========  ===============  ===============
slm        k                0
collab     k                k   (every fused token needs both models)
llm        0                k
delegate   0                k   (a measuring executor reports the tokens the API billed)
=========  ===============  ===============

A collab step that reports a ``fault`` (the LLM did not answer, the backend
fell back to the SLM) is counted as ``slm`` tokens, still counts as an LLM
call, and increments ``llm_faults[fault]``.  ``prm_tokens`` at the request
level counts the new step tokens submitted to the PRM (the prefix is assumed
to be served from the PRM's prefix cache) -- a lower bound of the PRM work;
the backend's own record holds the exact number.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

__all__ = ["CostRecord", "count_step", "request_scope", "charge"]

_INT_FIELDS = ("slm_tokens", "llm_tokens", "prm_tokens", "base_tokens", "prefix_cache_tokens", "llm_calls",
               "prm_tokens_saved", "llm_retries")


@dataclass
class CostRecord:
    """Counters of the work done for one request (or for a whole backend)."""

    slm_tokens: int = 0           #: tokens computed by the SLM (generated; prefill if the backend counts it)
    llm_tokens: int = 0           #: tokens computed by the general LLM
    prm_tokens: int = 0           #: tokens run through the process reward model
    base_tokens: int = 0          #: tokens computed by the SLM's base model (fusion_rule "proxy")
    prefix_cache_tokens: int = 0  #: tokens served from a prefix cache instead of being recomputed
    prm_tokens_saved: int = 0     #: step tokens a value head scored from the SLM's own rows (no PRM forward)
    llm_calls: int = 0            #: LLM-involving step generations (one per collab/llm/delegate child)
    #: HTTP attempts to a remote LLM that failed and were retried (a retry that then succeeded
    #: leaves no fault, so this is where an unreliable endpoint shows); charged by the client
    llm_retries: int = 0
    llm_faults: dict[str, int] = field(default_factory=dict)  #: fault kind -> count (e.g. "llm_timeout")
    wall_s: dict[str, float] = field(default_factory=dict)    #: phase -> seconds (select/expand/score/...)

    # ------------------------------------------------------------------ update
    def add_fault(self, kind: str, count: int = 1) -> None:
        self.llm_faults[kind] = self.llm_faults.get(kind, 0) + count

    def add_time(self, phase: str, seconds: float) -> None:
        self.wall_s[phase] = self.wall_s.get(phase, 0.0) + float(seconds)

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        """``with cost.timed("expand"): ...`` adds the block's wall time to ``wall_s[phase]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add_time(phase, time.perf_counter() - t0)

    def merge(self, other: "CostRecord") -> "CostRecord":
        """Add ``other`` into ``self`` (in place) and return ``self``."""
        for name in _INT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for k, v in other.llm_faults.items():
            self.add_fault(k, v)
        for k, v in other.wall_s.items():
            self.add_time(k, v)
        return self

    def copy(self) -> "CostRecord":
        return CostRecord.from_dict(self.to_dict())

    def minus(self, before: "CostRecord") -> "CostRecord":
        """``self - before``: the work done since the snapshot ``before`` was taken."""
        out = CostRecord()
        for name in _INT_FIELDS:
            setattr(out, name, getattr(self, name) - getattr(before, name))
        for k in set(self.llm_faults) | set(before.llm_faults):
            d = self.llm_faults.get(k, 0) - before.llm_faults.get(k, 0)
            if d:
                out.llm_faults[k] = d
        for k in set(self.wall_s) | set(before.wall_s):
            d = self.wall_s.get(k, 0.0) - before.wall_s.get(k, 0.0)
            if d:
                out.wall_s[k] = d
        return out

    @property
    def total_faults(self) -> int:
        return sum(self.llm_faults.values())

    # ----------------------------------------------------------------- convert
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {name: getattr(self, name) for name in _INT_FIELDS}
        d["llm_faults"] = dict(sorted(self.llm_faults.items()))
        d["wall_s"] = {k: round(v, 6) for k, v in sorted(self.wall_s.items())}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostRecord":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"CostRecord: unknown keys {sorted(unknown)}")
        out = cls(**{k: d[k] for k in _INT_FIELDS if k in d})
        out.llm_faults = {str(k): int(v) for k, v in dict(d.get("llm_faults", {})).items()}
        out.wall_s = {str(k): float(v) for k, v in dict(d.get("wall_s", {})).items()}
        return out


def count_step(cost: CostRecord, action: str, n_tokens: int, fault: str | None) -> None:
    """Charge one generated step to a per-request record (see the module table)."""
    if action == "slm":
        cost.slm_tokens += n_tokens
        return
    if action not in ("collab", "llm", "delegate"):
        raise ValueError(f"unknown action {action!r}")
    cost.llm_calls += 1
    if fault is not None:
        cost.add_fault(fault)
        cost.slm_tokens += n_tokens
        return
    if action == "collab":
        cost.slm_tokens += n_tokens
    cost.llm_tokens += n_tokens


# -- measured per-request cost ---------------------------------------------------------------
# A backend that knows what it computes (engine/collab/executor.py) charges every token to the
# backend-wide record and to the record of the request being served, found through this
# context variable: solve() opens a scope, and the tasks it spawns inherit it.
_REQUEST_COST: ContextVar["CostRecord | None"] = ContextVar("gboost_request_cost", default=None)


@contextmanager
def request_scope() -> Iterator["CostRecord"]:
    rec = CostRecord()
    token = _REQUEST_COST.set(rec)
    try:
        yield rec
    finally:
        _REQUEST_COST.reset(token)


def charge(total: "CostRecord | None", **counts: int) -> None:
    """Add integer counts to `total` and to the current request's record, if any."""
    for rec in (total, _REQUEST_COST.get()):
        if rec is not None:
            for k, v in counts.items():
                setattr(rec, k, getattr(rec, k) + v)
