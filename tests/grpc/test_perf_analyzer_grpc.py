"""Triton's ``perf_analyzer`` against a real server over gRPC (``-i grpc``, its default
protocol): it reads the model's metadata and configuration over gRPC, then sends raw
tensors at concurrency 1 and 4, with and without ``lengths``.

The same install and run as the HTTP check (``tests/http/v2/test_perf_analyzer.py``,
``service/loadtest/perf_analyzer.py``); it asserts that perf_analyzer succeeded and
measured throughput and latency, never how much.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from service.loadtest import perf_analyzer as pa
from service.loadtest.process import free_port
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
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    port = free_port()
    process = start_server(
        DEFAULT_REPOSITORY,
        tmp_path_factory.mktemp("pa-grpc") / "server.log",
        env={"LSTM_SERVE_GRPC_PORT": str(port)},
    )
    yield process, port
    process.stop()


@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "no-lengths"])
def test_concurrency_sweep_over_grpc(
    binary: Path, server: tuple[ServerProcess, int], tmp_path: Path, with_lengths: bool
) -> None:
    data = pa.input_data(tmp_path / "data.json", 100, with_lengths)
    url = f"127.0.0.1:{server[1]}"
    report, measured = pa.run(
        binary, url, data, None, "1:4:3", REQUESTS_PER_WINDOW, protocol="grpc"
    )
    assert [m.concurrency for m in measured] == [1, 4], report[-4000:]
    for m in measured:
        assert m.throughput > 0 and m.p50_us is not None and m.p99_us is not None
        assert m.p50_us > 0 and m.p99_us >= m.p50_us
    assert "Avg gRPC time" in report, report[-4000:]  # it spoke gRPC, not HTTP
    assert "error" not in report.lower(), report[-4000:]
    assert "Failed" not in report
