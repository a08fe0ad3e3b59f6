"""An in-process app (real onnxruntime, real ASGI stack) over the tiny repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings


def make_client(repository: Path, **overrides: object) -> TestClient:
    settings = Settings(model_repository=repository, **overrides)  # type: ignore[arg-type]
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(tiny_repository: Path) -> Iterator[TestClient]:
    with make_client(
        tiny_repository, max_instances=16, max_timesteps=64, max_body_bytes=65536
    ) as c:
        yield c
