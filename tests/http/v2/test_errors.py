"""Every class of bad V2 request gets the protocol's status and a message naming the problem.

V2 answers 400 where /v1 answers 422 for the same mistake: the protocol has one
status for a request the server cannot use.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

URL = "/v2/models/tiny/infer"
STEP = [0.1, 0.2, 0.3]


def x(data: Any = None, shape: list[Any] | None = None, datatype: str = "FP32") -> dict[str, Any]:
    return {
        "name": "x",
        "shape": [1, 2, 3] if shape is None else shape,
        "datatype": datatype,
        "data": [STEP, STEP] if data is None else data,
    }


def lengths(data: Any, shape: list[int] | None = None, datatype: str = "INT64") -> dict[str, Any]:
    return {"name": "lengths", "shape": shape or [1], "datatype": datatype, "data": data}


CASES = [
    pytest.param(
        {"inputs": [{**x(), "name": "h0_0"}]},
        "unknown input 'h0_0'; model 'tiny' has inputs 'x', 'lengths'",
        id="unknown-input",
    ),
    pytest.param(
        {"inputs": [lengths([1])]},
        "input 'x' is missing; model 'tiny' has inputs 'x', 'lengths' ('lengths' is optional)",
        id="missing-x",
    ),
    pytest.param({"inputs": [x(), x()]}, "input 'x' is given twice", id="input-twice"),
    pytest.param(
        {"inputs": []},
        "inputs: List should have at least 1 item after validation, not 0",
        id="no-inputs",
    ),
    pytest.param(
        {"inputs": [x()], "output": [{"name": "final_output"}]},
        "output: Extra inputs are not permitted",
        id="typo-in-field",
    ),
    pytest.param(
        {"id": 5, "inputs": [x()]}, "id: Input should be a valid string", id="id-not-a-string"
    ),
    pytest.param(
        {"inputs": [x(shape=[1, "2", 3])]},
        "inputs.0.shape.1: Input should be a valid integer",
        id="shape-not-integers",
    ),
    pytest.param(
        {"inputs": [x(shape=[2, 3])]},
        "input 'x' has shape [2, 3]; model 'tiny' expects [batch, timesteps, 3]",
        id="x-rank",
    ),
    pytest.param(
        {"inputs": [x(shape=[1, 2, 4])]},
        "input 'x' has shape [1, 2, 4]; model 'tiny' expects [batch, timesteps, 3]",
        id="x-features",
    ),
    pytest.param(
        {"inputs": [x(data=[], shape=[0, 2, 3])]},
        "input 'x' has shape [0, 2, 3]; send at least one sequence of at least one timestep",
        id="empty-batch",
    ),
    pytest.param(
        {"inputs": [x(shape=[17, 2, 3])]},
        "input 'x' has 17 sequences; the limit is 16",
        id="max-instances",
    ),
    pytest.param(
        {"inputs": [x(shape=[1, 65, 3])]},
        "input 'x' has 65 timesteps; the limit is 64",
        id="max-timesteps",
    ),
    pytest.param(
        {"inputs": [x(datatype="INT64")]},
        "input 'x' has datatype INT64; expected FP32 (FP16 or FP64 accepted too)",
        id="x-datatype",
    ),
    pytest.param(
        {"inputs": [x(datatype="BYTES")]},
        "input 'x' has datatype BYTES; expected FP32 (FP16 or FP64 accepted too)",
        id="x-bytes",
    ),
    pytest.param(
        {"inputs": [x(data=STEP * 2 + [0.4])]},
        "input 'x': data has 7 values; shape [1, 2, 3] needs 6",
        id="count-too-many",
    ),
    pytest.param(
        {"inputs": [x(data=[STEP, [0.1, 0.2]])]},
        "input 'x': data is a ragged nested list; send it flat or as a nested list of shape "
        "[1, 2, 3]",
        id="ragged",
    ),
    pytest.param(
        {"inputs": [x(data=[STEP, [0.1, "a", 0.3]])]},
        "input 'x': data must hold only numbers",
        id="string-value",
    ),
    pytest.param(
        {"inputs": [x(data=[STEP, [0.1, None, 0.3]])]},
        "input 'x': data must hold only numbers",
        id="null-value",
    ),
    pytest.param(
        {"inputs": [x(data=[[True] * 3] * 2)]},
        "input 'x': data must hold only numbers",
        id="booleans",
    ),
    pytest.param(
        {"inputs": [x(data="0.1,0.2")]},
        "input 'x': data must be a list of numbers (flat or nested, row-major)",
        id="data-not-a-list",
    ),
    pytest.param(
        {"inputs": [x(data=[STEP, [0.1, 1e39, 0.3]], datatype="FP64")]},
        "input 'x' holds 1e+39 at [0, 1, 1]; only finite numbers within float32 range are accepted",
        id="beyond-float32",
    ),
    pytest.param(
        {"inputs": [x(), lengths([2], shape=[2])]},
        "input 'lengths' has shape [2]; expected [1] (one length per sequence of x)",
        id="lengths-shape",
    ),
    pytest.param(
        {"inputs": [x(), lengths([3])]},
        "input 'lengths'[0] is 3; each length must be between 1 and 2 (the timesteps of x)",
        id="lengths-past-t",
    ),
    pytest.param(
        {"inputs": [x(), lengths([-1])]},
        "input 'lengths'[0] is -1; each length must be between 1 and 2 (the timesteps of x)",
        id="lengths-negative",
    ),
    pytest.param(
        {"inputs": [x(), lengths([2.0])]},
        "input 'lengths': data must hold only integers",
        id="lengths-float",
    ),
    pytest.param(
        {"inputs": [x(), lengths([2], datatype="FP32")]},
        "input 'lengths' has datatype FP32; expected INT64 (INT32 accepted too)",
        id="lengths-datatype",
    ),
    pytest.param(
        {"inputs": [x()], "outputs": [{"name": "final_output"}, {"name": "final_output"}]},
        "output 'final_output' is requested twice",
        id="output-twice",
    ),
    pytest.param(
        {"inputs": [x()], "outputs": [{"name": "final_output", "parameters": {"binary_data": 1}}]},
        "output 'final_output': parameters.binary_data must be true or false; got 1",
        id="binary-data-not-bool",
    ),
    pytest.param(
        {"inputs": [x()], "parameters": {"binary_data_output": "yes"}},
        "parameters.binary_data_output must be true or false; got 'yes'",
        id="binary-data-output-not-bool",
    ),
    pytest.param(
        {
            "inputs": [x()],
            "outputs": [{"name": "final_output", "parameters": {"classification": 2}}],
        },
        "output 'final_output': parameters.classification asks for the classification "
        "extension, which this server does not support; request the output itself",
        id="classification",
    ),
    pytest.param(
        {"inputs": [{**x(), "parameters": {"shared_memory_region": "r"}}]},
        "input 'x': parameters.shared_memory_region asks for the shared memory extension, "
        "which this server does not support; send the data in the body",
        id="shared-memory",
    ),
    pytest.param(
        {"inputs": [x()], "parameters": {"timeout": -1}},
        "parameters.timeout must be a positive integer of microseconds; got -1",
        id="timeout",
    ),
]


@pytest.mark.parametrize(("body", "message"), CASES)
def test_bad_requests_get_400(client: TestClient, body: dict[str, Any], message: str) -> None:
    response = client.post(URL, content=orjson.dumps(body))
    assert response.status_code == 400
    assert response.json() == {"error": message}


def test_nan_literal_is_refused_with_its_place(client: TestClient) -> None:
    body = b'{"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", '
    body += b'"data": [0.1, 0.2, 0.3, 0.1, NaN, 0.3]}]}'
    response = client.post(URL, content=body)
    assert response.status_code == 400
    assert response.json() == {
        "error": "input 'x' holds nan at [0, 1, 1]; only finite numbers within float32 range "
        "are accepted"
    }


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/nope/infer", "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'"),
        (
            "/v2/models/tiny/versions/9/infer",
            "model 'tiny' has no loaded version 9; loaded versions: 2",
        ),
        (
            "/v2/models/tiny/versions/latest/infer",
            "version 'latest' does not exist; versions are positive integers",
        ),
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str, message: str) -> None:
    response = client.post(path, content=orjson.dumps({"inputs": [x()]}))
    assert response.status_code == 404
    assert response.json() == {"error": message}


def test_body_limits(client: TestClient) -> None:
    empty = client.post(URL, content=b"")
    assert empty.status_code == 400
    assert empty.json() == {"error": "request body is empty; expected a JSON object"}
    big = client.post(URL, content=b"[" + b"0.5," * 20_000 + b"0.5]")
    assert big.status_code == 413
    assert big.json() == {"error": "request body is 80005 bytes; the limit is 65536"}


def test_flat_and_nested_data_give_the_same_answer(client: TestClient) -> None:
    nested = client.post(URL, content=orjson.dumps({"inputs": [x()]}))
    flat = client.post(URL, content=orjson.dumps({"inputs": [x(data=STEP * 2)]}))
    assert nested.status_code == flat.status_code == 200
    assert nested.json() == flat.json()


def test_lengths_as_column_and_int32_equal_lengths_as_vector(client: TestClient) -> None:
    """[B, 1] is how Triton spells a per-sequence scalar with max_batch_size > 0."""
    data = [[STEP, STEP], [STEP, [0.0, 0.0, 0.0]]]
    answers = [
        client.post(
            URL,
            content=orjson.dumps(
                {"inputs": [x(data=data, shape=[2, 2, 3]), lengths(lens, shape, kind)]}
            ),
        )
        for lens, shape, kind in (
            ([2, 1], [2], "INT64"),
            ([[2], [1]], [2, 1], "INT64"),
            ([2, 1], [2], "INT32"),
        )
    ]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].json() == answers[1].json() == answers[2].json()
    padded = client.post(URL, content=orjson.dumps({"inputs": [x(data=data, shape=[2, 2, 3])]}))
    final = {o["name"]: o["data"] for o in answers[0].json()["outputs"]}["final_output"]
    padded_final = {o["name"]: o["data"] for o in padded.json()["outputs"]}["final_output"]
    assert final[:3] == padded_final[:3]  # the first sequence is 2 steps either way
    assert final[3:] != padded_final[3:]  # the second stops after 1 step with lengths
