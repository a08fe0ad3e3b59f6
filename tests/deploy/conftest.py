"""Fixtures of the deploy tests: the rendered overlays and the paths the app serves."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from service.app import create_app
from service.settings import Settings
from tests.deploy.support import OVERLAYS, Get, load_all, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, str]:
    """``kubectl kustomize`` of each overlay, as YAML text."""
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def overlay_docs(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {overlay: load_all(text) for overlay, text in rendered.items()}


@pytest.fixture(scope="session")
def app_get(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Get]:
    """GET a path from the app in this process, not started: what a probe would reach.

    The lifespan does not run, so no model loads; health answers "not ready" (503)
    and an unrouted path answers 404.
    """
    settings = Settings(model_repository=tmp_path_factory.mktemp("empty-repository"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's TestClient deprecation notice
        from fastapi.testclient import TestClient
    client = TestClient(create_app(settings), base_url="http://127.0.0.1")
    yield client.get
    client.close()
