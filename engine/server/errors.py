"""OpenAI-style JSON errors: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the server produces goes through here, so clients never see an
HTML page or a stack trace: validation problems are 400, unknown routes 404,
internal failures a generic 500 (details only in the server log).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backend import BackendInputError

__all__ = ["APIError", "error_response", "install_error_handlers"]

log = logging.getLogger("gboost.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def _type_for(status: int) -> str:
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


class APIError(Exception):
    """Raise inside a route to answer with an OpenAI-style JSON error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: Optional[str] = None,
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _type_for(status)
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: Optional[str] = None, code: Any = None) -> dict:
    """The OpenAI-style error object, for JSON replies and for in-band SSE error events."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: Optional[str] = None,
    param: Optional[str] = None,
    code: Any = None,
    headers: Optional[dict[str, str]] = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type or _type_for(status), param, code), status_code=status,
                        headers=headers)


_OBJECT_FIELDS = ("stream_options", "messages")  # request fields whose inner keys errors name
_PROMPT_HELP = "must be a string, a list of token ids, a list of strings or a list of token-id lists"


def _validation_message(exc: RequestValidationError) -> tuple[str, Optional[str]]:
    """One readable line from pydantic errors, and the first offending field."""
    errs = exc.errors()
    if not errs:
        return "invalid request body", None
    for e in errs:
        if e.get("type") == "json_invalid":
            return f"request body is not valid JSON: {e.get('msg', '')}".rstrip(": "), None
    # A union (prompt) yields one error per alternative: report each field once.
    seen: dict[str, str] = {}
    for e in errs:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = loc[0] if loc else "body"
        if field in _OBJECT_FIELDS:  # name the key inside the object (stream_options.include_usage)
            field = ".".join(loc)
        if e.get("type") == "missing":
            msg = "field required"
        elif field == "prompt":
            msg = _PROMPT_HELP
        else:
            msg = e.get("msg", "invalid value").removeprefix("Value error, ")
        seen.setdefault(field, msg)
    msgs = [f"{k}: {m}" for k, m in list(seen.items())[:5]]
    return "invalid request: " + "; ".join(msgs), next(iter(seen))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(exc)
        return error_response(400, msg, param=param)

    @app.exception_handler(BackendInputError)
    async def _backend_input(_: Request, exc: BackendInputError) -> JSONResponse:
        return error_response(400, str(exc) or "invalid input")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - last resort
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", type="server_error")
