"""One real server on the repository shipped with the project (the default model)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.settings import DEFAULT_REPOSITORY
from tests.conftest import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The default repository (``basic_motions``, ``sunspots``): the examples are for it."""
    process = start_server(DEFAULT_REPOSITORY, tmp_path_factory.mktemp("openapi") / "server.log")
    yield process
    process.stop()
