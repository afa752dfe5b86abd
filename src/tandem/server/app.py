"""The OpenAI-compatible server: `create_app(settings, tandem=...)` and `serve(...)` (`tandem serve`).

Endpoints, options, errors and metrics are described in docs/server.md. The pipeline is synchronous:
each request's run goes through one worker thread (see `runner`), its answer deltas come back to the
event loop through a queue, and a run is cancelled through the pipeline's event hook when the client
goes away, the request times out or the server shuts down; a backend call the run is blocked in is
interrupted through the run's `CallGuard`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message

from ..config import TandemSettings
from ..pipeline import Tandem
from . import endpoints
from .answer import AnswerText, StreamDiverged
from .asgi import EventStream, RequestContext, request_id, sse
from .failures import (
    cancel_error,
    error_response,
    on_http_error,
    on_request_error,
    on_validation_error,
    run_error,
)
from .report import FinalReport, final_report
from .runner import Outcome, RunHandle, run_spec
from .schemas import (
    SERVED_MODELS,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    CompletionUsage,
    Delta,
    RequestError,
    parse_request,
)
from .spec import run_spec_for
from .state import AppState, api_keys

log = logging.getLogger("tandem.server")

def _chunk(cid: str, created: int, model: str, *, delta: dict[str, Any] | None = None,
           finish: str | None = None, usage: CompletionUsage | None = None, include_usage: bool = False,
           tandem: dict[str, Any] | None = None, no_choices: bool = False) -> bytes:
    choices = [] if no_choices else [ChunkChoice(delta=Delta(**(delta or {})), finish_reason=finish)]  # type: ignore[arg-type]
    d = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, usage=usage,
                            tandem=tandem).model_dump()
    for c in d["choices"]:
        c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
    if not include_usage:
        d.pop("usage")
    if tandem is None:
        d.pop("tandem")
    return sse(d)


def create_app(settings: TandemSettings | None = None, *, tandem: Tandem | None = None) -> FastAPI:
    """The server app. With `tandem` the app serves that pipeline (and closes its backends at shutdown);
    without, it builds one from `settings` in the background at startup (`/health` says 503 until then).
    Reads the API keys now: a configured key variable that is unset is a ConfigError."""
    from .. import __version__

    settings = settings or TandemSettings()
    state = AppState(settings, tandem)
    app = FastAPI(title="tandem", version=__version__, lifespan=state.lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.tandem_state = state
    app.add_middleware(RequestContext)

    app.exception_handler(RequestError)(on_request_error)
    app.exception_handler(StarletteHTTPException)(on_http_error)
    app.exception_handler(RequestValidationError)(on_validation_error)

    app.add_api_route("/health", endpoints.health, methods=["GET"])
    app.add_api_route("/metrics", endpoints.metrics, methods=["GET"])
    app.add_api_route("/v1/models", endpoints.list_models, methods=["GET"])
    app.add_api_route("/v1/models/{model_id}", endpoints.get_model, methods=["GET"])

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        t0 = time.monotonic()
        rid = request_id(request.scope)
        label, stream = "-", False

        def record(status: int) -> None:
            state.metrics.requests.labels(label, str(status)).inc()
            state.metrics.latency.labels(label, str(stream).lower()).observe(time.monotonic() - t0)

        try:
            state.authorize(request)
            tandem_ = state.ready()
            req = parse_request(await state.read_body(request))
            if req.model not in SERVED_MODELS:
                label = "unknown"
                raise RequestError(f"the model {req.model!r} does not exist; choose one of "
                                   f"{', '.join(SERVED_MODELS)}", status=404, param="model", code="model_not_found")
            label, stream = req.model, req.stream
            spec = run_spec_for(req, tandem_, state.srv, rid)
            loop = asyncio.get_running_loop()
            handle = state.runner.admit(loop, lambda why: state.metrics.cancellations.labels(why).inc(),
                                        stream=req.stream, timeout_s=state.srv.request_timeout_s)
            if handle is None:
                raise RequestError(f"the server is busy ({state.srv.max_queue} requests waiting or running); "
                                   "retry later", status=429, type="rate_limit_error", code="queue_full",
                                   headers={"Retry-After": "1"})
        except RequestError as exc:
            record(exc.status)
            return error_response(exc)

        deadline = handle.deadline
        watcher = asyncio.create_task(_watch_disconnect(request.receive, handle))
        state.runner.start(handle, lambda h: run_spec(tandem_, spec, h),
                           on_start=lambda h: state.metrics.queue_wait.observe((h.started or 0) - h.admitted))
        if not req.stream:
            try:
                outcome = await _wait(handle, deadline, rid)
            except RequestError as exc:
                record(exc.status)
                return error_response(exc)
            finally:
                watcher.cancel()
                if not handle.done:
                    handle.cancel("disconnect")  # this task was cancelled (the server is stopping)
            record(200)
            return Response(_completion(outcome, req, tandem_, rid).model_dump_json(), media_type="application/json")

        # streaming: the status line waits for the first answer text, so that a run that fails or times
        # out before writing anything still gets its proper status
        try:
            first = await handle.next(deadline)
            if first[0] == "end":
                await _outcome(handle, rid)
            elif first[0] == "cancelled":
                raise cancel_error(first[1])
        except RequestError as exc:
            watcher.cancel()
            record(exc.status)
            return error_response(exc)
        except BaseException:
            watcher.cancel()
            handle.cancel("disconnect")
            raise
        events = _stream(first, handle, watcher, req, tandem_, rid, t0, record)
        return EventStream(await events.__anext__(), events)

    async def _wait(handle: RunHandle, deadline: float, rid: str) -> Outcome:
        while True:
            kind, text, _ = await handle.next(deadline)
            if kind == "end":
                return await _outcome(handle, rid)
            if kind == "cancelled":
                raise cancel_error(text)

    async def _outcome(handle: RunHandle, rid: str) -> Outcome:
        assert handle.future is not None
        try:
            return await asyncio.shield(handle.future)
        except Exception as exc:
            raise run_error(exc, handle, rid) from exc

    def _report(outcome: Outcome, answer: AnswerText, req: ChatCompletionRequest, tandem_: Tandem,
                rid: str) -> FinalReport:
        state.metrics.observe_result(req.model, outcome.result)
        if outcome.fallback:
            state.metrics.fallbacks.labels(req.model, outcome.fallback["model"]).inc()
        return final_report(outcome, answer, tandem_, request_id=rid, return_trace=req.return_trace,
                            compare_estimate=state.srv.compare_estimate)

    def _completion(outcome: Outcome, req: ChatCompletionRequest, tandem_: Tandem, rid: str) -> ChatCompletion:
        answer = AnswerText(req.stop_sequences)
        answer.finish(outcome.result.text)
        report = _report(outcome, answer, req, tandem_, rid)
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=req.model,
            choices=[Choice(message=AssistantMessage(content=answer.text), finish_reason=report.finish_reason)],
            usage=report.usage, tandem=report.tandem,
        )

    async def _stream(first: tuple[str, str, str], handle: RunHandle, watcher: asyncio.Task[None],
                      req: ChatCompletionRequest, tandem_: Tandem, rid: str, t0: float,
                      record: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
        cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), req.model
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        answer = AnswerText(req.stop_sequences)
        status, first_sent = 499, False
        deadline = handle.deadline
        item = first
        try:
            yield _chunk(cid, created, model, delta={"role": "assistant", "content": ""}, include_usage=include_usage)
            while True:
                kind, text, _ = item
                if kind == "delta":
                    out = answer.feed(text)
                    if out:
                        if not first_sent:
                            first_sent = True
                            state.metrics.first_token.labels(model).observe(time.monotonic() - t0)
                        yield _chunk(cid, created, model, delta={"content": out}, include_usage=include_usage)
                elif kind == "cancelled":
                    err = cancel_error(text)
                    status = err.status
                    if text != "disconnect":
                        yield sse(err.body())
                    return
                else:  # end
                    try:
                        outcome = await _outcome(handle, rid)
                        rest = answer.finish(outcome.result.text)
                    except RequestError as err:
                        status = err.status
                        if err.status != 499:
                            yield sse(err.body())
                        return
                    except StreamDiverged:  # never finish a stream whose text is not the answer
                        log.error("request_id=%s the streamed text is not the final text", rid)
                        diverged = RequestError(f"internal server error: the streamed text diverged from "
                                                f"the answer (request {rid})", status=500,
                                                type="server_error", code="internal_error")
                        status = diverged.status
                        yield sse(diverged.body())
                        return
                    for out in rest:
                        yield _chunk(cid, created, model, delta={"content": out}, include_usage=include_usage)
                    report = _report(outcome, answer, req, tandem_, rid)
                    if include_usage:
                        yield _chunk(cid, created, model, delta={}, finish=report.finish_reason, include_usage=True)
                        yield _chunk(cid, created, model, usage=report.usage, include_usage=True,
                                     tandem=report.tandem, no_choices=True)
                    else:
                        yield _chunk(cid, created, model, delta={}, finish=report.finish_reason,
                                     tandem=report.tandem)
                    yield sse("[DONE]")
                    status = 200
                    return
                item = await handle.next(deadline)
        finally:
            watcher.cancel()
            if not handle.done:
                handle.cancel("disconnect")
            record(status)

    return app


async def _watch_disconnect(receive: Callable[[], Awaitable[Message]], handle: RunHandle) -> None:
    """The request's one reader of `receive` once its body is read: cancels the run when the client
    goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if handle.cancel("disconnect"):
                log.info("client disconnected: run cancelled")
            return


# ---- tandem serve -------------------------------------------------------------------------------
def serve(config: str | Path | None = None, *, host: str | None = None, port: int | None = None,
          api_key_env: str | None = None) -> None:
    """Load settings (with the flags on top), check the API key variable, load the models, serve."""
    import uvicorn

    from ..config import load_settings
    from ..factory import build_tandem

    server_overrides = {k: v for k, v in dict(host=host, port=port, api_key_env=api_key_env).items()
                        if v is not None}
    settings = load_settings(config, {"server": server_overrides} if server_overrides else None)
    srv = settings.server
    logging.basicConfig(level=srv.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_keys(srv.api_key_env)  # fail before loading the models
    log.info("loading models: llm=%s slm=%s", settings.llm.model, settings.slm.model)
    tandem = build_tandem(settings)
    try:
        app = create_app(settings, tandem=tandem)
    except BaseException:
        tandem.llm.close()
        tandem.slm.close()
        raise
    log.info("serving on http://%s:%d (API keys: %s)", srv.host, srv.port, "required" if srv.api_key_env else "off")
    uvicorn.Server(uvicorn.Config(
        app, host=srv.host, port=srv.port, log_level=srv.log_level, access_log=False, lifespan="on",
        timeout_graceful_shutdown=max(1, math.ceil(srv.shutdown_grace_s)),
    )).run()
