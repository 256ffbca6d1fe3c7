"""A general LLM behind an OpenAI-compatible ``/v1/completions`` endpoint.

Works with vLLM, SGLang, ``gboost serve`` and hosted APIs that support
``logprobs`` (and ``echo`` for :meth:`RemoteLLM.score`).

Requests
--------
Prompts are sent as token ids (``"prompt": [ids...]``) so that no text round trip
can change the tokenisation. Both calls ask for ``max_tokens=1``,
``logprobs=top_logprobs``, ``temperature=1``, ``top_p=1`` (so the reported
log-probs are the raw distribution on every server) and
``"return_tokens_as_token_ids": true`` (vLLM's per-request switch; gboost does it
by default; pass ``request_token_ids=False`` for servers that reject unknown
fields).

* ``next_logprobs(ids)``: ``echo=false``; the row is the first generated
  position's ``top_logprobs``.
* ``score(prefix, draft)``: one request over ``prefix + draft`` with
  ``echo=true``. ``top_logprobs[i]`` is the distribution of token ``i`` given
  tokens ``< i``, so the rows are ``top_logprobs[P : P + D + 1]`` (``P =
  len(prefix)``, ``D = len(draft)``): one per draft position plus the generated
  position after the draft. ``prefix`` must be non-empty (position 0 has no
  distribution).

Responses (see :mod:`engine.server.wire` for gboost's format)
-------------------------------------------------------------
``choices[0].logprobs`` is read in this order of preference:

1. ``top_logprob_ids``: ``[null | {"ids": [...], "logprobs": [...]}]`` (gboost);
2. ``top_logprobs`` with ``"token_id:<id>"`` keys (gboost, vLLM with
   ``return_tokens_as_token_ids``);
3. ``top_logprobs`` with token-*string* keys, mapped through the ``token_to_id``
   callable given to the constructor (returns None for unknown strings). This is
   lossy (distinct ids can decode to one string); without a mapping such a
   response is ``LLMError("malformed")``.

The echoed prompt tokens (``token_ids``, or ``tokens`` in ``token_id:`` form)
are checked against what was sent whenever the endpoint returns ids.
Returned ids ``>= vocab_size`` (padding / extra special tokens of a larger
remote vocabulary) are dropped and counted in ``stats["dropped_ids"]``.
``-9999.0`` (JSON stand-in for ``-inf``) is kept as is.

Reliability
-----------
* Every HTTP attempt holds a slot of an ``asyncio.Semaphore(max_concurrency)``
  (released during back-off) and is bounded by ``timeout_s`` overall.
* Connect errors, timeouts, 5xx and 429 are retried up to ``max_retries`` times
  (so at most ``max_retries + 1`` attempts) with jittered exponential back-off
  ``min(backoff_max_s, backoff_base_s * 2**(attempt-1)) * U[0.5, 1)``; a
  ``Retry-After`` header (seconds or HTTP date) replaces the back-off, capped
  at ``max_retry_after_s``. Other 4xx and malformed bodies are not retried.
* Failures raise :class:`~engine.llm.base.LLMError` with ``kind`` in
  {timeout, http_5xx, http_429, connect, malformed, vocab_mismatch, http_4xx}.
* The API key is read from the environment variable ``api_key_env`` and sent as
  ``Authorization: Bearer <key>``. It is never logged, never part of an
  exception message or of ``repr`` (server messages are redacted too).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import random
import time
from collections import Counter
from typing import Any, Awaitable, Callable, Optional, Sequence

import httpx
import torch

from engine.cost import charge

from .base import LLMError, TokenLogprobs

__all__ = ["RemoteLLM", "parse_retry_after", "TOKEN_ID_PREFIX"]

log = logging.getLogger("engine.llm.remote")

TOKEN_ID_PREFIX = "token_id:"
COMPLETIONS_PATH = "/v1/completions"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"


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
    """Accept ``http://host:port``, ``.../v1`` or ``.../v1/completions``."""
    url = base_url.strip().rstrip("/")
    for suffix in (COMPLETIONS_PATH, "/v1"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
            break
    return url


class RemoteLLM:
    """:class:`~engine.llm.base.GeneralLLM` over an OpenAI-compatible endpoint.

    ``vocab_size`` is the fusion vocabulary width; when None it is set by
    :meth:`check` (to ``tokenizer_vocab_size``) and, until then, returned ids are
    not range-checked and rows are never ``full``.

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
        top_logprobs: int = 20,
        vocab_size: Optional[int] = None,
        *,
        backoff_max_s: float = 10.0,
        max_retry_after_s: float = 60.0,
        token_to_id: Optional[Callable[[str], Optional[int]]] = None,
        request_token_ids: bool = True,
        extra_body: Optional[dict[str, Any]] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        sleep: Optional[Callable[[float], Awaitable[Any]]] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        if max_retries < 0 or max_concurrency < 1 or top_logprobs < 1 or timeout_s <= 0:
            raise ValueError("need max_retries >= 0, max_concurrency >= 1, top_logprobs >= 1, timeout_s > 0")
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
        self.top_logprobs = int(top_logprobs)
        self._vocab_size_arg = vocab_size
        self.vocab_size: Optional[int] = vocab_size  # type: ignore[assignment]
        self.token_to_id = token_to_id
        self.request_token_ids = request_token_ids
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
        self.remote_vocab_size: Optional[int] = None
        self.stats: dict[str, int] = {"requests": 0, "attempts": 0, "retries": 0, "dropped_ids": 0}
        self.retries_by_kind: Counter[str] = Counter()  # failed attempts that were retried
        self.errors_by_kind: Counter[str] = Counter()   # LLMErrors raised to callers (after retries)

    # ------------------------------------------------------------------ misc
    def __repr__(self) -> str:
        return (
            f"RemoteLLM(base_url={self.display_url!r}, model={self.model!r}, "
            f"api_key={'<set>' if self._api_key else '<unset>'} (from ${self.api_key_env}), "
            f"top_logprobs={self.top_logprobs}, vocab_size={self.vocab_size}, "
            f"timeout_s={self.timeout_s}, max_retries={self.max_retries}, max_concurrency={self.max_concurrency})"
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> "RemoteLLM":
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
                    try:
                        return resp.json()
                    except ValueError:
                        snippet = self._redact(resp.text[:120])
                        raise LLMError(
                            "malformed", f"{what}: response is not valid JSON: {snippet!r}", status=status,
                            attempts=attempt,
                        ) from None
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
                detail = self._error_detail(resp)
                if status == 429:
                    err = LLMError("http_429", f"{what}: HTTP 429: {detail}", status=status, attempts=attempt,
                                   retry_after=retry_after)
                elif status >= 500:
                    err = LLMError("http_5xx", f"{what}: HTTP {status}: {detail}", status=status, attempts=attempt,
                                   retry_after=retry_after)
                else:
                    raise LLMError("http_4xx", f"{what}: HTTP {status}: {detail}", status=status, attempts=attempt)
            if attempt > self.max_retries:
                raise err
            delay = min(retry_after, self.max_retry_after_s) if retry_after is not None else self._backoff(attempt)
            self.stats["retries"] += 1
            self.retries_by_kind[err.kind] += 1
            charge(None, llm_retries=1)
            log.log(logging.WARNING if log_retries else logging.DEBUG,
                    "%s failed (%s); retry %d/%d in %.2fs", what, err.kind, attempt, self.max_retries, delay)
            await self._sleep(delay)

    # ---------------------------------------------------------------- parsing
    def _payload(self, ids: list[int], echo: bool, k: int) -> dict:
        body: dict[str, Any] = {
            "prompt": ids,
            "max_tokens": 1,
            "logprobs": k,
            "echo": echo,
            "temperature": 1.0,
            "top_p": 1.0,
            "n": 1,
            "stream": False,
        }
        if self.model is not None:
            body["model"] = self.model
        if self.request_token_ids:
            body["return_tokens_as_token_ids"] = True
        body.update(self.extra_body)
        return body

    @staticmethod
    def _malformed(msg: str) -> LLMError:
        return LLMError("malformed", msg)

    def _key_to_id(self, key: str) -> int:
        if key.startswith(TOKEN_ID_PREFIX):
            try:
                return int(key[len(TOKEN_ID_PREFIX):])
            except ValueError:
                raise self._malformed(f"bad token key {key!r}") from None
        if self.token_to_id is not None:
            tid = self.token_to_id(key)
            if tid is not None:
                return int(tid)
            raise self._malformed(f"token string {key!r} is unknown to token_to_id")
        raise self._malformed(
            "endpoint returned token strings instead of ids; serve with vLLM's --return-tokens-as-token-ids "
            "(or a version that honours the per-request flag) or pass token_to_id="
        )

    def _make_row(self, ids: list, lps: list) -> TokenLogprobs:
        if len(ids) != len(lps) or not ids:
            raise self._malformed("empty or misaligned top-logprob entry")
        try:
            ids = [int(t) for t in ids]
            lps = [float(x) for x in lps]
        except (TypeError, ValueError):
            raise self._malformed("non-numeric token id or log-prob") from None
        if any(t < 0 for t in ids):
            raise self._malformed("negative token id")
        V = self.vocab_size
        if V is not None:
            keep = [i for i, t in enumerate(ids) if 0 <= t < V]
            if len(keep) != len(ids):
                self.stats["dropped_ids"] += len(ids) - len(keep)
                ids = [ids[i] for i in keep]
                lps = [lps[i] for i in keep]
                if not ids:
                    raise LLMError("vocab_mismatch", f"every returned token id is outside the vocabulary [0, {V})")
        try:
            ids_t = torch.tensor(ids, dtype=torch.int64)
        except (RuntimeError, OverflowError):
            raise self._malformed("token id out of int64 range") from None
        lps_t = torch.tensor(lps, dtype=torch.float32)
        if bool(torch.isnan(lps_t).any()) or bool((lps_t > 1e-3).any()):
            raise self._malformed("log-probs must be <= 0 and not NaN")
        order = torch.argsort(lps_t, descending=True, stable=True)
        ids_t, lps_t = ids_t[order], lps_t[order]
        if ids_t.unique().numel() != ids_t.numel():
            raise self._malformed("duplicate token ids in one top-logprob entry")
        full = V is not None and ids_t.numel() >= V
        return TokenLogprobs(ids=ids_t, logprobs=lps_t, full=full)

    def _parse(self, data: Any) -> tuple[list[Optional[TokenLogprobs]], Optional[list[int]], str]:
        """``(rows aligned with positions, echoed/generated ids if known, text)``."""
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise self._malformed("response has no choices[0]") from None
        if not isinstance(choice, dict):
            raise self._malformed("choices[0] is not an object")
        lp = choice.get("logprobs")
        if not isinstance(lp, dict):
            raise self._malformed("choices[0].logprobs is missing (endpoint ignored 'logprobs'?)")
        text = choice.get("text") if isinstance(choice.get("text"), str) else ""

        rows: list[Optional[TokenLogprobs]] = []
        by_ids = lp.get("top_logprob_ids")
        if isinstance(by_ids, list):
            for e in by_ids:
                if e is None:
                    rows.append(None)
                elif isinstance(e, dict) and isinstance(e.get("ids"), list) and isinstance(e.get("logprobs"), list):
                    rows.append(self._make_row(e["ids"], e["logprobs"]))
                else:
                    raise self._malformed("bad top_logprob_ids entry")
        else:
            tops = lp.get("top_logprobs")
            if not isinstance(tops, list):
                raise self._malformed("choices[0].logprobs.top_logprobs is missing")
            for e in tops:
                if e is None:
                    rows.append(None)
                elif isinstance(e, dict):
                    ids = [self._key_to_id(k) for k in e.keys()]
                    rows.append(self._make_row(ids, list(e.values())))
                else:
                    raise self._malformed("bad top_logprobs entry")

        tok_ids: Optional[list[int]] = None
        if isinstance(lp.get("token_ids"), list):
            try:
                tok_ids = [int(t) for t in lp["token_ids"]]
            except (TypeError, ValueError):
                raise self._malformed("bad token_ids") from None
        elif isinstance(lp.get("tokens"), list):
            toks = lp["tokens"]
            if all(isinstance(t, str) and t.startswith(TOKEN_ID_PREFIX) for t in toks):
                tok_ids = [self._key_to_id(t) for t in toks]
            elif self.token_to_id is not None and all(isinstance(t, str) for t in toks):
                mapped = [self.token_to_id(t) for t in toks]
                tok_ids = None if any(m is None for m in mapped) else [int(m) for m in mapped]  # type: ignore[arg-type]
        return rows, tok_ids, text

    # ------------------------------------------------------------ public API
    @staticmethod
    def _check_ids(ids: Sequence[int], name: str) -> list[int]:
        out = [int(t) for t in ids]
        if any(t < 0 for t in out):
            raise ValueError(f"{name}: negative token id")
        return out

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

    async def next_logprobs(self, token_ids: list[int]) -> TokenLogprobs:
        return await self._counted(self._next_logprobs(token_ids))

    async def score(self, prefix_ids: list[int], draft_ids: list[int]) -> list[TokenLogprobs]:
        return await self._counted(self._score(prefix_ids, draft_ids))

    async def check(
        self, tokenizer_vocab_size: int, probe_ids: Sequence[int], probe_text: Optional[str] = None
    ) -> dict[str, Any]:
        """Start-up check: endpoint reachable, model served, vocabulary compatible.

        ``tokenizer_vocab_size``: number of tokens of the local tokenizer
        (``len(tokenizer)``). The endpoint's reported ``vocab_size`` (gboost's
        ``/v1/models`` card; a logits width, possibly padded) must be at least that.
        ``probe_ids``: a few ordinary token ids, echoed by the endpoint; the echo
        must return the same ids. ``probe_text``: the local tokenizer's decoding
        of ``probe_ids``; when given, the endpoint's echoed text must start with
        it. This is the check that catches a different tokenizer of the same or a
        larger size, so pass it when you can.

        Raises ``LLMError`` (``vocab_mismatch`` with an explanatory message,
        ``http_4xx`` for an unknown model, or transport kinds). Returns what was
        learnt: ``{"model", "remote_vocab_size", "health"}``. Retries are logged at
        DEBUG here: the error, if any, says how many attempts were made.
        """
        return await self._counted(self._check(tokenizer_vocab_size, probe_ids, probe_text))

    async def _next_logprobs(self, token_ids: list[int]) -> TokenLogprobs:
        ids = self._check_ids(token_ids, "token_ids")
        if not ids:
            raise ValueError("next_logprobs needs at least one token")
        data = await self._request("POST", COMPLETIONS_PATH, self._payload(ids, echo=False, k=self.top_logprobs))
        rows, _, _ = self._parse(data)
        if not rows or rows[0] is None:
            raise self._malformed("no log-probs for the generated position")
        return rows[0]

    async def _score(self, prefix_ids: list[int], draft_ids: list[int]) -> list[TokenLogprobs]:
        prefix = self._check_ids(prefix_ids, "prefix_ids")
        draft = self._check_ids(draft_ids, "draft_ids")
        if not prefix:
            raise ValueError("score needs a non-empty prefix (the first prompt position has no distribution)")
        ids = prefix + draft
        P, D = len(prefix), len(draft)
        data = await self._request("POST", COMPLETIONS_PATH, self._payload(ids, echo=True, k=self.top_logprobs))
        rows, tok_ids, _ = self._parse(data)
        if len(rows) < P + D + 1:
            raise self._malformed(
                f"echo returned {len(rows)} positions, expected >= {P + D + 1} "
                "(does the endpoint support echo with logprobs?)"
            )
        if tok_ids is not None and tok_ids[: P + D] != ids:
            raise self._malformed("echoed prompt tokens differ from the ids sent (endpoint re-tokenised the prompt?)")
        out = rows[P: P + D + 1]
        if any(r is None for r in out):
            raise self._malformed("missing prompt log-probs in the echo (endpoint ignored echo logprobs?)")
        return out  # type: ignore[return-value]

    async def _check(self, tokenizer_vocab_size: int, probe_ids: Sequence[int],
                     probe_text: Optional[str]) -> dict[str, Any]:
        probe = self._check_ids(probe_ids, "probe_ids")
        if not probe:
            raise ValueError("probe_ids must not be empty")
        if any(t >= tokenizer_vocab_size for t in probe):
            raise ValueError(f"probe_ids must be < tokenizer_vocab_size={tokenizer_vocab_size}")

        health = HEALTH_PATH
        try:
            await self._request("GET", HEALTH_PATH, log_retries=False)
        except LLMError as e:
            if e.kind != "http_4xx" and e.kind != "malformed":
                raise
            health = MODELS_PATH  # no /health (e.g. a hosted API): /v1/models below must work

        models = None
        try:
            models = await self._request("GET", MODELS_PATH, log_retries=False)
        except LLMError as e:
            if health == MODELS_PATH or e.kind not in ("http_4xx", "malformed"):
                raise
        cards = []
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            cards = [c for c in models["data"] if isinstance(c, dict) and isinstance(c.get("id"), str)]
        if cards:
            names = [c["id"] for c in cards]
            if self.model is None:
                self.model = names[0]
            elif self.model not in names:
                raise LLMError("http_4xx", f"model {self.model!r} is not served by {self.display_url}; available: {names}")
            card = next(c for c in cards if c["id"] == self.model)
            rv = card.get("vocab_size")
            if isinstance(rv, int):
                self.remote_vocab_size = rv
                if rv < tokenizer_vocab_size:
                    raise LLMError(
                        "vocab_mismatch",
                        f"the endpoint's model {self.model!r} has vocab_size={rv} but the local tokenizer has "
                        f"{tokenizer_vocab_size} tokens: the general LLM and the SLM must share one tokenizer",
                    )

        if self.vocab_size is None:
            self.vocab_size = tokenizer_vocab_size

        data = await self._request("POST", COMPLETIONS_PATH, self._payload(probe, echo=True, k=1), log_retries=False)
        rows, tok_ids, text = self._parse(data)
        if tok_ids is not None and tok_ids[: len(probe)] != probe:
            raise LLMError(
                "vocab_mismatch",
                f"the endpoint echoed token ids {tok_ids[: len(probe)]} for the probe {probe}: "
                "it does not use the ids it is sent (different tokenizer or re-tokenised prompt)",
            )
        if probe_text is not None and not text.startswith(probe_text):
            raise LLMError(
                "vocab_mismatch",
                f"the endpoint decodes the probe ids {probe} to {text[: len(probe_text) + 20]!r}, the local "
                f"tokenizer to {probe_text!r}: the general LLM and the SLM do not share a tokenizer",
            )
        if len(rows) < len(probe) + 1 or any(r is None for r in rows[1: len(probe) + 1]):
            raise self._malformed("the endpoint does not return prompt log-probs with echo=true; score() needs them")
        return {"model": self.model, "remote_vocab_size": self.remote_vocab_size, "health": health}
