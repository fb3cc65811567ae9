"""THE table from error to HTTP status, and every error response the server sends: JSON
`{"error": message}` with that status. The exception handlers, the gate's refusals (401, 403,
413, 429) and unexpected errors (500) are all built here, and every one carries the request's
`X-Request-ID` (the gate adds it to whatever passes through it).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pneumo_onnx.engine.errors import (
    ConflictError,
    ContractError,
    ImageError,
    InferenceError,
    MissingExtraError,
    ModelLoadError,
    NotAcceptable,
    NotFoundError,
    NotSupported,
    Overloaded,
    PneumoError,
    RepositoryError,
    TooLarge,
    UnsupportedMediaType,
    UsageError,
)
from pneumo_onnx.engine.serve.front.bodies import InvalidBody
from pneumo_onnx.engine.serve.front.security import API_KEY_HEADER

log = logging.getLogger(__name__)

# The one table from error class to HTTP status (most specific class first).
STATUS: list[tuple[type[PneumoError], int]] = [
    (Overloaded, 503),
    (InvalidBody, 422),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLarge, 413),
    (UnsupportedMediaType, 415),
    (NotAcceptable, 406),
    (NotSupported, 501),
    (MissingExtraError, 501),
    (ImageError, 400),
    (InferenceError, 400),
    (ContractError, 400),
    (UsageError, 400),
    (RepositoryError, 409),
    (ModelLoadError, 409),
    (PneumoError, 500),
]


def status_of(error: PneumoError) -> int:
    return next(code for cls, code in STATUS if isinstance(error, cls))


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: str
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def for_error(error: PneumoError) -> JSONResponse:
    """The response for one of our errors: its status, its message, Retry-After if it has one."""
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Overloaded) else None
    return error_response(status_of(error), error.message, headers)


def unauthorized() -> JSONResponse:
    message = f"missing or invalid API key (send it in the {API_KEY_HEADER} header)"
    return error_response(401, message, {"WWW-Authenticate": API_KEY_HEADER})


def forbidden(message: str) -> JSONResponse:
    return error_response(403, message)


def too_large(max_body: int, close: bool = False) -> JSONResponse:
    """413; `close`: refused while its body arrived, so the connection ends with it."""
    message = f"request too large: the limit is {max_body / 2**20:g} MB"
    return error_response(413, message, {"Connection": "close"} if close else None)


def busy(message: str, retry_after: int = 1, close: bool = False) -> JSONResponse:
    headers = {"Retry-After": str(retry_after), **({"Connection": "close"} if close else {})}
    return error_response(503, message, headers)


def rate_limited(message: str, wait: int) -> JSONResponse:
    return error_response(429, message, {"Retry-After": str(wait)})


def internal_error(request_id: str) -> JSONResponse:
    """An unexpected error: no traceback or internal detail, only the id to find it in the log."""
    return error_response(500, "internal server error", request_id=request_id)


def add_handlers(app: FastAPI) -> None:
    """Our errors, request validation and Starlette's HTTP errors as JSON. Anything else is
    answered 500 with the request id: by the gate (engine.serve.front.gate) on the routes it
    serves directly, by FastAPI's last handler on the others, which then raises it on to the
    gate (who logs it, once)."""

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        return internal_error(request.scope.get("state", {}).get("request_id", "-"))

    @app.exception_handler(PneumoError)
    async def pneumo_error(request: Request, e: PneumoError) -> JSONResponse:
        return pneumo_error_response(request, e)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_message(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return http_error_response(e)


def pneumo_error_response(request: Request, e: PneumoError) -> JSONResponse:
    """The answer to one of our errors raised by a route (shedding is counted)."""
    if isinstance(e, Overloaded):
        request.app.state.server.metrics.shed.inc()
    return for_error(e)


def http_error_response(e: StarletteHTTPException) -> JSONResponse:
    """The answer to Starlette's HTTP errors (a 404, a 405, a malformed form), as JSON."""
    message = e.detail if isinstance(e.detail, str) else "request refused"
    return error_response(e.status_code, message, dict(e.headers) if e.headers else None)


def validation_message(e: RequestValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
