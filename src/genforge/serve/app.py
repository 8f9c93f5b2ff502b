"""The HTTP API: models from the run directories given at start, nothing else. Every error is JSON with a message
that says what to fix; a bad request gets a 4xx and the worker keeps serving. This module assembles the app: the
Runtime (runtime.py), the routes (routes.py) and the ASGI layers in front of them (middleware.py)."""

from __future__ import annotations

from fastapi import FastAPI

from genforge.serve import routes
from genforge.serve.adapters import ServedModel
from genforge.serve.limits import BodySizeLimit, Limits
from genforge.serve.middleware import ErrorGuard, FastPath, FrontedAPI, Gate, ProtocolErrors
from genforge.serve.runtime import Runtime
from genforge.serve.schemas import ERRORS
from genforge.serve.v1 import HANDLERS


def create_app(models: dict[str, ServedModel], token: str | None = None, limits: Limits = Limits()) -> FastAPI:
    """The API over already-loaded models. `token`: every route but the page and the probes needs it."""
    runtime = Runtime(models, token, limits)
    app = FrontedAPI(title="genforge", version="1", lifespan=runtime.lifespan, responses=ERRORS,
                     description="Trained genforge runs behind an HTTP API. Errors are JSON: {error: {status, "
                                 "message}}.")
    app.state.runtime, app.state.genforge = runtime, runtime.state
    for kind, handler in HANDLERS.items():
        app.add_exception_handler(kind, handler)
    routes.add(app, runtime.verbs)
    app.front = ProtocolErrors(ErrorGuard(BodySizeLimit(
        Gate(FastPath(app.behind, runtime), runtime.state, frozenset(runtime.verbs)), limits.max_body_bytes)))
    return app
