"""The cost of a request: one record, written where the work is done.

``solve`` opens a request scope around its search (:func:`request_scope`); whatever does work
for the request charges it there with :func:`charge`: the step executor each forward it awaits
(prompt prefill, drafts, judge suffixes, prefix-cache hits), each LLM-involving step and each
fault; a local LLM what it computes; a remote LLM client its retries; the search the wall time
of its phases. The per-request budgets (``max_llm_tokens``, ``max_llm_calls``,
``max_llm_faults``) read that record. Tasks inherit the scope, so concurrent requests each
charge their own.

``charge`` also adds to the running ``total`` it is handed: an executor's ``cost`` sums the
work of every request it served and of calls made outside any request (for /metrics, reports
and tests that drive an executor directly).

An LLM-involving step counts one ``llm_calls`` even when the LLM failed and the SLM wrote the
step instead (that fault is counted in ``llm_faults``), so a failing endpoint uses up the budget.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any, Iterator

__all__ = ["CostRecord", "request_scope", "charge", "charge_fault"]

_INT_FIELDS = ("slm_tokens", "llm_tokens", "llm_context_tokens", "prm_tokens", "base_tokens",
               "prefix_cache_tokens", "llm_calls", "prm_tokens_saved", "llm_retries")


@dataclass
class CostRecord:
    """Counters of the work done for one request (or, as a running total, for an executor)."""

    slm_tokens: int = 0           #: tokens computed by the SLM (prompt prefill included)
    llm_tokens: int = 0           #: tokens computed by the general LLM
    #: of those, context the LLM read before the positions it was asked to score (tokens it had
    #: not seen, or whose K/V no session or prefix block kept): the rest are drafted positions
    llm_context_tokens: int = 0
    prm_tokens: int = 0           #: tokens run through the process reward model
    base_tokens: int = 0          #: tokens computed by the SLM's base model (fusion_rule "proxy")
    prefix_cache_tokens: int = 0  #: tokens served from a prefix cache instead of being recomputed
    prm_tokens_saved: int = 0     #: step tokens a value head scored from the SLM's own rows (no PRM forward)
    llm_calls: int = 0            #: LLM-involving steps (one per collab/llm/delegate child, a fault included)
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
    def llm_generated_tokens(self) -> int:
        """The LLM's positions of the steps it helped write (drafted and verified ones included):
        ``llm_tokens`` less the context it read first. What ``max_llm_tokens`` bounds."""
        return self.llm_tokens - self.llm_context_tokens

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


# the record of the request being served: solve() opens a scope, the tasks it spawns inherit it
_REQUEST_COST: ContextVar["CostRecord | None"] = ContextVar("gboost_request_cost", default=None)


@contextmanager
def request_scope(rec: "CostRecord | None" = None) -> Iterator["CostRecord"]:
    """Charges in this scope (and in tasks started from it) go to ``rec`` (a new record if None)."""
    rec = CostRecord() if rec is None else rec
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


def charge_fault(total: "CostRecord | None", kind: str) -> None:
    """Count one LLM fault of ``kind`` in `total` and in the current request's record, if any."""
    for rec in (total, _REQUEST_COST.get()):
        if rec is not None:
            rec.add_fault(kind)
