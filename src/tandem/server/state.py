"""The state of one server app (`AppState`): its settings and API keys, the pipeline, the runner that
runs it, the metrics; the app's lifespan (loading the models, draining at shutdown) and the checks
every request goes through (API key, readiness, body limits)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect

from ..config import TandemSettings
from ..errors import ConfigError
from ..pipeline import Tandem
from .metrics import ServerMetrics
from .runner import PipelineRunner, concurrency_for
from .schemas import RequestError

log = logging.getLogger("tandem.server")

_CLOSE_TIMEOUT_S = 10.0  # after cancelling at shutdown: how long the worker may take to stop


def api_keys(env_var: str | None) -> tuple[bytes, ...]:
    """The accepted API keys: the comma-separated value of `env_var` (none when `env_var` is None)."""
    if env_var is None:
        return ()
    raw = os.environ.get(env_var, "")
    keys = tuple(k.strip().encode("utf-8") for k in raw.split(",") if k.strip())
    if not keys:
        raise ConfigError(f"environment variable {env_var} (server API keys) is not set or empty")
    return keys


class AppState:
    """Everything one app owns: settings, keys, the pipeline (once loaded), its runner and metrics, and
    whether it is shutting down. The handlers find it with `app_state(request)`."""

    def __init__(self, settings: TandemSettings, tandem: Tandem | None) -> None:
        self.settings = settings
        self.srv = settings.server
        self.keys = api_keys(self.srv.api_key_env)
        self.tandem = tandem
        self.load_error: str | None = None
        self.loading: asyncio.Task[None] | None = None
        self.draining = False
        self.created = int(time.time())
        self.metrics = ServerMetrics(compare_estimate=self.srv.compare_estimate)
        self.runner = PipelineRunner(self.srv.max_queue, on_depth=self.metrics.queue_depth.set)
        if tandem is not None:
            self.metrics.llm_params = tandem.llm.info.n_params
            self._size_pool(tandem)

    # ---- lifecycle ------------------------------------------------------------------------------
    async def load(self) -> None:
        from ..factory import build_tandem

        try:
            tandem = await self.runner.call(lambda: build_tandem(self.settings))
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("the models failed to load: %s", self.load_error)
            return
        self._size_pool(tandem)
        self.tandem = tandem
        self.metrics.llm_params = tandem.llm.info.n_params
        log.info("models loaded: llm=%s slm=%s", tandem.llm.info.name, tandem.slm.info.name)

    def _size_pool(self, tandem: Tandem) -> None:
        n, why = concurrency_for(tandem, self.srv.max_in_flight)
        self.runner.set_concurrency(n)
        log.info("pipelines in flight: up to %d (%s)", n, why)

    async def shutdown(self) -> None:
        """Stop admitting, let runs finish for the grace period, cancel the rest, close the backends."""
        self.draining = True
        if self.loading is not None:
            await self.loading
        if not await self.runner.wait_idle(self.srv.shutdown_grace_s):
            n = self.runner.cancel_all("shutdown")
            log.warning("shutdown: cancelled %d run(s) after %.1f s of grace", n, self.srv.shutdown_grace_s)
            if not await self.runner.wait_idle(_CLOSE_TIMEOUT_S):
                log.error("shutdown: the pipeline did not stop; the backends are left open")
                self.runner.shutdown()
                return
        self.runner.shutdown()
        if self.tandem is not None:
            for backend in (self.tandem.llm, self.tandem.slm):
                close = getattr(backend, "close", None)
                if close is None:
                    continue
                try:
                    close()
                except Exception:
                    log.exception("closing backend %s failed", backend.info.name)

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        if self.tandem is None and self.loading is None:
            self.loading = asyncio.create_task(self.load())
        try:
            yield
        finally:
            await self.shutdown()

    # ---- checks ---------------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise RequestError("missing API key: send it as 'Authorization: Bearer <key>'", status=401,
                               type="authentication_error", code="missing_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
        given = token.strip().encode("utf-8")
        ok = False
        for key in self.keys:  # compare with every key: the time taken says nothing about which matched
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise RequestError("invalid API key", status=401, type="authentication_error",
                               code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def ready(self) -> Tandem:
        if self.draining:
            raise RequestError("the server is shutting down", status=503, type="server_error",
                               code="shutting_down")
        if self.tandem is None:
            why = "the models failed to load" if self.load_error else "the models are loading"
            raise RequestError(why, status=503, type="server_error", code="not_ready",
                               headers={"Retry-After": "5"})
        return self.tandem

    async def read_body(self, request: Request) -> bytes:
        """The request body: at most `max_body_bytes` (413), whole within `body_timeout_s` (408, and the
        connection is closed: a client that sends its body slowly holds nothing longer than that)."""
        limit = self.srv.max_body_bytes
        too_large = RequestError(f"the request body exceeds {limit} bytes", status=413, code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    raise too_large
            except ValueError:
                raise RequestError("invalid Content-Length header", code="invalid_request") from None

        async def read() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(read(), self.srv.body_timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"the request body did not arrive within {self.srv.body_timeout_s:g} s",
                               status=408, code="request_timeout", headers={"Connection": "close"}) from None
        except ClientDisconnect:
            raise RequestError("the client disconnected", status=499, code="client_disconnected") from None


def app_state(request: Request) -> AppState:
    """The state of the app serving `request`."""
    state: AppState = request.app.state.tandem_state
    return state
