"""``/v1/completions`` logic: validate, call the backend, shape the answer.

Routing, auth, faults and metrics live in :mod:`gboost.server.app`; the
``logprobs`` wire format in :mod:`gboost.server.wire`.

Semantics worth knowing:

* ``prompt`` may be a string, a list of token ids, or a batch of either; each
  prompt yields ``n`` choices (index ``prompt_index * n + j``).
* ``max_tokens`` defaults to 16; ``null`` means "up to the context length";
  ``0`` is allowed (useful with ``echo`` to score a prompt).
  ``len(prompt) + max_tokens > max_model_len`` is a 400.
* ``logprobs=k`` returns the top-k of every position (plus the actual token).
  With ``echo`` the prompt positions are included (the first one is ``null``).
* Stop conditions: EOS, ``stop_token_ids`` and ``stop`` strings. A stop token
  stays in ``tokens``/``logprobs`` but not in ``text``; a stop string cuts
  ``text`` before it and ``tokens`` after the token that completed it.
  Single-token stop strings also stop generation early; longer ones are applied
  after generation.
* ``seed`` with ``n > 1`` uses ``seed + j`` for choice ``j`` (wrapped to 64 bits, as
  ``torch.Generator.manual_seed`` wraps seeds; see :data:`gboost.sampling.SEED_RANGE`).
* ``stream=true`` is answered by :mod:`gboost.server.streaming` on the same validation
  (:func:`prepare_completion`) and the same choice building.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Optional, Sequence

from gboost.llm.base import TokenLogprobs
from gboost.sampling import offset_seed

from .backend import CompletionBackend
from .errors import APIError
from .limits import refuse_too_long_text
from .schemas import CompletionRequest
from .sse import cancel_and_wait
from .wire import build_logprobs

__all__ = ["create_completion", "prepare_completion", "Prepared", "MAX_BATCH_PROMPTS"]

MAX_BATCH_PROMPTS = 256


@dataclass
class _Prompt:
    ids: list[int]
    text: Optional[str]  # the original string, when the prompt was text


async def _normalize_prompts(req: CompletionRequest, backend: CompletionBackend) -> list[_Prompt]:
    p = req.prompt
    if isinstance(p, str):
        raw: list = [p]
    elif len(p) == 0:
        raise APIError(400, "prompt must not be empty", param="prompt")
    elif isinstance(p[0], int):
        raw = [list(p)]
    else:
        raw = list(p)
    if len(raw) > MAX_BATCH_PROMPTS:
        raise APIError(400, f"at most {MAX_BATCH_PROMPTS} prompts per request, got {len(raw)}", param="prompt")
    for item in raw:  # a text that could never fit is refused before any prompt is tokenized
        if isinstance(item, str):
            refuse_too_long_text(item, backend, "prompt")
    out = []
    for item in raw:
        if isinstance(item, str):
            ids = await asyncio.to_thread(backend.encode_prompt, item)
            out.append(_Prompt(list(ids), item))
        else:
            out.append(_Prompt(list(item), None))
    return out


def _validate_ids(ids: Sequence[int], vocab_size: int, param: str) -> None:
    for t in ids:
        if not 0 <= t < vocab_size:
            raise APIError(400, f"token id {t} is out of range [0, {vocab_size})", param=param)


def _check_length(n_prompt: int, max_tokens: Optional[int], max_model_len: int) -> int:
    if n_prompt == 0:
        raise APIError(400, "prompt must not be empty (it encodes to zero tokens)", param="prompt")
    if max_tokens is None:
        max_tokens = max_model_len - n_prompt
        if max_tokens <= 0:
            raise APIError(
                400,
                f"This model's maximum context length is {max_model_len} tokens, "
                f"but the prompt has {n_prompt} tokens. Please shorten the prompt.",
                param="prompt",
                code="context_length_exceeded",
            )
    if n_prompt + max_tokens > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you requested "
            f"{n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} for the completion). "
            "Please reduce the length of the prompt or max_tokens.",
            param="prompt",
            code="context_length_exceeded",
        )
    return max_tokens


def _first_stop(text: str, stops: Sequence[str]) -> int:
    best = -1
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best < 0 or i < best):
            best = i
    return best


def _build_choice(
    backend: CompletionBackend,
    index: int,
    prompt: _Prompt,
    gen_ids: list[int],
    gen_rows: list[TokenLogprobs],
    prompt_rows: Optional[list[TokenLogprobs]],
    req: CompletionRequest,
    top_k: Optional[int],
    stop_id_set: set[int],
    stops: list[str],
) -> tuple[dict, int]:
    """Sync (runs in a worker thread): text, finish reason, logprobs of one choice."""
    finish = "length"
    kept = list(gen_ids)
    text_ids = kept
    if kept and kept[-1] in stop_id_set:
        finish = "stop"
        text_ids = kept[:-1]
    completion_text = backend.decode(text_ids) if text_ids else ""
    if stops:
        cut = _first_stop(completion_text, stops)
        if cut >= 0:
            finish = "stop"
            completion_text = completion_text[:cut]
            # Fewest tokens whose text contains a stop string (monotone in m).
            lo, hi = 1, len(text_ids)
            while lo < hi:
                mid = (lo + hi) // 2
                if _first_stop(backend.decode(text_ids[:mid]), stops) >= 0:
                    hi = mid
                else:
                    lo = mid + 1
            kept = kept[:lo]

    prompt_text = ""
    if req.echo:
        prompt_text = prompt.text if prompt.text is not None else backend.decode(prompt.ids)

    logprobs = None
    if top_k is not None:
        ids_out: list[int] = []
        rows_out: list[Optional[TokenLogprobs]] = []
        offsets: list[int] = []
        if req.echo:
            assert prompt_rows is not None
            ids_out.extend(prompt.ids)
            rows_out.append(None)
            rows_out.extend(prompt_rows[: len(prompt.ids) - 1])
            off = 0
            for t in prompt.ids:
                offsets.append(off)
                off += len(backend.decode([t]))
        ids_out.extend(kept)
        rows_out.extend(gen_rows[: len(kept)])
        off = len(prompt_text)
        for t in kept:
            offsets.append(off)
            off += len(backend.decode([t]))
        logprobs = build_logprobs(
            ids_out,
            rows_out,
            top_k,
            offsets,
            as_token_ids=req.return_tokens_as_token_ids is not False,
            token_str=lambda t: backend.decode([t]),
        )

    choice = {
        "index": index,
        "text": prompt_text + completion_text,
        "logprobs": logprobs,
        "finish_reason": finish,
        "stop_reason": None,
    }
    return choice, len(kept)


@dataclass
class Prepared:
    """A validated request: prompts, per-prompt token budgets and the stop rules."""
    prompts: list[_Prompt]
    max_tokens: list[int]
    top_k: Optional[int]
    stops: list[str]
    stop_ids: list[int]        # end generation (EOS, stop_token_ids, single-token stop strings)
    stop_id_set: set[int]      # dropped from `text` (EOS, stop_token_ids)

    def choices(self, n: int):
        """(choice index, prompt, max_tokens, seed offset) of every choice, in index order."""
        for i, (p, mt) in enumerate(zip(self.prompts, self.max_tokens)):
            for j in range(n):
                yield i * n + j, p, mt, j


async def prepare_completion(
    req: CompletionRequest, backend: CompletionBackend, model_name: str, max_logprobs: int
) -> Prepared:
    """Validate ``req`` against ``backend``; raises :class:`APIError` for invalid ones."""
    bad = req.unsupported()
    if bad:
        raise APIError(400, f"'{bad}' is not supported by this server", param=bad)
    if req.model is not None and req.model != model_name:
        raise APIError(404, f"The model `{req.model}` does not exist. Served: `{model_name}`.", param="model",
                       code="model_not_found")
    if req.logprobs is not None and req.logprobs > max_logprobs:
        raise APIError(400, f"logprobs must be <= {max_logprobs}, got {req.logprobs}", param="logprobs")
    top_k = None if req.logprobs is None else min(req.logprobs, backend.vocab_size)

    prompts = await _normalize_prompts(req, backend)
    max_tokens_per: list[int] = []
    for p in prompts:
        _validate_ids(p.ids, backend.vocab_size, "prompt")
        max_tokens_per.append(_check_length(len(p.ids), req.max_tokens, backend.max_model_len))

    stops: list[str] = []
    if req.stop is not None:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        stops = [s for s in stops if s]
    stop_ids = list(dict.fromkeys(list(backend.eos_token_ids) + list(req.stop_token_ids or [])))
    _validate_ids(stop_ids, backend.vocab_size, "stop_token_ids")
    for s in stops:  # single-token stop strings also stop generation early
        enc = await asyncio.to_thread(backend.encode, s)
        if len(enc) == 1 and enc[0] not in stop_ids:
            stop_ids.append(enc[0])
    # Tokens whose text is dropped from `text` (EOS, stop_token_ids). Single-token
    # stop strings are cut by the string search instead.
    stop_id_set = set(backend.eos_token_ids) | set(req.stop_token_ids or [])
    return Prepared(prompts, max_tokens_per, top_k, stops, stop_ids, stop_id_set)


async def create_completion(
    req: CompletionRequest, backend: CompletionBackend, model_name: str, max_logprobs: int
) -> dict:
    """Answer a validated request; raises :class:`APIError` for invalid ones."""
    if req.stream:
        raise APIError(400, "stream=true is answered by gboost.server.streaming", param="stream")
    prep = await prepare_completion(req, backend, model_name, max_logprobs)
    top_k = prep.top_k

    async def one(index: int, p: _Prompt, max_tokens: int, j: int) -> tuple[dict, int]:
        prompt_rows = None
        if req.echo and top_k is not None:
            prompt_rows = list(await backend.prompt_logprobs(p.ids, top_k))
            if len(prompt_rows) != len(p.ids):
                raise RuntimeError(f"backend returned {len(prompt_rows)} prompt rows for {len(p.ids)} tokens")
        gen_ids: list[int] = []
        gen_rows: list[TokenLogprobs] = []
        if max_tokens > 0:
            seed = offset_seed(req.seed, j)
            # logprobs=0 still needs each sampled token's log-prob: ask for >= 1 entry
            # (a backend may return no rows for top_k_logprobs=0, meaning "not requested").
            gen_ids, gen_rows = await backend.generate(
                p.ids, max_tokens, req.temperature, req.top_p, seed, prep.stop_ids,
                0 if top_k is None else max(top_k, 1)
            )
            gen_ids = [int(t) for t in gen_ids]
            gen_rows = list(gen_rows)
            if top_k is not None and len(gen_rows) < len(gen_ids):
                raise RuntimeError(f"backend returned {len(gen_rows)} rows for {len(gen_ids)} generated tokens")
        return await asyncio.to_thread(
            _build_choice, backend, index, p, gen_ids, gen_rows, prompt_rows, req, top_k, prep.stop_id_set,
            prep.stops
        )

    tasks = [asyncio.ensure_future(one(*c)) for c in prep.choices(req.n)]
    try:
        results = await asyncio.gather(*tasks)
    finally:  # a failed choice (or a cancelled request) leaves no other generation running
        await cancel_and_wait(*tasks)
    choices = [c for c, _ in results]
    n_completion = sum(n for _, n in results)
    n_prompt = sum(len(p.ids) for p in prep.prompts)
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": choices,
        "usage": usage(n_prompt, n_completion),
    }


def usage(n_prompt: int, n_completion: int) -> dict:
    return {"prompt_tokens": n_prompt, "completion_tokens": n_completion, "total_tokens": n_prompt + n_completion}
