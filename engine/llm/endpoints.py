"""What a remote general LLM's URL offers: endpoint kinds, found by a start-up probe or named.

* ``completions``: ``/v1/completions`` that returns ``logprobs`` with ``echo`` on the SLM's
  tokenizer, for token-id prompts (vLLM, SGLang, ``gboost serve``) or text ones (llama-cpp-python;
  ``completions_kw={"prompt": "auto"}`` probes which). Needed by fused steps and
  speculative scoring (:class:`~gboost.llm.remote.RemoteLLM`).
* ``chat``: ``/v1/chat/completions`` (every hosted API). Enough for delegated steps, in which the
  LLM writes a whole step (:class:`~gboost.llm.chat.ChatLLM`); no shared tokenizer needed.

``kind="auto"`` probes both: the completions probe is the existing start-up check (a few token ids
echoed with their log-probs), the chat probe one 1-token reply. An endpoint that is down fails
start-up; one that merely lacks a kind records why (:attr:`RemoteEndpoint.lacks`), so that a mode
needing it fails with that reason (:meth:`RemoteEndpoint.need`). A named kind is probed alone and
must work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from .base import LLMError
from .chat import ChatLLM
from .remote import RemoteLLM

__all__ = ["ENDPOINT_KINDS", "RemoteEndpoint", "EndpointKindError", "open_endpoint"]

ENDPOINT_KINDS = ("auto", "completions", "chat")

_WHAT = {"completions": "a /v1/completions endpoint that returns echo logprobs on the SLM's tokenizer "
                        "(vLLM, SGLang, gboost serve, llama-cpp-python)",
         "chat": "a /v1/chat/completions endpoint"}


class EndpointKindError(ValueError):
    """A requested mode needs an endpoint kind this URL does not offer."""


@dataclass
class RemoteEndpoint:
    url: str                                   # redacted: safe to print
    scorer: Optional[RemoteLLM] = None         # the completions kind, when offered
    writer: Optional[ChatLLM] = None           # the chat kind, when offered
    lacks: dict[str, str] = field(default_factory=dict)  # kind -> why it is not offered

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, c in (("completions", self.scorer), ("chat", self.writer)) if c is not None)

    def need(self, kind: str, what: str) -> None:
        """Raise :class:`EndpointKindError` unless ``kind`` is offered; ``what`` names the mode."""
        if kind in self.kinds:
            return
        why = self.lacks.get(kind, "not probed")
        raise EndpointKindError(f"{what} needs {_WHAT[kind]}; the general LLM at {self.url} offers "
                                f"{' and '.join(self.kinds) or 'nothing'} ({kind}: {why})")

    async def aclose(self) -> None:
        for client in (self.scorer, self.writer):
            if client is not None:
                await client.aclose()


async def open_endpoint(url: str, kind: str = "auto", *, tokenizer=None, model: Optional[str] = None,
                        completions_kw: Optional[dict[str, Any]] = None, chat_kw: Optional[dict[str, Any]] = None,
                        **common_kw: Any) -> RemoteEndpoint:
    """Probe ``url`` for the kinds ``kind`` asks for and return the clients that work.

    ``tokenizer`` (the SLM's) is what the completions kind must share: its probe ids are echoed and
    compared. ``common_kw`` go to both clients (timeouts, retries, key, transport hooks);
    ``completions_kw`` / ``chat_kw`` to one. Raises :class:`LLMError` when the endpoint cannot be
    reached or a named kind fails its probe, :class:`ValueError` for an unknown kind.
    """
    if kind not in ENDPOINT_KINDS:
        raise ValueError(f"endpoint kind must be one of {', '.join(ENDPOINT_KINDS)}, got {kind!r}")
    out = RemoteEndpoint(url)
    try:
        if kind in ("auto", "completions"):
            if tokenizer is None:
                raise ValueError("the completions kind needs the SLM's tokenizer to check the endpoint's")
            scorer = RemoteLLM(url, model, token_to_id=tokenizer.token_to_id, tokenizer=tokenizer, **common_kw,
                               **(completions_kw or {}))
            out.url = scorer.display_url
            try:
                probe = tokenizer.encode("Step 1: 2 + 3 = 5.")
                await scorer.check(tokenizer.vocab_size, probe, tokenizer.decode(probe))
                out.scorer, model = scorer, scorer.model
            except LLMError as e:
                await scorer.aclose()
                if kind == "completions" or e.kind not in ("http_4xx", "malformed", "vocab_mismatch") \
                        or e.status in (401, 403):
                    raise  # named and failing, the endpoint down, or the key refused: no start-up
                out.lacks["completions"] = str(e)
        if kind in ("auto", "chat"):
            writer = ChatLLM(url, model, count_tokens=_counter(tokenizer), **common_kw, **(chat_kw or {}))
            out.url = writer.display_url
            try:
                await writer.check()
                out.writer = writer
            except LLMError as e:
                await writer.aclose()
                if kind == "auto" and out.scorer is None:  # neither kind: say why for both
                    raise LLMError(e.kind, f"{e.message}; and the completions probe: {out.lacks['completions']}",
                                   status=e.status, attempts=e.attempts) from None
                if kind == "chat" or e.kind not in ("http_4xx", "malformed"):
                    raise
                out.lacks["chat"] = str(e)
        if kind == "chat":
            out.lacks["completions"] = "not probed: the endpoint kind was set to chat"
    except BaseException:
        await out.aclose()
        raise
    return out


def _counter(tokenizer):
    """Usage estimate for endpoints that report none: the SLM's token count of the text."""
    if tokenizer is None:
        return None
    return lambda text: len(tokenizer.encode(text)) if text else 0
