"""The interface every general LLM implements (local model or remote endpoint).

A general LLM answers two questions, both about *next-token distributions*:

* ``next_logprobs(token_ids)``: the distribution of the token that follows
  ``token_ids``;
* ``score(prefix_ids, draft_ids)``: in one call, the distribution at every draft
  position plus the one after the draft (``len(draft_ids) + 1`` rows). Row ``j``
  is the distribution of ``draft_ids[j]`` given ``prefix_ids + draft_ids[:j]``;
  the last row is the distribution after the whole draft.

A row is a :class:`TokenLogprobs`. A local model returns the full vocabulary
(``full=True``, ``ids = arange(V)``); a remote endpoint usually returns only its
top-k (``full=False``); see :mod:`gboost.llm.topk` for how such rows are fused.

Failures surface as :class:`LLMError` with a machine-readable ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["TokenLogprobs", "GeneralLLM", "LLMError", "LLM_ERROR_KINDS"]


@dataclass
class TokenLogprobs:
    """Next-token distribution at one position.

    ids:      int64 ``[k]`` token ids (``k = V`` for a full local distribution).
    logprobs: float32 ``[k]`` natural-log probabilities aligned with ``ids``.
    full:     True when ``ids`` covers the whole vocabulary.

    Ids are unique within a row. Rows built by :mod:`gboost.llm.remote` are sorted
    by decreasing log-prob; nothing else should rely on an order.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    full: bool = False

    def __post_init__(self) -> None:
        if self.ids.shape != self.logprobs.shape or self.ids.dim() != 1:
            raise ValueError(
                f"TokenLogprobs: ids {tuple(self.ids.shape)} and logprobs "
                f"{tuple(self.logprobs.shape)} must be 1-D of the same length"
            )

    def __len__(self) -> int:
        return int(self.ids.numel())

    def as_dict(self) -> dict[int, float]:
        """``{token_id: logprob}`` (handy in tests and debugging)."""
        return dict(zip(self.ids.tolist(), self.logprobs.tolist()))


@runtime_checkable
class GeneralLLM(Protocol):
    """A general LLM, local or remote. All methods are coroutines."""

    vocab_size: int
    #: True for an LLM on the engine's own models and KV pool (LocalLLM): it charges what it computes
    #: to its ``cost`` (the executor sets it) and keeps sessions, given back by ``release_sessions()``
    #: when the engine is idle. False for an endpoint: the executor charges the positions it scored.
    charges_itself: bool
    #: one line on how prompts reach it (an endpoint's probe result, e.g. "prompts as token ids"),
    #: printed at start-up; None where there is nothing to say (a resident LLM)
    prompt_note: str | None

    async def next_logprobs(self, token_ids: list[int]) -> TokenLogprobs:
        """Distribution of the next token after ``token_ids``."""
        ...

    async def score(self, prefix_ids: list[int], draft_ids: list[int]) -> list[TokenLogprobs]:
        """``len(draft_ids) + 1`` rows: the distribution at each draft position and
        the one after the draft, computed in a single call."""
        ...

    async def aclose(self) -> None:
        """Release connections / resources."""
        ...


LLM_ERROR_KINDS = frozenset(
    {"timeout", "http_5xx", "http_429", "connect", "malformed", "vocab_mismatch", "http_4xx"}
)

_DEFAULT_MESSAGES = {
    "timeout": "the general LLM did not answer in time",
    "http_5xx": "the general LLM endpoint returned a server error",
    "http_429": "the general LLM endpoint is rate limiting requests",
    "connect": "could not connect to the general LLM endpoint",
    "malformed": "the general LLM endpoint returned a malformed response",
    "vocab_mismatch": "the general LLM's vocabulary does not match the local tokenizer",
    "http_4xx": "the general LLM endpoint rejected the request",
}


class LLMError(Exception):
    """A general-LLM failure.

    kind:        one of :data:`LLM_ERROR_KINDS`:
                 ``timeout`` (no answer within the time limit), ``http_5xx``,
                 ``http_429`` (rate limited), ``connect`` (connection refused/reset,
                 DNS, protocol errors), ``malformed`` (unparseable or inconsistent
                 body), ``vocab_mismatch`` (endpoint vocabulary incompatible with
                 the local tokenizer), ``http_4xx`` (other client errors: bad
                 request, auth, unknown model, prompt too long).
    status:      HTTP status code when there was one.
    attempts:    how many HTTP attempts were made before giving up.
    retry_after: the last Retry-After value seen (seconds), if any.
    field:       the request field a server's validation error named (``http_4xx``), if any;
                 a 5xx that is a validation error is ``http_4xx`` too, and never retried.

    Messages never contain credentials.
    """

    def __init__(
        self,
        kind: str,
        message: str | None = None,
        *,
        status: int | None = None,
        attempts: int | None = None,
        retry_after: float | None = None,
        field: str | None = None,
    ) -> None:
        if kind not in LLM_ERROR_KINDS:
            raise ValueError(f"unknown LLMError kind {kind!r}; expected one of {sorted(LLM_ERROR_KINDS)}")
        self.kind = kind
        self.message = message or _DEFAULT_MESSAGES[kind]
        self.status = status
        self.attempts = attempts
        self.retry_after = retry_after
        self.field = field  # the request field the server refused, when its error named one
        super().__init__(self.message)

    @property
    def retryable(self) -> bool:
        return self.kind in {"timeout", "http_5xx", "http_429", "connect"}

    def __str__(self) -> str:
        extra = []
        if self.status is not None:
            extra.append(f"status={self.status}")
        if self.attempts is not None:
            extra.append(f"attempts={self.attempts}")
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"[{self.kind}] {self.message}{tail}"

    def __repr__(self) -> str:
        return f"LLMError(kind={self.kind!r}, message={self.message!r}, status={self.status!r}, attempts={self.attempts!r})"
