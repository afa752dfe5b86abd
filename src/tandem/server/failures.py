"""Every failure a client sees, as an OpenAI error body: refused requests (`RequestError`), routing and
validation errors of the framework, and runs that failed, timed out or were cancelled.

Backend failures are described by their kind only: their messages name the upstream's URL and quote
its own error text, which go to the log.
"""

from __future__ import annotations

import logging
import time

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import BackendError, BackendTimeout, Cancelled, ConfigError, InputError, UnsupportedError
from .runner import RunHandle
from .schemas import RequestError, error_body

log = logging.getLogger("tandem.server")


def error_json(status: int, message: str, *, type: str, code: str | None = None, param: str | None = None,
               headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type=type, param=param, code=code), status_code=status, headers=headers)


def error_response(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def run_error(exc: BaseException, handle: RunHandle, request_id: str) -> RequestError:
    """What a failed run becomes for the client."""
    if isinstance(exc, Cancelled):
        reason = handle.cancel_reason or ("timeout" if time.monotonic() >= handle.deadline else "cancelled")
        return cancel_error(reason)
    if isinstance(exc, BackendTimeout):
        log.error("request_id=%s backend timeout: %s", request_id, exc)
        return RequestError(f"a model backend timed out; the details are in the server log (request "
                            f"{request_id})", status=504, type="server_error", code="backend_timeout")
    if isinstance(exc, BackendError):
        log.error("request_id=%s backend error: %s: %s", request_id, type(exc).__name__, exc)
        return RequestError(f"a model backend failed ({type(exc).__name__}); the details are in the server "
                            f"log (request {request_id})", status=502, type="server_error", code="backend_error")
    if isinstance(exc, (InputError, ConfigError, UnsupportedError)):
        return RequestError(str(exc), code="invalid_request")
    log.error("request_id=%s pipeline failed", request_id, exc_info=exc)
    return RequestError(f"internal server error (request {request_id})", status=500, type="server_error",
                        code="internal_error")


def cancel_error(reason: str) -> RequestError:
    """What a run cancelled for `reason` ("timeout", "shutdown", "disconnect") becomes for the client."""
    if reason == "timeout":
        return RequestError("the request timed out", status=504, type="server_error", code="timeout")
    if reason == "shutdown":
        return RequestError("the server is shutting down", status=503, type="server_error", code="shutting_down")
    return RequestError("the client disconnected", status=499, type="invalid_request_error",
                        code="client_disconnected")


# ---- the app's exception handlers ---------------------------------------------------------------
async def on_request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        msg, code = f"unknown request URL: {request.method} {request.url.path}", "unknown_url"
    elif exc.status_code == 405:
        msg, code = f"method {request.method} not allowed for {request.url.path}", "method_not_allowed"
    else:
        msg, code = str(exc.detail), None
    return error_json(exc.status_code, msg, type="invalid_request_error", code=code, headers=dict(exc.headers or {}))


async def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
    return error_json(400, f"invalid request: {first.get('msg', 'validation failed')}",
                      type="invalid_request_error", code="invalid_value", param=param)
