"""An int8 version served in-process: described with its certificate over /v1 and V2,
and answering within that certificate of its fp32 source."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models import quantize
from models.testing import make_tiny_model
from service.core.contract import ModelMetadata
from tests.conftest import make_client


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("int8")
    repo = root / "repository"
    make_tiny_model(repo, "tiny", 1, features=3, layers=(16, 8), classes=3, seed=1)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(10, 20, 3)) * 2).astype(np.float32)
    np.savez(root / "held.npz", X_test=x, y_test=rng.integers(0, 3, size=10))
    quantize.quantize_version(
        repo, "tiny", data=root / "held.npz", speed_seconds=0.01, allow_slower=True
    )
    return repo


@pytest.fixture(scope="module")
def client(repository: Path) -> Iterator[TestClient]:
    with make_client(repository, version_policy="all") as c:
        yield c


def bound(repository: Path) -> float:
    meta = ModelMetadata.model_validate_json((repository / "tiny/2/metadata.json").read_bytes())
    assert meta.quantization is not None
    return meta.quantization.tolerance.max_abs_diff * meta.quantization.certificate.scale


SEQUENCES = [
    (np.sin(np.arange(n * 3).reshape(n, 3) / 5.0) * 3).round(4).tolist() for n in (25, 4, 13)
]


def test_v1_describes_int8_and_its_certificate(client: TestClient) -> None:
    fp32 = client.get("/v1/models/tiny/versions/1").json()
    int8 = client.get("/v1/models/tiny/versions/2").json()
    assert fp32["dtype"] == "float32" and fp32["quantization"] is None
    assert int8["dtype"] == "int8"
    q = int8["quantization"]
    assert q["source_version"] == 1 and q["quantized_ops"] == {"LSTM": 2}
    assert set(q["certificate"]) >= {"metric", "final_output", "sequence_output", "drift"}
    assert q["tolerance"]["max_abs_diff"] == 0.01


def test_v2_metadata_and_config_show_int8(client: TestClient) -> None:
    meta = client.get("/v2/models/tiny/versions/2").json()
    assert meta["parameters"]["dtype"] == "int8"
    assert meta["parameters"]["quantization"]["source_version"] == 1
    assert client.get("/v2/models/tiny/versions/1").json()["parameters"] == {"dtype": "float32"}
    config = client.get("/v2/models/tiny/versions/2/config").json()
    assert config["parameters"]["dtype"] == {"string_value": "int8"}
    assert '"source_version": 1' in config["parameters"]["quantization"]["string_value"]


def test_v1_answers_within_the_certificate(client: TestClient, repository: Path) -> None:
    answers = {}
    for version in ("1", "2"):
        body = {"instances": SEQUENCES, "return_sequences": True}
        response = client.post(f"/v1/models/tiny/versions/{version}:predict", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["version"] == version
        answers[version] = [
            np.array([step["probabilities"] for step in p]) for p in response.json()["predictions"]
        ]
    for fp32, int8 in zip(answers["1"], answers["2"], strict=True):
        assert 0 < np.abs(int8 - fp32).max() <= bound(repository)


def test_v2_answers_within_the_certificate(client: TestClient, repository: Path) -> None:
    x = np.zeros((3, 25, 3), np.float32)
    for i, s in enumerate(SEQUENCES):
        x[i, : len(s)] = s
    finals = {}
    for version in ("1", "2"):
        body = {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                },
                {"name": "lengths", "shape": [3], "datatype": "INT64", "data": [25, 4, 13]},
            ],
            "outputs": [{"name": "final_output"}],
        }
        response = client.post(f"/v2/models/tiny/versions/{version}/infer", json=body)
        assert response.status_code == 200, response.text
        (out,) = response.json()["outputs"]
        finals[version] = np.array(out["data"]).reshape(out["shape"])
    assert 0 < np.abs(finals["2"] - finals["1"]).max() <= bound(repository)


def test_the_default_policy_serves_the_newest_int8_and_fp32_can_be_pinned(
    repository: Path,
) -> None:
    with make_client(repository) as latest:  # latest:1
        answer = latest.post("/v1/models/tiny:predict", json={"instances": SEQUENCES[:1]})
        assert answer.json()["version"] == "2"
        assert latest.get("/v1/models/tiny/versions/1").status_code == 404
    with make_client(repository, model_version_policies={"tiny": "specific:1"}) as pinned:
        answer = pinned.post("/v1/models/tiny:predict", json={"instances": SEQUENCES[:1]})
        assert answer.json()["version"] == "1"
