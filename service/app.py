"""``create_app(settings)``: the served ASGI app, with the core started in its lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp

from service.core.server import Server
from service.dataplane import DataPlane
from service.grpc.server import STOP_GRACE_S, start_grpc
from service.http import errors, health, metrics, openapi
from service.http.asgi import BudgetedApp, HotRoutes
from service.http.body import BodyLimits
from service.http.observer import RequestObserver
from service.http.security import Security
from service.http.ui.routes import router as ui_router
from service.http.v1 import routes as v1
from service.http.v1 import stream
from service.http.v1.codec import V1Codec
from service.http.v2 import repository
from service.http.v2 import routes as v2
from service.http.v2.codec import V2Codec
from service.settings import Settings

HOT_ROUTERS = [v1.router, v2.router]
"""The routers whose ``@hot`` routes (predict, infer) are served straight from ASGI."""


def build_fastapi(settings: Settings) -> FastAPI:
    """The FastAPI app with every route, and the core (``app.state.server``) in its lifespan."""
    server = Server(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # gRPC beside HTTP, on the same core and data plane (service/grpc/server.py);
        # started first, so its health service answers NOT_SERVING while models load.
        grpc_server = await start_grpc(server, app.state.dataplane, settings, app.version)
        try:
            await server.start()
        except BaseException:
            if grpc_server is not None:
                await grpc_server.stop(0)
            raise
        try:
            # Everything loaded so far lives as long as the process: move it out of the
            # collector's reach, so the full collections that request garbage triggers
            # scan only request-sized heaps (they caused 10-20 ms latency spikes).
            gc.collect()
            gc.freeze()
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(STOP_GRACE_S)
            await server.stop()

    # Swagger UI and ReDoc from the assets fastapi-offline installs, not from a CDN:
    # the docs work on an air-gapped cluster (``http/openapi.py``).
    app = FastAPIOffline(
        title="LSTM serving",
        summary="Stacked LSTMs exported to ONNX, served with onnxruntime.",
        version="0.1.0",
        lifespan=lifespan,
        static_url=openapi.DOCS_ASSETS,
        swagger_ui_parameters=openapi.SWAGGER_UI_PARAMETERS,
    )
    app.state.server = server
    # The request path and each protocol's codec, built once from the settings.
    app.state.dataplane = DataPlane(server)
    app.state.v1_codec = V1Codec(settings)
    app.state.v2_codec = V2Codec(settings)
    app.state.body_limits = BodyLimits.of(settings)
    app.state.body_limits_decoded = BodyLimits.of(settings, encoded=True)
    openapi.install(app, settings)
    errors.install(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(v1.router)
    app.include_router(stream.router)
    app.include_router(repository.router)
    app.include_router(v2.router)
    app.include_router(ui_router)
    return app


def create_app(settings: Settings) -> ASGIApp:
    """The served stack: ``RequestObserver`` -> ``Security`` -> ``HotRoutes`` -> FastAPI.

    The wrappers sit outside FastAPI rather than in its middleware list so that
    the hot routes skip Starlette's middleware layers too; every other request
    still gets FastAPI's full handling (and ``/docs``). ``Security``
    (``http/security.py``) is inside the observer, so refusals get access lines
    and metrics, and outside ``HotRoutes``, so no route escapes it.
    """
    hot = HotRoutes(build_fastapi(settings), HOT_ROUTERS)
    observed = RequestObserver(Security(hot, settings))
    return BudgetedApp(observed) if settings.cpu_budget else observed
