"""Conv1D / MaxPooling1D / AveragePooling1D front ends (issue 25 item 5), end to end.

Built in real Keras 3, saved as ``.keras`` and ``.h5``, imported with ``lstm-import``,
served by a real server (``python -m service`` under uvicorn on a loopback port, with
gRPC), and compared with Keras's own ``model.predict`` through /v1, V2 REST and V2
gRPC. Then what such a model refuses, per request and at import, word for word.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")

import httpx
import keras
import numpy as np
import pytest
import torch
import tritonclient.grpc as tg
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import layers as L
from tritonclient.utils import InferenceServerException

from models import keras_import
from models.frontend import FrontEnd
from models.keras.graph import UnsupportedModel
from service.core.contract import ModelMetadata
from service.loadtest.process import free_port
from tests.conftest import ServerProcess, start_server
from tests.models import keras_models

TOLERANCE = 1e-5


@pytest.fixture(scope="module", autouse=True)
def fresh_keras_names() -> Iterator[None]:
    """Keras numbers unnamed layers process-wide (lstm, lstm_1, ...): start the next
    module's models from fresh names, as ``test_keras_import.py``'s summaries expect."""
    yield
    keras.backend.clear_session()


def causal() -> keras.Model:
    """Dilated causal conv, then pooling that halves the steps: min length 2."""
    return keras.Sequential(
        [
            keras.Input((None, 6)),
            L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu", name="conv"),
            L.MaxPooling1D(2, name="pool"),
            L.LSTM(16),
            L.Dense(4, activation="softmax"),
        ]
    )


def strided() -> keras.Model:
    """Valid conv with strides 2, average pooling, a bidirectional LSTM: min length 7."""
    return keras.Sequential(
        [
            keras.Input((None, 6)),
            L.Conv1D(8, 5, strides=2, activation="tanh", name="conv"),
            L.AveragePooling1D(2, name="pool"),
            L.Bidirectional(L.LSTM(8)),
            L.Dense(1),
        ]
    )


def same() -> keras.Model:
    """Stride-1 same/causal layers keep the time axis: a per-timestep GRU model."""
    return keras.Sequential(
        [
            keras.Input((None, 6)),
            L.Conv1D(6, 4, padding="same", activation="elu", name="conv"),
            L.MaxPooling1D(3, strides=1, padding="same", name="pool"),
            L.Conv1D(5, 2, padding="causal", dilation_rate=3, name="conv2"),
            L.GRU(8, return_sequences=True),
            L.TimeDistributed(L.Dense(3)),
        ]
    )


def fixed() -> keras.Model:
    """A fixed 40-step window (the usual Conv1D+LSTM forecaster), Normalization first."""
    return keras.Sequential(
        [
            keras.Input((40, 6)),
            L.Normalization(mean=[0.5] * 6, variance=[4.0] * 6),
            L.Conv1D(8, 3, activation="relu", name="conv"),
            L.MaxPooling1D(2, name="pool"),
            L.LSTM(12),
            L.Dense(2),
        ]
    )


BUILDS = {"causal": causal, "strided": strided, "same": same, "fixed": fixed}
MIN_LENGTH = {"causal": 2, "strided": 7, "same": 1, "fixed": 4}


Imported = dict[str, tuple[keras.Model, float]]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("repository")


@pytest.fixture(scope="module")
def imported(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    """Each model as ``<kind>_keras`` and ``<kind>_h5``: (the Keras model, import parity)."""
    files = tmp_path_factory.mktemp("keras")
    out: Imported = {}
    for seed, (kind, build) in enumerate(BUILDS.items()):
        model = keras_models.randomize(build(), seed)
        for fmt in ("keras", "h5"):
            path = files / f"{kind}.{fmt}"
            model.save(path)
            _, parity, note = keras_import.import_keras(path, repository, f"{kind}_{fmt}")
            assert parity is not None, note
            out[f"{kind}_{fmt}"] = (model, parity.max_abs_diff)
    return out


@pytest.fixture(scope="module")
def server(
    repository: Path, imported: Imported, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, int]]:
    assert {p.name for p in repository.iterdir()} == set(imported)
    grpc_port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    process = start_server(repository, log, {"LSTM_SERVE_GRPC_PORT": str(grpc_port)})
    yield process, grpc_port
    process.stop()
    assert "Traceback" not in log.read_text()


def _v2_body(x: np.ndarray, output: str, lengths: list[int] | None = None) -> dict[str, Any]:
    inputs: list[dict[str, Any]] = [
        {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    ]
    if lengths is not None:
        inputs.append(
            {"name": "lengths", "shape": [len(lengths)], "datatype": "INT64", "data": lengths}
        )
    return {"inputs": inputs, "outputs": [{"name": output}]}


def _grpc(port: int, name: str, x: np.ndarray, output: str) -> np.ndarray:
    tensor = tg.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with tg.InferenceServerClient(f"127.0.0.1:{port}") as client:
        result = client.infer(name, [tensor], outputs=[tg.InferRequestedOutput(output)])
    got = result.as_numpy(output)
    assert got is not None
    return got


def test_served_answers_equal_keras_predict_on_every_protocol(
    imported: Imported, server: tuple[ServerProcess, int]
) -> None:
    process, grpc_port = server
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=process.url, timeout=60) as http:
        for name, (model, parity) in imported.items():
            kind = name.rsplit("_", 1)[0]
            assert parity <= TOLERANCE, name
            per_step = kind == "same"
            output = "sequence_output" if per_step else "final_output"
            lengths = [40] if kind == "fixed" else [MIN_LENGTH[kind], 23]
            for steps in lengths:  # the shortest accepted input, and a longer one
                x = (rng.normal(size=(3, steps, 6)) * 2).astype(np.float32)
                want = np.asarray(model.predict(x, batch_size=3, verbose=0))
                v1 = http.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
                assert v1.status_code == 200, v1.text
                predictions = v1.json()["predictions"]
                if kind == "causal":  # the classifier's probabilities, the others' values
                    predictions = [p["probabilities"] for p in predictions]
                got = np.array(predictions, np.float32)
                np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=name)
                v2 = http.post(f"/v2/models/{name}/infer", json=_v2_body(x, output))
                assert v2.status_code == 200, v2.text
                out = v2.json()["outputs"][0]
                got = np.array(out["data"], np.float32).reshape(out["shape"])
                np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=name)
                got = _grpc(grpc_port, name, x, output)
                np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=name)


def test_metadata_says_what_the_front_end_accepts(server: tuple[ServerProcess, int]) -> None:
    process, _ = server
    with httpx.Client(base_url=process.url, timeout=30) as http:
        v1 = http.get("/v1/models/strided_keras").json()
        assert v1["min_length"] == 7 and not v1["stateful"]
        assert v1["front_end"] == {
            "layers": [
                {"kind": "Conv1D", "name": "conv"},
                {"kind": "AveragePooling1D", "name": "pool"},
            ],
            "min_length": 7,
            "reshapes_time": "layer 'conv' (Conv1D): strides=2",
        }
        assert set(v1["outputs"]) == {"final"}  # no per-timestep output to offer
        v2 = http.get("/v2/models/strided_keras").json()
        assert v2["parameters"]["min_length"] == 7
        assert [o["name"] for o in v2["outputs"]] == ["final_output"]
        same_v2 = http.get("/v2/models/same_h5").json()
        assert [o["name"] for o in same_v2["outputs"]] == ["sequence_output", "final_output"]
        assert http.get("/v1/models/same_h5").json()["default_return_sequences"] is True


def _grpc_error(port: int, name: str, x: np.ndarray, output: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        _grpc(port, name, x, output)
    return caught.value


SHORT = (
    "model 'strided_keras' needs sequences of at least 7 timesteps (its front end, Conv1D "
    "'conv', AveragePooling1D 'pool', reads 7 steps before its first output); a sequence has "
    "6: send 7 or more"
)
RAGGED = (
    "model 'causal_h5' has a Conv1D/pooling front end (Conv1D 'conv', MaxPooling1D 'pool') "
    "that reads the whole time axis: sequences in one request must have equal lengths (here "
    "{} to {} steps), with no padding; send sequences of other lengths in separate requests"
)
NO_STEPS = (
    "model 'causal_keras' has no per-timestep outputs: its front end shortens the time axis "
    "(layer 'pool' (MaxPooling1D): strides=2), so its steps are not the input's; ask for the "
    "final output (/v1: return_sequences false; V2: final_output)"
)
NO_STATE = (
    "model 'causal_keras' has a Conv1D/pooling front end (Conv1D 'conv', MaxPooling1D "
    "'pool'): its windows cannot resume from a carried state, so it cannot carry state "
    "across requests; send each sequence whole (without sequence_id, initial_states or "
    "return_states)"
)


def test_requests_it_cannot_answer_exactly_are_refused_on_every_protocol(
    server: tuple[ServerProcess, int],
) -> None:
    process, grpc_port = server
    rng = np.random.default_rng(1)
    short = rng.normal(size=(1, 6, 6)).astype(np.float32)
    x = rng.normal(size=(2, 12, 6)).astype(np.float32)
    with httpx.Client(base_url=process.url, timeout=30) as http:

        def v1(name: str, body: dict[str, Any]) -> httpx.Response:
            return http.post(f"/v1/models/{name}:predict", json=body)

        def v2(name: str, body: dict[str, Any]) -> httpx.Response:
            return http.post(f"/v2/models/{name}/infer", json=body)

        # Shorter than the front end's minimum: 422 on /v1, 400 on V2, INVALID_ARGUMENT.
        answer = v1("strided_keras", {"instances": short.tolist()})
        assert (answer.status_code, answer.json()["error"]) == (422, SHORT)
        answer = v2("strided_keras", _v2_body(short, "final_output"))
        assert (answer.status_code, answer.json()["error"]) == (400, SHORT)
        error = _grpc_error(grpc_port, "strided_keras", short, "final_output")
        assert (error.status(), error.message()) == ("StatusCode.INVALID_ARGUMENT", SHORT)
        # Ragged: /v1 pads the shorter instance, V2 says so with lengths.
        ragged = {"instances": [x[0].tolist(), x[1, :9].tolist()]}
        answer = v1("causal_h5", ragged)
        assert (answer.status_code, answer.json()["error"]) == (422, RAGGED.format(9, 12))
        answer = v2("causal_h5", _v2_body(x, "final_output", [12, 10]))
        assert (answer.status_code, answer.json()["error"]) == (400, RAGGED.format(10, 12))
        # Per-timestep outputs after a front end that shortens the time axis.
        answer = v1("causal_keras", {"instances": x.tolist(), "return_sequences": True})
        assert (answer.status_code, answer.json()["error"]) == (422, NO_STEPS)
        answer = v2("causal_keras", _v2_body(x, "sequence_output"))
        assert (answer.status_code, answer.json()["error"]) == (400, NO_STEPS)
        error = _grpc_error(grpc_port, "causal_keras", x, "sequence_output")
        assert (error.status(), error.message()) == ("StatusCode.INVALID_ARGUMENT", NO_STEPS)
        # State across requests, server-held or carried.
        for extra in (
            {"sequence_id": "s1", "sequence_start": True},
            {"initial_states": [None]},
            {"return_states": True},
        ):
            answer = v1("causal_keras", {"instances": x[:1].tolist(), **extra})
            assert (answer.status_code, answer.json()["error"]) == (422, NO_STATE), extra
        body = _v2_body(x[:1], "final_output")
        body["parameters"] = {"sequence_id": 5, "sequence_start": True}
        answer = v2("causal_keras", body)
        assert (answer.status_code, answer.json()["error"]) == (400, NO_STATE)
        # What is refused above is served at an accepted length.
        assert v1("strided_keras", {"instances": x.tolist()}).status_code == 200


def _chain(*layers: keras.layers.Layer, head: keras.layers.Layer | None = None) -> keras.Model:
    return keras.Sequential([keras.Input((None, 2)), *layers, head or L.Dense(2, name="out")])


REFUSED: dict[str, tuple[Callable[[], keras.Model], str]] = {
    "avg_same": (
        lambda: _chain(L.AveragePooling1D(2, strides=1, padding="same", name="pool"), L.LSTM(4)),
        "layer 'pool' (AveragePooling1D): padding='same' is not supported; use 'valid'",
    ),
    "pool_same_strided": (
        lambda: _chain(L.MaxPooling1D(2, padding="same", name="pool"), L.LSTM(4)),
        "layer 'pool' (MaxPooling1D): padding='same' with strides=2 is not supported (its "
        "padding depends on each sequence's length); use padding='valid', or strides=1",
    ),
    "groups": (
        lambda: _chain(L.Conv1D(4, 3, groups=2, name="conv"), L.LSTM(4)),
        "layer 'conv' (Conv1D): groups=2 is not supported; use 1",
    ),
    "softmax": (
        lambda: _chain(L.Conv1D(4, 3, activation="softmax", name="conv"), L.LSTM(4)),
        "layer 'conv' (Conv1D): activation='softmax' is not supported here; use relu, tanh, "
        "sigmoid, elu, selu, gelu, softplus, softsign, swish, leaky_relu or linear",
    ),
    "after_lstm": (
        lambda: _chain(L.LSTM(4, return_sequences=True), L.Conv1D(4, 3, name="conv"), L.LSTM(4)),
        "layer 'conv' (Conv1D) follows a recurrent layer; Conv1D and pooling layers are "
        "supported before the recurrent layers only",
    ),
    "masking": (
        lambda: _chain(L.Masking(name="mask"), L.Conv1D(4, 3, name="conv"), L.LSTM(4)),
        "layer 'conv' (Conv1D) follows Masking; a Conv1D/pooling front end reads each sequence "
        "whole (the server takes equal-length sequences per request): remove the Masking layer",
    ),
    "normalization_after": (
        lambda: _chain(
            L.Conv1D(4, 3, name="conv"),
            L.Normalization(mean=0.0, variance=1.0, name="norm"),
            L.LSTM(4),
        ),
        "layer 'norm' (Normalization) follows layer 'conv' (Conv1D); put Normalization before "
        "the Conv1D/pooling layers",
    ),
    "per_timestep_strided": (
        lambda: _chain(
            L.Conv1D(4, 3, padding="causal", strides=2, name="conv"),
            L.LSTM(4, return_sequences=True),
            head=L.TimeDistributed(L.Dense(2), name="out"),
        ),
        "layer 'out' (TimeDistributed(Dense)): per-timestep outputs after a front end that "
        "shortens the time axis (layer 'conv' (Conv1D): strides=2) have no step-for-step "
        "meaning; end the last recurrent layer with return_sequences=False, or use strides=1 "
        "with padding='causal' or 'same'",
    ),
    "stateful": (
        lambda: keras.Sequential(
            [
                keras.Input((None, 2), batch_size=1),
                L.Conv1D(4, 3, name="conv"),
                L.LSTM(4, stateful=True, name="rnn"),
                L.Dense(2),
            ]
        ),
        "layer 'rnn' (LSTM): stateful=True after a Conv1D/pooling front end (layer 'conv') is "
        "not supported: its windows cannot resume from an LSTM state; drop stateful=True and "
        "send each sequence whole",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_front_ends_it_cannot_serve_exactly_are_refused_by_name(tmp_path: Path, case: str) -> None:
    build, message = REFUSED[case]
    path = tmp_path / "m.keras"
    build().save(path)
    with pytest.raises(UnsupportedModel) as error:
        keras_import.import_keras(path, tmp_path / "repository", "m")
    assert str(error.value) == message
    assert not (tmp_path / "repository" / "m").exists()


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(["conv_causal", "conv_valid", "conv_same", "max", "max_same", "avg"]),
    size=st.integers(1, 5),
    strides=st.integers(1, 3),
    dilation=st.integers(1, 3),
    extra=st.integers(0, 9),
)
def test_each_layer_computes_what_keras_computes(
    kind: str, size: int, strides: int, dilation: int, extra: int
) -> None:
    """One Keras layer against ``models/frontend.py`` with its weights, from the shortest
    input it takes up: lengths, padding and edge windows included."""
    if kind.startswith("conv"):
        padding = kind.split("_")[1]
        if padding == "same" or dilation > 1:
            strides = 1
        layer = L.Conv1D(3, size, strides, padding, dilation_rate=dilation, activation="tanh")
        item = {"kind": "conv1d", "name": "c", "size": size, "strides": strides,
                "padding": padding, "filters": 3, "dilation": dilation,
                "activation": "tanh"}  # fmt: skip
    else:
        padding = "same" if kind == "max_same" else "valid"
        strides = 1 if padding == "same" else strides
        pool = L.MaxPooling1D if kind.startswith("max") else L.AveragePooling1D
        layer = pool(size, strides, padding)
        item = {"kind": "max_pool" if pool is L.MaxPooling1D else "avg_pool", "name": "p",
                "size": size, "strides": strides, "padding": padding}  # fmt: skip
    model = keras.Sequential([keras.Input((None, 2)), layer])
    keras_models.randomize(model, extra)
    front = FrontEnd(2, [item]).eval()
    if kind.startswith("conv"):
        kernel, bias = layer.get_weights()
        with torch.no_grad():
            front.layers[0].weight.copy_(torch.from_numpy(kernel.transpose(2, 1, 0).copy()))
            front.layers[0].bias.copy_(torch.from_numpy(bias))
    steps = front.min_steps + extra
    x = np.random.default_rng(extra).normal(size=(2, steps, 2)).astype(np.float32)
    want = np.asarray(model.predict(x, verbose=0))
    with torch.no_grad():
        got = front(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_the_import_records_the_front_end(tmp_path: Path) -> None:
    path = tmp_path / "m.h5"
    keras_models.randomize(fixed(), 3).save(path)
    version_dir, parity, _ = keras_import.import_keras(path, tmp_path / "repository", "m")
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
    assert meta.front_end is not None and meta.front_end.min_length == 4
    assert (
        meta.front_end.reshapes_time == "layer 'conv' (Conv1D): padding='valid' with kernel_size=3"
    )
    assert not meta.tensors.initial_states and not meta.carries_state
    assert parity is not None and [c[1] for c in parity.cases] == [40, 40, 40]


def test_the_bounds_expect_conv_arrays_and_refuse_a_wrong_one(tmp_path: Path) -> None:
    """Conv1D(f, k) over i inputs: kernel (k, i, f), bias (f,); pooling: none. A kernel
    whose declared shape differs is refused before any array is read."""
    import h5py

    from models.keras.bounds import FileRefused, expected_arrays
    from models.keras.files import read
    from models.keras.spec import parse

    model = keras_models.randomize(strided(), 4)
    path = tmp_path / "m.h5"
    model.save(path)
    expected = expected_arrays(parse(read(path).config))
    assert [shape for shape, _ in expected["conv"].arrays] == [(5, 6, 8), (8,)]
    assert expected["pool"].arrays == ()
    with h5py.File(path, "r+") as f:
        found: list[str] = []
        f["model_weights/conv"].visititems(
            lambda key, obj: (
                found.append(obj.name)
                if isinstance(obj, h5py.Dataset) and obj.shape == (5, 6, 8)
                else None
            )
        )
        (kernel,) = found
        del f[kernel]
        f.create_dataset(kernel, data=np.zeros((3, 6, 8), np.float32))
    with pytest.raises(FileRefused) as error:
        keras_import.import_keras(path, tmp_path / "repository", "m")
    assert "layer 'conv' (Conv1D): array 0" in str(error.value)
    assert "the architecture expects (5, 6, 8) float" in str(error.value)
