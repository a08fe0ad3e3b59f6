"""``service/loadtest/grpc_bench.py``'s parts on a real server, for a fraction of a second
each: they measure, and the table prints; never how fast."""

from __future__ import annotations

from pathlib import Path

from service.loadtest import grpc_bench as gb
from service.loadtest.process import free_port
from service.settings import DEFAULT_REPOSITORY
from tests.conftest import start_server


def test_both_protocols_measure_and_the_table_prints(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(
        DEFAULT_REPOSITORY,
        tmp_path / "server.log",
        env={"LSTM_SERVE_GRPC_PORT": str(port), "LSTM_SERVE_LOG_LEVEL": "warning"},
    )
    try:
        grpc_figures = gb.measure_grpc(server, port, batch=4, clients=2, steps=10, seconds=0.3)
        http_figures = gb.measure_http(server, batch=4, clients=2, steps=10, seconds=0.3)
    finally:
        server.stop()
    for count, elapsed, p50, p99, cpu_s in (grpc_figures, http_figures):
        assert count > 0 and elapsed > 0 and cpu_s > 0
        assert 0 < p50 <= p99
    row = gb.GrpcRow("grpc-raw", 4, 2, grpc_figures[0], 1.0, 4.0, 0.5, 1.0, 2.0, 300.0, 1.0)
    text = gb.table({"sequences_per_s": 8.0, "processes": 2}, [row])
    assert "| 4 seq/request, 2 clients | grpc-raw |" in text
