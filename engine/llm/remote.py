"""A general LLM behind an OpenAI-compatible ``/v1/completions`` endpoint.

Works with vLLM, SGLang, ``gboost serve`` and hosted APIs that support
``logprobs`` (and ``echo`` for :meth:`RemoteLLM.score`).

Requests
--------
Prompts are sent as token ids (``"prompt": [ids...]``) so that no text round trip
can change the tokenisation; an endpoint that refuses them (llama-cpp-python's server) gets
their text instead (``prompt="text"``, or ``"auto"``: the start-up probe tries ids first; the
rule for rows in text mode is :mod:`gboost.llm.textprompt`'s). Both calls ask for ``max_tokens=1``,
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

Responses (see :mod:`gboost.server.wire` for gboost's format)
-------------------------------------------------------------
``choices[0].logprobs`` is read in this order of preference:

1. ``top_logprob_ids``: ``[null | {"ids": [...], "logprobs": [...]}]`` (gboost);
2. ``top_logprobs`` with ``"token_id:<id>"`` keys (gboost, vLLM with
   ``return_tokens_as_token_ids``);
3. ``top_logprobs`` with token-*string* keys: with ``tokenizer=``, mapped by
   :class:`~gboost.llm.tokstrings.TokenStrings` (every spelling servers use; an entry whose
   id is uncertain is dropped and counted in ``stats["ambiguous"]``, never guessed); else
   through the ``token_to_id`` callable (vocabulary spellings). Without either such a
   response is ``LLMError("malformed")``.

The echoed prompt tokens (``token_ids``, or ``tokens`` in ``token_id:`` form)
are checked against what was sent whenever the endpoint returns ids.
Returned ids ``>= vocab_size`` (padding / extra special tokens of a larger
remote vocabulary) are dropped and counted in ``stats["dropped_ids"]``.
``-9999.0`` (JSON stand-in for ``-inf``) is kept as is.

-----------
Retries, timeouts, the concurrency limit and the API key are :class:`~gboost.llm.http.HTTPEndpoint`'s.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch

from .base import LLMError, TokenLogprobs
from .http import HEALTH_PATH, MODELS_PATH, HTTPEndpoint, parse_retry_after
from .textprompt import PROMPT_MODES, TextPrompts, probe_completions, score_text
from .tokstrings import TokenStrings, entries

__all__ = ["RemoteLLM", "parse_retry_after", "TOKEN_ID_PREFIX"]

TOKEN_ID_PREFIX = "token_id:"
COMPLETIONS_PATH = "/v1/completions"


class RemoteLLM(HTTPEndpoint):
    """:class:`~gboost.llm.base.GeneralLLM` over an OpenAI-compatible ``/v1/completions`` endpoint
    that takes token-id prompts and returns ``logprobs`` (with ``echo`` for :meth:`score`).

    ``vocab_size`` is the fusion vocabulary width; when None it is set by
    :meth:`check` (to ``tokenizer_vocab_size``) and, until then, returned ids are
    not range-checked and rows are never ``full``. Transport keywords (timeouts, retries,
    ``transport``, ``sleep``, ``rng``, ...) are :class:`~gboost.llm.http.HTTPEndpoint`'s.
    """
    charges_itself = False  # GeneralLLM: the executor charges the positions the endpoint scored

    kind = "completions"
    COMPLETIONS_PATH = COMPLETIONS_PATH

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
        token_to_id: Optional[Callable[[str], Optional[int]]] = None,
        request_token_ids: bool = True,
        tokenizer: Any = None,
        prompt: str = "ids",
        **transport_kw: Any,
    ) -> None:
        if top_logprobs < 1:
            raise ValueError("need top_logprobs >= 1")
        if prompt not in PROMPT_MODES:
            raise ValueError(f"prompt must be one of {', '.join(PROMPT_MODES)}, got {prompt!r}")
        if prompt != "ids" and tokenizer is None:
            raise ValueError(f"prompt={prompt!r} needs the SLM's tokenizer (tokenizer=)")
        super().__init__(base_url, model, api_key_env, timeout_s, max_retries, backoff_base_s, max_concurrency,
                         **transport_kw)
        self.top_logprobs = int(top_logprobs)
        self._vocab_size_arg = vocab_size
        self.vocab_size: Optional[int] = vocab_size  # type: ignore[assignment]
        self.token_to_id = token_to_id
        self.request_token_ids = request_token_ids
        self.remote_vocab_size: Optional[int] = None
        self.prompt_mode = prompt          # "auto" until check() has chosen ids or text
        self.prompt_note = f"prompts as {prompt}"
        self.text_prompts = TextPrompts(tokenizer) if tokenizer is not None else None
        self._tokenizer, self._strings = tokenizer, None
        self.echo_shift = 0                # measured by check() in text mode (textprompt)
        self.text_echo = True              # text-mode score() by one echo (else per position)
        self.served_top_logprobs: Optional[int] = None  # widest row the probe got back
        self.stats.update(dropped_ids=0, ambiguous=0, unmapped=0, text_extra_requests=0)

    def __repr__(self) -> str:
        return f"RemoteLLM({self._describe()}, top_logprobs={self.top_logprobs}, vocab_size={self.vocab_size})"

    # ---------------------------------------------------------------- parsing
    def _payload(self, ids: list[int], echo: bool, k: int) -> dict:
        text = self.prompt_mode == "text"
        body: dict[str, Any] = {
            "prompt": self.text_prompts.text(ids) if text else ids,
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

    @property
    def strings(self) -> Optional[TokenStrings]:
        if self._strings is None and self._tokenizer is not None:
            self._strings = TokenStrings(self._tokenizer)  # built once, at the first string key
        return self._strings

    def _string_row(self, e: dict, idx: int, known_ids: Optional[list[int]], tlp: list) -> TokenLogprobs:
        pairs = entries(e)
        if self._tokenizer is None or all(str(k).startswith(TOKEN_ID_PREFIX) for k, _ in pairs):
            return self._make_row([self._key_to_id(k) for k, _ in pairs], [v for _, v in pairs])
        known = None  # the position's own token, whose log-prob the response states
        if known_ids is not None and idx < len(known_ids) and idx < len(tlp) and tlp[idx] is not None:
            known = (known_ids[idx], tlp[idx])
        placed = self.strings.resolve(pairs, known, self.stats)
        if not placed:
            raise self._malformed("no top_logprobs key of a position maps to a token id")
        return self._make_row([i for i, _ in placed], [v for _, v in placed])

    def _parse(self, data: Any, known_ids: Optional[list[int]] = None
               ) -> tuple[list[Optional[TokenLogprobs]], Optional[list[int]], str]:
        """``(rows aligned with positions, echoed/generated ids if known, text)``. ``known_ids``:
        the tokens the server read (text mode), which settle string keys that several ids share."""
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
            tlp = lp.get("token_logprobs") if isinstance(lp.get("token_logprobs"), list) else []
            for idx, e in enumerate(tops):
                if e is None:
                    rows.append(None)
                elif isinstance(e, dict):
                    rows.append(self._string_row(e, idx, known_ids, tlp))
                else:
                    raise self._malformed("bad top_logprobs entry")

        tok_ids: Optional[list[int]] = None
        if isinstance(lp.get("token_ids"), list):
            try:
                tok_ids = [int(t) for t in lp["token_ids"]]
            except (TypeError, ValueError):
                raise self._malformed("bad token_ids") from None
        elif isinstance(lp.get("tokens"), list) and self.prompt_mode != "text":
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

        With ``prompt="auto"`` the probe tries token ids, then text when the ids are refused.
        Raises ``LLMError`` (``vocab_mismatch`` with an explanatory message,
        ``http_4xx`` for an unknown model, or transport kinds). Returns what was
        learnt: ``{"model", "remote_vocab_size", "health", "prompt", "echo_shift",
        "served_top_logprobs"}``. Retries are logged at
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
        if self.prompt_mode == "text":
            return await score_text(self, prefix, draft)
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
                if self.vocab_size is not None and rv < self.vocab_size:
                    self.vocab_size = rv  # fusion runs over the ids both models have rows for
                if rv < tokenizer_vocab_size:
                    raise LLMError(
                        "vocab_mismatch",
                        f"the endpoint's model {self.model!r} has vocab_size={rv} but the local tokenizer has "
                        f"{tokenizer_vocab_size} tokens: the general LLM and the SLM must share one tokenizer",
                    )

        if self.vocab_size is None:
            self.vocab_size = tokenizer_vocab_size

        await probe_completions(self, probe, probe_text)  # ids or text prompts (textprompt)
        return {"model": self.model, "remote_vocab_size": self.remote_vocab_size, "health": health,
                "prompt": self.prompt_mode, "echo_shift": self.echo_shift,
                "served_top_logprobs": self.served_top_logprobs}
