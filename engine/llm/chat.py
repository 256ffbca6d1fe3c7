"""A general LLM behind a chat-only endpoint (``/v1/chat/completions``): it writes text.

The APIs most teams hold (OpenAI, DeepSeek, Qwen/DashScope, Mistral, Together, Fireworks, Anthropic
through an OpenAI-compatible proxy) take messages, not token ids; they have no ``echo`` and at most
20 ``top_logprobs`` of generated tokens. So they cannot score an SLM's draft nor be fused token by
token; what they can do is write. :meth:`ChatLLM.write` asks for a reply and returns its text with
the token counts the API billed (``usage``), which is what budgets count.

Requests carry only what OpenAI's chat API knows: ``model``, ``messages``, ``max_tokens``, ``stop``,
``temperature``, ``top_p``, ``seed`` (plus ``extra_body``). ``max_tokens`` rather than the newer
``max_completion_tokens``, because OpenAI-compatible servers (vLLM, SGLang, proxies) all read it.

Retries, timeouts, the concurrency limit and the API key are :class:`~gboost.llm.http.HTTPEndpoint`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .base import LLMError
from .http import MODELS_PATH, HTTPEndpoint

__all__ = ["ChatLLM", "ChatReply", "CHAT_PATH"]

CHAT_PATH = "/v1/chat/completions"


@dataclass
class ChatReply:
    """One written reply. ``billed``: the counts are the endpoint's ``usage``; else they were
    estimated with the client's ``count_tokens`` (an endpoint that does not report usage)."""

    text: str
    finish_reason: Optional[str]  # "stop" (EOS or a stop string), "length", "content_filter", ...
    prompt_tokens: int
    completion_tokens: int
    billed: bool = True

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ChatLLM(HTTPEndpoint):
    """A writer over ``/v1/chat/completions``. ``count_tokens(text)`` estimates the usage of a
    reply whose endpoint reported none (default: 0, so such replies cost nothing in budgets)."""

    kind = "chat"

    def __init__(self, base_url: str, model: Optional[str] = None, api_key_env: str = "GBOOST_LLM_API_KEY",
                 timeout_s: float = 30.0, max_retries: int = 3, backoff_base_s: float = 0.25,
                 max_concurrency: int = 8, *, count_tokens: Optional[Callable[[str], int]] = None,
                 **transport_kw: Any) -> None:
        super().__init__(base_url, model, api_key_env, timeout_s, max_retries, backoff_base_s, max_concurrency,
                         **transport_kw)
        self.count_tokens = count_tokens
        self.stats.update(prompt_tokens=0, completion_tokens=0, unbilled_replies=0)

    async def write(self, messages: Sequence[dict], *, max_tokens: int, stop: Sequence[str] | str | None = None,
                    temperature: Optional[float] = None, top_p: Optional[float] = None,
                    seed: Optional[int] = None) -> ChatReply:
        """The endpoint's reply to ``messages`` (a new assistant message, at most ``max_tokens``)."""
        return await self._counted(self._write(messages, max_tokens, stop, temperature, top_p, seed))

    async def _write(self, messages, max_tokens, stop, temperature, top_p, seed) -> ChatReply:
        if max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")
        body: dict[str, Any] = {"messages": [dict(m) for m in messages], "max_tokens": int(max_tokens)}
        if self.model is not None:
            body["model"] = self.model
        for key, value in (("stop", stop), ("temperature", temperature), ("top_p", top_p), ("seed", seed)):
            if value is not None:
                body[key] = list(value) if key == "stop" and not isinstance(value, str) else value
        body.update(self.extra_body)
        data = await self._request("POST", CHAT_PATH, body)
        return self._reply(data, body["messages"])

    def _reply(self, data: Any, messages: list[dict]) -> ChatReply:
        try:
            choice = data["choices"][0]
            message = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise LLMError("malformed", "chat response has no choices[0].message") from None
        text = message.get("content") if isinstance(message, dict) else None
        if text is None:  # a refusal or a tool call: nothing written
            text = ""
        if not isinstance(text, str):
            raise LLMError("malformed", "choices[0].message.content is not a string")
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        usage = data.get("usage") if isinstance(data, dict) else None
        counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")] if isinstance(usage, dict) else []
        if len(counts) == 2 and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            reply = ChatReply(text, finish, counts[0], counts[1], billed=True)
        else:
            count = self.count_tokens or (lambda _: 0)
            prompt = sum(count(m.get("content") or "") for m in messages)
            reply = ChatReply(text, finish, prompt, count(text), billed=False)
            self.stats["unbilled_replies"] += 1
        self.stats["prompt_tokens"] += reply.prompt_tokens
        self.stats["completion_tokens"] += reply.completion_tokens
        return reply

    async def check(self) -> dict[str, Any]:
        """Start-up probe: the model is served (``/v1/models`` when the endpoint lists models) and
        one 1-token chat request is answered. Raises :class:`LLMError`; returns what was learnt."""
        return await self._counted(self._check())

    async def _check(self) -> dict[str, Any]:
        try:
            models = await self._request("GET", MODELS_PATH, log_retries=False)
        except LLMError as e:
            if e.kind not in ("http_4xx", "malformed"):
                raise
            models = None  # not every API lists its models
        names = [c["id"] for c in models.get("data", []) if isinstance(c, dict) and isinstance(c.get("id"), str)] \
            if isinstance(models, dict) and isinstance(models.get("data"), list) else []
        if self.model is None:
            if not names:
                raise LLMError("http_4xx", f"{self.display_url} lists no models: name the one to use")
            self.model = names[0]
        elif names and self.model not in names:
            raise LLMError("http_4xx", f"model {self.model!r} is not served by {self.display_url}; available: {names}")
        reply = await self._write([{"role": "user", "content": "say ok"}], 1, None, None, None, None)
        return {"model": self.model, "kind": self.kind, "usage_billed": reply.billed}

    def metrics(self) -> dict[str, Any]:
        return {**super().metrics(), "prompt_tokens": self.stats["prompt_tokens"],
                "completion_tokens": self.stats["completion_tokens"]}

    def __repr__(self) -> str:
        return f"ChatLLM({self._describe()})"
