"""``/v1/chat/completions``: the model's chat template in front of the completions path.

The messages are rendered with the model's chat template (generation prompt added) into token ids,
and the request is answered by the code behind ``/v1/completions`` (:func:`create_completion`,
:func:`stream_completion`), so sampling, stop rules, seeds and limits mean the same on both routes.
Only the shapes differ, and they are OpenAI's:

* a choice is ``{"index", "message": {"role": "assistant", "content"}, "logprobs", "finish_reason"}``;
* ``logprobs: true`` (with ``top_logprobs: k``, 0..20) gives ``{"content": [{"token", "logprob",
  "bytes", "top_logprobs": [k entries]}]}``, one entry per generated token. ``token`` is the token's
  decoded text and ``bytes`` its UTF-8 (a token that splits a character decodes to U+FFFD);
* streamed, each choice first gets a chunk with ``delta: {"role": "assistant", "content": ""}``,
  then ``delta: {"content": ...}`` chunks whose contents add up to the non-streamed content, the
  last one with its ``finish_reason``; with ``stream_options.include_usage`` every chunk carries
  ``"usage": null`` and a last chunk (``choices: []``) the usage.

Defaults are OpenAI's: ``n`` 1, ``temperature`` 1, ``top_p`` 1, and no token limit but the context.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import AsyncIterator, Callable, Optional

from .backend import CompletionBackend
from .completions import create_completion
from .errors import APIError
from .limits import refuse_too_long_text
from .schemas import ChatCompletionRequest, CompletionRequest, StreamOptions
from .sse import sse_event
from .streaming import stream_completion
from .wire import NEG_INF_LOGPROB

__all__ = ["create_chat_completion", "stream_chat_completion", "chat_logprobs"]


async def _to_completion(req: ChatCompletionRequest, backend: CompletionBackend, max_logprobs: int
                         ) -> CompletionRequest:
    """The completions request this chat request is: templated prompt ids, OpenAI's defaults."""
    bad = req.unsupported()
    if bad:
        raise APIError(400, f"'{bad}' is not supported by this server", param=bad)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
    if req.top_logprobs is not None and req.top_logprobs > max_logprobs:
        raise APIError(400, f"top_logprobs must be <= {max_logprobs}, got {req.top_logprobs}", param="top_logprobs")
    encode_chat = getattr(backend, "encode_chat", None)
    if encode_chat is None:
        raise APIError(400, "this model has no chat template: use /v1/completions", param="messages")
    # templates written for Qwen, Llama and most others know "system", not OpenAI's newer "developer"
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                 **({"name": m.name} if m.name else {})} for m in req.messages]
    # the template joins the contents into one text: too many bytes of them can never fit
    refuse_too_long_text("".join(m["content"] for m in messages), backend, "messages")
    ids = await asyncio.to_thread(encode_chat, messages)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return CompletionRequest(
        model=req.model, prompt=list(ids),
        max_tokens=req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed, n=req.n or 1, stop=req.stop,
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
        stream=bool(req.stream), stream_options=StreamOptions(include_usage=include_usage) if include_usage else None,
    )


def _entry(decode: Callable[[list[int]], str], token_id: int, logprob: Optional[float]) -> dict:
    text = decode([token_id])
    return {"token": text, "logprob": NEG_INF_LOGPROB if logprob is None else logprob,
            "bytes": list(text.encode("utf-8"))}


def chat_logprobs(lp: Optional[dict], k: int, decode: Callable[[list[int]], str]) -> Optional[dict]:
    """OpenAI's chat ``logprobs`` from the completions route's (:func:`gboost.server.wire.build_logprobs`):
    the same tokens, each with its ``k`` most likely alternatives (that row's extra actual token dropped)."""
    if lp is None:
        return None
    content = []
    for tid, logprob, top in zip(lp["token_ids"], lp["token_logprobs"], lp["top_logprob_ids"]):
        alts = [] if top is None else [_entry(decode, i, v) for i, v in zip(top["ids"][:k], top["logprobs"][:k])]
        content.append({**_entry(decode, tid, logprob), "top_logprobs": alts})
    return {"content": content, "refusal": None}


async def create_chat_completion(req: ChatCompletionRequest, backend: CompletionBackend, model_name: str,
                                 max_logprobs: int) -> dict:
    """Answer a validated, non-streamed chat request; raises :class:`APIError` for invalid ones."""
    creq = await _to_completion(req, backend, max_logprobs)
    out = await create_completion(creq, backend, model_name, max_logprobs)
    k = creq.logprobs or 0

    def shape() -> dict:  # decodes every token of the logprobs: a worker thread's job
        choices = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                    "logprobs": chat_logprobs(c["logprobs"], k, backend.decode),
                    "finish_reason": c["finish_reason"]} for c in out["choices"]]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": out["created"],
                "model": model_name, "choices": choices, "usage": out["usage"], "system_fingerprint": None}
    return await asyncio.to_thread(shape)


async def stream_chat_completion(req: ChatCompletionRequest, backend: CompletionBackend, model_name: str,
                                 max_logprobs: int, on_done=None) -> AsyncIterator[bytes]:
    """Validate (raising APIError before anything is sent), then return the SSE byte stream."""
    creq = await _to_completion(req, backend, max_logprobs)
    k = creq.logprobs or 0
    with_usage = creq.stream_options is not None
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model_name, "system_fingerprint": None}

    def chunk(choices: list[dict], usage: Optional[dict] = None) -> dict:
        return {**head, "choices": choices, **({"usage": usage} if with_usage else {})}

    def shape(legacy: dict) -> dict:  # a completions chunk as a chat chunk
        return chunk([{"index": c["index"], "delta": {"content": c["text"]} if c["text"] else {},
                       "logprobs": chat_logprobs(c["logprobs"], k, backend.decode),
                       "finish_reason": c["finish_reason"]} for c in legacy["choices"]], legacy.get("usage"))

    events = await stream_completion(creq, backend, model_name, max_logprobs, on_done=on_done, shape=shape)

    async def with_roles() -> AsyncIterator[bytes]:
        try:
            for i in range(creq.n):
                yield sse_event(chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                        "finish_reason": None}]))
            async for event in events:
                yield event
        finally:
            await events.aclose()  # the completion's generations end with this stream
    return with_roles()
