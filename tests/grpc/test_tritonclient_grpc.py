"""Triton's own gRPC client, ``tritonclient.grpc``, against a real ``python -m service``
serving gRPC beside HTTP (one process, the same core).

Health, metadata and config; infer with raw and typed inputs equal to onnxruntime and
to REST V2's answer; a sequence sent in chunks over ``ModelStreamInfer`` equal to the
whole; every error code with REST's message; keys and scopes; the message limit; a
client deadline.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from service.loadtest.process import free_port
from tests.conftest import ROOT, ServerProcess, reference, start_server

STATES = ("hn_0", "cn_0", "hn_1", "cn_1")
ALL_OUTPUTS = ("sequence_output", "final_output", *STATES)
INFER_KEY = "ci:inference:" + "i" * 32
ADMIN_KEY = "ops:admin:" + "a" * 32


@pytest.fixture(scope="module")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, int]]:
    log = tmp_path_factory.mktemp("grpc-server") / "server.log"
    port = free_port()
    process = start_server(
        tiny_repository,
        log,
        env={
            "LSTM_SERVE_GRPC_PORT": str(port),
            "LSTM_SERVE_VERSION_POLICY": "all",
            "LSTM_SERVE_MAX_TIMESTEPS": "64",
            "LSTM_SERVE_MAX_BODY_BYTES": str(256 * 1024),
        },
    )
    yield process, port
    process.stop()


@pytest.fixture(scope="module")
def client(server: tuple[ServerProcess, int]) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(f"127.0.0.1:{server[1]}") as c:
        yield c


def ragged_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=(3, 7, 3)).astype(np.float32)
    return x, np.array([7, 3, 1], dtype=np.int64)


def grpc_inputs(x: np.ndarray, lengths: np.ndarray | None) -> list[tg.InferInput]:
    tensors = [tg.InferInput("x", list(x.shape), "FP32")]
    tensors[0].set_data_from_numpy(x)
    if lengths is not None:
        tensors.append(tg.InferInput("lengths", list(lengths.shape), "INT64"))
        tensors[1].set_data_from_numpy(lengths)
    return tensors


def expected(repository: Path, version: str, x: np.ndarray, lengths: np.ndarray) -> dict:
    ref = reference(repository / "tiny" / version, x, lengths)
    return {name: ref[name].transpose(1, 0, 2) if name in STATES else ref[name] for name in ref}


def raw_call(port: int, shape: list[int], raw: bytes) -> tuple[grpc.StatusCode, str]:
    """A ModelInfer of input x with these raw bytes, as no well-behaved client sends it."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="tiny")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    options = [("grpc.max_send_message_length", -1)]
    with (
        grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    return caught.value.code(), caught.value.details()


def error_of(call: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()  # type: ignore[operator]
    return caught.value


def test_health_metadata_and_config(client: tg.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("tiny")
    assert client.is_model_ready("tiny", "1")
    assert not client.is_model_ready("tiny", "3")
    assert not client.is_model_ready("nope")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "lstm-serving"
    assert "sequence" in meta["extensions"]
    model = client.get_model_metadata("tiny", as_json=True)
    assert model["versions"] == ["1", "2"]
    assert model["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": ["-1", "-1", "3"]}
    assert [o["name"] for o in model["outputs"]] == list(ALL_OUTPUTS)
    config = client.get_model_config("tiny", "1", as_json=True)["config"]
    assert config["max_batch_size"] == 1024
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["input"][1]["reshape"] == {}  # shape [] (proto3 JSON omits the empty list)


def test_ragged_batch_equals_onnxruntime_and_rest(
    client: tg.InferenceServerClient, server: tuple[ServerProcess, int], tiny_repository: Path
) -> None:
    x, lengths = ragged_batch()
    result = client.infer("tiny", grpc_inputs(x, lengths), request_id="g-1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("tiny", "2", "g-1")
    assert [o.name for o in response.outputs] == list(ALL_OUTPUTS)
    want = expected(tiny_repository, "2", x, lengths)
    with th.InferenceServerClient(server[0].url.removeprefix("http://")) as http:
        rest_inputs = [th.InferInput("x", list(x.shape), "FP32")]
        rest_inputs[0].set_data_from_numpy(x)
        rest_inputs.append(th.InferInput("lengths", [3], "INT64"))
        rest_inputs[1].set_data_from_numpy(lengths)
        rest = http.infer("tiny", rest_inputs)
    for name in ALL_OUTPUTS:
        got = result.as_numpy(name)
        assert got.dtype == np.float32 and got.shape == want[name].shape, name
        np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-5, err_msg=name)
        np.testing.assert_array_equal(got, rest.as_numpy(name), err_msg=name)


def test_typed_contents_selected_outputs_and_version(
    server: tuple[ServerProcess, int], tiny_repository: Path
) -> None:
    """Typed ``contents`` (no raw bytes): tritonclient sends them for a request built by
    hand; the generated stubs speak the message directly."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    x, lengths = ragged_batch(1)
    request = service_pb2.ModelInferRequest(model_name="tiny", model_version="1")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
    tensor = request.inputs.add(name="lengths", datatype="INT32", shape=[3])
    tensor.contents.int_contents.extend(lengths.tolist())
    request.outputs.add(name="final_output")
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert [o.name for o in response.outputs] == ["final_output"]
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(3, -1)
    want = expected(tiny_repository, "1", x, lengths)["final_output"]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_async_infer(client: tg.InferenceServerClient, tiny_repository: Path) -> None:
    x, lengths = ragged_batch(2)
    answers: queue.Queue = queue.Queue()
    client.async_infer(
        "tiny", grpc_inputs(x, lengths), lambda result, error: answers.put((result, error))
    )
    result, error = answers.get(timeout=30)
    assert error is None
    want = expected(tiny_repository, "2", x, lengths)
    np.testing.assert_allclose(result.as_numpy("final_output"), want["final_output"], atol=1e-5)


def test_stream_sequence_in_chunks_equals_the_whole(
    client: tg.InferenceServerClient, tiny_repository: Path
) -> None:
    """Triton's sequence parameters over ModelStreamInfer: 10 timesteps as 4 + 3 + 3, each
    answer in order, the last chunk's final output and states equal to the whole's."""
    x = np.random.default_rng(5).normal(size=(1, 10, 3)).astype(np.float32)
    answers: queue.Queue = queue.Queue()
    client.start_stream(lambda result, error: answers.put((result, error)))
    try:
        chunks = [(0, 4), (4, 7), (7, 10)]
        for i, (a, b) in enumerate(chunks):
            client.async_stream_infer(
                "tiny",
                grpc_inputs(x[:, a:b], None),
                request_id=f"c{i}",
                sequence_id=42,
                sequence_start=i == 0,
                sequence_end=i == len(chunks) - 1,
            )
        got = [answers.get(timeout=30) for _ in chunks]
        # A chunk of an ended sequence: Triton's in-stream error, the stream goes on.
        client.async_stream_infer("tiny", grpc_inputs(x[:, :2], None), sequence_id=42)
        _, late = answers.get(timeout=30)
    finally:
        client.stop_stream()
    assert [error for _, error in got] == [None, None, None]
    assert [r.get_response().id for r, _ in got] == ["c0", "c1", "c2"]
    steps = [r.get_response().parameters["sequence_steps"].int64_param for r, _ in got]
    assert steps == [4, 7, 10]
    want = expected(tiny_repository, "2", x, np.array([10]))
    last = got[-1][0]
    for name in ("final_output", *STATES):
        np.testing.assert_allclose(last.as_numpy(name), want[name], rtol=0, atol=1e-5)
    whole = np.concatenate([r.as_numpy("sequence_output") for r, _ in got], axis=1)
    np.testing.assert_allclose(whole, want["sequence_output"], rtol=0, atol=1e-5)
    assert late is not None and "42" in late.message()


def test_errors_have_rest_codes_and_messages(
    client: tg.InferenceServerClient, server: tuple[ServerProcess, int]
) -> None:
    x, _ = ragged_batch()
    bad_lengths = np.array([7, 3, 9], dtype=np.int64)
    error = error_of(lambda: client.infer("tiny", grpc_inputs(x, bad_lengths)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    with th.InferenceServerClient(server[0].url.removeprefix("http://")) as http:
        rest_inputs = [th.InferInput("x", list(x.shape), "FP32")]
        rest_inputs[0].set_data_from_numpy(x)
        rest_inputs.append(th.InferInput("lengths", [3], "INT64"))
        rest_inputs[1].set_data_from_numpy(bad_lengths)
        rest_error = error_of(lambda: http.infer("tiny", rest_inputs))
    assert rest_error.status() == "400"
    assert error.message() == rest_error.message()
    assert "between 1 and 7" in error.message()

    wrong_features = np.zeros((1, 2, 4), np.float32)
    error = error_of(lambda: client.infer("tiny", grpc_inputs(wrong_features, None)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expects [batch, timesteps, 3]" in error.message()

    wrong_type = tg.InferInput("x", [1, 2, 3], "INT8")
    wrong_type.set_data_from_numpy(np.zeros((1, 2, 3), np.int8))
    error = error_of(lambda: client.infer("tiny", [wrong_type]))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "datatype INT8" in error.message()

    error = error_of(lambda: client.infer("nope", grpc_inputs(x, None)))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "model 'nope' is not loaded" in error.message()
    error = error_of(lambda: client.infer("tiny", grpc_inputs(x, None), model_version="7"))
    assert error.status() == "StatusCode.NOT_FOUND"
    error = error_of(lambda: client.get_model_metadata("nope"))
    assert error.status() == "StatusCode.NOT_FOUND"

    code, message = raw_call(server[1], [2**40, 2**40, 3], b"\0" * 12)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents[0] is 12 bytes" in message
    code, message = raw_call(server[1], [1, 2, 3], b"\0" * 20)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        message
        == "input 'x': raw_input_contents[0] is 20 bytes; shape [1, 2, 3] of FP32 is 24 bytes"
    )

    too_long = np.zeros((1, 65, 3), np.float32)
    error = error_of(lambda: client.infer("tiny", grpc_inputs(too_long, None)))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "the limit is 64" in error.message()

    error = error_of(lambda: client.unload_model("tiny"))  # no control mode: refused
    assert error.status() == "StatusCode.FAILED_PRECONDITION"
    assert "model_control_mode=none" in error.message()


def test_message_over_the_body_limit(server: tuple[ServerProcess, int]) -> None:
    code, message = raw_call(server[1], [1, 64, 3], b"\0" * (300 * 1024))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(256 * 1024) in message  # grpc's own check, at max_body_bytes


def test_client_deadline_shorter_than_the_work(client: tg.InferenceServerClient) -> None:
    x = np.random.default_rng(0).normal(size=(1024, 64, 3)).astype(np.float32)
    error = error_of(lambda: client.infer("tiny", grpc_inputs(x, None), client_timeout=0.001))
    assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert client.is_server_live()  # and the server goes on


def test_keys_and_scopes_over_grpc(tiny_repository: Path, tmp_path: Path) -> None:
    port = free_port()
    process = start_server(
        tiny_repository,
        tmp_path / "server.log",
        env={
            "LSTM_SERVE_GRPC_PORT": str(port),
            "LSTM_SERVE_API_KEYS": f'["{INFER_KEY}", "{ADMIN_KEY}"]',
            "LSTM_SERVE_MODEL_CONTROL_MODE": "explicit",
        },
    )
    try:
        x, lengths = ragged_batch()
        with tg.InferenceServerClient(f"127.0.0.1:{port}") as c:
            assert c.is_server_live()  # probes stay open
            error = error_of(lambda: c.infer("tiny", grpc_inputs(x, lengths)))
            assert error.status() == "StatusCode.UNAUTHENTICATED"
            bad = {"authorization": "Bearer " + "z" * 32}
            error = error_of(lambda: c.infer("tiny", grpc_inputs(x, lengths), headers=bad))
            assert error.status() == "StatusCode.UNAUTHENTICATED"
            inference = {"authorization": "Bearer " + INFER_KEY.split(":")[2]}
            admin = {"authorization": "Bearer " + ADMIN_KEY.split(":")[2]}
            assert (
                c.infer("tiny", grpc_inputs(x, lengths), headers=inference).as_numpy("hn_0")
                is not None
            )
            error = error_of(lambda: c.get_model_repository_index(headers=inference))
            assert error.status() == "StatusCode.PERMISSION_DENIED"
            assert "admin scope" in error.message()
            error = error_of(lambda: c.infer("tiny", grpc_inputs(x, lengths), headers=admin))
            assert error.status() == "StatusCode.PERMISSION_DENIED"
            index = c.get_model_repository_index(headers=admin, as_json=True)
            assert {m["name"] for m in index["models"]} == {"tiny", "tiny_bi"}
            c.load_model("tiny", headers=admin)
            assert c.is_model_ready("tiny", headers=inference)
    finally:
        process.stop()


def test_generated_stubs_match_a_regeneration() -> None:
    """The committed ``_pb2`` files are grpcio-tools' output for the committed protos,
    and they share one process's descriptor pool with tritonclient's own."""
    check = [sys.executable, "-m", "service.grpc.generate", "--check"]
    assert subprocess.run(check, cwd=ROOT).returncode == 0
    both = "import tritonclient.grpc, service.grpc.generated.grpc_service_pb2_grpc"
    subprocess.run([sys.executable, "-c", both], cwd=ROOT, check=True)


def test_every_worker_serves_grpc_on_the_shared_port(tiny_repository: Path, tmp_path: Path) -> None:
    """Two workers bind the gRPC port with SO_REUSEPORT; new connections reach either, and
    each answers; an unimplemented Triton call is UNIMPLEMENTED, not UNKNOWN's crash."""
    port = free_port()
    log = tmp_path / "server.log"
    env = {"LSTM_SERVE_GRPC_PORT": str(port), "LSTM_SERVE_WORKERS": "2"}
    process = start_server(tiny_repository, log, env=env)
    try:
        deadline = time.monotonic() + 60  # readiness is one worker's: wait for the other
        while process.log().count("serving gRPC") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.log().count("serving gRPC") == 2
        x, lengths = ragged_batch()
        for _ in range(6):  # a new connection each time
            with tg.InferenceServerClient(f"127.0.0.1:{port}") as c:
                answer = c.infer("tiny", grpc_inputs(x, lengths))
                assert answer.as_numpy("final_output").shape == (3, 3)
        with tg.InferenceServerClient(f"127.0.0.1:{port}") as c:
            error = error_of(lambda: c.get_inference_statistics("tiny"))
            assert error.status() == "StatusCode.UNIMPLEMENTED"
    finally:
        process.stop()
