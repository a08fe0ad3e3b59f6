"""Bounds a real server puts on clients: stalled uploads and connection floods."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ServerProcess


def connect(server: ServerProcess) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def test_a_stalled_upload_gets_408_after_the_request_timeout(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_REQUEST_TIMEOUT_S": "1"})
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"instances": ['
        )
        start = time.monotonic()
        status, body = read_response(sock)
        waited = time.monotonic() - start
    assert status == 408
    assert json.loads(body) == {
        "error": "the request body did not arrive within 1 s; send it whole and promptly"
    }
    assert waited < 10  # answered, not left hanging


def test_connections_beyond_the_limit_get_503(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_MAX_CONNECTIONS": "3"})
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    held = [connect(server) for _ in range(2)]
    try:
        for sock in held:  # keep-alive connections, each served once and kept open
            sock.sendall(request)
            assert read_response(sock)[0] == 200
        with connect(server) as extra:  # the third reaches the limit (uvicorn counts it too)
            extra.sendall(request)
            assert read_response(extra)[0] == 503
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)  # the server notices the closed connections
    with connect(server) as again:
        again.sendall(request)
        assert read_response(again)[0] == 200
