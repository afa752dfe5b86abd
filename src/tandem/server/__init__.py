"""The OpenAI-compatible HTTP server (`tandem serve`); see docs/server.md.

Importing this package loads FastAPI and creates nothing: `create_app` builds an app around a given
`Tandem` (or loads one from settings at startup), `serve` runs it with uvicorn.
"""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
