"""ASGI plumbing of the server: the request-context middleware (request ids, the access log, a 500
for anything unexpected) and the server-sent-events response that streamed completions use."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .failures import error_json

log = logging.getLogger("tandem.server")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_RID_KEY = "tandem.request_id"
_QUIET_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapes: logged at debug level


def request_id(scope: Scope) -> str:
    """The id `RequestContext` gave the request."""
    return str(scope.get(_RID_KEY, ""))


class RequestContext:
    """Pure ASGI middleware: a request id for every request (the client's `X-Request-Id` when it is
    sane, else a new one) in the response headers and the log, and an OpenAI-shaped 500 for any
    unexpected error. Never logs headers (API keys)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"x-request-id"), "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope[_RID_KEY] = rid
        started, status = False, 500
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, int(message["status"])
                message = {**message, "headers": [*message.get("headers", []),
                                                   (b"x-request-id", rid.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request_id=%s unexpected error in %s %s", rid, scope.get("method"), scope.get("path"))
            if not started:
                resp = error_json(500, f"internal server error (request {rid})", type="server_error",
                                  code="internal_error")
                await resp(scope, receive, send_with_id)
        finally:
            level = logging.DEBUG if scope.get("path") in _QUIET_PATHS and status < 400 else logging.INFO
            log.log(level, "request_id=%s %s %s %d %.1fms", rid, scope.get("method"), scope.get("path"), status,
                    (time.perf_counter() - t0) * 1000)


class EventStream(StreamingResponse):
    """Server-sent events without Starlette's own disconnect listener: the request's watcher task is
    the one reader of `receive`. `events` is an already started generator (its first chunk given), so
    closing it always runs its clean-up, which cancels the run when it did not finish."""

    def __init__(self, first: bytes, events: AsyncGenerator[bytes, None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._first, self._events = first, events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            await send({"type": "http.response.body", "body": self._first, "more_body": True})
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self._events.aclose()


def sse(data: dict[str, Any] | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {text}\n\n".encode()
