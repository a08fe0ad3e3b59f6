"""Issue 13's malformed inputs on a real server: each a 4xx with a message, none a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess, start_server

X = [[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]]


@pytest.fixture(scope="module")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("malformed") / "server.log"
    process = start_server(tiny_repository, log)
    yield process
    process.stop()
    assert "Traceback" not in log.read_text()  # no input here reached an unhandled error


def v2_input(data: object, shape: list[int] | None = None) -> dict[str, object]:
    return {"name": "x", "shape": shape or [1, 2, 3], "datatype": "FP32", "data": data}


def post(server: ServerProcess, path: str, **kwargs: object) -> requests.Response:
    return requests.post(server.url + path, timeout=30, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v2/models/tiny/infer"])
def test_json_nested_deeper_than_orjson_reads_is_a_400(server: ServerProcess, path: str) -> None:
    answer = post(server, path, data=b"[" * 4096)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("request body is not valid JSON: ")
    assert "JSON may nest at most 1024 levels" in answer.json()["error"]


def test_a_timeout_that_overflows_is_a_400(server: ServerProcess) -> None:
    body = b'{"inputs": [], "parameters": {"timeout": 1' + b"0" * 400 + b"}}"
    answer = post(server, "/v2/models/tiny/infer", data=body)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(  # (V2 adds a hint on binary data)
        "request body holds a value that is refused: Integer exceeds 64-bit range"
    )
    body = json.dumps({"inputs": [v2_input(X)], "parameters": {"timeout": 2**63}})
    answer = post(server, "/v2/models/tiny/infer", data=body)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": f"parameters.timeout is {2**63} microseconds; it must be below 2^63"
    }


@pytest.mark.parametrize("digit", ["\u00b2", "\u00b3", "\u00b9", "\uff11"])
def test_a_unicode_digit_as_the_binary_header_length_is_a_400(
    server: ServerProcess, digit: str
) -> None:
    answer = post(
        server,
        "/v2/models/tiny/infer",
        data=b"{}",
        headers={"Inference-Header-Content-Length": digit.encode().decode("latin-1")},
    )
    assert answer.status_code == 400
    assert "is not a number of bytes" in answer.json()["error"]


@pytest.mark.parametrize("version", ["%C2%B2", "%EF%BC%91", "%D9%A1"])
@pytest.mark.parametrize("template", ["/v1/models/tiny/versions/{}", "/v2/models/tiny/versions/{}"])
def test_versions_are_ascii_digits_only(server: ServerProcess, template: str, version: str) -> None:
    answer = requests.get(server.url + template.format(version), timeout=30)
    assert answer.status_code == 404
    assert answer.json()["error"].endswith("does not exist; versions are positive integers")


@pytest.mark.parametrize("version", ["%C2%B2", "%EF%BC%91"])
def test_a_stream_at_a_unicode_digit_version_gets_an_error_message(
    server: ServerProcess, version: str
) -> None:
    url = server.url.replace("http", "ws") + f"/v1/models/tiny/versions/{version}/stream"
    with ws_connect(url) as ws:
        assert json.loads(ws.recv(timeout=10))["error"].endswith(
            "does not exist; versions are positive integers"
        )


def test_a_lone_surrogate_id_is_a_400(server: ServerProcess) -> None:
    body = '{"id": "\\ud800", "inputs": [' + json.dumps(v2_input(X)) + "]}"
    answer = post(server, "/v2/models/tiny/infer", data=body)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith(
        "request body holds a value that is refused: str is not valid UTF-8: surrogates not allowed"
    )


def test_a_stateful_chunk_with_a_lone_surrogate_id_leaves_its_sequence_alone(
    server: ServerProcess,
) -> None:
    def chunk(sequence_id: str, **flags: bool) -> requests.Response:
        instances = json.dumps(X)
        body = f'{{"instances": {instances}, "sequence_id": "{sequence_id}"'
        body += "".join(f', "{k}": {json.dumps(v)}' for k, v in flags.items()) + "}"
        return post(server, "/v1/models/tiny:predict", data=body.encode())

    first = chunk("s\\ud800", sequence_start=True)
    assert first.status_code == 400
    # Nothing started: the same id in valid form starts fresh and matches a fresh one.
    fresh = chunk("fresh", sequence_start=True).json()["predictions"]
    assert chunk("s", sequence_start=True).json()["predictions"] == fresh
    assert chunk("s\\ud800").status_code == 400  # a continuation: refused, not run
    second = chunk("s").json()["predictions"]  # step 2, as if the refused one never came
    assert second == chunk("fresh").json()["predictions"]


def test_a_binary_websocket_frame_gets_an_error_and_the_stream_goes_on(
    server: ServerProcess,
) -> None:
    with ws_connect(server.url.replace("http", "ws") + "/v1/models/tiny/stream") as ws:
        ws.send(b"\x00\x01binary")
        assert json.loads(ws.recv(timeout=10)) == {
            "error": "binary messages are not accepted; send JSON as text"
        }
        ws.send(json.dumps({"timesteps": X[0]}))
        assert json.loads(ws.recv(timeout=10))["steps"] == 2


def test_booleans_among_numbers_are_refused_with_their_place(server: ServerProcess) -> None:
    rows = [[[0.1, True, 0.3], [0.4, 0.5, 0.6]]]
    answer = post(server, "/v1/models/tiny:predict", json={"instances": rows})
    assert answer.status_code == 422
    assert answer.json() == {"error": "instances[0][0][1] must be a number; got a boolean"}
    ragged = [[[0.1, 0.2, 0.3]], [[0.4, 0.5, 0.6], [1.0, 0.0, False]]]
    answer = post(server, "/v1/models/tiny:predict", json={"instances": ragged})
    assert answer.status_code == 422
    assert answer.json() == {"error": "instances[1][1][2] must be a number; got a boolean"}
    answer = post(
        server, "/v2/models/tiny/infer", json={"inputs": [v2_input([0.1, 0.2, 0.3, 0.4, 1, True])]}
    )
    assert answer.status_code == 400  # the Open Inference Protocol's status for bad input
    assert answer.json() == {
        "error": "input 'x': data[5] is a boolean; data must hold only numbers"
    }
    with ws_connect(server.url.replace("http", "ws") + "/v1/models/tiny/stream") as ws:
        ws.send(json.dumps({"timesteps": [[0.1, 0.2, 0.3], [False, 0.5, 0.6]]}))
        assert json.loads(ws.recv(timeout=10)) == {
            "error": "timesteps[1][0] must be a number; got a boolean"
        }


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_json_must_be_utf8(server: ServerProcess, encoding: str) -> None:
    body = json.dumps({"instances": X}).encode(encoding)
    answer = post(server, "/v1/models/tiny:predict", data=body)
    assert answer.status_code == 400
    assert "(JSON is sent as UTF-8, RFC 8259; byte 0 is not: " in answer.json()["error"]
