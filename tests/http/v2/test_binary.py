"""The binary tensor extension in-process: exact framing both ways, and every malformed body a 400.

Bodies are built by hand here (tritonclient never sends a broken one), so each
inconsistency the framing can have is sent on purpose and must get a 400 whose
message names the numbers that do not add up, never a 500.
"""

from __future__ import annotations

import gzip
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tests.conftest import reference

URL = "/v2/models/tiny/infer"
X = np.random.default_rng(7).normal(size=(2, 5, 3)).astype(np.float32)
LENGTHS = np.array([5, 2], dtype=np.int64)


def x_input(size: int | None = X.nbytes, **extra: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "x", "shape": [2, 5, 3], "datatype": "FP32", **extra}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    return tensor


def lengths_input(size: int | None = LENGTHS.nbytes, datatype: str = "INT64") -> dict[str, Any]:
    return {
        "name": "lengths",
        "shape": [2],
        "datatype": datatype,
        "parameters": {"binary_data_size": size},
    }


def send(
    client: TestClient,
    header: dict[str, Any],
    tail: bytes = b"",
    header_length: str | None = "auto",
    headers: dict[str, str] | None = None,
) -> Response:
    head = orjson.dumps(header)
    sent = dict(headers or {})
    if header_length == "auto":
        sent["Inference-Header-Content-Length"] = str(len(head))
    elif header_length is not None:
        sent["Inference-Header-Content-Length"] = header_length
    return client.post(URL, content=head + tail, headers=sent)


def split(response: Response) -> tuple[dict[str, Any], bytes]:
    size = int(response.headers["inference-header-content-length"])
    return orjson.loads(response.content[:size]), response.content[size:]


def test_binary_in_binary_out_is_framed_exactly(client: TestClient, tiny_repository) -> None:
    header = {
        "id": "b-1",
        "inputs": [x_input(), lengths_input()],
        "outputs": [
            {"name": "final_output", "parameters": {"binary_data": True}},
            {"name": "hn_1", "parameters": {"binary_data": True}},
            {"name": "cn_0"},
        ],
    }
    response = send(client, header, X.tobytes() + LENGTHS.tobytes())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    meta, tail = split(response)
    assert meta["id"] == "b-1"
    assert [(o["name"], o["shape"], o.get("parameters")) for o in meta["outputs"]] == [
        ("final_output", [2, 3], {"binary_data_size": 24}),
        ("hn_1", [2, 1, 4], {"binary_data_size": 32}),
        ("cn_0", [2, 1, 8], None),
    ]
    assert len(tail) == 24 + 32
    want = reference(tiny_repository / "tiny" / "2", X, LENGTHS)
    final = np.frombuffer(tail[:24], "<f4").reshape(2, 3)
    hn_1 = np.frombuffer(tail[24:], "<f4").reshape(2, 1, 4)
    np.testing.assert_allclose(final, want["final_output"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(hn_1, want["hn_1"].transpose(1, 0, 2), rtol=0, atol=1e-6)
    cn_0 = np.array(meta["outputs"][2]["data"], np.float32).reshape(2, 1, 8)
    np.testing.assert_allclose(cn_0, want["cn_0"].transpose(1, 0, 2), rtol=0, atol=1e-6)


def test_binary_data_output_false_with_binary_inputs_answers_plain_json(
    client: TestClient,
) -> None:
    header = {"inputs": [x_input()], "outputs": [{"name": "final_output"}]}
    response = send(client, header, X.tobytes())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in response.headers
    assert response.json()["outputs"][0]["shape"] == [2, 3]


def test_mixed_json_and_binary_inputs_and_unaligned_offsets(client: TestClient) -> None:
    """x as JSON, lengths as binary, at an offset that is not a multiple of 8."""
    header: dict[str, Any] = {
        "id": "",
        "inputs": [
            {"name": "x", "shape": [2, 5, 3], "datatype": "FP32", "data": X.tolist()},
            lengths_input(),
        ],
        "outputs": [{"name": "final_output"}],
    }
    while len(orjson.dumps(header)) % 8 in (0, 4):
        header["id"] += "a"
    response = send(client, header, LENGTHS.tobytes())
    assert response.status_code == 200
    plain = send(
        client,
        {
            "inputs": [
                {"name": "x", "shape": [2, 5, 3], "datatype": "FP32", "data": X.ravel().tolist()},
                {"name": "lengths", "shape": [2], "datatype": "INT64", "data": [5, 2]},
            ],
            "outputs": [{"name": "final_output"}],
        },
        header_length=None,
    )
    assert response.json()["outputs"] == plain.json()["outputs"]


def test_gzip_body(client: TestClient) -> None:
    header = {"inputs": [x_input()], "outputs": [{"name": "final_output"}]}
    head = orjson.dumps(header)
    response = client.post(
        URL,
        content=gzip.compress(head + X.tobytes()),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert response.json()["outputs"][0]["shape"] == [2, 3]


BAD_BODIES = [
    pytest.param(
        {"inputs": [x_input()]},
        X.tobytes(),
        "abc",
        "Inference-Header-Content-Length 'abc' is not a number of bytes",
        id="non-numeric-header",
    ),
    pytest.param(
        {"inputs": [x_input()]},
        X.tobytes(),
        "-5",
        "Inference-Header-Content-Length '-5' is not a number of bytes",
        id="negative-header",
    ),
    pytest.param(
        {"inputs": [x_input()]},
        b"",
        "100000",
        "Inference-Header-Content-Length is 100000 bytes but the body has only "
        f"{len(orjson.dumps({'inputs': [x_input()]}))}",
        id="header-past-body",
    ),
    pytest.param(
        {"inputs": [x_input()]},
        X.tobytes(),
        "0",
        "Inference-Header-Content-Length is 0: the body must start with a JSON object",
        id="zero-header",
    ),
    pytest.param(
        {"inputs": [x_input(), lengths_input()]},
        X.tobytes(),
        "auto",
        "binary tensor data does not add up: the inputs declare 136 bytes ('x': 120, "
        "'lengths': 16) but 120 bytes follow the JSON header",
        id="sizes-past-body",
    ),
    pytest.param(
        {"inputs": [x_input()]},
        X.tobytes() + b"\0" * 4,
        "auto",
        "binary tensor data does not add up: the inputs declare 120 bytes ('x': 120) but "
        "124 bytes follow the JSON header",
        id="bytes-left-over",
    ),
    pytest.param(
        {"inputs": [x_input(None, data=X.tolist())]},
        X.tobytes(),
        "auto",
        "binary tensor data does not add up: the inputs declare 0 bytes (no input has "
        "parameters.binary_data_size) but 120 bytes follow the JSON header",
        id="bytes-but-no-binary-input",
    ),
    pytest.param(
        {"inputs": [x_input(96)]},
        X.tobytes()[:96],
        "auto",
        "input 'x': parameters.binary_data_size is 96 bytes; shape [2, 5, 3] of FP32 is 120 bytes",
        id="size-wrong-for-shape",
    ),
    pytest.param(
        {"inputs": [x_input(), lengths_input(16, "INT32")]},
        X.tobytes() + LENGTHS.tobytes(),
        "auto",
        "input 'lengths': parameters.binary_data_size is 16 bytes; shape [2] of INT32 is 8 bytes",
        id="size-wrong-for-datatype",
    ),
    pytest.param(
        {"inputs": [x_input(data=X.tolist())]},
        X.tobytes(),
        "auto",
        "input 'x' has both data and parameters.binary_data_size; send one",
        id="data-and-binary",
    ),
    pytest.param(
        {"inputs": [x_input(-120)]},
        b"",
        "auto",
        "input 'x': parameters.binary_data_size must be a non-negative integer number of "
        "bytes; got -120",
        id="negative-size",
    ),
    pytest.param(
        {"inputs": [x_input("120")]},
        X.tobytes(),
        "auto",
        "input 'x': parameters.binary_data_size must be a non-negative integer number of "
        "bytes; got '120'",
        id="string-size",
    ),
    pytest.param(
        {"inputs": [x_input(None)]},
        b"",
        "auto",
        "input 'x' has no data: send data, or parameters.binary_data_size and the bytes "
        "after the JSON header",
        id="no-data-at-all",
    ),
    pytest.param(
        [1, 2],
        b"",
        "auto",
        "the inference request must be a JSON object with 'inputs'",
        id="header-not-an-object",
    ),
]


@pytest.mark.parametrize(("header", "tail", "header_length", "message"), BAD_BODIES)
def test_malformed_binary_bodies_get_400(
    client: TestClient, header: Any, tail: bytes, header_length: str, message: str
) -> None:
    response = send(client, header, tail, header_length)
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_int32_binary_lengths_are_4_bytes_each(client: TestClient) -> None:
    header = {
        "inputs": [x_input(), lengths_input(8, "INT32")],
        "outputs": [{"name": "final_output"}],
    }
    response = send(client, header, X.tobytes() + LENGTHS.astype(np.int32).tobytes())
    assert response.status_code == 200


def test_binary_body_without_the_header(client: TestClient) -> None:
    head = orjson.dumps({"inputs": [x_input()]})
    response = client.post(URL, content=head + X.tobytes())
    assert response.status_code == 400
    message = response.json()["error"]
    assert message.startswith("request body is not valid JSON: ")
    assert message.endswith(
        "(a body with binary tensor data needs the Inference-Header-Content-Length header)"
    )


def test_header_that_is_not_json(client: TestClient) -> None:
    response = client.post(
        URL, content=b"{not json" + X.tobytes(), headers={"Inference-Header-Content-Length": "9"}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("request body is not valid JSON: ")


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("br", b"x", "Content-Encoding 'br' is not supported; send gzip, deflate or no encoding"),
        ("gzip", b"not gzip", "request body is not valid gzip data: "),
        ("gzip", gzip.compress(b'{"inputs": []}')[:-6], "request body is not one complete gzip"),
    ],
)
def test_bad_content_encoding(client: TestClient, encoding: str, body: bytes, message: str) -> None:
    response = client.post(URL, content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)


def test_gzip_bomb_is_bounded_by_the_body_limit(client: TestClient) -> None:
    """65536 bytes is the fixture's max_body_bytes; 1 MB of zeros compresses to ~1 kB."""
    response = client.post(
        URL, content=gzip.compress(b"\0" * 1_000_000), headers={"Content-Encoding": "gzip"}
    )
    assert response.status_code == 413
    assert response.json() == {
        "error": "request body is over the limit of 65536 bytes once decompressed"
    }
