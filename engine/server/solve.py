"""``POST /v1/solve``: G-Boost (or a baseline) over HTTP, as one JSON object or a stream of steps.

Request body (JSON object; unknown keys are refused)::

    {"question": "...",            # required, non-empty
     "method": "gboost",           # optional: gboost | slm | llm | fusion | bon | beam | rsd
     "seed": 0,                    # optional, an integer in [-2**63, 2**64 - 1]
     "config": {"num_simulations": 8, ...},   # optional SearchConfig overrides (validated)
     "stream": false,              # true: Server-Sent Events, one per decided step
     "include_tree": false}        # true: the whole search tree in the result

The reply without ``stream`` is :meth:`SolveResult.to_dict` plus ``"object": "solve.result"``.
With ``stream`` it is ``text/event-stream``: ``data: {"object": "solve.step", "index", "text",
"action", "reward"}`` per step as it is decided (for gboost/bon/beam, once the search has
chosen its path), then ``data: {"object": "solve.result", ...}``, then ``data: [DONE]`` --
the framing OpenAI-style clients already parse.  An error after the stream started is sent
as ``data: {"error": {...}}`` before ``[DONE]``.

A request's ``config`` may change the search and sampling settings but never raise what the
server allows: the cost limits in ``CAPPED`` stay at or below the server's values (and a server
LLM budget cannot be lifted to ``null``), and ``FIXED`` keys (a regex run on every step, the
step delimiter) cannot be set at all.  A config this stack cannot run (an LLM method without a
general LLM) is a 400 before any work starts.

A client that disconnects cancels its search, streamed or not: the solve task is cancelled, and
``solve`` releases every KV state it held (tested).  Errors: a bad body or config -> 400; a
question longer than the models accept -> 400; a full KV pool -> 503 with ``Retry-After`` (the
request loses nothing: its states are released, and it can be retried); a failing general LLM
under ``on_llm_fault=fail`` -> 502.  With ``stream``, an error before the first step still gets
its own status; later ones become an error event.
"""
from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gboost.kv.block_pool import KVPoolExhausted
from gboost.llm.base import LLMError
from gboost.positions import PromptTooLong
from gboost.search.actions import TABLE
from gboost.search.api import solve
from gboost.search.config import ConfigError, SearchConfig

from .errors import APIError
from .limits import must_be_too_long, question_byte_limit
from .schemas import Seed
from .sse import SSE_DONE, cancel_and_wait, sse_event

__all__ = ["Solver", "SolveRequest", "handle_solve", "CAPPED", "FIXED"]

#: per-request values above the server's are refused (they bound what one request may cost)
CAPPED = ("num_simulations", "leaf_parallelism", *(a.width_field for a in TABLE if a.width_field), "max_depth",
          "max_step_tokens", "beam_width", "bon_n", "rsd_chains", "max_llm_tokens", "max_llm_calls", "max_llm_faults")
#: never set per request: a client regex runs on every step (ReDoS), the delimiter shapes the PRM
FIXED = ("answer_pattern", "step_delimiter")

log = logging.getLogger("gboost.server")


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # types as the schema says: no coercion

    question: str = Field(min_length=1)
    method: Optional[str] = None
    seed: Seed = None
    config: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    include_tree: bool = False
    #: a LoRA adapter on the SLM's resident model (serve --lora-modules) for this request's SLM
    adapter: Optional[str] = None


@dataclass
class Solver:
    """What ``/v1/solve`` runs on: a StepExecutor (e.g. ``Stack.executor``) and the server's config."""
    executor: Any
    config: SearchConfig
    solves: int = 0           # finished solve requests (metrics)
    in_flight: int = 0        # searches running: counted from start to the end of their task
    cancelled: int = 0        # searches cancelled before they ended (client gone, server shutting down)
    question_bytes: Optional[int] = None  # a question above this must be too long (limits.question_byte_limit)

    def __post_init__(self) -> None:
        if self.question_bytes is None:
            self.question_bytes = question_byte_limit(self.executor)

    def executor_for(self, req: SolveRequest):
        """The executor of a request: the server's, or a view whose SLM runs the request's adapter."""
        if req.adapter is None:
            return self.executor
        if not hasattr(self.executor, "with_adapter"):
            raise APIError(400, "this server's executor takes no LoRA adapters", param="adapter")
        try:
            return self.executor.with_adapter(req.adapter)
        except KeyError as e:
            raise APIError(404, f"The adapter `{req.adapter}` does not exist: {e.args[0]}", param="adapter",
                           code="model_not_found") from None
        except ValueError as e:  # e.g. the server's value head was not trained on that adapter's rows
            raise APIError(400, f"adapter `{req.adapter}`: {e}", param="adapter") from None

    def start(self, question: str, cfg: SearchConfig, on_step=None, executor=None) -> asyncio.Task:
        self.in_flight += 1
        task = asyncio.create_task(solve(question, executor or self.executor, cfg, on_step=on_step))
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task) -> None:
        self.in_flight -= 1
        if task.cancelled():
            self.cancelled += 1

    def request_config(self, req: SolveRequest) -> SearchConfig:
        changes = dict(req.config)
        if req.method is not None:
            changes["method"] = req.method
        if req.seed is not None:
            changes["seed"] = req.seed
        try:
            for key in FIXED:
                if key in changes:
                    raise ConfigError(f"{key} is fixed by the server and cannot be set per request")
            cfg = self.config.replace(**changes)
            for key in CAPPED:
                mine, theirs = getattr(self.config, key), getattr(cfg, key)
                if mine is not None and (theirs is None or theirs > mine):
                    raise ConfigError(f"{key}={theirs!r} exceeds this server's limit of {mine}")
            if hasattr(self.executor, "check_config"):
                self.executor.check_config(cfg)
            return cfg
        except (ConfigError, TypeError) as e:
            raise APIError(400, f"invalid config: {e}", param="config") from None


def parse_request(data: Any) -> SolveRequest:
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        return SolveRequest.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "body"
        msg = "field required" if first.get("type") == "missing" else \
            first.get("msg", "invalid value").removeprefix("Value error, ")
        raise APIError(400, f"invalid request: {field}: {msg}", param=field) from None


def _api_error(exc: BaseException) -> APIError:
    """The HTTP answer for an exception raised by a search (states are already released)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLong):
        return APIError(400, str(exc), param="question", code="question_too_long")
    if isinstance(exc, ConfigError):
        return APIError(400, str(exc), param="config")
    if isinstance(exc, KVPoolExhausted):
        return APIError(503, f"server busy: {exc}; retry later", code="kv_pool_exhausted",
                        headers={"Retry-After": "1"})
    if isinstance(exc, LLMError):
        return APIError(502, f"general LLM failed: {exc}", code="llm_error")
    log.error("solve failed", exc_info=exc)
    return APIError(500, "internal server error", type="server_error")


def _answer(exc: BaseException) -> APIError:
    """``_api_error(exc)``, and the search's frames in ``exc``'s traceback cleared: their locals (a
    question's token lists, 8 MB per million tokens) otherwise lived on in reference cycles (exception,
    traceback, frame, task) until a full garbage collection, which under load came late (issue 37)."""
    err = _api_error(exc)
    traceback.clear_frames(exc.__traceback__)
    return err


def _result_dict(res, include_tree: bool) -> dict[str, Any]:
    return {"object": "solve.result", **res.to_dict(include_tree=include_tree)}


async def handle_solve(solver: Solver, data: Any, is_disconnected: Callable[[], Awaitable[bool]] | None = None):
    """Validate ``data`` and run the search: a dict (JSON reply) or an async iterator of SSE bytes.
    ``is_disconnected`` (the HTTP request's) lets a non-streamed search stop when its client leaves."""
    req = parse_request(data)
    if must_be_too_long(req.question, solver.question_bytes):  # refused before it is tokenized
        raise APIError(400, f"the question is longer than {solver.question_bytes} bytes, more than the model's "
                            "positions can hold: it exceeds the model's context",
                       param="question", code="question_too_long")
    cfg = solver.request_config(req)
    ex = solver.executor_for(req)
    if req.stream:
        return await _start_stream(solver, req, cfg, is_disconnected, ex)
    task = solver.start(req.question, cfg, executor=ex)
    try:
        if not await _until(task, is_disconnected):  # the client left: free the states now
            raise _gone()
        if task.exception() is not None:  # raised here, not in an except: no __context__ to keep it
            raise _answer(task.exception())
        res = task.result()
    finally:
        await cancel_and_wait(task)
    solver.solves += 1
    return _result_dict(res, req.include_tree)


DISCONNECT_POLL_S = 0.25


def _gone(what: str = "search") -> APIError:
    # nobody reads it; 499 (nginx's "client closed request") keeps the logs and metrics honest
    return APIError(499, f"client closed the request; its {what} was cancelled", code="client_closed")


async def _until(fut: asyncio.Future, is_disconnected) -> bool:
    """Wait for ``fut``; False as soon as the client is found gone (the server does not cancel a
    handler whose client left, so a search would otherwise run on, holding its KV blocks)."""
    while not fut.done():
        await asyncio.wait({fut}, timeout=DISCONNECT_POLL_S)
        if not fut.done() and is_disconnected is not None and await is_disconnected():
            return False
    return True


async def _start_stream(solver: Solver, req: SolveRequest, cfg: SearchConfig,
                        is_disconnected=None, executor=None) -> AsyncIterator[bytes]:
    """Start the search and wait for its first event, so that an error raised before any step
    (over-long question, full pool) is answered with its own HTTP status."""
    queue: asyncio.Queue = asyncio.Queue()

    def on_step(step: dict) -> None:
        queue.put_nowait({"object": "solve.step", **step})

    task = solver.start(req.question, cfg, on_step, executor)
    task.add_done_callback(lambda _t: queue.put_nowait(None))
    getter = asyncio.ensure_future(queue.get())
    try:
        if not await _until(getter, is_disconnected):  # gboost emits nothing until it has chosen
            raise _gone()
        first = getter.result()
    except BaseException:
        await cancel_and_wait(getter, task)
        raise
    if first is None and task.exception() is not None:
        raise _answer(task.exception())
    return _stream(solver, req, task, queue, first)


async def _stream(solver: Solver, req: SolveRequest, task: asyncio.Task, queue: asyncio.Queue,
                  item: dict | None) -> AsyncIterator[bytes]:
    try:
        while item is not None:
            yield sse_event(item)
            item = await queue.get()
        try:
            res = task.result()
        except Exception as e:
            yield sse_event(_answer(e).body())
        else:
            solver.solves += 1
            yield sse_event(_result_dict(res, req.include_tree))
        yield SSE_DONE
    finally:
        await cancel_and_wait(task)  # the client went away: cancelling solve releases its states
