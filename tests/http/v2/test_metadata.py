"""What V2 clients and Triton's tools read first: server metadata, model metadata, config, ready."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_client


@pytest.fixture(scope="module")
def client(tiny_repository: Path) -> Iterator[TestClient]:
    with make_client(tiny_repository, version_policy="specific:1,2", max_instances=16) as c:
        yield c


def test_server_metadata_lists_only_extensions_that_answer(client: TestClient) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    assert response.json() == {
        "name": "lstm-serving",
        "version": "0.1.0",
        "extensions": [
            "binary_tensor_data",
            "model_configuration",
            "model_repository",
            "sequence",
        ],
    }
    assert client.post("/v2/repository/index").status_code == 200
    assert client.get("/v2/models/tiny/config").status_code == 200


TINY = {
    "name": "tiny",
    "versions": ["1", "2"],
    "platform": "onnxruntime_onnx",
    "inputs": [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1, 3]},
        {"name": "lengths", "datatype": "INT64", "shape": [-1, 1]},
    ],
    "outputs": [
        {"name": "sequence_output", "datatype": "FP32", "shape": [-1, -1, 3]},
        {"name": "final_output", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "hn_0", "datatype": "FP32", "shape": [-1, 1, 8]},
        {"name": "cn_0", "datatype": "FP32", "shape": [-1, 1, 8]},
        {"name": "hn_1", "datatype": "FP32", "shape": [-1, 1, 4]},
        {"name": "cn_1", "datatype": "FP32", "shape": [-1, 1, 4]},
    ],
    "parameters": {"dtype": "float32"},
}


@pytest.mark.parametrize("path", ["/v2/models/tiny", "/v2/models/tiny/versions/1"])
def test_model_metadata(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.json() == TINY


def test_bidirectional_states_have_two_directions(client: TestClient) -> None:
    outputs = client.get("/v2/models/tiny_bi").json()["outputs"]
    assert [(o["name"], o["shape"]) for o in outputs] == [
        ("sequence_output", [-1, -1, 2]),
        ("final_output", [-1, 2]),
        ("hn_0", [-1, 2, 6]),
        ("cn_0", [-1, 2, 6]),
        ("hn_1", [-1, 2, 5]),
        ("cn_1", [-1, 2, 5]),
    ]


def test_model_config(client: TestClient) -> None:
    response = client.get("/v2/models/tiny/versions/2/config")
    assert response.status_code == 200
    assert response.json() == {
        "name": "tiny",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "version_policy": {"specific": {"versions": [1, 2]}},
        "max_batch_size": 16,
        "input": [
            {"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3], "optional": False},
            {
                "name": "lengths",
                "data_type": "TYPE_INT64",
                "dims": [1],
                "reshape": {"shape": []},
                "optional": True,
            },
        ],
        "output": [
            {"name": "sequence_output", "data_type": "TYPE_FP32", "dims": [-1, 3]},
            {"name": "final_output", "data_type": "TYPE_FP32", "dims": [3]},
            {"name": "hn_0", "data_type": "TYPE_FP32", "dims": [1, 8]},
            {"name": "cn_0", "data_type": "TYPE_FP32", "dims": [1, 8]},
            {"name": "hn_1", "data_type": "TYPE_FP32", "dims": [1, 4]},
            {"name": "cn_1", "data_type": "TYPE_FP32", "dims": [1, 4]},
        ],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "default_model_filename": "model.onnx",
        "parameters": {"dtype": {"string_value": "float32"}},
        "dynamic_batching": {
            "max_queue_delay_microseconds": 0,
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": 30_000_000,
                "max_queue_size": 256,
            },
        },
    }


@pytest.mark.parametrize("name", ["tiny", "tiny_bi"])
def test_config_dims_are_metadata_shapes_without_the_batch(client: TestClient, name: str) -> None:
    """Triton's convention for max_batch_size > 0, which perf_analyzer relies on
    (a per-item scalar is dims [1], reshaped to [], and [-1, 1] in the metadata)."""
    meta = client.get(f"/v2/models/{name}").json()
    config = client.get(f"/v2/models/{name}/config").json()
    assert config["max_batch_size"] > 0
    for kind, key in (("inputs", "input"), ("outputs", "output")):
        assert [t["shape"][0] for t in meta[kind]] == [-1] * len(meta[kind])
        assert [(t["name"], t["shape"][1:]) for t in meta[kind]] == [
            (t["name"], t["dims"]) for t in config[key]
        ]
    reshaped = {t["name"]: t["reshape"] for t in config["input"] if "reshape" in t}
    assert reshaped == {"lengths": {"shape": []}}


def test_ready(client: TestClient) -> None:
    for path, version in (
        ("/v2/models/tiny/ready", "2"),
        ("/v2/models/tiny/versions/1/ready", "1"),
    ):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {"name": "tiny", "version": version, "ready": True}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/v2/models/nope", "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'"),
        ("/v2/models/nope/ready", "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'"),
        ("/v2/models/nope/config", "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'"),
        (
            "/v2/models/tiny/versions/3/ready",
            "model 'tiny' has no loaded version 3; loaded versions: 1, 2",
        ),
        (
            "/v2/models/tiny/versions/0/config",
            "version '0' does not exist; versions are positive integers",
        ),
    ],
)
def test_unknown_model_or_version_is_404(client: TestClient, path: str, message: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"error": message}


def test_model_config_without_dynamic_batching(tiny_repository: Path) -> None:
    with make_client(tiny_repository, dynamic_batching=False, inference_threads=3) as c:
        config = c.get("/v2/models/tiny/config").json()
    assert "dynamic_batching" not in config
    assert config["instance_group"] == [{"count": 3, "kind": "KIND_CPU"}]


def test_per_model_batching_overrides_show_in_the_config(tiny_repository: Path) -> None:
    overrides = {"tiny": {"max_queue_delay_ms": 2.5}, "tiny_bi": {"dynamic_batching": False}}
    with make_client(tiny_repository, model_batching=overrides) as c:
        tiny = c.get("/v2/models/tiny/config").json()
        tiny_bi = c.get("/v2/models/tiny_bi/config").json()
    assert tiny["dynamic_batching"]["max_queue_delay_microseconds"] == 2500
    assert "dynamic_batching" not in tiny_bi
