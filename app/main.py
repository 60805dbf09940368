"""`create_app(settings)`: the FastAPI application, its lifespan (engine, batchers), middleware, routers, handlers.

Nothing heavy happens at import or in `create_app`: the engine is opened (catalog migrated, indexes loaded,
interrupted jobs resumed) in the lifespan, and the encoders of existing collections load in a background thread
that /readyz reports on.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__
from .auth import LimitsMiddleware, install_access_control
from .errors import ErrorResponse, install_error_handlers
from .logs import request_id_var
from .metrics import install_metrics
from .routes import ROUTERS
from .routes.web import WEB_DIR
from .settings import Settings, get_settings

if TYPE_CHECKING:
    from indexer import Engine


# Answers any route can give, from the middleware and the body parser rather than the route itself: a body that is
# not JSON / UTF-8 (400), too large (413), over the caller's rate (429), too slow (504), or a full disk (507).
COMMON_ERRORS: dict[int | str, dict] = {code: {"model": ErrorResponse} for code in (400, 413, 429, 504, 507)}


def create_app(settings: Settings | None = None, *, engine: Engine | None = None, batching: bool = True) -> FastAPI:
    """The service. With `engine`, that open engine is served (and left open); otherwise one is built from settings.

    `batching=False` encodes every text query on its own (the benchmark's baseline).
    """
    settings = settings or get_settings()
    app = FastAPI(
        title="internvl-search",
        version=__version__,
        description="Image embedding, search and zero-shot classification with InternVL-C/G and open_clip encoders.",
        lifespan=_lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN; /docs is served from app/web instead
        redoc_url=None,
        responses=COMMON_ERRORS,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.owns_engine = engine is None
    app.state.batching = batching
    app.state.models = {"state": "not started"}
    app.state.readiness = lambda: readiness(app)
    install_error_handlers(app)
    install_access_control(app, settings)
    install_metrics(app)
    app.state.gauge_sources.append(lambda: service_gauges(app))
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    # Starlette's limiter counts streamed bodies (FastAPI turns its signal into a 413 our handler formats); ours,
    # outside it, refuses a too-large Content-Length up front in the one error schema and bounds request time.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=settings.max_upload_bytes)
    app.add_middleware(LimitsMiddleware, max_body_bytes=settings.max_upload_bytes, timeout_s=settings.request_timeout_s)
    app.add_middleware(RequestId)
    return app


class RequestId:
    """ASGI middleware: the request's id (the caller's X-Request-ID when it is short and printable, so it cannot
    inject into log lines; a new one otherwise) is set for the logs while the request runs and sent back in the
    response's X-Request-ID. Plain ASGI for the reason given at metrics.RequestTimer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        rid = given if 0 < len(given) <= 64 and given.isprintable() and " " not in given else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        token = request_id_var.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    from .deps import Searcher

    settings: Settings = app.state.settings
    if app.state.engine is None:
        app.state.engine = await run_in_threadpool(_open_engine, settings)
    engine = app.state.engine
    app.state.searcher = Searcher(engine, settings, batching=app.state.batching)
    threading.Thread(target=_load_models, args=(app,), name="load-models", daemon=True).start()
    try:
        yield
    finally:
        app.state.searcher.close()
        if getattr(app.state, "chat", None) is not None:  # made by the first chat request (app.chat_api)
            await run_in_threadpool(app.state.chat.close)
        if app.state.owns_engine:
            await run_in_threadpool(engine.close)
            app.state.engine = None


def _open_engine(settings: Settings) -> Engine:
    from .cli import _engine

    engine = _engine(settings, load_collections=True)
    engine.resume_jobs()  # interrupted jobs are the service's to finish
    engine.watch_jobs()  # and those a replica sharing the catalog left behind (it died, or queued them and stopped)
    engine.reload_in_background()  # an index another replica changed is loaded off the request path
    return engine


def _load_models(app: FastAPI) -> None:
    """Load every collection's encoder, so the first search does not pay for it; /readyz waits for this."""
    app.state.models = {"state": "loading"}
    try:
        for info in app.state.engine.list_collections():
            app.state.engine.encoder(info.encoder, info.checkpoint)
        app.state.models = {"state": "ok"}
    except Exception as exc:  # noqa: BLE001 - reported by /readyz, the service still answers what it can
        app.state.models = {"state": f"error: {type(exc).__name__}: {exc}"[:300]}


def readiness(app: FastAPI) -> dict[str, str]:
    engine = getattr(app.state, "engine", None)
    if engine is None:
        return {"server": "ok", "catalog": "not open", "indexes": "not open", "models": "not loaded"}
    checks = {"server": "ok", "models": app.state.models["state"]}
    try:
        from sqlalchemy import text

        with engine.sessions() as session:
            session.execute(text("SELECT 1"))
        checks["catalog"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        checks["catalog"] = f"error: {type(exc).__name__}"
    try:  # loads (and reconciles) every collection's index that is not loaded yet
        engine.list_collections()
        checks["indexes"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["indexes"] = f"error: {type(exc).__name__}: {exc}"[:300]
    return checks


def service_gauges(app: FastAPI) -> Iterable[tuple[str, str, dict[str, str], float]]:
    """Index sizes, job counts by state, micro-batcher queue depths and the text-vector cache's hits and misses, read
    at scrape time."""
    engine = getattr(app.state, "engine", None)
    if engine is None:
        return
    for info in engine.list_collections():
        yield "internvl_search_index_vectors", "Vectors served per collection", {"collection": info.name}, info.vectors
    states = Counter(job.state for job in engine.list_jobs(limit=1000))
    for state in ("queued", "running", "done", "failed", "cancelled"):
        yield "internvl_search_jobs", "Jobs by state (the newest 1000)", {"state": state}, states.get(state, 0)
    for name, depth in app.state.searcher.queue_depths().items():
        yield "internvl_search_batch_queue_depth", "Items waiting for a micro-batch", {"batcher": name}, depth
    cache = engine.text_vectors
    for result, count in (("hit", cache.hits), ("miss", cache.misses)):
        yield (
            "internvl_search_query_cache_lookups",
            "Query texts looked up in the text-vector cache, since start",
            {"result": result},
            count,
        )
