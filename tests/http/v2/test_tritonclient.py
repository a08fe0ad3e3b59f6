"""Triton's own client, ``tritonclient[http]``, against a real ``python -m service``.

Binary and JSON tensors, ragged batches with ``lengths``, output selection,
FP16/FP64/INT32 conversion, versions and errors. The numbers must equal
in-process onnxruntime on the same model file, and ``/v1`` on the same server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess, reference, start_server

STATES = ("hn_0", "cn_0", "hn_1", "cn_1")
ALL_OUTPUTS = ("sequence_output", "final_output", *STATES)


@pytest.fixture(scope="module")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("v2-server") / "server.log"
    process = start_server(
        tiny_repository,
        log,
        env={"LSTM_SERVE_VERSION_POLICY": "all", "LSTM_SERVE_MAX_TIMESTEPS": "64"},
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as c:
        yield c


def ragged_batch(seed: int = 0, features: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Three right-padded sequences of 7, 3 and 1 real timesteps (padding is noise)."""
    x = np.random.default_rng(seed).normal(size=(3, 7, features)).astype(np.float32)
    return x, np.array([7, 3, 1], dtype=np.int64)


def inputs(
    x: np.ndarray, lengths: np.ndarray | None, binary: bool, x_type: str = "FP32"
) -> list[triton.InferInput]:
    tensors = [triton.InferInput("x", list(x.shape), x_type)]
    tensors[0].set_data_from_numpy(x, binary_data=binary)
    if lengths is not None:
        kind = "INT32" if lengths.dtype == np.int32 else "INT64"
        tensors.append(triton.InferInput("lengths", list(lengths.shape), kind))
        tensors[1].set_data_from_numpy(lengths, binary_data=binary)
    return tensors


def expected(repository: Path, version: str, x: np.ndarray, lengths: np.ndarray) -> dict:
    """onnxruntime's outputs, states batch-first as V2 serves them."""
    ref = reference(repository / "tiny" / version, x, lengths)
    return {name: ref[name].transpose(1, 0, 2) if name in STATES else ref[name] for name in ref}


def test_server_and_model_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata() == {
        "name": "lstm-serving",
        "version": "0.1.0",
        "extensions": [
            "binary_tensor_data",
            "model_configuration",
            "model_repository",
            "sequence",
        ],
    }
    meta = client.get_model_metadata("tiny")
    assert meta["versions"] == ["1", "2"]
    assert meta["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": [-1, -1, 3]},
        {"name": "lengths", "datatype": "INT64", "shape": [-1, 1]},  # dims [1], reshape []
    ]
    assert [o["name"] for o in meta["outputs"]] == list(ALL_OUTPUTS)
    config = client.get_model_config("tiny", "1")
    assert config["max_batch_size"] == 1024
    assert config["input"][0] == {
        "name": "x",
        "data_type": "TYPE_FP32",
        "dims": [-1, 3],
        "optional": False,
    }
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "3")
    assert not client.is_model_ready("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_ragged_batch_every_output_equals_onnxruntime(
    client: triton.InferenceServerClient, tiny_repository: Path, binary: bool
) -> None:
    x, lengths = ragged_batch()
    outputs = None if binary else [triton.InferRequestedOutput(n, False) for n in ALL_OUTPUTS]
    result = client.infer("tiny", inputs(x, lengths, binary), outputs=outputs, request_id="r-1")
    response = result.get_response()
    assert response["model_name"] == "tiny"
    assert response["model_version"] == "2"
    assert response["id"] == "r-1"
    assert [o["name"] for o in response["outputs"]] == list(ALL_OUTPUTS)
    want = expected(tiny_repository, "2", x, lengths)
    for name in ALL_OUTPUTS:
        got = result.as_numpy(name)
        assert got.dtype == np.float32
        assert got.shape == want[name].shape, name
        np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-6, err_msg=name)


def test_output_selection_and_version(
    client: triton.InferenceServerClient, tiny_repository: Path
) -> None:
    x, lengths = ragged_batch(seed=1)
    asked = [
        triton.InferRequestedOutput("cn_1"),
        triton.InferRequestedOutput("final_output", binary_data=False),
    ]
    result = client.infer("tiny", inputs(x, lengths, True), model_version="1", outputs=asked)
    response = result.get_response()
    assert response["model_version"] == "1"
    assert [o["name"] for o in response["outputs"]] == ["cn_1", "final_output"]
    assert response["outputs"][0]["parameters"] == {"binary_data_size": 3 * 1 * 4 * 4}
    assert "data" in response["outputs"][1]
    want = expected(tiny_repository, "1", x, lengths)
    np.testing.assert_allclose(result.as_numpy("cn_1"), want["cn_1"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        result.as_numpy("final_output"), want["final_output"], rtol=0, atol=1e-6
    )
    assert result.as_numpy("sequence_output") is None


@pytest.mark.parametrize(
    ("x_type", "numpy_type", "lengths_type"),
    [("FP16", np.float16, np.int32), ("FP64", np.float64, np.int64)],
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp16_fp64_and_int32_are_converted(
    client: triton.InferenceServerClient,
    tiny_repository: Path,
    x_type: str,
    numpy_type: type,
    lengths_type: type,
    binary: bool,
) -> None:
    x, lengths = ragged_batch(seed=2)
    sent = x.astype(numpy_type)
    result = client.infer(
        "tiny",
        inputs(sent, lengths.astype(lengths_type), binary, x_type),
        outputs=[triton.InferRequestedOutput("final_output", binary)],
    )
    want = expected(tiny_repository, "2", sent.astype(np.float32), lengths)["final_output"]
    np.testing.assert_allclose(result.as_numpy("final_output"), want, rtol=0, atol=1e-6)


def test_without_lengths_every_sequence_runs_all_timesteps(
    client: triton.InferenceServerClient, tiny_repository: Path
) -> None:
    x, _ = ragged_batch(seed=3)
    result = client.infer("tiny", inputs(x, None, True))
    want = expected(tiny_repository, "2", x, np.array([7, 7, 7]))
    np.testing.assert_allclose(
        result.as_numpy("final_output"), want["final_output"], rtol=0, atol=1e-6
    )


def test_same_numbers_as_v1(client: triton.InferenceServerClient, server: ServerProcess) -> None:
    x, lengths = ragged_batch(seed=4)
    instances = [x[i, :n].tolist() for i, n in enumerate(lengths)]
    v1 = httpx.post(f"{server.url}/v1/models/tiny:predict", json={"instances": instances})
    assert v1.status_code == 200
    v1_final = np.array([p["probabilities"] for p in v1.json()["predictions"]], np.float32)
    v2 = client.infer("tiny", inputs(x, lengths, True)).as_numpy("final_output")
    np.testing.assert_array_equal(v2, v1_final)


def test_bidirectional_states_are_batch_first(
    client: triton.InferenceServerClient, tiny_repository: Path
) -> None:
    x, lengths = ragged_batch(seed=5, features=2)
    result = client.infer("tiny_bi", inputs(x, lengths, True))
    ref = reference(tiny_repository / "tiny_bi" / "1", x, lengths)
    assert result.as_numpy("hn_0").shape == (3, 2, 6)
    np.testing.assert_allclose(
        result.as_numpy("hn_0"), ref["hn_0"].transpose(1, 0, 2), rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        result.as_numpy("final_output"), ref["final_output"], rtol=0, atol=1e-6
    )


def test_request_compressed_with_gzip(
    client: triton.InferenceServerClient, tiny_repository: Path
) -> None:
    x, lengths = ragged_batch(seed=6)
    for algorithm in ("gzip", "deflate"):
        result = client.infer(
            "tiny", inputs(x, lengths, True), request_compression_algorithm=algorithm
        )
        want = expected(tiny_repository, "2", x, lengths)["final_output"]
        np.testing.assert_allclose(result.as_numpy("final_output"), want, rtol=0, atol=1e-6)


def error_of(client: triton.InferenceServerClient, *args: object, **kwargs: object) -> tuple:
    with pytest.raises(InferenceServerException) as caught:
        client.infer(*args, **kwargs)
    return caught.value.status(), caught.value.message()


def test_errors_reach_the_client_with_status_and_message(
    client: triton.InferenceServerClient,
) -> None:
    x, lengths = ragged_batch()
    assert error_of(client, "nope", inputs(x, lengths, True)) == (
        "404",
        "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'",
    )
    assert error_of(client, "tiny", inputs(x, lengths, True), model_version="3") == (
        "404",
        "model 'tiny' has no loaded version 3; loaded versions: 1, 2",
    )
    unknown = [triton.InferRequestedOutput("probabilities")]
    assert error_of(client, "tiny", inputs(x, lengths, True), outputs=unknown) == (
        "400",
        "unknown output 'probabilities'; model 'tiny' has outputs 'sequence_output', "
        "'final_output', 'hn_0', 'cn_0', 'hn_1', 'cn_1'",
    )
    assert error_of(client, "tiny", inputs(x, np.array([7, 0, 1]), True)) == (
        "400",
        "input 'lengths'[1] is 0; each length must be between 1 and 7 (the timesteps of x)",
    )
    assert error_of(client, "tiny", inputs(x[:, :, :2].copy(), None, False)) == (
        "400",
        "input 'x' has shape [3, 7, 2]; model 'tiny' expects [batch, timesteps, 3]",
    )
    nan = x.copy()
    nan[2, 5, 1] = np.nan
    assert error_of(client, "tiny", inputs(nan, None, True)) == (
        "400",
        "input 'x' holds nan at [2, 5, 1]; only finite numbers within float32 range are accepted",
    )
    assert error_of(client, "tiny", inputs(x[:1], None, True), sequence_id=7) == (
        "404",
        "sequence 7 is not live (never started, already ended, or evicted after 300 s idle); "
        "send its first chunk with sequence_start set to begin it",
    )


@pytest.mark.parametrize("sequence_id", [41, "sensor-7"])
def test_triton_sequence_arguments_chunk_exactly(
    client: triton.InferenceServerClient, tiny_repository: Path, sequence_id: int | str
) -> None:
    """tritonclient's sequence_id/start/end: chunks give the outputs of the whole sequence."""
    x = np.random.default_rng(5).normal(size=(1, 23, 3)).astype(np.float32)
    pieces = np.split(x, [4, 5, 17], axis=1)
    outputs = []
    for i, piece in enumerate(pieces):
        answer = client.infer(
            "tiny",
            inputs(piece, None, True),
            model_version="2",
            outputs=[triton.InferRequestedOutput("sequence_output")],
            sequence_id=sequence_id,
            sequence_start=i == 0,
            sequence_end=i == len(pieces) - 1,
        )
        outputs.append(answer.as_numpy("sequence_output")[0])
    want = reference(tiny_repository / "tiny" / "2", x, np.array([23]))["sequence_output"][0]
    np.testing.assert_allclose(np.concatenate(outputs), want, atol=1e-5)
