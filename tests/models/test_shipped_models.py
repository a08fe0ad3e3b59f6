"""The models committed in models/repository are what docs/training.md says they are."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.core.contract import ModelMetadata

REPOSITORY = Path(__file__).resolve().parents[2] / "models" / "repository"


def metadata(name: str) -> ModelMetadata:
    return ModelMetadata.model_validate_json(
        (REPOSITORY / name / "1" / "metadata.json").read_bytes()
    )


@pytest.mark.parametrize("name", ["basic_motions", "sunspots"])
def test_checksum_and_parity(name: str) -> None:
    meta = metadata(name)
    onnx_bytes = (REPOSITORY / name / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(onnx_bytes).hexdigest() == meta.onnx.sha256
    assert meta.parity.max_abs_diff <= 1e-4
    assert meta.training is not None
    data = REPOSITORY.parent / "data" / meta.training.data.source
    assert hashlib.sha256(data.read_bytes()).hexdigest() == meta.training.data.sha256


def test_default_model_is_an_accurate_activity_classifier() -> None:
    meta = metadata("basic_motions")
    assert meta.classes == ["badminton", "running", "standing", "walking"]
    assert meta.num_features == 6 and [layer.units for layer in meta.layers] == [64, 32]
    assert meta.training is not None
    assert meta.training.metrics["test_accuracy"] >= 0.95
    assert meta.training.data.n_test == 40


def test_sunspots_forecasts_every_timestep() -> None:
    meta = metadata("sunspots")
    assert (meta.task, meta.target, meta.output_size) == ("regression", "sequence", 1)
