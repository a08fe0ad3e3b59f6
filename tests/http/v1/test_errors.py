"""Every class of bad input gets its exact status and a message naming the problem."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

STEP = [0.1, 0.2, 0.3]


def post(client: TestClient, body: bytes | object, path: str = "/v1/models/tiny:predict"):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(path, content=content, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"instances": [[STEP, STEP], [STEP, [0.1, 0.2]]]},
            422,
            "instances[1][1] has 2 features; model 'tiny' expects 3",
        ),
        (
            {"instances": [[STEP, [0.1, 0.2, 0.3, 0.4]]]},
            422,
            "instances[0][1] has 4 features; model 'tiny' expects 3",
        ),
        ({"instances": []}, 422, "instances is empty; send at least one sequence"),
        (
            {"instances": [[STEP], []]},
            422,
            "instances[1] has no timesteps; a sequence needs at least one",
        ),
        (
            {"instances": [[STEP, [0.1, "x", 0.3]]]},
            422,
            "instances[0][1][1] must be a number; got a string",
        ),
        (
            {"instances": [[STEP, [0.1, None, 0.3]]]},
            422,
            "instances[0][1][1] must be a number; got null",
        ),
        (
            {"instances": [[[True, False, True]]]},
            422,
            "instances[0][0][0] must be a number; got a boolean",
        ),
        (
            {"instances": [[STEP, 0.5]]},
            422,
            "instances[0][1] must be a list of 3 numbers; got float",
        ),
        (
            {"instances": [STEP]},
            422,
            "instances[0][0] must be a list of 3 numbers; got float",
        ),
        (
            {"instances": [5]},
            422,
            "instances[0] must be a list of timesteps, each a list of 3 numbers; got int",
        ),
        (
            {"instances": [[[1e39, 0.2, 0.3]]]},
            422,
            "instances[0][0][0] is 1e+39; only finite numbers within float32 range are accepted",
        ),
        (
            {"instances": [[STEP]] * 17},
            422,
            "instances has 17 sequences; the limit is 16",
        ),
        (
            {"instances": [[STEP] * 65]},
            422,
            "instances[0] has 65 timesteps; the limit is 64",
        ),
        (
            {"instances": [[STEP], [STEP] * 65]},
            422,
            "instances[1] has 65 timesteps; the limit is 64",
        ),
        (
            {"instances": [[STEP]], "return_sequence": True},
            422,
            "return_sequence: Extra inputs are not permitted",
        ),
        (
            {"instances": [[STEP]], "return_sequences": "yes"},
            422,
            "return_sequences: Input should be a valid boolean",
        ),
        (
            {"signature": 1},
            422,
            "instances: Field required; signature: Extra inputs are not permitted",
        ),
        ([1, 2], 422, "Input should be a valid dictionary or instance of PredictRequest"),
    ],
)
def test_bad_instances(client: TestClient, body: object, status: int, message: str) -> None:
    response = post(client, body)
    assert response.status_code == status
    assert response.json() == {"error": message}


def test_nan_literal_is_located(client: TestClient) -> None:
    response = post(client, b'{"instances": [[[0.1, 0.2, 0.3], [0.1, NaN, 0.3]]]}')
    assert response.status_code == 422
    assert response.json() == {
        "error": "instances[0][1][1] is nan; only finite numbers within float32 range are accepted"
    }


def test_infinity_literal_is_located(client: TestClient) -> None:
    response = post(client, b'{"instances": [[[0.1, 0.2, -Infinity]]]}')
    assert response.status_code == 422
    assert response.json()["error"].startswith("instances[0][0][2] is -inf;")


def test_body_not_json(client: TestClient) -> None:
    response = post(client, b'{"instances": [[[0.1, 0.2')
    assert response.status_code == 400
    assert response.json()["error"].startswith("request body is not valid JSON: ")


def test_empty_body(client: TestClient) -> None:
    response = post(client, b"")
    assert response.status_code == 400
    assert response.json() == {"error": "request body is empty; expected a JSON object"}


def test_oversized_body(client: TestClient) -> None:
    body = orjson.dumps({"instances": [[STEP] * 6000]})
    response = post(client, body)
    assert response.status_code == 413
    assert response.json() == {"error": f"request body is {len(body)} bytes; the limit is 65536"}


def test_oversized_chunked_body_is_cut_off(client: TestClient) -> None:
    def chunks():
        yield b'{"instances": ['
        for _ in range(5000):
            yield b"[[0.1, 0.2, 0.3]],"
        yield b"[[0.1, 0.2, 0.3]]]}"

    response = client.post("/v1/models/tiny:predict", content=chunks())
    assert response.status_code == 413
    assert response.json() == {"error": "request body is over the limit of 65536 bytes"}


def test_unknown_model(client: TestClient) -> None:
    response = post(client, {"instances": [[STEP]]}, "/v1/models/nope:predict")
    assert response.status_code == 404
    assert response.json() == {
        "error": "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'"
    }


def test_unknown_version(client: TestClient) -> None:
    response = post(client, {"instances": [[STEP]]}, "/v1/models/tiny/versions/1:predict")
    assert response.status_code == 404
    assert response.json() == {"error": "model 'tiny' has no loaded version 1; loaded versions: 2"}


def test_malformed_version(client: TestClient) -> None:
    response = post(client, {"instances": [[STEP]]}, "/v1/models/tiny/versions/latest:predict")
    assert response.status_code == 404
    assert response.json() == {
        "error": "version 'latest' does not exist; versions are positive integers"
    }


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}


def test_service_still_answers_after_bad_input(client: TestClient) -> None:
    for body in (b"garbage", b'{"instances": [[[1, 2]]]}', b"[]"):
        post(client, body)
    assert post(client, {"instances": [[STEP]]}).status_code == 200
