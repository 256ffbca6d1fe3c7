"""A local stand-in for a hosted chat-only API, for tests (`from mock_chat_api import ChatOnlyAPI`).

:class:`ChatOnlyAPI` is an ASGI app that puts the restrictions and failures of OpenAI-style hosted
APIs in front of a gboost app's ``/v1/chat/completions`` (so the replies come from a real model):

* only ``POST /v1/chat/completions`` and ``GET /v1/models`` exist (no ``/v1/completions``, no
  ``/health``): everything else is a 404 in OpenAI's error shape;
* the model card has no ``vocab_size`` (hosted APIs do not publish their tokenizer);
* request fields OpenAI does not know (``echo``, ``prompt``, ``return_tokens_as_token_ids``, ...)
  are a 400 "Unrecognized request argument", as OpenAI answers them; ``top_logprobs`` above 20 is
  a 400; content must be text (no token ids);
* with ``api_key``, every route wants ``Authorization: Bearer <api_key>`` (else a 401);
* every response carries ``usage`` (gboost's chat route does), and :attr:`billed` sums it;
* ``faults`` is a repeating schedule of per-call answers: ``None`` serves the call, ``429`` answers
  "rate limited" with ``Retry-After: retry_after``, any 5xx a server error.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Optional, Sequence

from starlette.responses import JSONResponse

__all__ = ["ChatOnlyAPI", "OPENAI_CHAT_FIELDS"]

#: request fields OpenAI's chat completions API knows; anything else is refused
OPENAI_CHAT_FIELDS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
    "logprobs", "top_logprobs", "stream", "stream_options", "presence_penalty", "frequency_penalty",
    "logit_bias", "user", "tools", "tool_choice", "response_format", "parallel_tool_calls", "metadata", "store",
    "service_tier", "reasoning_effort", "modalities", "audio", "prediction", "functions", "function_call"})


def _error(status: int, message: str, type_: str, param: Optional[str] = None, headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": None}},
                        status_code=status, headers=headers)


class ChatOnlyAPI:
    """``ChatOnlyAPI(gboost_app, model="mock-chat", faults=(None, 429, None, 503), retry_after=0)``.

    ``calls`` counts chat requests (faulted ones included), ``injected`` the faults by status,
    ``billed`` the ``usage`` of the served replies (``prompt_tokens``, ``completion_tokens``).
    """

    def __init__(self, app, *, model: str = "mock-chat", faults: Sequence[Optional[int]] = (),
                 retry_after: float = 0.0, api_key: Optional[str] = None) -> None:
        self.app, self.model, self.api_key = app, model, api_key
        self.faults = tuple(faults)
        self.retry_after = retry_after
        self.calls = 0
        self.injected: Counter[int] = Counter()
        self.billed: Counter[str] = Counter()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = (scope["method"], scope["path"].rstrip("/"))
        if self.api_key is not None and dict(scope["headers"]).get(b"authorization") != \
                f"Bearer {self.api_key}".encode():
            return await _error(401, "Incorrect API key provided.", "invalid_request_error")(scope, receive, send)
        if route == ("GET", "/v1/models"):
            card = {"id": self.model, "object": "model", "created": 0, "owned_by": "mock"}
            return await JSONResponse({"object": "list", "data": [card]})(scope, receive, send)
        if route != ("POST", "/v1/chat/completions"):
            return await _error(404, f"Unknown request URL: {scope['method']} {scope['path']}",
                                "invalid_request_error")(scope, receive, send)
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        refused = self._refuse(raw)
        if refused is not None:
            return await refused(scope, receive, send)
        fault = self.faults[self.calls % len(self.faults)] if self.faults else None
        self.calls += 1
        if fault is not None:
            self.injected[fault] += 1
            if fault == 429:
                return await _error(429, "Rate limit reached; try again later.", "rate_limit_error",
                                    headers={"Retry-After": f"{self.retry_after:g}"})(scope, receive, send)
            return await _error(fault, "The server had an error processing your request.",
                                "server_error")(scope, receive, send)
        await self.app(scope, self._replay(raw, receive), self._billing(send))

    def _refuse(self, raw: bytes) -> Optional[JSONResponse]:
        try:
            body = json.loads(raw)
        except ValueError:
            return None  # the app answers bad JSON itself
        if not isinstance(body, dict):
            return None
        unknown = sorted(set(body) - OPENAI_CHAT_FIELDS)
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error",
                          unknown[0])
        if isinstance(body.get("top_logprobs"), int) and body["top_logprobs"] > 20:
            return _error(400, "top_logprobs must be at most 20", "invalid_request_error", "top_logprobs")
        if body.get("model") not in (None, self.model):
            return _error(404, f"The model `{body['model']}` does not exist", "invalid_request_error", "model")
        return None

    @staticmethod
    def _replay(raw: bytes, receive):
        """``receive`` that gives the app the request body again (``model`` dropped: the app serves
        its own model's name), then waits on the client as the original does."""
        try:
            data = json.loads(raw)
            if isinstance(data, dict):
                data.pop("model", None)
                raw = json.dumps(data).encode()
        except ValueError:
            pass
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return replay

    def _billing(self, send):
        """``send`` that adds up the ``usage`` of plain JSON replies (streams are not billed here)."""
        chunks: list[bytes] = []

        async def billed_send(message):
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    try:
                        usage = json.loads(b"".join(chunks)).get("usage") or {}
                        for key in ("prompt_tokens", "completion_tokens"):
                            self.billed[key] += int(usage.get(key, 0))
                    except (ValueError, AttributeError, TypeError):
                        pass
            await send(message)
        return billed_send
