"""The OpenAI-compatible server: `create_app(settings, tandem=...)` and `serve(...)` (`tandem serve`).

Endpoints, options, errors and metrics are described in docs/server.md. The pipeline is synchronous:
each request's run goes through one worker thread (see `runner`), its answer deltas come back to the
event loop through a queue, and a run is cancelled through the pipeline's event hook when the client
goes away, the request times out or the server shuts down; a backend call the run is blocked in is
interrupted through the run's `CallGuard`.

The app is wired here from small parts: its state (`state.AppState`: settings, the pipeline, the
runner, metrics, lifespan), the handlers (`endpoints`; `chat` with `admission` and `streaming`), the
answer text and final report of a run (`answer`, `report`), failures as OpenAI errors (`failures`)
and the ASGI plumbing (`asgi`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import TandemSettings
from ..pipeline import Tandem
from . import chat, endpoints
from .asgi import RequestContext
from .failures import on_http_error, on_request_error, on_validation_error
from .schemas import RequestError
from .state import AppState, api_keys

log = logging.getLogger("tandem.server")


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
    app.add_api_route("/v1/chat/completions", chat.chat_completions, methods=["POST"])
    return app


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
