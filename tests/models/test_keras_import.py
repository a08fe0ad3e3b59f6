"""lstm-import: the tutorials' Keras models, saved as .keras and .h5, served equal to Keras.

Real Keras 3 (PyTorch backend) builds and saves the models and answers
``model.predict``; ``lstm-import`` publishes them into a temporary repository;
a real server answers through ``/v1`` and V2; every answer is compared with
Keras's at 1e-5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import httpx
import keras
import numpy as np
import pytest
from keras import layers as L

from models import keras_import
from models.keras import parity as keras_parity
from models.keras.convert import keras_summary
from models.keras.files import read
from models.keras.graph import UnsupportedModel
from models.keras.spec import parse
from service.core.contract import ModelMetadata
from tests.conftest import reference
from tests.models import keras_models

TOLERANCE = 1e-5
FORMATS = ("keras", "h5")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[keras.Model, Path]]:
    """Every tutorial model, saved in both formats and imported: name_format -> (model, version)."""
    files = tmp_path_factory.mktemp("keras")
    repository = tmp_path_factory.mktemp("repository")
    out = {}
    for seed, (kind, build) in enumerate(keras_models.BUILDERS.items()):
        model = keras_models.randomize(build(), seed)
        for fmt in FORMATS:
            path = files / f"{kind}.{fmt}"
            model.save(path)
            classes = ["no", "yes"] if kind == "masked" else None
            version_dir, _, _ = keras_import.import_keras(
                path, repository, f"{kind}_{fmt}", classes=classes
            )
            out[f"{kind}_{fmt}"] = (model, version_dir)
    return out


def metadata(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())


def test_the_tutorials_parameter_counts_are_keras_own(tmp_path: Path) -> None:
    # Keras numbers default layer names per process (lstm, lstm_1, ...): start afresh, so
    # that this test reads "lstm" whichever Keras tests ran before it.
    keras.backend.clear_session()
    model = keras_models.tutorial()
    model.save(tmp_path / "t.keras")
    file = read(tmp_path / "t.keras")
    summary = keras_summary(parse(file.config), file)
    assert "lstm (LSTM)" in summary and f"{17152:>10,}" in summary
    assert f"{12416:>10,}" in summary and f"{132:>10,}" in summary
    assert summary.splitlines()[-1] == f"Total params: {model.count_params():,}"  # 29,700


def test_every_import_records_its_keras_parity(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    for name, (_, version_dir) in imported.items():
        training = metadata(version_dir).training
        assert training is not None, name
        if name == "masked_h5":  # Keras cannot read back this legacy file; the test checks it
            assert training.hyperparameters["keras_parity"] == (
                f"not checked against Keras (Keras {keras.__version__} could not load masked.h5: "
                "Unknown layer: 'NotEqual'. Please ensure you are using a "
                "`keras.utils.custom_object_scope` and that this object is included in the "
                "scope. See https://www.tensorflow.org/guide/keras/save_and_serialize"
                "#registering_the_custom_object for details.); "
                "checked against its own PyTorch rebuild only"
            )
            continue
        gap = training.metrics["keras_parity_max_abs_diff"]
        assert isinstance(gap, float) and gap <= TOLERANCE, (name, gap)
        assert training.hyperparameters["keras_parity"].startswith(  # type: ignore[union-attr]
            f"checked against Keras {keras.__version__} (torch backend)"
        )
        assert metadata(version_dir).parity.max_abs_diff <= 1e-4  # torch vs onnxruntime
    stateful = metadata(imported["stateful_keras"][1])
    assert stateful.target == "sequence" and stateful.training is not None
    assert stateful.training.hyperparameters["stateful"] is True
    assert metadata(imported["masked_h5"][1]).classes == ["no", "yes"]
    norm = metadata(imported["normalized_keras"][1]).normalization
    np.testing.assert_allclose(norm.mean, keras_models.NORMALIZATION_MEAN, atol=0.6)


def _inputs(kind: str, features: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A batch for ``kind``: ragged and zero-padded where the model masks, full otherwise."""
    batch = keras_models.STATEFUL_BATCH if kind == "stateful" else 3
    steps = 9
    x = rng.normal(size=(batch, steps, features)).astype(np.float32)
    if kind == "normalized":
        x = x * keras_models.NORMALIZATION_STD + keras_models.NORMALIZATION_MEAN
    lengths = np.full(batch, steps, np.int64)
    if kind.startswith("masked"):
        lengths = np.array([9, 4, 1], np.int64)
        for i, n in enumerate(lengths):
            x[i, n:] = 0.0
    return x, lengths


def _served(prediction: Any) -> np.ndarray:
    """A /v1 prediction (a labelled one or values, or a list of those) as an array."""
    if isinstance(prediction, dict):
        return np.array(prediction["probabilities"])
    if prediction and isinstance(prediction[0], dict):
        return np.array([p["probabilities"] for p in prediction])
    return np.array(prediction)


def test_served_answers_equal_keras_through_both_protocols(
    imported: dict[str, tuple[keras.Model, Path]], server_factory: Callable[..., Any]
) -> None:
    repository = next(iter(imported.values()))[1].parent.parent
    server = server_factory(repository)
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name, (model, version_dir) in imported.items():
            kind = name.rsplit("_", 1)[0]
            meta = metadata(version_dir)
            x, lengths = _inputs(kind, meta.num_features, rng)
            for layer in model.layers:
                if getattr(layer, "stateful", False):
                    layer.reset_states()
            want = np.asarray(model.predict(x, batch_size=len(x), verbose=0))
            per_step = meta.target == "sequence"
            if kind == "masked":  # one sigmoid unit: served as (1 - p, p)
                want = np.concatenate([1 - want, want], axis=-1)
            instances = [x[i, :n].tolist() for i, n in enumerate(lengths)]
            body = {"instances": instances, "return_sequences": per_step}
            v1 = client.post(f"/v1/models/{name}:predict", json=body)
            assert v1.status_code == 200, v1.text
            for i, (prediction, n) in enumerate(
                zip(v1.json()["predictions"], lengths, strict=True)
            ):
                expected = want[i, :n] if per_step else want[i]
                np.testing.assert_allclose(
                    _served(prediction), expected, atol=TOLERANCE, err_msg=name
                )
            output = "sequence_output" if per_step else "final_output"
            v2 = client.post(
                f"/v2/models/{name}/infer",
                json={
                    "inputs": [
                        {
                            "name": "x",
                            "shape": list(x.shape),
                            "datatype": "FP32",
                            "data": x.ravel().tolist(),
                        },
                        {
                            "name": "lengths",
                            "shape": [len(x)],
                            "datatype": "INT64",
                            "data": lengths.tolist(),
                        },
                    ],
                    "outputs": [{"name": output}],
                },
            )
            assert v2.status_code == 200, v2.text
            out = v2.json()["outputs"][0]
            got = np.array(out["data"], np.float32).reshape(out["shape"])
            if per_step:
                for i, n in enumerate(lengths):
                    np.testing.assert_allclose(
                        got[i, :n], want[i, :n], atol=TOLERANCE, err_msg=name
                    )
            else:
                np.testing.assert_allclose(got, want, atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_stateful_model_streamed_equals_keras_chunk_by_chunk(
    imported: dict[str, tuple[keras.Model, Path]],
    server_factory: Callable[..., Any],
    fmt: str,
) -> None:
    """Server-held state (sequence_id) and client-carried state, one stream per Keras row."""
    model, version_dir = imported[f"stateful_{fmt}"]
    name = f"stateful_{fmt}"
    server = server_factory(version_dir.parent.parent)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(keras_models.STATEFUL_BATCH, 11, 3)).astype(np.float32)
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_states()
    chunks = [(0, 4), (4, 5), (5, 11)]
    want = [np.asarray(model.predict(x[:, a:b], batch_size=len(x), verbose=0)) for a, b in chunks]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        carried: list[Any] = [None] * len(x)
        for c, (a, b) in enumerate(chunks):
            for row in range(len(x)):
                held = client.post(
                    f"/v1/models/{name}:predict",
                    json={
                        "instances": [x[row, a:b].tolist()],
                        "return_sequences": True,
                        "sequence_id": f"row-{row}",
                        "sequence_start": c == 0,
                        "sequence_end": c == len(chunks) - 1,
                    },
                )
                assert held.status_code == 200, held.text
                got = np.array(held.json()["predictions"][0])
                np.testing.assert_allclose(got, want[c][row], atol=TOLERANCE)
                client_side = client.post(
                    f"/v1/models/{name}:predict",
                    json={
                        "instances": [x[row, a:b].tolist()],
                        "return_sequences": True,
                        "return_states": True,
                        "initial_states": [carried[row]],
                    },
                )
                assert client_side.status_code == 200, client_side.text
                carried[row] = client_side.json()["states"][0]
                got = np.array(client_side.json()["predictions"][0])
                np.testing.assert_allclose(got, want[c][row], atol=TOLERANCE)


def _lstm_stack(*middle: keras.layers.Layer) -> keras.Model:
    return keras.Sequential([keras.Input((None, 2)), *middle])


REFUSED: dict[str, tuple[Callable[[], keras.Model], str]] = {
    "activation": (
        lambda: _lstm_stack(L.LSTM(4, activation="relu", name="rnn"), L.Dense(2, name="out")),
        "layer 'rnn' (LSTM): activation='relu' is not supported; only 'tanh' exports exactly",
    ),
    "recurrent_activation": (
        lambda: _lstm_stack(
            L.LSTM(4, recurrent_activation="hard_sigmoid", name="rnn"), L.Dense(2, name="out")
        ),
        "layer 'rnn' (LSTM): recurrent_activation='hard_sigmoid' is not supported; "
        "only 'sigmoid' exports exactly",
    ),
    "multi_label": (
        lambda: _lstm_stack(L.LSTM(4, name="rnn"), L.Dense(3, activation="sigmoid", name="out")),
        "layer 'out' (Dense): sigmoid over 3 units (multi-label) is not supported; "
        "use softmax, or sigmoid over one unit for a binary classifier",
    ),
    "simple_rnn": (
        lambda: _lstm_stack(L.SimpleRNN(4, name="rnn"), L.Dense(2, name="out")),
        "layer 'rnn' (SimpleRNN) is not supported; SimpleRNN layers are not supported; "
        "an LSTM stack imports",
    ),
    "gru_stateful_go_backwards": (
        lambda: keras.Sequential(
            [
                keras.Input(batch_shape=(2, None, 2)),
                L.GRU(4, go_backwards=True, stateful=True, name="rnn"),
                L.Dense(2, name="out"),
            ]
        ),
        "layer 'rnn' (GRU): stateful=True with go_backwards=True cannot be served: a "
        "backward pass needs the whole sequence; drop stateful=True",
    ),
    "no_head": (
        lambda: _lstm_stack(L.LSTM(4, name="rnn")),
        "the model ends at layer 'rnn' without a Dense head; add Dense(units)",
    ),
    "stateful_some": (
        lambda: keras.Sequential(
            [
                keras.Input(batch_shape=(2, None, 2)),
                L.LSTM(4, return_sequences=True, stateful=True, name="a"),
                L.LSTM(3, name="b"),
                L.Dense(2, name="out"),
            ]
        ),
        "stateful=True on some LSTM layers only is not supported (layer 'a': stateful=True, "
        "layer 'b': stateful=False); set it on every LSTM layer or on none",
    ),
    "masked_go_backwards": (
        lambda: _lstm_stack(
            L.Masking(), L.LSTM(4, go_backwards=True, name="rnn"), L.Dense(2, name="out")
        ),
        "layer 'rnn' (LSTM): go_backwards=True after Masking is not supported (Keras moves "
        "the padding to the front); remove the Masking layer: the server runs each sequence "
        "at its own length anyway",
    ),
    "stateful_go_backwards": (
        lambda: keras.Sequential(
            [
                keras.Input(batch_shape=(2, None, 2)),
                L.LSTM(4, go_backwards=True, stateful=True, name="rnn"),
                L.Dense(2, name="out"),
            ]
        ),
        "layer 'rnn' (LSTM): stateful=True with go_backwards=True cannot be served: a "
        "backward pass needs the whole sequence; drop stateful=True",
    ),
    "softmax_inside": (
        lambda: _lstm_stack(
            L.LSTM(4, name="rnn"),
            L.Dense(3, activation="softmax", name="mid"),
            L.Dense(2, name="out"),
        ),
        "layer 'mid': activation='softmax' is supported on the last Dense layer only",
    ),
    "norm_at_the_end": (
        lambda: _lstm_stack(
            L.LSTM(4, name="rnn"), L.Dense(2, name="out"), L.LayerNormalization(name="ln")
        ),
        "layer 'ln' (LayerNormalization) follows the last Dense layer 'out'; the model must "
        "end with a Dense layer (and an Activation): move it before that Dense layer",
    ),
    "dense_between_lstms": (
        lambda: _lstm_stack(
            L.LSTM(4, return_sequences=True, name="a"),
            L.Dense(3, name="mid"),
            L.LSTM(3, name="b"),
            L.Dense(2, name="out"),
        ),
        "layer 'b' (LSTM) follows layer 'mid'; recurrent layers after Dense (or "
        "normalisation) layers are not supported: put the Dense layers after the last "
        "recurrent layer",
    ),
    "unknown_activation": (
        lambda: _lstm_stack(L.LSTM(4, name="rnn"), L.Dense(2, activation="hard_silu", name="out")),
        "layer 'out' (Dense): activation='hard_silu' is not supported; use one of linear, "
        "relu, tanh, sigmoid, elu, selu, gelu, softplus, softsign, swish, silu, leaky_relu, "
        "softmax",
    ),
    "conv1d": (
        lambda: _lstm_stack(
            L.Conv1D(4, 3, strides=2, padding="same", name="conv"),
            L.LSTM(4, name="rnn"),
            L.Dense(2),
        ),
        "layer 'conv' (Conv1D): padding='same' with strides=2 is not supported (its padding "
        "depends on each sequence's length); use padding='valid' or 'causal', or strides=1",
    ),
}


def _branching() -> keras.Model:
    inputs = keras.Input((None, 2), name="x")
    a = L.LSTM(4, name="left")(inputs)
    b = L.LSTM(4, name="right")(inputs)
    return keras.Model(inputs, L.Dense(2, name="out")(L.Add(name="add")([a, b])))


REFUSED["branching"] = (
    _branching,
    "layer 'add' (Add) takes 2 inputs; only a chain of layers is supported",
)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_cannot_be_served_exactly_is_refused_by_name(tmp_path: Path, case: str) -> None:
    build, message = REFUSED[case]
    path = tmp_path / "m.keras"
    build().save(path)
    with pytest.raises(UnsupportedModel) as error:
        keras_import.import_keras(path, tmp_path / "repository", "m")
    assert str(error.value) == message
    assert not (tmp_path / "repository" / "m").exists()


def test_the_command_refuses_with_the_reason_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.h5"
    REFUSED["simple_rnn"][0]().save(path)
    with pytest.raises(SystemExit) as exit_:
        keras_import.main([str(path), "--name", "m", "--repository", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"lstm-import: {REFUSED['simple_rnn'][1]}\n"


def test_above_the_keras_tolerance_nothing_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.keras"
    keras_models.randomize(keras_models.per_timestep(), 0).save(path)
    monkeypatch.setattr(keras_parity, "TOLERANCE", -1.0)  # no gap passes
    with pytest.raises(keras_parity.KerasParityError, match="nothing was published"):
        keras_import.import_keras(path, tmp_path / "repository", "m")
    assert [p.name for p in (tmp_path / "repository").iterdir()] == []


def test_without_keras_it_imports_and_says_what_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.keras"
    keras_models.randomize(keras_models.tutorial(), 3).save(path)
    monkeypatch.setattr(keras_parity, "load_keras", lambda: None)
    keras_import.main(
        [str(path), "--name", "har", "--classes", "a,b,c,d", "--repository", str(tmp_path)]
    )
    printed = capsys.readouterr().out
    assert f"{17152:>10,}" in printed and f"{12416:>10,}" in printed
    assert printed.splitlines()[-1] == f"parity {keras_import.NOT_CHECKED}"
    meta = metadata(tmp_path / "har" / "1")
    assert meta.classes == ["a", "b", "c", "d"] and meta.training is not None
    assert meta.training.hyperparameters["keras_parity"] == keras_import.NOT_CHECKED
    assert meta.training.metrics == {}
    config = json.loads((tmp_path / "har" / "1" / "metadata.json").read_text())
    assert config["layers"] == [
        {"units": 64, "bidirectional": False, "go_backwards": False},
        {"units": 32, "bidirectional": False, "go_backwards": False},
    ]


def _keras2_h5(model: keras.Model, path: Path) -> None:
    """The tutorial as tf.keras 2 writes it: ``batch_input_shape`` on the first LSTM,
    no InputLayer, weight names ending in ``:0``, byte-string attributes."""
    import h5py

    lstm = {"activation": "tanh", "recurrent_activation": "sigmoid", "use_bias": True}
    layers = [
        {
            "class_name": "LSTM",
            "config": {
                "name": "lstm",
                "units": 64,
                "return_sequences": True,
                "batch_input_shape": [None, 10, 2],
                **lstm,
            },
        },
        {"class_name": "LSTM", "config": {"name": "lstm_1", "units": 32, **lstm}},
        {"class_name": "Dense", "config": {"name": "dense", "units": 4, "activation": "softmax"}},
    ]
    config = {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps(config).encode()
        f.attrs["keras_version"] = b"2.15.0"
        root = f.create_group("model_weights")
        for spec, layer in zip(layers, model.layers, strict=True):
            name = spec["config"]["name"]
            parts = ["lstm_cell/kernel", "lstm_cell/recurrent_kernel", "lstm_cell/bias"]
            if spec["class_name"] == "Dense":
                parts = ["kernel", "bias"]
            names = [f"{name}/{part}:0" for part in parts]
            group = root.create_group(name)
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, value in zip(names, layer.get_weights(), strict=True):
                group.create_dataset(weight_name, data=value)


def test_a_tf_keras_2_h5_file_imports_exactly(tmp_path: Path) -> None:
    """No Keras 2 here to write one, so the file is written as Keras 2 lays it out;
    Keras 3 cannot reload it, so the comparison is with the model it was written from."""
    model = keras_models.randomize(keras_models.tutorial(), 5)
    _keras2_h5(model, tmp_path / "old.h5")
    version_dir, _, _ = keras_import.import_keras(
        tmp_path / "old.h5", tmp_path / "repository", "old", classes=list("abcd")
    )
    meta = metadata(version_dir)
    assert meta.training is not None
    assert meta.training.hyperparameters["keras_version_saved"] == "2.15.0"
    x = np.random.default_rng(2).normal(size=(3, 13, 2)).astype(np.float32)
    got = reference(version_dir, x, np.full(3, 13, np.int64))["final_output"]
    want = np.asarray(model.predict(x, verbose=0))
    np.testing.assert_allclose(got, want, atol=TOLERANCE)


def test_lstm_trains_summary_shows_keras_counts_beside_pytorch() -> None:
    from models.architecture import StackedLSTM

    lines = StackedLSTM(2, [64, 32], 4).summary().splitlines()
    assert f"{'lstm_0 (LSTM)':<30}{'(None, None, 64)':<22}{17408:>10,}{17152:>10,}" in lines
    assert f"{'lstm_1 (LSTM)':<30}{'(None, None, 32)':<22}{12544:>10,}{12416:>10,}" in lines
    assert lines[-3].startswith(f"Keras-equivalent params: {17152 + 12416 + 132:,} ")


def test_per_layer_directions_flow_to_the_metadata_and_the_server(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    """Mixed directions: each layer's own direction in the metadata, V2's state shapes,
    the refusal of carried state; go_backwards ragged /v1 rows equal Keras on each alone."""
    from tests.conftest import make_client

    mixed = metadata(imported["mixed_directions_keras"][1])
    assert [(layer.units, layer.directions) for layer in mixed.layers] == [(16, 2), (8, 1)]
    backwards = metadata(imported["go_backwards_h5"][1])
    assert [layer.go_backwards for layer in backwards.layers] == [True, False, True]
    assert backwards.bidirectional and backwards.default_return_sequences
    repository = imported["mixed_directions_keras"][1].parent.parent
    rng = np.random.default_rng(3)
    with make_client(repository) as client:
        v2 = client.get("/v2/models/mixed_directions_keras").json()
        shapes = {o["name"]: o["shape"] for o in v2["outputs"]}
        assert shapes["hn_0"] == [-1, 2, 16] and shapes["cn_1"] == [-1, 1, 8]
        for name, kind in (
            ("mixed_directions_h5", "bidirectional"),
            ("go_backwards_keras", "go_backwards"),
        ):
            refused = client.post(
                f"/v1/models/{name}:predict",
                json={
                    "instances": [[[0.0] * metadata(imported[name][1]).num_features]],
                    "return_states": True,
                },
            )
            assert refused.status_code == 422, refused.text
            assert f"has {kind} layers: its backward direction needs the whole" in refused.text
        model, _ = imported["go_backwards_keras"]
        lengths = [7, 3, 1]
        x = [rng.normal(size=(n, 2)).astype(np.float32) for n in lengths]
        answer = client.post(
            "/v1/models/go_backwards_keras:predict",
            json={"instances": [s.tolist() for s in x]},  # per timestep, as Keras
        )
        assert answer.status_code == 200, answer.text
        for got, sequence in zip(answer.json()["predictions"], x, strict=True):
            want = np.asarray(model.predict(sequence[None], verbose=0))[0]
            np.testing.assert_allclose(np.array(got), want, atol=TOLERANCE)
        carried = client.post(
            "/v1/models/tutorial_keras:predict",
            json={"instances": [[[0.0, 0.0]]], "return_states": True},
        )
        assert carried.json()["states"][0]["directions"] == [1, 1]


def test_a_per_timestep_keras_model_answers_per_timestep_unless_asked_otherwise(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    """Issue 25's last row: model.predict returns every step, and so does /v1 by default."""
    from tests.conftest import make_client

    model, version_dir = imported["per_step_dense_stack_h5"]
    assert metadata(version_dir).default_return_sequences
    assert not metadata(imported["tutorial_keras"][1]).default_return_sequences
    x = np.random.default_rng(4).normal(size=(2, 6, 2)).astype(np.float32)
    want = np.asarray(model.predict(x, verbose=0))
    with make_client(version_dir.parent.parent) as client:
        url = "/v1/models/per_step_dense_stack_h5:predict"
        default = client.post(url, json={"instances": x.tolist()})
        assert default.status_code == 200, default.text
        np.testing.assert_allclose(np.array(default.json()["predictions"]), want, atol=TOLERANCE)
        last = client.post(url, json={"instances": x.tolist(), "return_sequences": False})
        np.testing.assert_allclose(
            np.array(last.json()["predictions"]), want[:, -1], atol=TOLERANCE
        )
        info = client.get("/v1/models/per_step_dense_stack_h5").json()
        assert info["default_return_sequences"] is True


def test_gru_models_carry_state_and_say_so(
    imported: dict[str, tuple[keras.Model, Path]],
) -> None:
    """GRU layers in the metadata (cell, reset_after), h alone as their state tensors,
    Keras's summary counts; served over /v1 and V2 equal to Keras; a bidirectional GRU
    refuses state by name as a bidirectional LSTM does."""
    from tests.conftest import make_client

    gru = metadata(imported["gru_keras"][1])
    assert [(layer.cell, layer.units) for layer in gru.layers] == [("gru", 16), ("gru", 8)]
    assert gru.has_gru and gru.carries_state
    assert [s.names for s in gru.tensors.initial_states] == [("h0_0",), ("h0_1",)]
    assert [s.names for s in gru.tensors.final_states] == [("hn_0",), ("hn_1",)]
    mixed = metadata(imported["masked_gru_h5"][1])
    assert [layer.cell for layer in mixed.layers] == ["lstm", "gru"]
    assert [s.names for s in mixed.tensors.final_states] == [("hn_0", "cn_0"), ("hn_1",)]
    before = metadata(imported["gru_reset_before_h5"][1])
    assert [layer.reset_after for layer in before.layers] == [False, False]
    model, version_dir = imported["gru_keras"]
    path = version_dir.parent.parent.parent / "gru_summary.keras"
    model.save(path)
    file = read(path)
    summary = keras_summary(parse(file.config), file)
    # Keras's own counts: 3(i*u + u*u + 2u) with reset_after=True
    assert "1,008" in summary and "624" in summary and "Total params: 1,668" in summary
    assert model.count_params() == 1668
    repository = version_dir.parent.parent
    rng = np.random.default_rng(5)
    with make_client(repository) as client:
        v2 = client.get("/v2/models/gru_keras").json()
        assert [o["name"] for o in v2["outputs"]] == [
            "sequence_output",
            "final_output",
            "hn_0",
            "hn_1",
        ]
        x = rng.normal(size=(3, 10, 3)).astype(np.float32)
        want = np.asarray(model.predict(x, verbose=0))
        v1 = client.post("/v1/models/gru_keras:predict", json={"instances": x.tolist()})
        assert v1.status_code == 200, v1.text
        np.testing.assert_allclose(_served(v1.json()["predictions"]), want, atol=TOLERANCE)
        infer = client.post(
            "/v2/models/gru_keras/infer",
            json={
                "inputs": [
                    {"name": "x", "shape": list(x.shape), "datatype": "FP32",
                     "data": x.ravel().tolist()},
                ],
            },
        )  # fmt: skip
        assert infer.status_code == 200, infer.text
        outputs = {o["name"]: o for o in infer.json()["outputs"]}
        assert set(outputs) == {"sequence_output", "final_output", "hn_0", "hn_1"}
        final = outputs["final_output"]
        got = np.array(final["data"], np.float32).reshape(final["shape"])
        np.testing.assert_allclose(got, want, atol=TOLERANCE)
        # A stateless Keras GRU still carries its state across requests, as an LSTM does:
        # the sequence in two requests, the state carried, equals Keras on the whole.
        first = client.post(
            "/v1/models/gru_keras:predict",
            json={"instances": x[:, :4].tolist(), "return_states": True},
        )
        assert first.status_code == 200, first.text
        assert first.json()["states"][0]["tensors"] == [["h"], ["h"]]
        second = client.post(
            "/v1/models/gru_keras:predict",
            json={"instances": x[:, 4:].tolist(), "initial_states": first.json()["states"]},
        )
        assert second.status_code == 200, second.text
        np.testing.assert_allclose(_served(second.json()["predictions"]), want, atol=TOLERANCE)
        refused = client.post(
            "/v1/models/bidirectional_gru_keras:predict",
            json={"instances": x[:1, :, :2].tolist(), "sequence_id": "s", "sequence_start": True},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json() == {
            "error": "model 'bidirectional_gru_keras' has go_backwards layers: its backward "
            "direction needs the whole sequence at once, so it cannot carry state across requests"
        }


def test_the_bounds_expect_gru_arrays_and_refuse_a_wrong_one(tmp_path: Path) -> None:
    """kernel (i, 3u), recurrent kernel (u, 3u), bias (2, 3u) or (3u,) by reset_after."""
    import h5py

    from models.keras.bounds import FileRefused, expected_arrays

    model = keras_models.randomize(keras_models.gru_reset_before(), 1)
    path = tmp_path / "before.keras"
    model.save(path)
    expected = expected_arrays(parse(read(path).config))
    first, bidirectional = [layer.name for layer in model.layers][:2]
    assert [shape for shape, _ in expected[first].arrays] == [(2, 18), (6, 18), (18,)]
    assert [shape for shape, _ in expected[bidirectional].arrays] == [(6, 12), (4, 12), (12,)] * 2
    gru = keras_models.randomize(keras_models.gru(), 2)
    path = tmp_path / "gru.h5"
    gru.save(path)
    name = gru.layers[0].name
    assert [s for s, _ in expected_arrays(parse(read(path).config))[name].arrays] == [
        (3, 48), (16, 48), (2, 48)
    ]  # fmt: skip
    with h5py.File(path, "r+") as f:
        found: list[str] = []
        f[f"model_weights/{name}"].visititems(
            lambda key, obj: (
                found.append(obj.name)
                if isinstance(obj, h5py.Dataset) and obj.shape == (2, 48)
                else None
            )
        )
        (bias,) = found
        del f[bias]
        f.create_dataset(bias, data=np.zeros(48, np.float32))
    with pytest.raises(FileRefused) as error:
        keras_import.import_keras(path, tmp_path / "repository", "m")
    assert f"layer {name!r} (GRU): array 2" in str(error.value)
    assert "the architecture expects (2, 48) float" in str(error.value)
