"""The streams workload against a real server: every stream advances, nothing fails."""

from __future__ import annotations

import asyncio

import pytest

from service.loadtest.process import ServerProcess
from service.loadtest.spec import SpecError
from service.loadtest.streams import drive


@pytest.mark.parametrize("mode", ["ws", "v1"])
def test_concurrent_streams_all_advance(bench_server: ServerProcess, mode: str) -> None:
    result = asyncio.run(drive(bench_server.url, mode, "tiny", 3, streams=8, seconds=0.5))  # type: ignore[arg-type]
    assert result["errors"] == {}
    assert result["streams"] == 8 and result["steps"] >= 8  # each stream answered at least once
    assert result["steps_per_s"] > 0


def test_streams_refuse_a_remote_target() -> None:
    with pytest.raises(SpecError, match="loopback"):
        asyncio.run(drive("http://192.0.2.1:8000", "ws", "tiny", 3, streams=1, seconds=0.1))
