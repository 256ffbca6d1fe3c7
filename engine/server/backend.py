"""The protocol between the HTTP server and a model.

The server (:mod:`gboost.server.app`) only talks to a model through
:class:`CompletionBackend`. The real engine implements it; tests use a small
deterministic fake.

Conventions
-----------
* Token ids are ints in ``[0, vocab_size)``.
* Log-probs are natural logs of the model's *raw* next-token distribution
  (``log_softmax`` of the logits, independent of temperature / top_p), like
  vLLM's default. ``-inf`` is allowed (the server writes it as ``-9999.0``).
* A row (:class:`~gboost.llm.base.TokenLogprobs`) asked for with ``top_k`` holds
  the ``top_k`` most likely tokens **plus the actual token at that position when
  it is not among them** (vLLM does the same), so rows may have ``top_k + 1``
  entries; with ``top_k = 0`` a row holds only the actual token (or nothing for
  the last prompt row, whose "actual token" is not known yet). A backend may
  return more (a full row, ``full=True``); the server sorts and truncates.
* ``encode`` / ``encode_prompt`` / ``decode`` may be called from worker threads and must be
  thread-safe (HF ``tokenizers`` are). ``decode`` should skip special tokens
  such as EOS.
* ``prompt_logprobs`` and ``generate`` are coroutines. Model inference is
  CPU/GPU-bound: an implementation must not run it on the event loop thread
  (``await asyncio.to_thread(...)`` or a dedicated executor / engine loop), or
  ``/health`` and every other request stall while it runs.
* Invalid input the backend detects itself may raise :class:`BackendInputError`
  (answered with HTTP 400). Any other exception becomes an HTTP 500 with a
  generic JSON error (details only in the server log).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from gboost.llm.base import TokenLogprobs

__all__ = ["CompletionBackend", "BackendInputError"]


class BackendInputError(ValueError):
    """The request is invalid for this backend (HTTP 400, message shown to the client)."""


@runtime_checkable
class CompletionBackend(Protocol):
    model_name: str
    vocab_size: int  # width of the model's next-token distribution (logits)
    max_model_len: int  # prompt + completion tokens the model accepts
    eos_token_ids: list[int]

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, nothing added (stop strings, pieces of text)."""
        ...

    def encode_prompt(self, text: str) -> list[int]:
        """A text prompt -> token ids, with the BOS the model's tokenizer adds (if any)."""
        ...

    def decode(self, ids: list[int]) -> str:
        """Token ids -> text (skipping special tokens)."""
        ...

    # Optional: ``encode_chat(messages) -> list[int]``, the messages ([{"role", "content"}, ...])
    # rendered by the model's chat template with the generation prompt, as token ids; it may raise
    # BackendInputError (no template, or the template refuses the messages). Without it,
    # /v1/chat/completions answers 400.

    async def prompt_logprobs(self, ids: list[int], top_k: int) -> list[TokenLogprobs]:
        """``len(ids)`` rows: row ``i`` is the distribution of token ``i+1`` given
        ``ids[:i+1]``; the last row is the next-token distribution after ``ids``.
        Rows ``0..len-2`` include the actual token ``ids[i+1]`` (see module doc)."""
        ...

    async def generate(
        self,
        ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop_ids: list[int],
        top_k_logprobs: int,
        on_token: Callable[[int, TokenLogprobs | None], None] | None = None,
    ) -> tuple[list[int], list[TokenLogprobs]]:
        """Sample up to ``max_tokens`` (>= 1) tokens after ``ids``.

        ``temperature == 0`` means greedy. ``seed`` (when not None) makes sampling
        reproducible. Generation stops after emitting a token in ``stop_ids``
        (the server always includes ``eos_token_ids``); that token *is* part of the
        returned ids. Returns ``(new_ids, rows)`` with one row per new token: its
        distribution (``top_k_logprobs`` entries plus the sampled token, see module
        doc). The server passes ``top_k_logprobs=0`` when the client did not ask
        for log-probs (the backend may then return no rows; they are ignored) and
        ``>= 1`` otherwise, in which case there must be one row per new token.
        ``on_token(token_id, row)``, when given, is called with each new token as soon as it is
        sampled, on the event loop (streamed completions read it); ``row`` is that token's row
        when log-probs were asked for, else None.
        """
        ...
