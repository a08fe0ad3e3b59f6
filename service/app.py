"""``create_app()``: settings in, a FastAPI app out, with the core started in its lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from service.api import errors, health, metrics, repository, stream, v1, v2
from service.api.hot_routes import HotRoutes
from service.http.ui.routes import router as ui_router
from service.observability import RequestObserver, configure_logging
from service.server import Server
from service.settings import Settings

HOT_PATHS = {
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}
"""The inference routes served by ``HotRoutes``, past FastAPI's per-request machinery."""


def create_app(settings: Settings | None = None) -> ASGIApp:
    """The served ASGI stack: ``RequestObserver`` -> ``HotRoutes`` -> FastAPI.

    The two wrappers sit outside FastAPI rather than in its middleware list so
    that the hot routes skip Starlette's middleware layers too; every other
    request still gets FastAPI's full handling (and ``/docs``).
    """
    settings = settings or Settings()
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        # Everything loaded so far lives as long as the process: move it out of the
        # collector's reach, so the full collections that request garbage triggers
        # scan only request-sized heaps (they caused 10-20 ms latency spikes).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(
        title="LSTM serving",
        summary="Stacked LSTMs exported to ONNX, served with onnxruntime.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.server = server
    errors.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(v1.router)
    app.include_router(stream.router)
    app.include_router(repository.router)
    app.include_router(v2.router)
    app.include_router(ui_router)
    hot = HotRoutes(app, fastapi=app, routers=[v1.router, v2.router], paths=HOT_PATHS)
    return RequestObserver(hot)  # outermost: every request is counted and logged


def create_served_app() -> ASGIApp:
    """The factory uvicorn imports in each worker process: logging first, then the app.

    Worker processes start fresh, so they configure logging themselves rather
    than inherit it from ``lstm-serve``.
    """
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format == "json")
    return create_app(settings)
