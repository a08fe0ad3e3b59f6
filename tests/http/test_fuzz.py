"""Property-based fuzzing of the HTTP surface of a real server: no 5xx, and it keeps answering.

Generated request lines, paths, headers, bodies (arbitrary bytes and arbitrary
JSON against the inference routes) and WebSocket frames. Bounded in examples
and time, all on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess, start_server

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
ROUTES = [
    "/v1/models/tiny:predict",
    "/v1/models/tiny/versions/2:predict",
    "/v2/models/tiny/infer",
    "/v2/models/tiny/versions/2/infer",
    "/v1/models/tiny",
    "/v2/models/tiny",
    "/v2",
    "/v2/health/live",
    "/v2/repository/index",
    "/metrics",
]


@pytest.fixture(scope="module")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("fuzz") / "server.log"
    process = start_server(
        tiny_repository,
        log,
        {"LSTM_SERVE_MAX_BODY_BYTES": "65536", "LSTM_SERVE_HEAD_TIMEOUT_S": "5"},
    )
    yield process
    alive = exchange(process, b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    process.stop()
    assert alive == 200  # still answering after everything below
    assert "Traceback" not in log.read_text()


def exchange(server: ServerProcess, request: bytes) -> int | None:
    """Send raw bytes, return the status of the answer (None if closed without one)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        with contextlib.suppress(OSError):  # it may answer and close before taking it all
            sock.sendall(request)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return None
    return int(data.split(b" ", 2)[1])


def http_request(
    method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: 127.0.0.1"]
    lines += [name + b": " + value for name, value in headers]
    lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


header_names = st.sampled_from(
    [
        b"Content-Type",
        b"Content-Encoding",
        b"Inference-Header-Content-Length",
        b"X-Request-Id",
        b"Accept",
        b"Expect",
        b"Transfer-Encoding",
        b"X-Fuzz",
    ]
)
header_values = st.binary(max_size=64).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
headers = st.lists(st.tuples(header_names, header_values), max_size=4)
paths = st.one_of(
    st.sampled_from(ROUTES).map(str.encode),
    st.text(max_size=40).map(lambda t: ("/" + quote(t, safe="/:")).encode()),
    st.tuples(st.sampled_from(["/v1", "/v2"]), st.text(max_size=12)).map(
        lambda p: f"{p[0]}/models/tiny/versions/{quote(p[1], safe='')}".encode()
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@FUZZ
@given(
    method=st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS"]),
    path=paths,
    header_list=headers,
    body=st.binary(max_size=512),
)
def test_raw_requests_never_get_a_5xx(
    server: ServerProcess,
    method: bytes,
    path: bytes,
    header_list: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    status = exchange(server, http_request(method, path, header_list, body))
    assert status is None or status < 500, (method, path, header_list, body)


envelopes = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"instances": json_values},
        optional={"sequence_id": json_values, "return_sequences": json_values},
    ),
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.fixed_dictionaries(
                    {
                        "name": st.sampled_from(["x", "lengths", "y"]),
                        "shape": st.lists(st.integers(-2, 4), max_size=4),
                        "datatype": st.sampled_from(["FP32", "INT64", "BOOL", "BYTES"]),
                        "data": json_values,
                    }
                ),
                max_size=2,
            )
        },
        optional={"id": json_values, "parameters": json_values, "outputs": json_values},
    ),
)


@FUZZ
@given(route=st.sampled_from(ROUTES[:4]), payload=envelopes)
def test_generated_json_bodies_never_get_a_5xx(
    server: ServerProcess, route: str, payload: object
) -> None:
    body = json.dumps(payload, allow_nan=True).encode()
    request = http_request(b"POST", route.encode(), [(b"Content-Type", b"application/json")], body)
    status = exchange(server, request)
    assert status is not None and status < 500, (route, body)


@FUZZ
@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=64),
            json_values.map(lambda v: json.dumps({"timesteps": v})),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_websocket_frames_get_messages_not_a_dropped_connection(
    server: ServerProcess, frames: list[str | bytes]
) -> None:
    with ws_connect(server.url.replace("http", "ws") + "/v1/models/tiny/stream") as ws:
        for frame in frames:
            ws.send(frame)
            try:
                answer = json.loads(ws.recv(timeout=15))
            except ConnectionClosed:  # only the stream's own ends: {"end": true} and limits
                assert ws.close_code in (1000, 1009), frames
                return
            assert isinstance(answer, dict) and answer, frames
