"""Text prompts for a completions endpoint that refuses token ids (llama-cpp-python's server).

The SLM and the general LLM share one tokenizer, so the ids of a context can be sent as their text
and the server tokenises it again. The rule, in one place (:meth:`TextPrompts.seen`): **in text
mode the LLM's row after ``ids`` is its row after ``encode(decode(ids))``**, the tokens a text
prompt makes the server see. Where the SLM's ids are the canonical tokenisation of their text (the
usual case) that is exactly the row after ``ids``. Where they are not (the SLM sampled a split
that re-encoding merges, e.g. ``" 4" "5"`` for ``" 45"``) the LLM reads the same text in its
canonical tokens: its distribution over what follows that text, which is what a text-only server
can give at all.

``score(prefix, draft)`` keeps that rule position by position, so speculative verification in text
mode samples exactly what token-by-token (exact) text-mode fusion samples. One echo request over
the whole text gives the row at every position ``c`` of ``seen(prefix + draft)``; draft position
``j`` takes the echo row at ``len(seen(ids[:P+j]))`` when ``seen(ids[:P+j])`` is a prefix of the
whole text's tokens. Where it is not (a boundary that re-encoding moves, or a row the echo lacks)
that position gets a next-token request of its own (``stats["text_extra_requests"]``), so a row
is never taken from a neighbouring position.

Where a server's echo is slow (llama-cpp-python sorts the vocabulary in Python at each echoed
position), the probe finds it and ``score`` sends one next-token request per position instead.

``echo_shift`` is how far a server's echoed rows sit from OpenAI's convention (``top_logprobs[i]``
is the distribution of token ``i``): llama-cpp-python's are one position late on a model without
a BOS token (its entry ``i`` is the distribution of token ``i + 1``). The start-up probe measures it
(:func:`measure_echo_shift`) by comparing the echo with a next-token request.
"""
from __future__ import annotations

import asyncio
import time
from typing import Optional

from .base import LLMError

__all__ = ["TextPrompts", "PROMPT_MODES", "measure_echo_shift", "score_text", "probe_completions"]

PROMPT_MODES = ("auto", "ids", "text")
#: an echo of the probe may cost this many next-token requests before score() stops using echo
ECHO_COST_LIMIT = 4.0


class TextPrompts:
    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def seen(self, ids: list[int]) -> list[int]:
        """What a server tokenising ``decode(ids)`` reads (special tokens parsed, no BOS added)."""
        return self.tokenizer.encode(self.text(ids))


def _row_at(rows: list, c: int, shift: int):
    """The echo's row for position ``c`` (the distribution of token ``c``), or None."""
    i = c - shift
    return rows[i] if 0 <= i < len(rows) else None


async def score_text(llm, prefix: list[int], draft: list[int]) -> list:
    """``len(draft) + 1`` rows by :class:`TextPrompts`' rule (module docstring)."""
    tp, P, D = llm.text_prompts, len(prefix), len(draft)
    ids = prefix + draft
    canon = tp.seen(ids)
    seen = [tp.seen(ids[: P + j]) for j in range(D)] + [canon]
    rows: list = []
    if llm.text_echo:
        data = await llm._request("POST", llm.COMPLETIONS_PATH, llm._payload(ids, echo=True, k=llm.top_logprobs))
        rows, _, _ = llm._parse(data, known_ids=canon)
    out: list = []
    missing: list[int] = []
    for j, s in enumerate(seen):
        row = _row_at(rows, len(s), llm.echo_shift) if canon[: len(s)] == s else None
        out.append(row)
        if row is None:
            missing.append(j)
    if missing:
        llm.stats["text_extra_requests"] += len(missing) if llm.text_echo else 0
        extra = await asyncio.gather(*(llm._next_logprobs(ids[: P + j]) for j in missing))
        for j, row in zip(missing, extra):
            out[j] = row
    return out


async def measure_echo_shift(llm, probe: list[int]) -> Optional[int]:
    """0 or 1: which echo row equals the next-token row after the whole ``probe`` (None: neither,
    the endpoint's echo rows cannot be used). Compares the top entry's id and log-prob."""
    canon = llm.text_prompts.seen(probe)
    t0 = time.perf_counter()
    echo, _, _ = llm._parse(await llm._request("POST", llm.COMPLETIONS_PATH, llm._payload(probe, echo=True, k=1),
                                              log_retries=False), known_ids=canon)
    t1 = time.perf_counter()
    nxt, _, _ = llm._parse(await llm._request("POST", llm.COMPLETIONS_PATH, llm._payload(probe, echo=False, k=1),
                                             log_retries=False))
    t2 = time.perf_counter()
    # llama-cpp-python sorts the whole vocabulary in Python at every echoed position: an echo over
    # a long context takes minutes there. Where the probe's echo costs more than a few next-token
    # requests, score() asks position by position instead (same rows, by the same rule).
    llm.text_echo = (t1 - t0) <= ECHO_COST_LIMIT * max(t2 - t1, 1e-3)
    if not nxt or nxt[0] is None:
        return None
    want_id, want_lp = int(nxt[0].ids[0]), float(nxt[0].logprobs[0])
    for shift in (0, 1):
        row = _row_at(echo, len(canon), shift)
        if row is not None and want_id in row.ids.tolist():
            got = float(row.logprobs[row.ids.tolist().index(want_id)])
            if abs(got - want_lp) <= 1e-3 + 1e-3 * abs(want_lp):
                return shift
    return None


def _mismatch(msg: str) -> LLMError:
    return LLMError("vocab_mismatch", msg + ": the general LLM and the SLM do not share a tokenizer")


async def _probe_ids(llm, probe: list[int], probe_text: Optional[str]) -> None:
    data = await llm._request("POST", llm.COMPLETIONS_PATH, llm._payload(probe, echo=True, k=llm.top_logprobs),
                              log_retries=False)
    rows, tok_ids, text = llm._parse(data)
    if tok_ids is not None and tok_ids[: len(probe)] != probe:
        raise LLMError("vocab_mismatch", f"the endpoint echoed token ids {tok_ids[: len(probe)]} for the probe "
                       f"{probe}: it does not use the ids it is sent (different tokenizer or re-tokenised prompt)")
    if probe_text is not None and not text.startswith(probe_text):
        raise _mismatch(f"the endpoint decodes the probe ids {probe} to {text[: len(probe_text) + 20]!r}, "
                        f"the local tokenizer to {probe_text!r}")
    if len(rows) < len(probe) + 1 or any(r is None for r in rows[1: len(probe) + 1]):
        raise llm._malformed("the endpoint does not return prompt log-probs with echo=true; score() needs them")
    llm.served_top_logprobs = max(len(r) for r in rows if r is not None)


async def _probe_text(llm, probe: list[int]) -> None:
    canon = llm.text_prompts.seen(probe)
    data = await llm._request("POST", llm.COMPLETIONS_PATH, llm._payload(probe, echo=True, k=llm.top_logprobs),
                              log_retries=False)
    rows, _, text = llm._parse(data, known_ids=canon)
    lp = data["choices"][0]["logprobs"]
    toks = [llm.strings.text_of[int(t[9:])] if str(t).startswith("token_id:") else str(t)
            for t in (lp.get("tokens") if isinstance(lp.get("tokens"), list) else [])]
    mine = [llm.strings.text_of[c] for c in canon][: len(toks)]
    if not text.startswith(llm.text_prompts.text(probe)) or (toks and [str(t) for t in toks[: len(mine)]] != mine):
        raise _mismatch(f"the endpoint reads the probe text as tokens {toks[: len(canon)]}, the local tokenizer "
                        f"as {mine}")
    shift = await measure_echo_shift(llm, probe)
    if shift is None:
        raise llm._malformed("no echoed row matches the next-token row: the endpoint's echo log-probs are unusable")
    llm.echo_shift = shift
    llm.served_top_logprobs = max((len(r) for r in rows if r is not None), default=0)


async def probe_completions(llm, probe: list[int], probe_text: Optional[str]) -> None:
    """The start-up probe of a completions endpoint: token ids (``prompt="ids"``), text, or ids and
    then text when the endpoint refuses ids (``"auto"``: a 4xx, or a 5xx that is a validation error).
    Sets ``llm.prompt_mode`` and a one-line ``llm.prompt_note`` saying what was chosen and why."""
    asked, refused = llm.prompt_mode, None
    if asked in ("auto", "ids"):
        llm.prompt_mode = "ids"
        try:
            await _probe_ids(llm, probe, probe_text)
            llm.prompt_note = "prompts as token ids" + (" (the endpoint takes them)" if asked == "auto" else "")
        except LLMError as e:
            if asked == "ids" or e.kind != "http_4xx" or e.status in (401, 403, 404):
                raise
            refused = e
    if llm.prompt_mode == "ids" and refused is None:
        _note_cap(llm)
        return
    llm.prompt_mode = "text"
    try:
        await _probe_text(llm, probe)
    except LLMError as e:
        if refused is None:
            raise
        raise LLMError(e.kind, f"{refused.message}; and as text: {e.message}", status=e.status) from None
    why = f" (token ids refused: field {refused.field!r}, HTTP {refused.status})" if refused else ""
    how = f"echo rows (shift {llm.echo_shift})" if llm.text_echo else "one request per position (echo too slow)"
    llm.prompt_note = f"prompts as text{why}; re-encoding checked per call; scoring by {how}"
    _note_cap(llm)


def _note_cap(llm) -> None:
    """A server that returns fewer top_logprobs than asked (its own cap) narrows the rows fusion has."""
    got = llm.served_top_logprobs
    if got is not None and got < llm.top_logprobs:
        llm.prompt_note += f"; top_logprobs capped at {got} of {llm.top_logprobs} asked"
