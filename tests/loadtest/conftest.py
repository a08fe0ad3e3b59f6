"""One real server over the tiny repository, shared by the load-client tests.

Starting ``python -m service`` costs seconds, and every test here only sends
traffic (none changes server state), so the whole package shares one server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, start_server


@pytest.fixture(scope="package")
def bench_server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("bench-server") / "server.log"
    server = start_server(tiny_repository, log, {"LSTM_SERVE_LOG_LEVEL": "warning"})
    yield server
    server.stop()
