"""Fault injection for ``/v1/completions`` and ``/v1/chat/completions`` (tests, chaos runs).

Applied to every completions call (either route), before the model runs:

1. ``latency_s`` of non-blocking delay (``asyncio.sleep``), other requests and
   ``/health`` keep being served meanwhile;
2. with probability ``error_rate`` (and always for the first ``fail_first``
   calls) an error answer with ``status_code`` (5xx or 429), carrying a
   ``Retry-After: <retry_after>`` header when ``retry_after`` is set;
3. else with probability ``malformed_rate`` a 200 answer whose body is truncated
   JSON.

Draws come from ``random.Random(seed)`` (one draw per call), so a given seed
and call order always injects the same faults.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional

from starlette.responses import Response

from .errors import error_response

__all__ = ["FaultConfig", "FaultInjector", "MALFORMED_BODY"]

MALFORMED_BODY = b'{"id": "cmpl-fault", "object": "text_completion", "choices": [{"index": 0, "text": "'


@dataclass
class FaultConfig:
    latency_s: float = 0.0
    error_rate: float = 0.0
    malformed_rate: float = 0.0
    status_code: int = 503
    retry_after: Optional[float] = None
    seed: int = 0
    fail_first: int = 0  # the first N calls always answer `status_code`

    def __post_init__(self) -> None:
        if self.latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        for name in ("error_rate", "malformed_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.error_rate + self.malformed_rate > 1.0 + 1e-9:
            raise ValueError("error_rate + malformed_rate must be <= 1")
        if not 400 <= self.status_code <= 599:
            raise ValueError(f"status_code must be an HTTP error status, got {self.status_code}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if self.fail_first < 0:
            raise ValueError("fail_first must be >= 0")

    @property
    def active(self) -> bool:
        return bool(self.latency_s or self.error_rate or self.malformed_rate or self.fail_first)


def _retry_after_header(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


class FaultInjector:
    """Stateful side of :class:`FaultConfig`; ``calls`` counts completions calls seen."""

    def __init__(self, config: Optional[FaultConfig] = None) -> None:
        self.configure(config)

    def configure(self, config: Optional[FaultConfig] = None) -> None:
        """Install a new config and reset the call counter and the RNG."""
        self.config = config or FaultConfig()
        self._rng = random.Random(self.config.seed)
        self.calls = 0
        self.injected: Counter[str] = Counter()

    async def before(self) -> Optional[Response]:
        """Run before a completions call; returns the faulty response to send, if any."""
        cfg = self.config
        n = self.calls
        self.calls += 1
        if not cfg.active:
            return None
        if cfg.latency_s > 0:
            self.injected["latency"] += 1
            await asyncio.sleep(cfg.latency_s)
        u = self._rng.random()
        if n < cfg.fail_first or u < cfg.error_rate:
            self.injected[f"http_{cfg.status_code}"] += 1
            headers = None
            if cfg.retry_after is not None:
                headers = {"Retry-After": _retry_after_header(cfg.retry_after)}
            return error_response(
                cfg.status_code,
                f"injected fault (HTTP {cfg.status_code})",
                type="rate_limit_error" if cfg.status_code == 429 else None,
                code="injected_fault",
                headers=headers,
            )
        if u < cfg.error_rate + cfg.malformed_rate:
            self.injected["malformed"] += 1
            return Response(MALFORMED_BODY, status_code=200, media_type="application/json")
        return None
