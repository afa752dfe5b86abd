"""`POST /v1/chat/completions`: admission, then the non-streaming answer here or the stream
(`streaming`)."""

from __future__ import annotations

import time
import uuid

from fastapi import Request
from fastapi.responses import Response

from .admission import ChatRun, RequestRecord, admit
from .answer import AnswerText
from .failures import error_response
from .schemas import AssistantMessage, ChatCompletion, Choice, RequestError
from .state import app_state
from .streaming import stream_completion
from .thought import split_thought


async def chat_completions(request: Request) -> Response:
    record = RequestRecord(app_state(request).metrics)
    try:
        run = await admit(request, record)
    except RequestError as exc:
        record(exc.status)
        return error_response(exc)
    if run.req.stream:
        return await stream_completion(run)
    return await complete(run)


async def complete(run: ChatRun) -> Response:
    """The whole answer at once, when the run has ended."""
    try:
        outcome = await run.wait()
    except RequestError as exc:
        run.record(exc.status)
        return error_response(exc)
    finally:
        run.release()  # also when this task was cancelled (the server is stopping)
    run.record(200)
    answer = AnswerText(run.req.stop_sequences)
    field = run.state.srv.reasoning_field
    thought, content = ("", outcome.result.text) if field == "inline" else split_thought(outcome.result.text)
    answer.finish(content)
    report = run.report(outcome, answer)
    message = AssistantMessage(content=answer.text)
    if thought:
        message = message.model_copy(update={field: thought})
    completion = ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex[:24]}", created=int(time.time()), model=run.req.model,
        choices=[Choice(message=message, finish_reason=report.finish_reason)],
        usage=report.usage, tandem=report.tandem,
    )
    return Response(completion.model_dump_json(), media_type="application/json")
