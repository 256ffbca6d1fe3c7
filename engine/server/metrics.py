"""Plain-text (Prometheus exposition style) counters for ``GET /metrics``.

All updates happen on the event-loop thread, so plain ints suffice.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Iterator

__all__ = ["Metrics", "MetricsMiddleware", "KNOWN_PATHS"]

KNOWN_PATHS = ("/v1/completions", "/v1/solve", "/v1/models", "/health", "/metrics")


class Metrics:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[str] = Counter()  # by path
        self.responses: Counter[str] = Counter()  # by status code
        self.errors = 0  # responses with status >= 400
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.completions = 0  # successful completion requests
        self.in_flight = 0  # completions requests being handled
        self.in_flight_max = 0

    @contextlib.contextmanager
    def track_in_flight(self) -> Iterator["_InFlight"]:
        """Counts a request while the block runs; a streamed response takes the count over
        (``keep()``) and gives it back when the stream closes."""
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)
        held = _InFlight(self)
        try:
            yield held
        finally:
            if not held.kept:
                held.release()

    def render(self, faults: Counter[str] | None = None, solver=None, kv: dict | None = None,
               llm: dict | None = None, weights: dict[str, str] | None = None) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                out.append(f"{name}{labels} {value:g}")

        metric(
            "gboost_requests_total",
            "counter",
            "HTTP requests received, by path.",
            [(f'{{path="{p}"}}', self.requests.get(p, 0)) for p in (*KNOWN_PATHS, "other")],
        )
        metric(
            "gboost_responses_total",
            "counter",
            "HTTP responses sent, by status code.",
            [(f'{{status="{s}"}}', n) for s, n in sorted(self.responses.items())],
        )
        metric("gboost_request_errors_total", "counter", "Responses with status >= 400.", [("", self.errors)])
        metric("gboost_completions_total", "counter", "Successful completion requests.", [("", self.completions)])
        metric("gboost_prompt_tokens_total", "counter", "Prompt tokens processed.", [("", self.prompt_tokens)])
        metric("gboost_completion_tokens_total", "counter", "Tokens generated.", [("", self.completion_tokens)])
        metric("gboost_requests_in_flight", "gauge", "Completion requests being handled.", [("", self.in_flight)])
        metric(
            "gboost_requests_in_flight_max", "gauge", "Most completion requests handled at once.", [("", self.in_flight_max)]
        )
        if weights:
            metric("gboost_model_weights_info", "gauge", "The format each resident model's linears run in.",
                   [(f'{{model="{m}",format="{f}"}}', 1) for m, f in sorted(weights.items())])
        if solver is not None:
            metric("gboost_solves_total", "counter", "Solve requests answered.", [("", solver.solves)])
            metric("gboost_solves_in_flight", "gauge", "Solve requests running.", [("", solver.in_flight)])
            metric("gboost_solves_cancelled_total", "counter",
                   "Searches cancelled before they ended (client gone, or shutdown).", [("", solver.cancelled)])
        if kv is not None:  # Scheduler.kv_stats() of an engine-backed server
            metric("gboost_kv_blocks_total", "gauge", "KV blocks in the shared pool.", [("", kv["blocks_total"])])
            metric("gboost_kv_blocks_free", "gauge", "KV blocks free or holding evictable cached prefixes.",
                   [("", kv["blocks_free"])])
            metric("gboost_kv_preemptions_total", "counter", "Sequences cut back to free KV blocks (recomputed later).",
                   [("", kv["preemptions"])])
            metric("gboost_kv_preempted_tokens_total", "counter",
                   "Computed tokens dropped by preemption (recomputed or re-matched later).",
                   [("", kv["preempted_tokens"])])
            if "blocks_cached" in kv:
                metric("gboost_kv_blocks_cached", "gauge",
                       "Free KV blocks still holding a cached prefix (reused by a match, evicted when needed).",
                       [("", kv["blocks_cached"])])
            if "sequences_live" in kv:
                metric("gboost_kv_sequences_live", "gauge", "Sequences holding block tables (0 when idle).",
                       [("", kv["sequences_live"])])
                metric("gboost_kv_refcount_errors", "gauge",
                       "Blocks whose reference count differs from the tables holding them (a bug unless 0).",
                       [("", kv["refcount_errors"])])
        if llm is not None:  # RemoteLLM.metrics(): retries hide faults, so count them
            from gboost.llm.base import LLM_ERROR_KINDS
            kinds = sorted(LLM_ERROR_KINDS)
            metric("gboost_llm_requests_total", "counter", "Requests to the general LLM endpoint (retries not counted).",
                   [("", llm["requests"])])
            metric("gboost_llm_retries_total", "counter",
                   "Failed attempts to the general LLM that were retried, by error kind.",
                   [(f'{{kind="{k}"}}', llm["retries"].get(k, 0)) for k in kinds])
            metric("gboost_llm_errors_total", "counter",
                   "General LLM calls that failed after their retries, by error kind.",
                   [(f'{{kind="{k}"}}', llm["errors"].get(k, 0)) for k in kinds])
        if solver is not None and hasattr(getattr(solver, "executor", None), "cost"):
            absorbed = solver.executor.cost.llm_faults
            metric("gboost_llm_fallbacks_total", "counter",
                   "Collaborative steps whose LLM failed and the SLM redid (on_llm_fault=fallback), by fault.",
                   [(f'{{kind="{k}"}}', n) for k, n in sorted(absorbed.items())])
        if faults is not None:
            metric(
                "gboost_faults_injected_total",
                "counter",
                "Injected faults, by kind.",
                [(f'{{kind="{k}"}}', n) for k, n in sorted(faults.items())],
            )
        metric("gboost_uptime_seconds", "gauge", "Seconds since the app was created.", [("", round(time.time() - self.started, 3))])
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware counting requests by path and responses by status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        self.metrics.requests[path if path in KNOWN_PATHS else "other"] += 1

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.responses[str(status)] += 1
                if status >= 400:
                    self.metrics.errors += 1
            await send(message)

        await self.app(scope, receive, send_wrapper)


class _InFlight:
    def __init__(self, metrics: "Metrics"):
        self.metrics, self.kept, self._released = metrics, False, False

    def keep(self):
        """Hold the count past the ``with`` block; returns the (idempotent) release."""
        self.kept = True
        return self.release

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.metrics.in_flight -= 1
