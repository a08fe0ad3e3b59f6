"""Bounds a real server puts on clients: stalled uploads and connection floods."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

from service.loadtest.process import PeakRss, tree_rss_mib
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
    return read_response_rest(data, sock)


def read_response_rest(data: bytes, sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of a response whose first bytes (the whole head) are ``data``."""
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


STALLED_UPLOAD = (
    b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
)


def get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return read_response(sock)


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed the connection (reads, past any answer, give EOF or
    a reset); False if it stays open for the socket's timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def test_at_the_connection_cap_busy_connections_get_a_json_503_and_probes_still_answer(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(
        tiny_repository, {"LSTM_SERVE_MAX_CONNECTIONS": "3", "LSTM_SERVE_REQUEST_TIMEOUT_S": "20"}
    )
    busy = [connect(server) for _ in range(2)]
    try:
        for sock in busy:  # each holds a request in flight: nothing to evict
            sock.sendall(STALLED_UPLOAD)
        time.sleep(0.3)
        with connect(server) as extra:  # the third reaches the cap (it counts too)
            extra.sendall(b"GET /v2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += extra.recv(65536)
            head = data.split(b"\r\n\r\n")[0].lower()
            status, body = read_response_rest(data, extra)
        assert status == 503
        assert b"retry-after: 1" in head and b"content-type: application/json" in head
        assert json.loads(body) == {
            "error": "the server is at its limit of 3 connections per worker; retry in 1 s"
        }
        for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
            with connect(server) as probe:  # reserved: served even at the cap
                assert get(probe, path)[0] == 200, path
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.5)  # the server notices the closed connections
    with connect(server) as again:
        assert get(again, "/v2")[0] == 200


def test_a_connection_that_sends_nothing_is_closed_at_the_head_timeout(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_HEAD_TIMEOUT_S": "1"})
    with connect(server) as sock:
        assert closed_by_server(sock)  # within the 10 s socket timeout, or recv raises


def test_a_trickled_request_head_gets_408_at_the_head_timeout(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """Bytes arriving do not reset the clock: a slowloris is cut off all the same."""
    server = server_factory(tiny_repository, {"LSTM_SERVE_HEAD_TIMEOUT_S": "1"})
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        sent = 0
        try:
            while sent < 100:  # one header byte every 0.1 s: 10 s if never cut off
                sock.sendall(b"X")
                sent += 1
                time.sleep(0.1)
        except OSError:
            pass
        status, body = read_response(sock)
    assert sent < 100
    assert status == 408
    assert json.loads(body) == {"error": "the request head did not arrive within 1 s"}


def test_the_head_timeout_applies_between_keep_alive_requests(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_HEAD_TIMEOUT_S": "1", "LSTM_SERVE_KEEP_ALIVE_TIMEOUT_S": "60"},
    )
    with connect(server) as sock:
        assert get(sock, "/v2/health/live")[0] == 200
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")  # the next head, never finished
        assert read_response(sock)[0] == 408
        assert closed_by_server(sock)


def test_a_request_head_over_the_header_limit_gets_431(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_MAX_HEADER_BYTES": "4096"})
    with connect(server) as sock:
        # 8 MiB of one header: refused after the first few KiB, not buffered; the
        # server may close while we are still sending.
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * (8 << 20))
        status, body = read_response(sock)
    assert status == 431
    assert json.loads(body) == {
        "error": "the request line and headers are over 4096 bytes; the limit is 4096"
    }
    with connect(server) as sock:  # a head just under the limit is fine
        sock.sendall(b"GET /v2 HTTP/1.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n")
        assert read_response(sock)[0] == 200


def test_2048_idle_connections_leave_health_and_new_requests_answering(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """The attack of issue 13 at the default cap: idle connections give way to real ones."""
    server = server_factory(
        tiny_repository, {"LSTM_SERVE_MAX_CONNECTIONS": "2048", "LSTM_SERVE_HEAD_TIMEOUT_S": "5"}
    )
    idle = []
    try:
        for i in range(2048):
            sock = connect(server)
            if i % 2:
                sock.sendall(b"GET /v2/he")  # a partial request line
            idle.append(sock)
        time.sleep(0.5)
        for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v1/models/tiny"):
            with connect(server) as sock:
                assert get(sock, path)[0] == 200, path
        evicted = sum(closed_by_server_now(sock) for sock in idle[:50])
        assert evicted >= 2  # the two non-probe requests each took an idle slot
        # Past the head timeout, every idle connection is gone (sampled: 50 of them).
        assert all(closed_by_server(sock) for sock in idle[-50:])
    finally:
        for sock in idle:
            sock.close()


def closed_by_server_now(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_unfinished_huge_headers_hold_no_memory(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """20 connections each sending 8 MiB of one header (174 MiB held before the limit)."""
    server = server_factory(tiny_repository)
    idle_rss = tree_rss_mib(server.process.pid)
    socks = [connect(server) for _ in range(20)]
    try:
        with PeakRss(server.process.pid) as peak:
            for sock in socks:
                sock.sendall(b"GET /v2 HTTP/1.1\r\nX-Big: ")
            for sock in socks:
                with contextlib.suppress(OSError):  # refused after the first 32 KiB
                    sock.sendall(b"a" * (8 << 20))
            for sock in socks:
                assert read_response(sock)[0] == 431
    finally:
        for sock in socks:
            sock.close()
    print(f"peak RSS over idle: {peak.peak - idle_rss:.1f} MiB")
    assert peak.peak - idle_rss < 40  # MiB: each connection's head is bounded, not buffered


def test_pipelined_requests_are_all_answered_within_the_bounds(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_MAX_HEADER_BYTES": "4096"})
    body = json.dumps({"instances": [[[0.1, 0.2, 0.3]] * 400]}).encode()  # over 4096 bytes
    request = (
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    with connect(server) as sock:
        # The second and third wait in uvicorn's pipeline; the third's body comes later,
        # while it runs, and is a body, not a request head (no 431, no head clock).
        head, _, tail = request.partition(b"\r\n\r\n")
        sock.sendall(request * 2 + head + b"\r\n\r\n")
        time.sleep(0.5)
        sock.sendall(tail)
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        stream = sock.makefile("rb")  # buffered: answers may share one read
        statuses = []
        for _ in range(4):
            statuses.append(int(stream.readline().split(b" ")[1]))
            length = 0
            while (line := stream.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            stream.read(length)
        assert statuses == [200, 200, 200, 200]  # no 431 for bodies, and the connection goes on
