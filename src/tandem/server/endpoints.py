"""The small endpoints: `/health` (no key: for probes), `/metrics`, `/v1/models` and `/v1/models/{id}`.
Each finds the app's state on the request (`app_state`)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .metrics import CONTENT_TYPE
from .schemas import SERVED_MODELS, ModelCard, ModelList, RequestError
from .state import AppState, app_state


async def health(request: Request) -> JSONResponse:
    state = app_state(request)
    t = state.tandem
    stuck = state.runner.stuck(state.srv.stuck_grace_s)
    if state.draining:
        status = "shutting_down"
    elif t is None:
        status = "failed" if state.load_error else "loading"
    elif stuck:  # a worker has not come back from a run past its deadline: take this replica out
        status = "degraded"
    else:
        status = "ok"
    body = {"status": status, "backends": {"llm": t is not None, "slm": t is not None},
            "queue": {"active": state.runner.active, "max": state.srv.max_queue, "stuck": stuck,
                      "in_flight_max": state.runner.concurrency}}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


async def metrics(request: Request) -> Response:
    state = app_state(request)
    state.authorize(request)
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


async def list_models(request: Request) -> JSONResponse:
    state = app_state(request)
    state.authorize(request)
    return JSONResponse(ModelList(data=[_card(state, m) for m in SERVED_MODELS]).model_dump())


async def get_model(model_id: str, request: Request) -> JSONResponse:
    state = app_state(request)
    state.authorize(request)
    if model_id not in SERVED_MODELS:
        raise RequestError(f"the model {model_id!r} does not exist; see GET /v1/models", status=404,
                           param="model", code="model_not_found")
    return JSONResponse(_card(state, model_id).model_dump())


def _card(state: AppState, model_id: str) -> ModelCard:
    method, effort = SERVED_MODELS[model_id]
    t = state.tandem
    info: dict[str, Any] = {"method": method}
    if method == "tandem":
        info["effort"] = effort or (t.config.effort if t else state.settings.pipeline.effort)
        info["llm"], info["slm"] = (t.llm.info.name, t.slm.info.name) if t else (None, None)
    else:
        backend = (t.llm if method == "llm" else t.slm) if t else None
        info["model"] = backend.info.name if backend else None
    return ModelCard(id=model_id, created=state.created, tandem=info)
