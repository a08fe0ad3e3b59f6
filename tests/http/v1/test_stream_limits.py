"""Every WebSocket stream is bounded, on a real server: how many, how idle, how large."""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.loadtest.process import PeakRss, tree_rss_mib
from tests.conftest import ServerProcess


def stream_url(server: ServerProcess) -> str:
    return server.url.replace("http", "ws") + "/v1/models/tiny/stream"


def test_streams_beyond_the_limit_are_refused_and_idle_ones_closed(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_MAX_WEBSOCKETS": "2", "LSTM_SERVE_WEBSOCKET_IDLE_TIMEOUT_S": "1"},
    )
    with connect(stream_url(server)) as first, connect(stream_url(server)) as second:
        with connect(stream_url(server)) as third:
            assert json.loads(third.recv(timeout=10)) == {
                "error": "2 streams are open on this worker; retry later"
            }
            with pytest.raises(ConnectionClosed):
                third.recv(timeout=10)
            assert third.close_code == 1013
        for ws in (first, second):  # both idle past the timeout: told why, then closed
            assert json.loads(ws.recv(timeout=10)) == {
                "error": "no message for 1 s; closing the stream"
            }
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            assert ws.close_code == 1001
    with connect(stream_url(server)) as again:  # the slots are free again
        again.send(json.dumps({"timesteps": [[0.1, 0.2, 0.3]]}))
        assert json.loads(again.recv(timeout=10))["steps"] == 1


def test_a_message_over_the_limit_closes_the_stream_even_when_compressed(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_MAX_WEBSOCKET_MESSAGE_BYTES": "4096"})
    message = json.dumps({"timesteps": [[0.0, 0.0, 0.0]] * 2000})  # ~32 KB, compresses to <1 KB
    assert len(zlib.compress(message.encode())) < 4096 < len(message)
    with connect(stream_url(server), compression="deflate") as ws:
        ws.send(message)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        assert ws.close_code == 1009  # "message too big", decompressed size counted
    with connect(stream_url(server)) as ws:  # the server is unaffected
        ws.send(json.dumps({"timesteps": [[0.1, 0.2, 0.3]]}))
        assert json.loads(ws.recv(timeout=10))["steps"] == 1


def test_a_flood_of_idle_streams_is_capped_and_holds_bounded_memory(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """Issue 13: 2,050 idle WebSockets added 160 MiB. Now only ``max_websockets`` stay."""
    server = server_factory(tiny_repository, {"LSTM_SERVE_MAX_WEBSOCKETS": "256"})
    idle_rss = tree_rss_mib(server.process.pid)
    refused = 0
    with contextlib.ExitStack() as streams, PeakRss(server.process.pid) as peak:
        opened = [streams.enter_context(connect(stream_url(server))) for _ in range(400)]
        for ws in opened[256:]:
            answer = json.loads(ws.recv(timeout=10))
            assert answer == {"error": "256 streams are open on this worker; retry later"}
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
            refused += ws.close_code == 1013
    print(f"peak RSS over idle: {peak.peak - idle_rss:.1f} MiB")
    assert refused == 400 - 256
    assert peak.peak - idle_rss < 60  # MiB, for 256 open streams and 144 refused
