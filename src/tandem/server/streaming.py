"""Streamed chat completions (`"stream": true`) as server-sent events.

The status line waits for the run's first item, so that a run that fails or times out before it
writes anything still gets its proper status. Then: a chunk with the role, a chunk per piece of
answer text, the finish chunk (and with `include_usage` a last chunk with the usage) carrying the
`tandem` report, and `[DONE]`; or, when the run fails after the status line, an error event and no
`[DONE]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from fastapi.responses import Response

from .admission import ChatRun
from .answer import AnswerText, StreamDiverged
from .asgi import EventStream, sse
from .failures import cancel_error, error_response
from .report import FinalReport
from .runner import Item
from .schemas import ChatCompletionChunk, ChunkChoice, CompletionUsage, Delta, RequestError
from .thought import ThoughtSplitter, split_thought

log = logging.getLogger("tandem.server")


KEEPALIVE = b": keep-alive\n\n"


async def stream_completion(run: ChatRun) -> Response:
    if run.state.srv.stream_keepalive_s:  # headers and the role chunk now; comments while waiting
        events = _ChatStream(run).events(None)
        return EventStream(await events.__anext__(), events)
    try:
        first = await run.next()
        if first[0] == "end":
            await run.outcome()
        elif first[0] == "cancelled":
            raise cancel_error(first[1])
    except RequestError as exc:
        run.release()
        run.record(exc.status)
        return error_response(exc)
    except BaseException:
        run.release()
        raise
    events = _ChatStream(run).events(first)
    return EventStream(await events.__anext__(), events)


class _ChatStream:
    """The events of one streamed completion. Closing `events` early (the client went away) cancels
    the run; the request is recorded with the status it ended with (499 when the client left)."""

    def __init__(self, run: ChatRun) -> None:
        self.run = run
        self.answer = AnswerText(run.req.stop_sequences)
        self.field = run.state.srv.reasoning_field
        self.thought = ThoughtSplitter() if self.field != "inline" else None
        self.id, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.include_usage = bool(run.req.stream_options and run.req.stream_options.include_usage)
        self.status = 499
        self.first_sent = False

    async def events(self, first: Item | None) -> AsyncGenerator[bytes, None]:
        """`first`: the run's first item, already awaited; None: await it here, with keep-alives."""
        item = first
        try:
            yield self._chunk(delta={"role": "assistant", "content": ""})
            while True:
                if item is None:
                    item = await self._next()
                    if item is None:
                        yield KEEPALIVE
                        continue
                kind, text, _ = item
                if kind == "delta":
                    for chunk in self._deltas(*(self.thought.feed(text) if self.thought else ("", text))):
                        yield chunk
                elif kind == "cancelled":
                    err = cancel_error(text)
                    self.status = err.status
                    if text != "disconnect":
                        yield sse(err.body())
                    return
                else:  # the run ended
                    try:
                        outcome = await self.run.outcome()
                        if self.thought is not None:
                            for chunk in self._deltas(*self.thought.flush()):
                                yield chunk
                        final = outcome.result.text
                        rest = self.answer.finish(split_thought(final)[1] if self.thought else final)
                    except (RequestError, StreamDiverged) as exc:
                        err = self._failure(exc)
                        self.status = err.status
                        if err.status != 499:
                            yield sse(err.body())
                        return
                    for out in rest:
                        yield self._chunk(delta={"content": out})
                    for event in self._closing(self.run.report(outcome, self.answer)):
                        yield event
                    self.status = 200
                    return
                item = await self._next()
                if item is None:
                    yield KEEPALIVE
        finally:
            self.run.release()
            self.run.record(self.status)

    async def _next(self) -> Item | None:
        """The run's next item; None when `stream_keepalive_s` passed without one (send a comment)."""
        wait = self.run.state.srv.stream_keepalive_s
        if not wait:
            return await self.run.next()
        try:
            return await asyncio.wait_for(self.run.next(), timeout=wait)
        except asyncio.TimeoutError:
            return None

    def _deltas(self, thought: str, answer: str) -> Iterator[bytes]:
        """The chunks of one piece of the run's text: its thought in the reasoning field, its answer (past
        the stop-sequence hold-back) as content."""
        if thought:
            self._first_text()
            yield self._chunk(delta={self.field: thought})
        out = self.answer.feed(answer) if answer else ""
        if out:
            self._first_text()
            yield self._chunk(delta={"content": out})

    def _first_text(self) -> None:
        if not self.first_sent:
            self.first_sent = True
            self.run.state.metrics.first_token.labels(self.run.req.model).observe(time.monotonic()
                                                                                  - self.run.record.t0)

    def _failure(self, exc: RequestError | StreamDiverged) -> RequestError:
        if isinstance(exc, RequestError):
            return exc
        # never finish a stream whose text is not the answer
        log.error("request_id=%s the streamed text is not the final text", self.run.request_id)
        return RequestError(f"internal server error: the streamed text diverged from the answer (request "
                            f"{self.run.request_id})", status=500, type="server_error", code="internal_error")

    def _closing(self, report: FinalReport) -> Iterator[bytes]:
        if self.include_usage:
            yield self._chunk(delta={}, finish=report.finish_reason)
            yield self._chunk(usage=report.usage, tandem=report.tandem, no_choices=True)
        else:
            yield self._chunk(delta={}, finish=report.finish_reason, tandem=report.tandem)
        yield sse("[DONE]")

    def _chunk(self, *, delta: dict[str, Any] | None = None, finish: str | None = None,
               usage: CompletionUsage | None = None, tandem: dict[str, Any] | None = None,
               no_choices: bool = False) -> bytes:
        choices = [] if no_choices else [ChunkChoice(delta=Delta(**(delta or {})), finish_reason=finish)]  # type: ignore[arg-type]
        d = ChatCompletionChunk(id=self.id, created=self.created, model=self.run.req.model, choices=choices,
                                usage=usage, tandem=tandem).model_dump()
        for c in d["choices"]:
            c["delta"] = {k: v for k, v in c["delta"].items() if v is not None}
        if not self.include_usage:
            d.pop("usage")
        if tandem is None:
            d.pop("tandem")
        return sse(d)
