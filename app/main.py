"""`create_app(settings)`: the FastAPI application, its middleware, routers and error handlers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from . import __version__
from .errors import install_error_handlers
from .logs import request_id_var
from .metrics import install_metrics
from .routes import api_router
from .settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="internvl-search",
        version=__version__,
        description="Image embedding, search and zero-shot classification with InternVL-C/G and open_clip encoders.",
    )
    app.state.settings = settings
    app.state.readiness = lambda: {"server": "ok"}
    install_error_handlers(app)
    install_metrics(app)
    app.include_router(api_router)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # Trust a caller's id only when it is short and printable, so it cannot inject into log lines.
        given = request.headers.get("x-request-id", "")
        rid = given if 0 < len(given) <= 64 and given.isprintable() and " " not in given else uuid.uuid4().hex
        token = request_id_var.set(rid)
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers["X-Request-ID"] = rid
        return response

    return app
