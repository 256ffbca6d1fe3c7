"""OpenAI-compatible HTTP server over a :class:`CompletionBackend`.

Routes
------
``POST /v1/completions``  legacy completions (see :mod:`gboost.server.completions`;
                          log-probs wire format in :mod:`gboost.server.wire`).
``POST /v1/chat/completions``  chat completions through the model's chat template
                          (see :mod:`gboost.server.chat`).
``POST /v1/solve``        with a ``solver``: G-Boost or a baseline, JSON or SSE
                          (see :mod:`gboost.server.solve`).
``GET  /v1/models``       the served model, with ``max_model_len`` and ``vocab_size``.
``GET  /health``          ``{"status": "ok"}`` while the process serves requests.
``GET  /metrics``         plain-text counters (requests, errors, tokens, in-flight).

Errors are always JSON ``{"error": {"message", "type", "param", "code"}}``
(:mod:`gboost.server.errors`). With ``api_key`` set, ``/v1/*`` requires
``Authorization: Bearer <api_key>`` (``/health`` and ``/metrics`` stay open).

The event loop never runs model work: backend coroutines are expected to
offload it (see :mod:`gboost.server.backend`), and tokenisation, response
building and JSON encoding run in worker threads.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import ValidationError

from .backend import BackendInputError, CompletionBackend
from .chat import create_chat_completion, stream_chat_completion
from .completions import create_completion
from .errors import APIError, error_response, install_error_handlers
from .faults import FaultConfig, FaultInjector
from .limits import DEFAULT_MAX_BODY_BYTES, BodyLimit, parse_json_body
from .metrics import Metrics, MetricsMiddleware
from .schemas import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelCard, ModelList
from .solve import Solver, _gone, _until, handle_solve
from .sse import SSEResponse, cancel_and_wait
from .streaming import stream_completion

__all__ = ["create_app", "serve", "aserve", "DEFAULT_MAX_LOGPROBS"]

log = logging.getLogger("gboost.server")

DEFAULT_MAX_LOGPROBS = 20


def create_app(
    backend: CompletionBackend,
    model_name: Optional[str] = None,
    fault: Optional[FaultConfig] = None,
    *,
    api_key: Optional[str] = None,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
    solver: Optional[Solver] = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """Build the app. ``model_name`` defaults to ``backend.model_name``; ``solver`` adds
    ``POST /v1/solve``; a body over ``max_body_bytes`` is a 413 (:class:`BodyLimit`).

    ``app.state`` exposes ``backend``, ``model_name``, ``metrics``
    (:class:`Metrics`) and ``faults`` (:class:`FaultInjector`; call
    ``app.state.faults.configure(FaultConfig(...))`` to change faults live).
    """
    model_name = model_name or backend.model_name
    created = int(time.time())
    metrics = Metrics()
    faults = FaultInjector(fault)

    app = FastAPI(title="gboost", summary="OpenAI-compatible completions with token log-probs")
    app.state.backend = backend
    app.state.model_name = model_name
    app.state.metrics = metrics
    app.state.faults = faults
    app.state.solver = solver
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outside BodyLimit: it counts the 413s
    app.add_middleware(CancelledAtShutdown)

    def check_auth(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (expected 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_auth(request)
        cards = [ModelCard(id=name, created=created, max_model_len=backend.max_model_len,
                           vocab_size=backend.vocab_size, parent=None if name == model_name else model_name)
                 for name in [model_name, *_adapters(backend)]]
        return ModelList(data=cards).model_dump()

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_route() -> PlainTextResponse:
        sched = getattr(backend, "scheduler", None)
        kv = sched.kv_stats() if hasattr(sched, "kv_stats") else None
        eng = getattr(backend, "engine", None)
        weights = getattr(eng, "weight_formats", None)
        return PlainTextResponse(metrics.render(faults.injected, solver, kv, _llm_metrics(solver), weights))

    async def json_body(request: Request):
        return parse_json_body(await request.body())

    async def answer(request: Request, parse, create, stream) -> Response:
        """What the completion routes share: auth, faults, in-flight tracking, metrics, a body
        parsed by ``parse(dict)``, then ``create(req)`` (JSON) or ``stream(req, on_done)`` (SSE)."""
        check_auth(request)
        with metrics.track_in_flight() as held:
            injected = await faults.before()
            if injected is not None:
                return injected
            data = await json_body(request)
            if not isinstance(data, dict):
                raise APIError(400, "request body must be a JSON object")
            try:
                req = parse(data)
            except ValidationError as e:
                raise RequestValidationError(e.errors(include_url=False, include_context=False)) from None
            if req.stream:
                def done(n_prompt: int, n_completion: int) -> None:
                    metrics.completions += 1
                    metrics.prompt_tokens += n_prompt
                    metrics.completion_tokens += n_completion
                events = await stream(req, done)
                return SSEResponse(events, on_close=held.keep())  # in flight until the stream closes
            # the server does not cancel a handler whose client left: watch for it, as /v1/solve
            # does, so that n x prompts x max_tokens of generation is not done for nobody
            task = asyncio.ensure_future(create(req))
            try:
                if not await _until(task, request.is_disconnected):
                    raise _gone("generation")
                result = task.result()
            except (APIError, BackendInputError):
                raise
            except Exception:
                log.exception("completion failed")
                raise APIError(500, "internal server error", type="server_error") from None
            finally:
                await cancel_and_wait(task)
            metrics.completions += 1
            metrics.prompt_tokens += result["usage"]["prompt_tokens"]
            metrics.completion_tokens += result["usage"]["completion_tokens"]
            body = await asyncio.to_thread(json.dumps, result, allow_nan=False, separators=(",", ":"))
            return Response(body, media_type="application/json")

    @app.post("/v1/completions", openapi_extra=_json_body("CompletionRequest"), responses=_errors(401, 404, 500))
    async def completions(request: Request) -> Response:
        return await answer(
            request, CompletionRequest.model_validate,
            lambda req: create_completion(req, *_route(backend, model_name, req.model), max_logprobs),
            lambda req, done: stream_completion(req, *_route(backend, model_name, req.model), max_logprobs,
                                                on_done=done))

    @app.post("/v1/chat/completions", openapi_extra=_json_body("ChatCompletionRequest"),
              responses=_errors(401, 404, 500))
    async def chat_completions(request: Request) -> Response:
        return await answer(
            request, ChatCompletionRequest.model_validate,
            lambda req: create_chat_completion(req, *_route(backend, model_name, req.model), max_logprobs),
            lambda req, done: stream_chat_completion(req, *_route(backend, model_name, req.model), max_logprobs,
                                                     on_done=done))

    if solver is not None:
        @app.post("/v1/solve", openapi_extra=_json_body("SolveRequest"), responses=_errors(401, 499, 500, 502, 503))
        async def solve_route(request: Request) -> Response:
            check_auth(request)
            out = await handle_solve(solver, await json_body(request), request.is_disconnected)
            if isinstance(out, dict):
                body = await asyncio.to_thread(json.dumps, out, allow_nan=False, separators=(",", ":"))
                return Response(body, media_type="application/json")
            return SSEResponse(out)

    app.openapi = lambda: _openapi(app)
    return app


def _adapters(backend) -> list[str]:
    return backend.adapters() if hasattr(backend, "adapters") else []


def _route(backend, model_name: str, requested: Optional[str]):
    """(backend, served name) for a request's ``model``: a LoRA adapter's view where it names one;
    else the served model (a name that is neither is answered 404 by the handler)."""
    view = backend.for_model(requested) if requested and requested != model_name and hasattr(backend, "for_model") \
        else None
    return (view, requested) if view is not None else (backend, model_name)


def _llm_metrics(solver) -> Optional[dict]:
    """The remote general LLM's counters (RemoteLLM.metrics()), its completions and chat clients added up."""
    ex = getattr(solver, "executor", None)
    parts = [c.metrics() for c in (getattr(ex, "llm", None), getattr(ex, "writer", None)) if hasattr(c, "metrics")]
    if not parts:
        return None
    out = {"requests": sum(p["requests"] for p in parts), "retries": Counter(), "errors": Counter()}
    for p in parts:
        out["retries"].update(p["retries"])
        out["errors"].update(p["errors"])
    return out


def _json_body(model: str) -> dict:
    """The request body of a route that parses its body itself (faults and metrics come first)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}


def _errors(*statuses: int) -> dict:
    """Documented error answers: always the ErrorResponse shape; 400 on every route."""
    return {s: {"model": ErrorResponse, "description": _ERROR_TEXT.get(s, "error")} for s in (400, *statuses)}


_ERROR_TEXT = {400: "invalid request (the message names the field)", 401: "missing or invalid API key",
               404: "unknown model", 499: "the client closed the request; its work was cancelled",
               500: "internal error (details only in the server log)", 502: "the general LLM failed",
               503: "KV pool full (Retry-After), or the server is shutting down"}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the request bodies the routes parse themselves, so that clients and
    schema-driven fuzzers (tests/server/test_fuzz.py) see what each route takes."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic import TypeAdapter

        from gboost.search.config import ACTION_POLICIES, FINAL_CHOICES, FUSION_RULES, METHODS, \
            PRM_AGGREGATIONS, SearchConfig

        from .solve import FIXED, SolveRequest
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (CompletionRequest, ChatCompletionRequest, SolveRequest):
            body = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(body.pop("$defs", {}))
            comps[model.__name__] = body
        # /v1/solve's config: SearchConfig fields a request may set (the server's caps still apply)
        cfg = TypeAdapter(SearchConfig).json_schema()
        for key in FIXED:
            cfg["properties"].pop(key, None)
        for key, allowed in (("method", METHODS), ("action_policy", ACTION_POLICIES), ("final_choice", FINAL_CHOICES),
                             ("prm_aggregation", PRM_AGGREGATIONS), ("fusion_rule", FUSION_RULES)):
            cfg["properties"][key]["enum"] = list(allowed)
        cfg["additionalProperties"] = False
        comps["SolveRequest"]["properties"]["config"] = {**cfg, "description": "SearchConfig overrides"}
        comps["SolveRequest"]["properties"]["method"] = {"anyOf": [{"enum": list(METHODS)}, {"type": "null"}]}
        # /v1/completions: token ids this model has; options it does not implement take their defaults only
        props = comps["CompletionRequest"]["properties"]
        tid = {"type": "integer", "minimum": 0, "maximum": app.state.backend.vocab_size - 1}
        ids = {"type": "array", "items": tid, "minItems": 1}
        props["prompt"]["anyOf"] = [{"type": "string"}, ids, {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                    {"type": "array", "items": ids, "minItems": 1}]
        props["stop_token_ids"]["anyOf"] = [{"type": "array", "items": tid}, {"type": "null"}]
        unsupported = {"best_of": [None, 1], "suffix": [None, ""], "presence_penalty": [0], "frequency_penalty": [0]}
        for key, allowed in unsupported.items():
            props[key] = {"enum": allowed, "description": "not supported: only the default is accepted"}
        props["logit_bias"] = {"anyOf": [{"type": "null"}, {"type": "object", "maxProperties": 0}],
                               "description": "not supported: only null or {} is accepted"}
        # /v1/chat/completions: the same for the chat options it does not implement
        chat = comps["ChatCompletionRequest"]["properties"]
        empty = {"anyOf": [{"type": "null"}, {"type": "array", "maxItems": 0}]}
        for key, allowed in {"tools": empty, "functions": empty, "tool_choice": {"enum": [None, "none"]},
                             "presence_penalty": {"enum": [None, 0]}, "frequency_penalty": {"enum": [None, 0]},
                             "logit_bias": props["logit_bias"],
                             "response_format": {"anyOf": [{"type": "null"}, {
                                 "type": "object", "properties": {"type": {"const": "text"}}, "required": ["type"]}]},
                             }.items():
            chat[key] = {**allowed, "description": "not supported: only the default is accepted"}
        app.openapi_schema = schema
    return app.openapi_schema


class CancelledAtShutdown:
    """Outermost ASGI middleware: a request still running when a shutdown's grace ends is cancelled
    by uvicorn. Its cleanup has run (a search frees its KV blocks); what is left is the answer:
    a 503 ``server_shutting_down`` if nothing was sent yet, else the end of the stream -- instead of
    uvicorn logging a CancelledError traceback and sending a bare 500."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 1)() == 0:
                raise  # not this task's own cancellation: not ours to end here
            try:
                if not started:
                    await error_response(503, "server is shutting down; the request was cancelled",
                                         code="server_shutting_down")(scope, receive, send)
                else:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            except Exception:  # the connection is gone too
                pass


def serve(
    backend: CompletionBackend,
    host: str = "127.0.0.1",
    port: int = 8000,
    fault: Optional[FaultConfig] = None,
    *,
    model_name: Optional[str] = None,
    api_key: Optional[str] = None,
    max_logprobs: int = DEFAULT_MAX_LOGPROBS,
    log_level: str = "info",
    graceful_shutdown_s: float = 5.0,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Optional[int]:
    """Serve ``backend`` with uvicorn (blocking) until SIGINT or SIGTERM; returns that signal's
    number (None if it stopped otherwise). Binds 127.0.0.1 unless told otherwise."""
    app = create_app(backend, model_name, fault, api_key=api_key, max_logprobs=max_logprobs,
                     max_body_bytes=max_body_bytes)
    return asyncio.run(aserve(app, host, port, log_level, graceful_shutdown_s=graceful_shutdown_s))


async def aserve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", *,
                 graceful_shutdown_s: float = 5.0, on_signal=None, trim_every_s: float = 30.0) -> Optional[int]:
    """Serve ``app`` on the running event loop (for state that is bound to this loop) until SIGINT
    or SIGTERM, which is returned rather than raised again (no KeyboardInterrupt traceback).
    Requests still running ``graceful_shutdown_s`` after the signal are cancelled (a cancelled
    search frees its KV blocks); ``on_signal()`` runs when the signal arrives. Every
    ``trim_every_s`` seconds the C heap's free memory goes back to the OS (what bursts freed)."""
    import uvicorn

    from gboost.malloc import release_free_memory

    from .uvicorn_server import SignalServer

    async def trim():
        while await asyncio.sleep(trim_every_s, True) and await asyncio.to_thread(release_free_memory):
            pass

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=graceful_shutdown_s)
    server = SignalServer(config, on_signal)
    trimmer = asyncio.create_task(trim()) if trim_every_s else None
    try:
        await server.serve()
    finally:
        if trimmer is not None:
            trimmer.cancel()
    return server.stopped_by
