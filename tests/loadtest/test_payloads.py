"""Request bytes and response framing, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.loadtest.client import ChunkedBody, ProtocolError, _parse_head, encode_request
from service.loadtest.payloads import (
    HEADER_LENGTH,
    build_payloads,
    random_inputs,
    v1_payload,
    v2_binary_payload,
    v2_json_payload,
)
from service.loadtest.spec import SpecError, Target, is_loopback, parse_target


def test_v2_binary_framing_is_header_then_raw_little_endian_floats() -> None:
    x = random_inputs(1, batch=2, timesteps=5, features=3, seed=7)[0]
    payload = v2_binary_payload("tiny", x, return_sequences=True)
    headers = payload.header_dict()
    size = int(headers[HEADER_LENGTH])
    header = json.loads(payload.body[:size])
    (tensor,) = header["inputs"]
    assert tensor["name"] == "x" and tensor["datatype"] == "FP32"
    assert tensor["shape"] == [2, 5, 3]
    assert tensor["parameters"]["binary_data_size"] == 2 * 5 * 3 * 4
    assert len(payload.body) == size + 2 * 5 * 3 * 4
    assert header["outputs"] == [{"name": "sequence_output", "parameters": {"binary_data": True}}]
    decoded = np.frombuffer(payload.body[size:], dtype="<f4").reshape(2, 5, 3)
    np.testing.assert_array_equal(decoded, x)
    assert headers["Content-Type"] == "application/octet-stream"
    assert payload.path == "/v2/models/tiny/infer"


def test_json_payloads_carry_the_same_numbers() -> None:
    x = random_inputs(1, batch=2, timesteps=4, features=3, seed=1)[0]
    v1 = json.loads(v1_payload("tiny", x, return_sequences=False).body)
    assert v1["return_sequences"] is False
    np.testing.assert_allclose(np.array(v1["instances"], np.float32), x)
    v2 = json.loads(v2_json_payload("tiny", x, return_sequences=False).body)
    (tensor,) = v2["inputs"]
    assert tensor["shape"] == [2, 4, 3]
    np.testing.assert_allclose(np.array(tensor["data"], np.float32).reshape(2, 4, 3), x)
    assert v2["outputs"] == [{"name": "final_output"}]


def test_payload_pool_is_seeded_and_distinct() -> None:
    def pool(seed: int) -> list[bytes]:
        payloads = build_payloads("v1", "m", batch=1, timesteps=3, features=2, count=4, seed=seed)
        return [p.body for p in payloads]

    assert pool(0) == pool(0)
    assert pool(0) != pool(1)
    assert len(set(pool(0))) == 4


def test_request_bytes_frame_the_body() -> None:
    target = Target("127.0.0.1", 8000, "127.0.0.1:8000")
    raw = encode_request(target, "POST", "/v1/x", b"abc", (("Content-Type", "application/json"),))
    head, body = raw.split(b"\r\n\r\n", 1)
    assert body == b"abc"
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/x HTTP/1.1"
    assert b"Content-Length: 3" in lines and b"Host: 127.0.0.1:8000" in lines


def test_response_head_parsing() -> None:
    assert _parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n") == (200, 12, False, False)
    assert _parse_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n")[3]
    assert _parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n")[2]
    assert _parse_head(b"HTTP/1.1 200 OK\r\nserver: x\r\n")[1] == -1  # read to close
    with pytest.raises(ProtocolError):
        _parse_head(b"SSH-2.0-OpenSSH\r\n")


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_chunked_body_end_is_found_in_any_split(piece: int) -> None:
    body = b"5\r\nhello\r\n1a;ext=1\r\n" + b"x" * 26 + b"\r\n0\r\n\r\n"
    chunks = ChunkedBody()
    ends = [chunks.feed(body[i : i + piece]) for i in range(0, len(body), piece)]
    assert ends[-1] and not any(ends[:-1])


def test_only_loopback_hosts_pass_without_permission() -> None:
    for host in ("127.0.0.1", "127.8.9.1", "localhost", "LOCALHOST.", "::1"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "10.0.0.1", "example.com", "::", "192.168.1.1"):
        assert not is_loopback(host), host
    assert parse_target("http://[::1]:9000").port == 9000
    with pytest.raises(SpecError, match="not a loopback address"):
        parse_target("http://10.0.0.1:8000")
    assert parse_target("http://10.0.0.1:8000", allow_remote=True).host == "10.0.0.1"
    with pytest.raises(SpecError, match="only plain http"):
        parse_target("https://127.0.0.1")
