"""``POST /v1/solve``: G-Boost (or a baseline) over HTTP, as one JSON object or a stream of steps.

Request body (JSON object; unknown keys are refused)::

    {"question": "...",            # required, non-empty
     "method": "gboost",           # optional: gboost | slm | llm | fusion | bon | beam | rsd
     "seed": 0,                    # optional
     "config": {"num_simulations": 8, ...},   # optional SearchConfig overrides (validated)
     "stream": false,              # true: Server-Sent Events, one per decided step
     "include_tree": false}        # true: the whole search tree in the result

The reply without ``stream`` is :meth:`SolveResult.to_dict` plus ``"object": "solve.result"``.
With ``stream`` it is ``text/event-stream``: ``data: {"object": "solve.step", "index", "text",
"action", "reward"}`` per step as it is decided (for gboost/bon/beam, once the search has
chosen its path), then ``data: {"object": "solve.result", ...}``, then ``data: [DONE]`` --
the framing OpenAI-style clients already parse.  An error after the stream started is sent
as ``data: {"error": {...}}`` before ``[DONE]``.

A client that disconnects cancels its search: the solve task is cancelled, and ``solve``
releases every KV state it held (tested).  Errors: a bad body or config -> 400; a question
longer than the models accept -> 400; a full KV pool -> 503 with ``Retry-After`` (the
request loses nothing: its states are released, and it can be retried); a failing general
LLM under ``on_llm_fault=fail`` -> 502.
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.kv.block_pool import KVPoolExhausted
from engine.llm.base import LLMError
from engine.runner import PromptTooLong
from engine.search.api import solve
from engine.search.config import ConfigError, SearchConfig

from .errors import APIError

__all__ = ["Solver", "SolveRequest", "handle_solve"]

log = logging.getLogger("engine.server")


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1)
    method: Optional[str] = None
    seed: Optional[int] = None
    config: dict[str, Any] = Field(default_factory=dict)
    stream: bool = False
    include_tree: bool = False


@dataclass
class Solver:
    """What ``/v1/solve`` runs on: a StepBackend (e.g. ``Stack.backend``) and the server's config."""
    backend: Any
    config: SearchConfig
    solves: int = 0           # finished solve requests (metrics)
    in_flight: int = 0

    def request_config(self, req: SolveRequest) -> SearchConfig:
        changes = dict(req.config)
        if req.method is not None:
            changes["method"] = req.method
        if req.seed is not None:
            changes["seed"] = req.seed
        try:
            return self.config.replace(**changes)
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
        msg = "field required" if first.get("type") == "missing" else first.get("msg", "invalid value")
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


def _result_dict(res, include_tree: bool) -> dict[str, Any]:
    return {"object": "solve.result", **res.to_dict(include_tree=include_tree)}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, allow_nan=False, separators=(",", ":")).encode() + b"\n\n"


async def handle_solve(solver: Solver, data: Any):
    """Validate ``data`` and run the search: a dict (JSON reply) or an async iterator of SSE bytes."""
    req = parse_request(data)
    cfg = solver.request_config(req)
    if not req.stream:
        solver.in_flight += 1
        try:
            res = await solve(req.question, solver.backend, cfg)
        except Exception as e:
            raise _api_error(e) from None
        finally:
            solver.in_flight -= 1
        solver.solves += 1
        return _result_dict(res, req.include_tree)
    return _stream(solver, req, cfg)


async def _stream(solver: Solver, req: SolveRequest, cfg: SearchConfig) -> AsyncIterator[bytes]:
    queue: asyncio.Queue = asyncio.Queue()

    def on_step(step: dict) -> None:
        queue.put_nowait({"object": "solve.step", **step})

    solver.in_flight += 1
    task = asyncio.create_task(solve(req.question, solver.backend, cfg, on_step=on_step))
    task.add_done_callback(lambda _t: queue.put_nowait(None))
    try:
        while (item := await queue.get()) is not None:
            yield _sse(item)
        try:
            res = task.result()
        except Exception as e:
            err = _api_error(e)
            yield _sse({"error": {"message": err.message, "type": err.type, "param": err.param,
                                  "code": err.code}})
        else:
            solver.solves += 1
            yield _sse(_result_dict(res, req.include_tree))
        yield b"data: [DONE]\n\n"
    finally:
        # the client went away (or the stream ended): cancelling solve releases its states
        solver.in_flight -= 1
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
