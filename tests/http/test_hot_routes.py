"""Hot routes: served past FastAPI, declared beside their endpoints, never silently unguarded."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.middleware.base import BaseHTTPMiddleware

from service.app import HOT_ROUTERS, build_fastapi
from service.http.asgi import HotRoutes
from service.http.observer import RequestObserver
from service.settings import Settings

HOT = {
    "/v1/models/{name}:predict",
    "/v1/models/{name}/versions/{version}:predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
}


def test_the_inference_routes_are_the_hot_ones(tiny_repository: Path) -> None:
    hot = HotRoutes(build_fastapi(Settings(model_repository=tiny_repository)), HOT_ROUTERS)
    assert {route.path for route in hot.routes} == HOT


def test_a_middleware_the_hot_routes_would_skip_stops_the_start(tiny_repository: Path) -> None:
    app = build_fastapi(Settings(model_repository=tiny_repository))

    async def tag(request, call_next):  # type: ignore[no-untyped-def]
        return await call_next(request)

    app.add_middleware(BaseHTTPMiddleware, dispatch=tag)
    client = TestClient(RequestObserver(HotRoutes(app, HOT_ROUTERS)))
    with pytest.raises(RuntimeError, match="middleware BaseHTTPMiddleware was added to the"):
        client.__enter__()


def test_without_added_middleware_the_app_starts_and_serves(tiny_repository: Path) -> None:
    app = build_fastapi(Settings(model_repository=tiny_repository))
    with TestClient(RequestObserver(HotRoutes(app, HOT_ROUTERS))) as client:
        answer = client.post("/v1/models/tiny:predict", json={"instances": [[[0.1, 0.2, 0.3]]]})
    assert answer.status_code == 200
    assert answer.json()["predictions"][0]["label"].startswith("class_")
