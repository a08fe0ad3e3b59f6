"""Hostile clients, round two (issue 26), each against a real server: what a client
names, leaves unread or holds open does not grow memory, leak secrets or lock others out."""

from __future__ import annotations

import json
import random
import socket
import string
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from service.loadtest.process import tree_rss_mib
from tests.conftest import ServerProcess
from tests.http.test_connections import closed_by_server, connect, read_response


def test_requested_names_are_not_kept(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """3,000 distinct 30 KB names under /ui/ (90 MB of names): cheap 404s, RSS flat.

    A cache keyed by the requested name kept every one (101 -> 964 MiB for 36,000)."""
    server = server_factory(tiny_repository)
    with connect(server) as sock:
        status, _ = _get(sock, "/ui/app.js")
        assert status == 200
        for i in range(300):  # warm up: allocator pools, first-request paths
            _get(sock, f"/ui/{i:08d}{'x' * 30_000}")
        before = tree_rss_mib(server.process.pid)
        started = time.monotonic()
        for i in range(3_000):
            status, body = _get(sock, f"/ui/{i:08d}{'y' * 30_000}")
            assert status == 404, body
            assert len(body) < 300  # the name is not echoed whole
        elapsed = time.monotonic() - started
        after = tree_rss_mib(server.process.pid)
    assert after - before < 20, f"RSS {before:.0f} -> {after:.0f} MiB"
    assert elapsed < 60


def _get(sock: socket.socket, path: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return read_response(sock)


KEY = "alice-" + "a" * 32
LEAKED = "SECRET" + "s" * 30


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_keys_in_urls_are_refused_and_never_logged(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, log_format: str
) -> None:
    server = server_factory(
        tiny_repository,
        {
            "LSTM_SERVE_API_KEYS": json.dumps([f"alice:inference:{KEY}"]),
            "LSTM_SERVE_LOG_FORMAT": log_format,
        },
    )
    ws = server.url.replace("http", "ws") + "/v1/models/tiny/stream"
    for parameter in ("token", "api_key", "key", "access_token"):
        with pytest.raises(InvalidStatus) as caught:
            ws_connect(f"{ws}?sequence_id=1&{parameter}={LEAKED}", open_timeout=10).close()
        assert caught.value.response.status_code == 400
        assert b"Authorization" in caught.value.response.body
        answer = httpx.get(
            f"{server.url}/v1/models/tiny?{parameter}={LEAKED}",
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert answer.status_code == 400
        assert "not accepted in the URL" in answer.json()["error"]
    # uvicorn's own WebSocket line with any other query (a key it does not know by name)
    with pytest.raises(InvalidStatus):
        ws_connect(f"{ws}?sequence_id={LEAKED}", open_timeout=10).close()
    with ws_connect(ws + f"?x={LEAKED}", subprotocols=[f"bearer.{KEY}"]) as stream:  # type: ignore[list-item]
        stream.send(json.dumps({"timesteps": [[0.1, 0.2, 0.3]]}))
        stream.recv(timeout=10)
    time.sleep(0.5)
    log = server.log()
    assert "WebSocket /v1/models/tiny/stream?..." in log  # uvicorn's line, without the query
    assert LEAKED not in log
    assert KEY not in log


def test_generated_request_ids_tell_nothing(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """No worker prefix, no counter: 128 random bits, nothing shared between two ids."""
    server = server_factory(tiny_repository, {"LSTM_SERVE_WORKERS": "2"})
    ids = []
    for _ in range(40):  # new connections, so both workers answer some
        answer = httpx.get(server.url + "/v2/health/live", headers={"Connection": "close"})
        ids.append(answer.headers["x-request-id"])
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len({i[:6] for i in ids}) == len(ids)  # no common prefix
    assert len({i[-6:] for i in ids}) == len(ids)  # no counter at the end
    assert (
        httpx.get(server.url + "/v2/health/live", headers={"X-Request-ID": "mine-1"}).headers[
            "x-request-id"
        ]
        == "mine-1"
    )  # a client's own sane id is still kept


def _predict_bytes(sequences: int, steps: int) -> bytes:
    body = json.dumps(
        {"instances": [[[0.1, 0.2, 0.3]] * steps] * sequences, "return_sequences": True}
    ).encode()
    head = (
        "POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


def test_answers_left_unread_are_closed_and_freed(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """10 clients send a predict whose per-timestep answer is ~3 MB, then never read it:
    the ceiling on unsent bytes closes the oldest at once, the write clock the rest."""
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_WRITE_TIMEOUT_S": "3", "LSTM_SERVE_MAX_UNSENT_BYTES": str(2 * 2**20)},
    )
    host, port = server.url.removeprefix("http://").split(":")
    idle = tree_rss_mib(server.process.pid)
    request = _predict_bytes(5, 10_000)
    hostile = []
    for _ in range(10):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(request)
        hostile.append(sock)
    try:
        deadline = time.monotonic() + 60
        while server.log().count("closing a connection from") < 10:
            assert time.monotonic() < deadline, server.log()[-3000:]
            time.sleep(0.2)
        log = server.log()
        assert "over the 2097152 of max_unsent_bytes" in log
        assert "took none of its answer for 3 s" in log
        other = httpx.post(
            f"{server.url}/v1/models/tiny:predict", json={"instances": [[[0.1, 0.2, 0.3]]]}
        )
        assert other.status_code == 200
        time.sleep(0.5)
        assert tree_rss_mib(server.process.pid) - idle < 60  # the unsent answers are gone
    finally:
        for sock in hostile:
            sock.close()


def test_one_address_cannot_take_the_connection_cap(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """127.0.0.1 holds 80 connections with a whole head and one body byte (cap 64 per
    worker, 16 per address): the other addresses' predicts are all answered."""
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_MAX_CONNECTIONS": "64", "LSTM_SERVE_MAX_CONNECTIONS_PER_ADDRESS": "16"},
    )
    held = []
    refused = 0
    try:
        for _ in range(80):
            sock = connect(server)
            sock.sendall(
                b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
            )
            held.append(sock)
        time.sleep(1.0)
        for sock in held:
            sock.settimeout(0.05)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if data.startswith(b"HTTP/1.1 503"):
                assert b"max_connections_per_address" in data
                refused += 1
        assert refused == 80 - 16
        answers = []
        for i in range(2, 22):
            transport = httpx.HTTPTransport(local_address=f"127.0.0.{i}")
            with httpx.Client(transport=transport, timeout=30) as client:
                answers.append(
                    client.post(
                        f"{server.url}/v1/models/tiny:predict",
                        json={"instances": [[[0.1, 0.2, 0.3]]]},
                    ).status_code
                )
        assert answers == [200] * 20
    finally:
        for sock in held:
            sock.close()


def _post_slowly(
    sock: socket.socket, body: bytes, chunk: int, every_s: float, stop: threading.Event
) -> None:
    """Send a predict whose ``body`` goes ``chunk`` bytes every ``every_s`` seconds."""
    sock.sendall(
        b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for start in range(0, len(body), chunk):
        if stop.wait(every_s):
            return
        try:
            sock.sendall(body[start : start + chunk])
        except OSError:  # the server closed the connection
            return


def _timed_predict(
    server: ServerProcess, body: bytes, chunk: int, every_s: float
) -> tuple[int, bytes, float, bool]:
    """Status, body and seconds of a predict sent at a pace; whether the server closed."""
    stop = threading.Event()
    with connect(server) as sock:
        sock.settimeout(20)
        sender = threading.Thread(target=_post_slowly, args=(sock, body, chunk, every_s, stop))
        started = time.monotonic()
        sender.start()
        try:
            status, answer = read_response(sock)
            waited = time.monotonic() - started
            sock.settimeout(3)
            closed = status != 200 and closed_by_server(sock)
        finally:
            stop.set()
            sender.join()
    return status, answer, waited, closed


def _instances(steps: int, sequences: int = 1) -> bytes:
    return json.dumps({"instances": [[[0.1, 0.2, 0.3]] * steps] * sequences}).encode()


def test_a_slow_upload_is_refused_at_the_minimum_rate(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """The defaults (16 KiB/s after 5 s; request_timeout_s 30): a 1 MB body sent at
    1 KiB/s gets its 408 after ~5.3 s, not 30 s; a body at an ordinary pace, and a small
    one on a slow link within the grace, are answered."""
    server = server_factory(tiny_repository)
    slow = _instances(10_000, 6)[:1_000_000]
    status, answer, waited, closed = _timed_predict(server, slow, 128, 0.125)
    assert status == 408, answer
    message = json.loads(answer)["error"]
    assert "under the minimum of 16 KiB/s" in message
    assert "min_upload_bytes_per_s" in message
    assert "of 1000000 bytes" in message
    assert 5 <= waited < 10, waited  # after the grace, well before request_timeout_s
    assert closed  # the rest of the body is not waited for

    ordinary = _instances(10_000, 5)  # ~850 KB at ~100 KB/s: past the grace
    status, answer, waited, _ = _timed_predict(server, ordinary, 10_000, 0.1)
    assert status == 200, answer
    assert waited > 6
    assert len(json.loads(answer)["predictions"]) == 5

    small = _instances(400)  # ~7 KB at 2 KiB/s: under the minimum, within the grace
    status, answer, waited, _ = _timed_predict(server, small, 256, 0.125)
    assert status == 200, answer
    assert waited > 3


def test_one_connection_may_not_hold_more_than_its_unsent_bytes(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """A client that sends a predict whose answer is ~9 MB and never reads it (the
    kernel's send buffer takes up to 4 MiB of it; the rest waits in the server) is closed
    at the next sweep once over max_unsent_bytes_per_connection (1 MiB here), long before
    the write timeout (120 s) or the total ceiling (128 MiB); others are answered."""
    server = server_factory(
        tiny_repository,
        {
            "LSTM_SERVE_WRITE_TIMEOUT_S": "120",
            "LSTM_SERVE_MAX_UNSENT_BYTES_PER_CONNECTION": str(2**20),
        },
    )
    host, port = server.url.removeprefix("http://").split(":")
    hostile = socket.socket()
    hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hostile.connect((host, int(port)))
    answers = []
    try:
        hostile.sendall(_predict_bytes(16, 10_000))
        started = time.monotonic()
        with httpx.Client(timeout=30) as other:
            while "max_unsent_bytes_per_connection" not in server.log():
                assert time.monotonic() - started < 15, server.log()[-3000:]
                answers.append(
                    other.post(
                        f"{server.url}/v1/models/tiny:predict",
                        json={"instances": [[[0.1, 0.2, 0.3]]]},
                    ).status_code
                )
                time.sleep(0.05)
            closed_after = time.monotonic() - started
            for _ in range(5):
                answers.append(
                    other.post(
                        f"{server.url}/v1/models/tiny:predict",
                        json={"instances": [[[0.1, 0.2, 0.3]]]},
                    ).status_code
                )
        assert closed_after < 8, closed_after
        assert "over the 1048576 of max_unsent_bytes_per_connection" in server.log()
        hostile.settimeout(5)
        assert closed_by_server(hostile)
        assert answers and set(answers) == {200}
    finally:
        hostile.close()


def _label_values(metrics: str, name: str) -> dict[str, set[str]]:
    """Every value each label of the series ``name`` takes in a Prometheus text page."""
    values: dict[str, set[str]] = {}
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        for pair in line[len(name) + 1 : line.rindex("} ")].split('",'):
            key, _, value = pair.partition('="')
            values.setdefault(key, set()).add(value.rstrip('"'))
    return values


def test_names_and_codes_a_client_chooses_are_no_labels(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """2,000 requests naming random models (and versions) on every model route, and
    WebSocket sessions closed with 100 client-chosen codes: the metrics' label values stay
    those of the fixed sets (loaded models, route templates, registered close codes)."""
    server = server_factory(tiny_repository)
    rng = random.Random(26)
    routes = (
        ("POST", "/v1/models/{}:predict"),
        ("POST", "/v1/models/{}/versions/{}:predict"),
        ("GET", "/v1/models/{}"),
        ("GET", "/v1/models/{}/versions/{}"),
        ("POST", "/v2/models/{}/infer"),
        ("POST", "/v2/models/{}/versions/{}/infer"),
        ("GET", "/v2/models/{}/versions/{}/ready"),
        ("GET", "/ui/models/{}/versions/{}/examples"),
    )
    statuses = set()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(2_000):
            method, template = routes[i % len(routes)]
            name = "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))
            path = template.format(name, rng.randrange(2, 10**9))
            answer = client.request(method, path, json={"instances": [[[0.1, 0.2, 0.3]]]})
            statuses.add(answer.status_code)
        assert client.get("/v1/models/tiny").status_code == 200
    assert max(statuses) < 500, statuses
    ws = server.url.replace("http", "ws")
    for i in range(100):
        name = "tiny" if i % 2 else f"nope{i}"
        with ws_connect(f"{ws}/v1/models/{name}/stream", open_timeout=10) as stream:
            if name == "tiny":
                stream.send(json.dumps({"timesteps": [[0.1, 0.2, 0.3]]}))
                stream.recv(timeout=10)
            stream.close(code=3000 + 19 * i)
    time.sleep(0.5)
    metrics = httpx.get(server.url + "/metrics").text
    requests = _label_values(metrics, "lstm_requests_total")
    assert requests["model"] <= {"", "tiny"}, requests["model"]
    assert requests["version"] <= {"", "2"}, requests["version"]
    assert requests["endpoint"] <= {
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
        "/v1/models/{name}",
        "/v1/models/{name}/versions/{version}",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
        "/v2/models/{name}/versions/{version}/ready",
        "/ui/models/{name}/versions/{version}/examples",
        "/v2/health/ready",
        "unmatched",
    }, requests["endpoint"]
    sessions = _label_values(metrics, "lstm_websocket_sessions_total")
    assert sessions["code"] <= {"0", "other"} | {str(c) for c in range(1000, 1016)}, sessions[
        "code"
    ]
