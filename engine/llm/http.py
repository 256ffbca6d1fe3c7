"""The HTTP side of a remote general LLM: one OpenAI-compatible endpoint, reliably.

:class:`HTTPEndpoint` is what :class:`~gboost.llm.remote.RemoteLLM` (``/v1/completions``) and
:class:`~gboost.llm.chat.ChatLLM` (``/v1/chat/completions``) share:

* Every HTTP attempt holds a slot of an ``asyncio.Semaphore(max_concurrency)``
  (released during back-off) and is bounded by ``timeout_s`` overall.
* Connect errors, timeouts, 5xx and 429 are retried up to ``max_retries`` times
  (so at most ``max_retries + 1`` attempts) with jittered exponential back-off
  ``min(backoff_max_s, backoff_base_s * 2**(attempt-1)) * U[0.5, 1)``; a
  ``Retry-After`` header (seconds or HTTP date) replaces the back-off, capped
  at ``max_retry_after_s``. Other 4xx, malformed bodies and a 5xx whose body is a request
  validation error (:func:`refused_field` names the field) are not retried: the same request
  would fail the same way.
* Failures raise :class:`~gboost.llm.base.LLMError` with ``kind`` in
  {timeout, http_5xx, http_429, connect, malformed, vocab_mismatch, http_4xx}.
* The API key is read from the environment variable ``api_key_env`` and sent as
  ``Authorization: Bearer <key>``. It is never logged, never part of an
  exception message or of ``repr`` (server messages are redacted too).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Optional

import httpx

from gboost.cost import charge

from .base import LLMError
from .tokstrings import pairs_hook

__all__ = ["HTTPEndpoint", "parse_retry_after", "refused_field"]

log = logging.getLogger("gboost.llm.remote")

MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"
#: what users paste as the endpoint: the root, ``.../v1`` or a route's full URL
ROUTE_SUFFIXES = ("/v1/chat/completions", "/v1/completions", "/v1")


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        secs = float(value)
    except ValueError:
        try:
            dt = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if dt is None:
            return None
        secs = dt.timestamp() - (time.time() if now is None else now)
    if math.isnan(secs) or math.isinf(secs):
        return None
    return max(0.0, secs)


#: pydantic's "N validation error(s) for Model" then the field's location on the next line
_PYDANTIC = re.compile(r"validation errors? for \w+\s+([A-Za-z_][\w]*)")
#: a validation error's location: FastAPI's 422 as _error_detail joins it ("body.prompt: ..."), or
#: pydantic's error dicts printed in a 500 ("'loc': ('body', 'prompt', 'str')": llama-cpp-python)
_LOCATED = re.compile(r"^(?:body|query)\.([A-Za-z_]\w*)|'loc': \('body', '([A-Za-z_]\w*)'")


def refused_field(detail: str) -> Optional[str]:
    """The request field an error message says was invalid, or None when it names none: pydantic's
    validation errors (llama-cpp-python, FastAPI apps) name the field first."""
    m = _LOCATED.search(detail) or _PYDANTIC.search(detail)
    return next((g for g in m.groups() if g), None) if m else None


class _Secret:
    """Holds a credential; its repr / str never show the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


def _redact_url(url: str) -> str:
    """The URL without user:password, for logs, errors and reprs."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _root_url(base_url: str) -> str:
    """Accept ``http://host:port``, ``.../v1``, ``.../v1/completions`` or ``.../v1/chat/completions``."""
    url = base_url.strip().rstrip("/")
    for suffix in ROUTE_SUFFIXES:
        if url.endswith(suffix):
            url = url[: -len(suffix)]
            break
    return url


class HTTPEndpoint:
    """Transport, retries, concurrency limit and credentials of one endpoint; subclasses add the
    routes. ``stats``, ``retries_by_kind`` and ``errors_by_kind`` count what the endpoint did.

    Test hooks: ``sleep`` replaces ``asyncio.sleep`` for back-off, ``rng`` the
    jitter source, ``transport`` the httpx transport.
    """

    def __init__(
        self,
        base_url: str,
        model: Optional[str] = None,
        api_key_env: str = "GBOOST_LLM_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 3,
        backoff_base_s: float = 0.25,
        max_concurrency: int = 8,
        *,
        backoff_max_s: float = 10.0,
        max_retry_after_s: float = 60.0,
        extra_body: Optional[dict[str, Any]] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        sleep: Optional[Callable[[float], Awaitable[Any]]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        if max_retries < 0 or max_concurrency < 1 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, max_concurrency >= 1, timeout_s > 0")
        self.base_url = _root_url(base_url)
        self.display_url = _redact_url(self.base_url)  # never log credentials embedded in the URL
        self.model = model
        self.api_key_env = api_key_env
        key = os.environ.get(api_key_env) if api_key_env else None
        self._api_key: Optional[_Secret] = _Secret(key) if key else None
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_retry_after_s = float(max_retry_after_s)
        self.max_concurrency = int(max_concurrency)
        self.extra_body = dict(extra_body or {})
        self._sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._sem = asyncio.Semaphore(self.max_concurrency)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency),
            transport=transport,
        )
        self.stats: dict[str, int] = {"requests": 0, "attempts": 0, "retries": 0}
        self.retries_by_kind: Counter[str] = Counter()  # failed attempts that were retried
        self.errors_by_kind: Counter[str] = Counter()   # LLMErrors raised to callers (after retries)

    def _describe(self) -> str:
        """The endpoint's settings for repr: never the key, only where it comes from."""
        return (f"base_url={self.display_url!r}, model={self.model!r}, "
                f"api_key={'<set>' if self._api_key else '<unset>'} (from ${self.api_key_env}), "
                f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, max_concurrency={self.max_concurrency}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key.get():
            text = text.replace(self._api_key.get(), "***")
        return text

    def _headers(self) -> dict[str, str]:
        if self._api_key is None:
            return {}
        return {"Authorization": f"Bearer {self._api_key.get()}"}

    def _backoff(self, attempt: int) -> float:
        base = min(self.backoff_max_s, self.backoff_base_s * (2 ** (attempt - 1)))
        return base * (0.5 + 0.5 * self._rng.random())

    def _error_detail(self, resp: httpx.Response) -> str:
        try:
            data = resp.json()
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict) and err.get("message"):
                msg = str(err["message"])
            elif isinstance(err, str):
                msg = err
            elif isinstance(data, dict) and isinstance(data.get("detail"), list):  # FastAPI's 422
                msg = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}"
                                for d in data["detail"] if isinstance(d, dict))
            elif isinstance(data, dict) and data.get("detail"):
                msg = str(data["detail"])
            else:
                msg = resp.text
        except Exception:
            msg = resp.text
        msg = " ".join(msg.split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        return self._redact(msg)

    # -------------------------------------------------------------- transport
    async def _request(self, method: str, path: str, body: Optional[dict] = None, *,
                       log_retries: bool = True) -> Any:
        """One logical request with retries; returns the decoded JSON body. Each retry is counted
        (``retries_by_kind``, and ``llm_retries`` of the current request's cost record), so faults
        that a retry hid stay visible."""
        self.stats["requests"] += 1
        what = f"{method} {self.display_url}{path}"
        attempt = 0
        while True:
            attempt += 1
            retry_after: Optional[float] = None
            try:
                async with self._sem:
                    self.stats["attempts"] += 1
                    resp = await asyncio.wait_for(
                        self._client.request(method, path, json=body, headers=self._headers()),
                        timeout=self.timeout_s,
                    )
            except (asyncio.TimeoutError, httpx.TimeoutException):
                err = LLMError("timeout", f"{what}: no response within {self.timeout_s:g}s", attempts=attempt)
            except httpx.DecodingError as e:
                raise LLMError("malformed", f"{what}: undecodable body ({type(e).__name__})", attempts=attempt) from None
            except httpx.RequestError as e:
                detail = self._redact(str(e)) or type(e).__name__
                err = LLMError("connect", f"{what}: {type(e).__name__}: {detail}", attempts=attempt)
            else:
                status = resp.status_code
                if 200 <= status < 300:
                    try:  # repeated keys kept: a string-keyed row may name two tokens alike
                        return json.loads(resp.content, object_pairs_hook=pairs_hook)
                    except ValueError:
                        snippet = self._redact(resp.text[:120])
                        raise LLMError(
                            "malformed", f"{what}: response is not valid JSON: {snippet!r}", status=status,
                            attempts=attempt,
                        ) from None
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                detail = self._error_detail(resp)
                field = refused_field(detail) if status >= 500 or status in (400, 422) else None
                if status >= 500 and field is not None:
                    # a 5xx that is really a refused request (llama-cpp-python answers a pydantic
                    # validation error with 500): the same body fails every time, so no retry
                    raise LLMError("http_4xx", f"{what}: HTTP {status}, a request validation error (not retried): "
                                   f"the server refused field {field!r}: {detail}", status=status,
                                   attempts=attempt, field=field)
                if status == 429:
                    err = LLMError("http_429", f"{what}: HTTP 429: {detail}", status=status, attempts=attempt,
                                   retry_after=retry_after)
                elif status >= 500:
                    err = LLMError("http_5xx", f"{what}: HTTP {status}: {detail}", status=status, attempts=attempt,
                                   retry_after=retry_after)
                else:
                    named = f" (field {field!r})" if field else ""
                    raise LLMError("http_4xx", f"{what}: HTTP {status}{named}: {detail}", status=status,
                                   attempts=attempt, field=field)
            if attempt > self.max_retries:
                raise err
            delay = min(retry_after, self.max_retry_after_s) if retry_after is not None else self._backoff(attempt)
            self.stats["retries"] += 1
            self.retries_by_kind[err.kind] += 1
            charge(None, llm_retries=1)
            log.log(logging.WARNING if log_retries else logging.DEBUG,
                    "%s failed (%s); retry %d/%d in %.2fs", what, err.kind, attempt, self.max_retries, delay)
            await self._sleep(delay)


    def metrics(self) -> dict[str, Any]:
        """Counters for ``/metrics``: logical requests, retries and errors by kind."""
        return {"requests": self.stats["requests"], "retries": dict(self.retries_by_kind),
                "errors": dict(self.errors_by_kind)}

    async def _counted(self, coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except LLMError as e:
            self.errors_by_kind[e.kind] += 1
            raise

