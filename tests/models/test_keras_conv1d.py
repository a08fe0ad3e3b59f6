"""Conv1D/pooling front ends (issue 25 item 5): imported exactly, served whole."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers as L

from models import keras_import
from service.core.contract import ModelMetadata
from tests.conftest import make_client
from tests.models import keras_models

TOLERANCE = 1e-5


def _causal() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((100, 6)),
            L.Conv1D(8, 3, padding="causal", activation="relu", name="conv"),
            L.MaxPooling1D(2, name="pool"),
            L.LSTM(16),
            L.Dense(4, activation="softmax"),
        ]
    )


def _strided() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((100, 6)),
            L.Conv1D(8, 5, padding="valid", strides=2, activation="tanh", name="conv"),
            L.AveragePooling1D(2, name="pool"),
            L.LSTM(16),
            L.Dense(4, activation="softmax"),
        ]
    )


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    files = tmp_path_factory.mktemp("keras")
    repository = tmp_path_factory.mktemp("repository")
    out = {}
    for seed, (kind, build) in enumerate((("causal", _causal), ("strided", _strided))):
        model = keras_models.randomize(build(), seed)
        for fmt in ("keras", "h5"):
            path = files / f"{kind}.{fmt}"
            model.save(path)
            version_dir, _, _ = keras_import.import_keras(path, repository, f"{kind}_{fmt}")
            out[f"{kind}_{fmt}"] = (model, version_dir)
    return out


def test_imports_served_equal_keras_and_refuse_ragged_and_state(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    repository = next(iter(imported.values()))[1].parent.parent
    rng = np.random.default_rng(0)
    with make_client(repository) as client:
        for name, (model, version_dir) in imported.items():
            meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
            assert not meta.ragged and meta.front_end[0].name == "conv"
            assert meta.parity.max_abs_diff <= 1e-4
            x = rng.normal(size=(3, 100, 6)).astype(np.float32)
            want = np.asarray(model.predict(x, batch_size=3, verbose=0))
            v1 = client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
            assert v1.status_code == 200, v1.text
            got = np.array([p["probabilities"] for p in v1.json()["predictions"]])
            np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=name)
            body = {
                "inputs": [
                    {
                        "name": "x",
                        "shape": list(x.shape),
                        "datatype": "FP32",
                        "data": x.ravel().tolist(),
                    },
                    {"name": "lengths", "shape": [3], "datatype": "INT64", "data": [100] * 3},
                ],
                "outputs": [{"name": "final_output"}],
            }
            v2 = client.post(f"/v2/models/{name}/infer", json=body)
            assert v2.status_code == 200, v2.text
            out = v2.json()["outputs"][0]
            got2 = np.array(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got2, want, atol=TOLERANCE, err_msg=name)
            ragged = {"instances": [x[0].tolist(), x[1, :80].tolist()]}
            refused = client.post(f"/v1/models/{name}:predict", json=ragged)
            assert refused.status_code in (400, 422), refused.text
            assert "layer 'conv'" in refused.text and "equal length" in refused.text
            stateful = {"instances": [x[0].tolist()], "sequence_id": "s1", "sequence_start": True}
            refused = client.post(f"/v1/models/{name}:predict", json=stateful)
            assert refused.status_code in (400, 422), refused.text
            assert "front end" in refused.text
