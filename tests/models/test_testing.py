"""make_tiny_model: what the service's test suites build their repositories with."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.testing import make_tiny_model
from service.core.contract import ModelMetadata


def test_tiny_models_are_fast_valid_and_seeded(tmp_path: Path) -> None:
    start = time.process_time()  # CPU time: a busy neighbour must not fail this
    first = make_tiny_model(tmp_path, "tiny", 1, seed=5)
    elapsed = time.process_time() - start
    second = make_tiny_model(tmp_path, "tiny", 2, seed=5)
    assert elapsed < 5.0
    assert first == tmp_path / "tiny" / "1"
    meta = ModelMetadata.model_validate_json((first / "metadata.json").read_bytes())
    assert meta.classes == ["class_0", "class_1", "class_2"]
    assert [layer.units for layer in meta.layers] == [8, 4] and meta.num_features == 3
    assert meta.parity.max_abs_diff <= 1e-5
    # same seed, same weights: the graphs are byte-identical
    assert (first / "model.onnx").read_bytes() == (second / "model.onnx").read_bytes()


def test_tiny_bidirectional_regressor_runs(tmp_path: Path) -> None:
    path = make_tiny_model(
        tmp_path,
        "bi",
        features=2,
        layers=(3,),
        bidirectional=True,
        task="regression",
        output_size=2,
    )
    meta = ModelMetadata.model_validate_json((path / "metadata.json").read_bytes())
    assert (meta.task, meta.output_size, meta.classes, meta.bidirectional) == (
        "regression",
        2,
        None,
        True,
    )
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    zeros = np.zeros((2, 1, 3), np.float32)
    feeds = {"x": np.ones((1, 4, 2), np.float32), "lengths": np.array([4]), "h0_0": zeros[:, :1]}
    feeds["c0_0"] = zeros[:, :1]
    final = session.run(["final_output"], feeds)[0]
    assert final.shape == (1, 2) and np.isfinite(final).all()
