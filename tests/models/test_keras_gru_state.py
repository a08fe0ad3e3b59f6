"""Keras ``GRU(stateful=True)`` imported and served in chunks equal to Keras's stateful predict.

A stateful GRU stack and a stateful LSTM into a reset-before GRU, saved as .keras and
.h5, are imported with ``lstm-import`` (whose Keras parity check streams a sequence in
chunks with the states carried on both sides); a real server then answers each row's
chunks through server-held state (``sequence_id``), client-carried state and the
WebSocket, each chunk equal to Keras's ``model.predict`` on the same chunk at 1e-5.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import httpx
import keras
import numpy as np
import orjson
import pytest
from websockets.sync.client import connect

from models import keras_import
from service.core.contract import ModelMetadata
from tests.models import keras_models

TOLERANCE = 1e-5
FORMATS = ("keras", "h5")
CHUNKS = [(0, 4), (4, 5), (5, 11)]


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    """Both stateful GRU models in both formats: name_format -> (Keras model, version)."""
    files = tmp_path_factory.mktemp("keras-gru")
    repository = tmp_path_factory.mktemp("repository-gru")
    out = {}
    for seed, (kind, build) in enumerate(keras_models.STATEFUL_GRU_BUILDERS.items()):
        model = keras_models.randomize(build(), 40 + seed)
        for fmt in FORMATS:
            path = files / f"{kind}.{fmt}"
            model.save(path)
            version_dir, _, _ = keras_import.import_keras(path, repository, f"{kind}_{fmt}")
            out[f"{kind}_{fmt}"] = (model, version_dir)
    return out


def metadata(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())


def test_the_import_checks_streamed_chunks_against_keras(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    for name, (_, version_dir) in imported.items():
        meta = metadata(version_dir)
        assert meta.carries_state, name
        training = meta.training
        assert training is not None
        assert training.hyperparameters["stateful"] is True
        note = str(training.hyperparameters["keras_parity"])
        assert note.endswith("4 streamed chunks"), (name, note)
        gap = training.metrics["keras_parity_max_abs_diff"]
        assert isinstance(gap, float) and gap <= TOLERANCE, (name, gap)
    mixed = metadata(imported["stateful_mixed_h5"][1])
    assert [(layer.cell, layer.reset_after) for layer in mixed.layers] == [
        ("lstm", True),
        ("gru", False),
    ]
    assert [s.names for s in mixed.tensors.initial_states] == [("h0_0", "c0_0"), ("h0_1",)]


def keras_chunks(model: keras.Model, x: np.ndarray) -> list[np.ndarray]:
    """Keras's stateful predict on each chunk in turn, its states carried by Keras."""
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    want = [np.asarray(model.predict(x[:, a:b], batch_size=len(x), verbose=0)) for a, b in CHUNKS]
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    return want


def served(prediction: Any) -> np.ndarray:
    """A /v1 prediction (labelled probabilities or values, one or per timestep) as an array."""
    if isinstance(prediction, dict):
        return np.array(prediction["probabilities"])
    if prediction and isinstance(prediction[0], dict):
        return np.array([p["probabilities"] for p in prediction])
    return np.array(prediction)


@pytest.mark.parametrize("kind", sorted(keras_models.STATEFUL_GRU_BUILDERS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_served_chunks_equal_keras_stateful_predict(
    imported: dict[str, tuple[keras.Model, Path]],
    server_factory: Callable[..., Any],
    kind: str,
    fmt: str,
) -> None:
    """Per Keras row, one sequence: server-held, client-carried and streamed, chunk by chunk."""
    name = f"{kind}_{fmt}"
    model, version_dir = imported[name]
    per_step = metadata(version_dir).default_return_sequences
    server = server_factory(version_dir.parent.parent)
    x = np.random.default_rng(7).normal(size=(keras_models.STATEFUL_BATCH, 11, 3))
    x = x.astype(np.float32)
    want = keras_chunks(model, x)
    ws_url = server.url.replace("http://", "ws://") + f"/v1/models/{name}/stream"
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for row in range(len(x)):
            carried = None
            with connect(ws_url) as ws:
                for c, (a, b) in enumerate(CHUNKS):
                    piece = x[row, a:b].tolist()
                    held = client.post(
                        f"/v1/models/{name}:predict",
                        json={
                            "instances": [piece],
                            "sequence_id": f"{name}-{row}",
                            "sequence_start": c == 0,
                            "sequence_end": c == len(CHUNKS) - 1,
                        },
                    )
                    assert held.status_code == 200, held.text
                    got = served(held.json()["predictions"][0])
                    np.testing.assert_allclose(got, want[c][row], atol=TOLERANCE, err_msg=name)
                    client_side = client.post(
                        f"/v1/models/{name}:predict",
                        json={
                            "instances": [piece],
                            "return_states": True,
                            "initial_states": [carried],
                        },
                    )
                    assert client_side.status_code == 200, client_side.text
                    (carried,) = client_side.json()["states"]
                    got = served(client_side.json()["predictions"][0])
                    np.testing.assert_allclose(got, want[c][row], atol=TOLERANCE, err_msg=name)
                    ws.send(orjson.dumps({"timesteps": piece}).decode())
                    streamed = served(orjson.loads(ws.recv())["predictions"])
                    last = streamed if per_step else streamed[-1]
                    np.testing.assert_allclose(last, want[c][row], atol=TOLERANCE, err_msg=name)
