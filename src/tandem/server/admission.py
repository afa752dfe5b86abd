"""Admitting a chat completion request (`admit`) and the admitted request's run (`ChatRun`), which the
non-streaming and the streaming handlers share: waiting for the run, translating its failure, the
final report, and the request's metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from starlette.types import Message

from ..pipeline import Tandem
from .answer import AnswerText
from .asgi import request_id
from .failures import cancel_error, run_error
from .metrics import ServerMetrics
from .report import FinalReport, final_report
from .runner import Item, Outcome, RunHandle, RunSpec, run_spec
from .schemas import SERVED_MODELS, ChatCompletionRequest, RequestError, parse_request
from .spec import run_spec_for
from .state import AppState, app_state

log = logging.getLogger("tandem.server")


class RequestRecord:
    """A chat request's sample in the request counter and the latency histogram, labelled with its
    served model ("-" until known, "unknown" for a model not served) and whether it streams."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.t0 = time.monotonic()
        self.label = "-"
        self.stream = False

    def __call__(self, status: int) -> None:
        self.metrics.requests.labels(self.label, str(status)).inc()
        self.metrics.latency.labels(self.label, str(self.stream).lower()).observe(time.monotonic() - self.t0)


async def admit(request: Request, record: RequestRecord) -> ChatRun:
    """Check, read and validate a chat completion request and queue its run (429 when the queue is
    full); RequestError when it is refused."""
    state = app_state(request)
    state.authorize(request)
    tandem = state.ready()
    req = parse_request(await state.read_body(request))
    if req.model not in SERVED_MODELS:
        record.label = "unknown"
        raise RequestError(f"the model {req.model!r} does not exist; choose one of {', '.join(SERVED_MODELS)}",
                           status=404, param="model", code="model_not_found")
    record.label, record.stream = req.model, req.stream
    spec = run_spec_for(req, tandem, state.srv, request_id(request.scope))
    handle = state.runner.admit(asyncio.get_running_loop(), lambda why: state.metrics.cancellations.labels(why).inc(),
                                stream=req.stream, timeout_s=state.srv.request_timeout_s)
    if handle is None:
        raise RequestError(f"the server is busy ({state.srv.max_queue} requests waiting or running); retry later",
                           status=429, type="rate_limit_error", code="queue_full", headers={"Retry-After": "1"})
    return ChatRun.start(state, request, req, tandem, spec, handle, record)


class ChatRun:
    """An admitted request whose run is queued on the pipeline's worker. Its watcher task cancels the
    run when the client goes away; `release` stops watching (and cancels a run that has not ended)."""

    def __init__(self, state: AppState, req: ChatCompletionRequest, tandem: Tandem, handle: RunHandle,
                 request_id: str, record: RequestRecord, watcher: asyncio.Task[None]) -> None:
        self.state, self.req, self.tandem, self.handle = state, req, tandem, handle
        self.request_id, self.record, self.watcher = request_id, record, watcher

    @classmethod
    def start(cls, state: AppState, request: Request, req: ChatCompletionRequest, tandem: Tandem, spec: RunSpec,
              handle: RunHandle, record: RequestRecord) -> ChatRun:
        watcher = asyncio.create_task(_watch_disconnect(request.receive, handle))
        state.runner.start(handle, lambda h: run_spec(tandem, spec, h),
                           on_start=lambda h: state.metrics.queue_wait.observe((h.started or 0) - h.admitted))
        return cls(state, req, tandem, handle, spec.request_id, record, watcher)

    async def next(self) -> Item:
        """The run's next item; ("cancelled", "timeout", "") once the request's deadline has passed."""
        return await self.handle.next(self.handle.deadline)

    async def wait(self) -> Outcome:
        """The outcome of a run whose items nobody streams; RequestError when it failed or was cancelled."""
        while True:
            kind, text, _ = await self.next()
            if kind == "end":
                return await self.outcome()
            if kind == "cancelled":
                raise cancel_error(text)

    async def outcome(self) -> Outcome:
        """The outcome of the run (after its "end" item); RequestError when it failed."""
        assert self.handle.future is not None
        try:
            return await asyncio.shield(self.handle.future)
        except Exception as exc:
            raise run_error(exc, self.handle, self.request_id) from exc

    def report(self, outcome: Outcome, answer: AnswerText) -> FinalReport:
        """The final report of the run, which is counted in the metrics now."""
        metrics, model = self.state.metrics, self.req.model
        metrics.observe_result(model, outcome.result)
        if outcome.fallback:
            metrics.fallbacks.labels(model, outcome.fallback["model"]).inc()
        return final_report(outcome, answer, self.tandem, request_id=self.request_id,
                            return_trace=self.req.return_trace, compare_estimate=self.state.srv.compare_estimate,
                            thought_apart=self.state.srv.reasoning_field != "inline")

    def release(self) -> None:
        self.watcher.cancel()
        if not self.handle.done:
            self.handle.cancel("disconnect")


async def _watch_disconnect(receive: Callable[[], Awaitable[Message]], handle: RunHandle) -> None:
    """The request's one reader of `receive` once its body is read: cancels the run when the client
    goes away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if handle.cancel("disconnect"):
                log.info("client disconnected: run cancelled")
            return
