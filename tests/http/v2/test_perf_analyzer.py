"""Triton's ``perf_analyzer`` against a real server over HTTP: it reads the model's
metadata and configuration, then sends load, so it checks that both follow
Triton's conventions (``v2/metadata.py``).

Installed and run by ``service/loadtest/perf_analyzer.py`` (the wheels into a
cache directory of their own, Debian's ``libb64-0d`` with apt-get), so the
README's test command sets it up on a fresh machine. Runs are short (concurrency
1 and 2, three windows of 100 requests each): the test asserts that perf_analyzer
succeeded and measured throughput and latency, never how much.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.loadtest import perf_analyzer as pa
from service.settings import DEFAULT_REPOSITORY
from tests.conftest import ServerProcess, start_server

REQUESTS_PER_WINDOW = 100


@pytest.fixture(scope="module")
def binary() -> Path:
    try:
        return pa.install()
    except RuntimeError as exc:  # never a silent skip: CI must run it
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(DEFAULT_REPOSITORY, tmp_path_factory.mktemp("pa") / "server.log")
    yield process
    process.stop()


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "no-lengths"])
def test_concurrency_sweep(
    binary: Path, server: ServerProcess, tmp_path: Path, tensor_format: str, with_lengths: bool
) -> None:
    data = pa.input_data(tmp_path / "data.json", 100, with_lengths)
    report, measured = pa.run(binary, server.url, data, tensor_format, "1:2", REQUESTS_PER_WINDOW)
    assert [m.concurrency for m in measured] == [1, 2], report[-4000:]
    for m in measured:
        assert m.throughput > 0 and m.p50_us is not None and m.p99_us is not None
        assert m.p50_us > 0 and m.p99_us >= m.p50_us
    assert "error" not in report.lower(), report[-4000:]
    assert "Failed" not in report
