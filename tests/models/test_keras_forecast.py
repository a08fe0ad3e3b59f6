"""lstm-import of Keras encoder-decoder forecasters (RepeatVector), served equal to Keras.

Real Keras 3 (PyTorch backend) builds the tutorial's forecaster and two more
(stacked encoder and decoder with Masking; a bidirectional GRU encoder with a
per-step softmax), saves each as ``.keras`` and ``.h5``; ``lstm-import``
publishes them; a real server answers through ``/v1`` and V2, compared with
Keras's ``model.predict`` and with the PyTorch rebuild at 1e-5, ragged masked
batches included. Placements that cannot mean a forecaster are refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import httpx
import keras
import numpy as np
import pytest
import torch
from keras import layers as L

from models import keras_import
from models.forecaster import Forecaster
from models.keras.convert import keras_summary
from models.keras.files import read
from models.keras.graph import UnsupportedModel
from models.keras.spec import parse
from service.core.contract import ModelMetadata
from tests.models import keras_models

TOLERANCE = 1e-5
FORMATS = ("keras", "h5")
CLASSES = ["low", "mid", "high"]


@pytest.fixture(scope="module", autouse=True)
def fresh_keras_names() -> Iterator[None]:
    """Keras numbers its default layer names per process (lstm, lstm_1, ...): start from
    scratch, and leave it so, so that the tests reading those names pass in any order."""
    keras.backend.clear_session()
    yield
    keras.backend.clear_session()


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    """Every forecaster in both formats, imported: name_format -> (Keras model, version)."""
    files = tmp_path_factory.mktemp("keras")
    repository = tmp_path_factory.mktemp("repository")
    out = {}
    for seed, (kind, build) in enumerate(keras_models.FORECASTERS.items()):
        model = keras_models.randomize(build(), seed)
        for fmt in FORMATS:
            path = files / f"{kind}.{fmt}"
            model.save(path)
            classes = CLASSES if kind == "classes" else None
            version_dir, _, _ = keras_import.import_keras(
                path, repository, f"{kind}_{fmt}", classes=classes
            )
            out[f"{kind}_{fmt}"] = (model, version_dir)
    return out


def metadata(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())


def test_the_tutorials_forecaster_summary_has_keras_own_counts(tmp_path: Path) -> None:
    model = keras_models.forecaster_tutorial()
    model.save(tmp_path / "t.keras")
    file = read(tmp_path / "t.keras")
    rows = keras_summary(parse(file.config), file).splitlines()
    assert rows[3].split() == ["lstm", "(LSTM)", "(None,", "64)", "16,896"]
    assert rows[4].split() == ["repeat_vector", "(RepeatVector)", "(None,", "5,", "64)", "0"]
    assert rows[5].split() == ["lstm_1", "(LSTM)", "(None,", "5,", "64)", "33,024"]
    assert rows[6].split()[-4:] == ["(None,", "5,", "1)", "65"]
    assert rows[-1] == f"Total params: {model.count_params():,}"  # 49,985


def test_every_forecaster_imports_with_its_horizon_and_keras_parity(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    shapes = {"tutorial": (5, 1, 1), "stacked": (3, 2, 2), "classes": (4, 3, 1)}
    for name, (_, version_dir) in imported.items():
        meta = metadata(version_dir)
        horizon, outputs, encoder = shapes[name.rsplit("_", 1)[0]]
        assert meta.target == "forecast" and meta.horizon == horizon, name
        assert meta.forecast is not None and meta.forecast.encoder_layers == encoder, name
        assert meta.output_size == outputs and not meta.carries_state, name
        assert meta.default_return_sequences is False
        assert meta.parity.max_abs_diff <= 1e-4  # torch vs onnxruntime
        training = meta.training
        assert training is not None and training.hyperparameters["horizon"] == horizon
        gap = training.metrics["keras_parity_max_abs_diff"]
        assert isinstance(gap, float) and gap <= TOLERANCE, (name, gap)
        assert str(training.hyperparameters["keras_parity"]).startswith(
            f"checked against Keras {keras.__version__} (torch backend)"
        )
    assert metadata(imported["classes_keras"][1]).classes == CLASSES


def _inputs(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three sequences; ragged and zero-padded for the model that masks."""
    features = {"tutorial": 1, "stacked": 2, "classes": 3}[kind]
    x = rng.normal(size=(3, 9, features)).astype(np.float32)
    lengths = np.full(3, 9, np.int64)
    if kind == "stacked":
        lengths = np.array([9, 4, 1], np.int64)
        for i, n in enumerate(lengths):
            x[i, n:] = 0.0
    return x, lengths


def _served(prediction: Any) -> np.ndarray:
    """A /v1 forecast (values, or labelled steps) as [horizon, K]."""
    if prediction and isinstance(prediction[0], dict):
        return np.array([step["probabilities"] for step in prediction])
    return np.array(prediction)


def _v2_body(x: np.ndarray, lengths: np.ndarray, outputs: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
            {"name": "lengths", "shape": [len(x)], "datatype": "INT64", "data": lengths.tolist()},
        ]
    }
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


def test_served_forecasts_equal_keras_and_torch_through_both_protocols(
    imported: dict[str, tuple[keras.Model, Path]], server_factory: Callable[..., Any]
) -> None:
    repository = next(iter(imported.values()))[1].parent.parent
    server = server_factory(repository)
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, (model, version_dir) in imported.items():
            kind = name.rsplit("_", 1)[0]
            x, lengths = _inputs(kind, rng)
            want = np.asarray(model.predict(x, batch_size=len(x), verbose=0))
            rebuilt = Forecaster.load_checkpoint(version_dir / "checkpoint.pt")
            with torch.no_grad():
                (torch_out,) = rebuilt(torch.from_numpy(x), torch.from_numpy(lengths))
            np.testing.assert_allclose(torch_out.numpy(), want, atol=TOLERANCE, err_msg=name)
            instances = [x[i, :n].tolist() for i, n in enumerate(lengths)]
            v1 = client.post(f"/v1/models/{name}:predict", json={"instances": instances})
            assert v1.status_code == 200, v1.text
            predictions = v1.json()["predictions"]
            assert len(predictions) == 3
            for i, prediction in enumerate(predictions):
                assert len(prediction) == want.shape[1]  # the horizon, whatever the length
                np.testing.assert_allclose(_served(prediction), want[i], atol=TOLERANCE)
            if kind == "classes":
                labels = [[step["label"] for step in p] for p in predictions]
                assert labels == [[CLASSES[k] for k in row] for row in want.argmax(-1)]
            for outputs in (["forecast"], None):  # asked for, or every output: the one
                v2 = client.post(f"/v2/models/{name}/infer", json=_v2_body(x, lengths, outputs))
                assert v2.status_code == 200, v2.text
                [out] = v2.json()["outputs"]
                assert out["name"] == "forecast" and out["shape"] == list(want.shape)
                got = np.array(out["data"], np.float32).reshape(out["shape"])
                np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=name)

        # Concurrent ragged requests are batched together: each gets its own forecast.
        model, _ = imported["stacked_keras"]
        x = rng.normal(size=(8, 12, 2)).astype(np.float32)
        lengths = np.array([12, 1, 7, 3, 12, 5, 9, 2], np.int64)
        for i, n in enumerate(lengths):
            x[i, n:] = 0.0
        want = np.asarray(model.predict(x, batch_size=len(x), verbose=0))

        def one(i: int) -> np.ndarray:
            body = {"instances": [x[i, : lengths[i]].tolist()]}
            answer = client.post("/v1/models/stacked_keras:predict", json=body)
            assert answer.status_code == 200, answer.text
            return np.array(answer.json()["predictions"][0])

        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(one, range(8)))
        np.testing.assert_allclose(np.stack(got), want, atol=TOLERANCE)


def test_the_horizon_is_in_both_protocols_metadata_and_misuse_is_refused(
    imported: dict[str, tuple[keras.Model, Path]], server_factory: Callable[..., Any]
) -> None:
    repository = next(iter(imported.values()))[1].parent.parent
    server = server_factory(repository)
    name = "tutorial_keras"
    with httpx.Client(base_url=server.url, timeout=30) as client:
        info = client.get(f"/v1/models/{name}").json()
        assert info["target"] == "forecast" and info["horizon"] == 5
        assert info["forecast"] == {"horizon": 5, "encoder_layers": 1}
        assert info["outputs"] == {"forecast": {"shape": [-1, 5, 1]}}
        assert info["stateful"] is False
        v2 = client.get(f"/v2/models/{name}").json()
        assert v2["outputs"] == [{"name": "forecast", "datatype": "FP32", "shape": [-1, 5, 1]}]
        config = client.get(f"/v2/models/{name}/config").json()
        assert config["output"] == [{"name": "forecast", "data_type": "TYPE_FP32", "dims": [5, 1]}]

        sequence = [[0.5], [0.1], [-0.3]]
        refused = {
            "return_sequences": (
                {"instances": [sequence], "return_sequences": True},
                f"model {name!r} is a forecaster: it answers its next 5 steps per sequence, "
                "not one prediction per input timestep; leave out return_sequences (or set it "
                "to false)",
            ),
            "sequence_id": (
                {"instances": [sequence], "sequence_id": "s1", "sequence_start": True},
                f"model {name!r} is a forecaster: each answer is its next 5 steps from the "
                "whole input, and its state is not carried across requests; send each "
                "sequence whole (without sequence_id, initial_states or return_states)",
            ),
        }
        for case, (body, message) in refused.items():
            answer = client.post(f"/v1/models/{name}:predict", json=body)
            assert answer.status_code == 422, (case, answer.text)  # as any InvalidInput
            assert answer.json()["error"] == message
        fine = client.post(
            f"/v1/models/{name}:predict", json={"instances": [sequence], "return_sequences": False}
        )
        assert fine.status_code == 200 and len(fine.json()["predictions"][0]) == 5
        x = np.array([sequence], np.float32)
        answer = client.post(
            f"/v2/models/{name}/infer", json=_v2_body(x, np.array([3]), ["sequence_output"])
        )
        assert answer.status_code == 400
        assert answer.json()["error"] == (
            f"unknown output 'sequence_output'; model {name!r} has outputs 'forecast'"
        )


def _stack(*layers: keras.layers.Layer) -> keras.Model:
    return keras.Sequential([keras.Input((None, 2)), *layers])


REFUSED: dict[str, tuple[Callable[[], keras.Model], str]] = {
    "decoder_returns_one": (
        lambda: _stack(
            L.LSTM(4, name="enc"),
            L.RepeatVector(3, name="repeat"),
            L.GRU(4, name="dec"),
            L.Dense(1, name="out"),
        ),
        "layer 'dec' (GRU): return_sequences=False on the decoder's last layer is not "
        "supported: a forecaster answers one output per future step; set "
        "return_sequences=True on it (then TimeDistributed(Dense))",
    ),
    "repeat_after_dense": (
        lambda: _stack(
            L.LSTM(4, name="enc"),
            L.Dense(3, name="mid"),
            L.RepeatVector(3, name="repeat"),
            L.LSTM(4, return_sequences=True, name="dec"),
            L.TimeDistributed(L.Dense(1), name="out"),
        ),
        "layer 'repeat' (RepeatVector) follows layer 'mid' (Dense); it must follow the "
        "encoder's last recurrent layer (LSTM or GRU with return_sequences=False), whose "
        "final output it repeats",
    ),
    "no_decoder": (
        lambda: _stack(
            L.LSTM(4, name="enc"),
            L.RepeatVector(3, name="repeat"),
            L.TimeDistributed(L.Dense(1), name="out"),
        ),
        "layer 'repeat' (RepeatVector) is followed by layer 'out' (TimeDistributed(Dense)); "
        "it must be followed by the decoder: recurrent layers (LSTM or GRU), the last with "
        "return_sequences=True, then TimeDistributed(Dense)",
    ),
    "two_repeats": (
        lambda: _stack(
            L.LSTM(4, name="enc"),
            L.RepeatVector(3, name="repeat"),
            L.LSTM(4, name="dec"),
            L.RepeatVector(2, name="again"),
            L.LSTM(4, return_sequences=True, name="dec2"),
            L.TimeDistributed(L.Dense(1), name="out"),
        ),
        "layer 'again' (RepeatVector) follows another RepeatVector ('repeat'); a forecaster "
        "has one: encoder, RepeatVector, decoder",
    ),
    "stateful": (
        lambda: keras.Sequential(
            [
                keras.Input(batch_shape=(2, None, 2)),
                L.LSTM(4, stateful=True, name="enc"),
                L.RepeatVector(3, name="repeat"),
                L.LSTM(4, return_sequences=True, stateful=True, name="dec"),
                L.TimeDistributed(L.Dense(1), name="out"),
            ]
        ),
        "layer 'enc' (LSTM): stateful=True is not supported in a forecaster (RepeatVector "
        "'repeat'): its state is not carried across requests; drop stateful=True (each "
        "request's sequences are then encoded whole)",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_is_not_a_forecaster_is_refused_by_name(tmp_path: Path, case: str) -> None:
    build, message = REFUSED[case]
    path = tmp_path / "m.keras"
    build().save(path)
    with pytest.raises(UnsupportedModel) as error:
        keras_import.import_keras(path, tmp_path / "repository", "m")
    assert str(error.value) == message
    assert not (tmp_path / "repository" / "m").exists()


def test_a_config_with_a_sequence_into_the_repeat_is_refused(tmp_path: Path) -> None:
    """Keras 3 will not build it (RepeatVector takes 2-D input), but a config can say it."""
    path = tmp_path / "m.keras"
    _stack(
        L.LSTM(4, name="enc"),
        L.RepeatVector(3, name="repeat"),
        L.LSTM(4, return_sequences=True, name="dec"),
        L.TimeDistributed(L.Dense(1), name="out"),
    ).save(path)
    config = read(path).config
    for layer in config["config"]["layers"]:
        if layer["config"]["name"] == "enc":
            layer["config"]["return_sequences"] = True
    with pytest.raises(UnsupportedModel) as error:
        parse(config)
    assert str(error.value) == (
        "layer 'enc' (LSTM): return_sequences=True before layer 'repeat' (RepeatVector) is "
        "not supported: RepeatVector repeats the encoder's final output; set "
        "return_sequences=False on it"
    )


def test_a_forecaster_with_a_conv1d_front_end_is_refused_by_name(tmp_path: Path) -> None:
    """The two features do not combine (the forecaster builds no front end): refused at
    import with the layer's Keras name, never served without its convolution."""
    path = tmp_path / "m.keras"
    model = keras.Sequential(
        [
            keras.Input((12, 2)),
            L.Conv1D(4, 3, name="conv"),
            L.LSTM(8, name="enc"),
            L.RepeatVector(3, name="repeat"),
            L.LSTM(8, return_sequences=True, name="dec"),
            L.TimeDistributed(L.Dense(1), name="head"),
        ]
    )
    model.save(path)
    with pytest.raises(UnsupportedModel) as refused:
        parse(read(path).config)
    assert str(refused.value) == (
        "layer 'conv' (Conv1D): a Conv1D/pooling front end is not supported in a forecaster "
        "(RepeatVector 'repeat'); one or the other imports: drop the front end, or the "
        "RepeatVector decoder"
    )
