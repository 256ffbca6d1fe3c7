"""``/v1/completions`` with ``stream: true``: Server-Sent Events, OpenAI's chunk format.

Each chunk is ``data: {"id", "object": "text_completion", "created", "model", "choices":
[{"index", "text": <new text>, "logprobs": null | {...}, "finish_reason": null | "stop" | "length"}]}``;
every choice ends with one chunk carrying its ``finish_reason``; with
``stream_options.include_usage`` a last chunk has ``"choices": []`` and ``usage``; then
``data: [DONE]``.  The concatenated text of a choice equals the non-streamed ``text`` for the
same request and seed (tested): text that could still become a stop string, or an incomplete
UTF-8 character, is held back until it is decided.  A stop string ends its choice at once
(its generation is cancelled).  A client that disconnects cancels every generation of the
request.  With ``logprobs``, a chunk carries the entries (tokens, token_logprobs, top_logprobs,
text_offset, ...) of the tokens whose text it completes, and the last chunk the rest: concatenated,
they equal the non-streamed ``logprobs`` (tested).  ``echo`` is refused with stream=true (400).
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import AsyncIterator

from gboost.sampling import offset_seed

from .backend import BackendInputError, CompletionBackend
from .completions import Prepared, _build_choice, _first_stop, prepare_completion, usage
from .wire import build_logprobs
from .errors import APIError, error_body
from .schemas import CompletionRequest
from .sse import SSE_DONE, cancel_and_wait, sse_event

__all__ = ["stream_completion"]

log = logging.getLogger("gboost.server")


class _Choice:
    """Text released so far for one choice, and what may be released next."""

    def __init__(self, index: int, prep: Prepared):
        self.index, self.prep = index, prep
        self.ids: list[int] = []
        self.rows: list = []   # the tokens' rows, when logprobs were asked for
        self.sent_text = ""    # text already sent
        self.done = False
        self.holdback = max((len(s) for s in prep.stops), default=1) - 1
        self.n_lp = 0          # tokens whose logprobs were sent
        self.offset = 0        # text_offset of token n_lp (sum of its predecessors' decoded lengths)

    def text(self, backend: CompletionBackend) -> str:
        ids = self.ids[:-1] if self.ids and self.ids[-1] in self.prep.stop_id_set else self.ids
        return backend.decode(ids) if ids else ""

    def releasable(self, text: str) -> tuple[str, bool]:
        """(new text safe to send, whether a stop string ended the choice)."""
        if self.prep.stops and _first_stop(text, self.prep.stops) >= 0:
            return "", True  # finish() sends the rest, cut at the stop, from the final text
        sent = len(self.sent_text)
        end = len(text) - self.holdback  # a stop string may still complete across this tail
        while end > sent and text[end - 1] == "\ufffd":  # an unfinished UTF-8 character
            end -= 1
        return text[sent:max(end, sent)], False

    def covered(self, backend: CompletionBackend) -> int:
        """Tokens whose whole text has been sent (a stop id's text never is: the last chunk)."""
        k = self.n_lp
        while k < len(self.ids) and self.ids[k] not in self.prep.stop_id_set:
            t = backend.decode(self.ids[:k + 1])
            if len(t) > len(self.sent_text) or t.endswith("\ufffd"):
                break
            k += 1
        return k

    def logprobs_upto(self, backend: CompletionBackend, m: int, req: CompletionRequest) -> dict:
        """The logprobs entries of tokens [n_lp, m), with the same offsets the plain answer has."""
        m = min(m, len(self.rows))  # mid-stream, only tokens whose row has come
        ids, offsets = self.ids[self.n_lp:m], []
        for t in ids:
            offsets.append(self.offset)
            self.offset += len(backend.decode([t]))
        lp = build_logprobs(ids, self.rows[self.n_lp:m], self.prep.top_k, offsets,
                            as_token_ids=req.return_tokens_as_token_ids is not False,
                            token_str=lambda t: backend.decode([t]))
        self.n_lp = max(self.n_lp, m)
        return lp


async def stream_completion(req: CompletionRequest, backend: CompletionBackend, model_name: str,
                            max_logprobs: int, on_done=None, shape=None) -> AsyncIterator[bytes]:
    """Validate (raising APIError before anything is sent), then return the SSE byte stream.
    ``on_done(prompt_tokens, completion_tokens)`` is called once the stream has finished.
    ``shape(chunk) -> dict``, when given, rewrites every chunk before it is sent (the chat route's
    ``delta`` chunks are these chunks, reshaped); in-band errors are sent as they are."""
    if req.echo:
        raise APIError(400, "echo is not supported with stream=true", param="echo")
    prep = await prepare_completion(req, backend, model_name, max_logprobs)
    return _events(req, backend, model_name, prep, on_done, shape or (lambda c: c))


async def _events(req, backend, model_name, prep: Prepared, on_done, shape) -> AsyncIterator[bytes]:
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model_name}
    queue: asyncio.Queue = asyncio.Queue()
    choices: dict[int, _Choice] = {}
    tasks: dict[int, asyncio.Task] = {}

    async def run(index, p, max_tokens, j):
        if max_tokens == 0:
            return [], []
        seed = offset_seed(req.seed, j)
        ids, rows = await backend.generate(p.ids, max_tokens, req.temperature, req.top_p, seed, prep.stop_ids,
                                           0 if prep.top_k is None else max(prep.top_k, 1),  # 0: not asked
                                           on_token=lambda t, row: queue.put_nowait(("token", index, (t, row))))
        if prep.top_k is not None and len(rows) < len(ids):
            raise RuntimeError(f"backend returned {len(rows)} logprob rows for {len(ids)} tokens")
        return [int(t) for t in ids], list(rows)

    for index, p, mt, j in prep.choices(req.n):
        choices[index] = _Choice(index, prep)
        tasks[index] = asyncio.create_task(run(index, p, mt, j))
        tasks[index].add_done_callback(lambda t, i=index: queue.put_nowait(("end", i, t)))

    def chunk(index: int, text: str, finish: str | None, logprobs: dict | None = None) -> bytes:
        return sse_event(shape({**head, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                "finish_reason": finish, "stop_reason": None}]}))

    def last_logprobs(c: _Choice, n: int) -> dict | None:
        return None if prep.top_k is None else c.logprobs_upto(backend, n, req)

    n_completion, open_ = 0, len(choices)

    async def finish(c: _Choice, reason: str | None) -> bytes:
        """The last chunk of a choice: what the non-streamed answer says, minus what was sent."""
        final, n = await asyncio.to_thread(_build_choice, backend, c.index, prep.prompts[c.index // req.n], c.ids,
                                           [], None, req, None, prep.stop_id_set, prep.stops)
        if not final["text"].startswith(c.sent_text):  # cannot happen with a prefix-stable decoder
            log.warning("streamed text of choice %d is not a prefix of its final text", c.index)
        nonlocal n_completion, open_
        c.done, open_, n_completion = True, open_ - 1, n_completion + n
        lp = await asyncio.to_thread(last_logprobs, c, n)
        return chunk(c.index, final["text"][len(c.sent_text):], reason or final["finish_reason"], lp)

    try:
        while open_:
            events = [await queue.get()]
            while not queue.empty():  # decode once per choice for all tokens that arrived meanwhile
                events.append(queue.get_nowait())
            touched: dict[int, _Choice] = {}
            for kind, index, item in events:
                c = choices[index]
                if c.done:
                    continue
                if kind == "token":
                    c.ids.append(item[0])
                    if item[1] is not None:
                        c.rows.append(item[1])
                    touched[index] = c
                    continue
                touched.pop(index, None)
                if item.cancelled():
                    raise RuntimeError(f"generation of choice {index} was cancelled")
                if item.exception() is not None:
                    raise item.exception()
                ids, rows = item.result()
                c.ids, c.rows = ids, rows[:len(ids)]
                yield await finish(c, None)
            for index, c in touched.items():
                new, stopped = c.releasable(await asyncio.to_thread(c.text, backend))
                if stopped:  # the stop string is in: the choice is final, its generation can end
                    tasks[index].cancel()
                    yield await finish(c, "stop")
                elif new:
                    c.sent_text += new
                    lp = None
                    if prep.top_k is not None:
                        lp = await asyncio.to_thread(lambda c=c: c.logprobs_upto(backend, c.covered(backend), req))
                    yield chunk(index, new, None, lp)
        n_prompt = sum(len(p.ids) for p in prep.prompts)
        if req.stream_options and req.stream_options.include_usage:
            yield sse_event(shape({**head, "choices": [], "usage": usage(n_prompt, n_completion)}))
        if on_done is not None:
            on_done(n_prompt, n_completion)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # headers are sent: report in-band, as OpenAI-style servers do
        log.error("streamed completion failed", exc_info=e)
        msg = str(e) if isinstance(e, BackendInputError) else "internal server error"
        yield sse_event(error_body(msg, "server_error"))
    finally:
        await cancel_and_wait(*tasks.values())  # client gone or stream over: no generation outlives it
    yield SSE_DONE
