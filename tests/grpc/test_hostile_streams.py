"""Hostile gRPC traffic against a real server, with the process tree's peak RSS measured
(``PeakRss``): an endless-looking stream of tiny messages, messages declaring huge
shapes with no data behind them, and a stream that goes quiet.

Each message of a ``ModelStreamInfer`` is answered in order (a bad one with Triton's
in-stream ``error_message``, never ``INTERNAL``), and a stream holds at most one
request's memory: the server reads the next message only after answering the last,
and HTTP/2's flow control holds the client back meanwhile. The bound asserted,
``PEAK_RSS_BOUND_MIB`` over the idle server, is documented in docs/protocols.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.loadtest.process import PeakRss, free_port, tree_rss_mib
from tests.conftest import ServerProcess, start_server

TINY_MESSAGES = 5_000
HUGE_MESSAGES = 1_000
PEAK_RSS_BOUND_MIB = 20
IDLE_S = 2


@pytest.fixture(scope="module")
def server(
    tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, int]]:
    port = free_port()
    process = start_server(
        tiny_repository,
        tmp_path_factory.mktemp("grpc-hostile") / "server.log",
        env={
            "LSTM_SERVE_GRPC_PORT": str(port),
            "LSTM_SERVE_GRPC_STREAM_IDLE_TIMEOUT_S": str(IDLE_S),
            "LSTM_SERVE_LOG_LEVEL": "warning",
        },
    )
    yield process, port
    process.stop()


@pytest.fixture
def stub(server: tuple[ServerProcess, int]) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def one_step(i: int) -> service_pb2.ModelInferRequest:
    """A valid request of one sequence of one step (12 bytes of raw input)."""
    request = service_pb2.ModelInferRequest(model_name="tiny", id=str(i))
    request.inputs.add(name="x", datatype="FP32", shape=[1, 1, 3])
    request.raw_input_contents.append(np.full(3, i % 7, "<f4").tobytes())
    return request


def empty(i: int) -> service_pb2.ModelInferRequest:
    """No inputs at all: the smallest message that names the model."""
    return service_pb2.ModelInferRequest(model_name="tiny", id=str(i))


def huge_shape(i: int) -> service_pb2.ModelInferRequest:
    """A shape of 2**62 x 2**62 x 3 with no data, 12 bytes of data, or 3 typed values."""
    request = service_pb2.ModelInferRequest(model_name="tiny", id=str(i))
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2**62, 2**62, 3])
    if i % 3 == 1:
        request.raw_input_contents.append(b"\0" * 12)
    elif i % 3 == 2:
        tensor.contents.fp32_contents.extend([0.0, 0.0, 0.0])
    return request


def test_a_stream_of_5000_tiny_messages_is_answered_in_order_in_bounded_memory(
    server: tuple[ServerProcess, int], stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    idle = tree_rss_mib(server[0].process.pid)
    requests = (one_step(i) if i % 2 == 0 else empty(i) for i in range(TINY_MESSAGES))
    with PeakRss(server[0].process.pid) as peak:
        answers = list(stub.ModelStreamInfer(requests, timeout=120))
    print(f"peak RSS over idle: {peak.peak - idle:.1f} MiB ({TINY_MESSAGES} messages)")
    assert len(answers) == TINY_MESSAGES
    for i, answer in enumerate(answers):
        if i % 2 == 0:
            assert answer.error_message == ""
            assert answer.infer_response.id == str(i)
            assert len(answer.infer_response.raw_output_contents[0]) > 0
        else:
            assert "at least 1 item" in answer.error_message
    assert peak.peak - idle < PEAK_RSS_BOUND_MIB


def test_huge_declared_shapes_without_data_are_refused_in_bounded_memory(
    server: tuple[ServerProcess, int], stub: service_pb2_grpc.GRPCInferenceServiceStub
) -> None:
    idle = tree_rss_mib(server[0].process.pid)
    requests = (huge_shape(i) for i in range(HUGE_MESSAGES))
    with PeakRss(server[0].process.pid) as peak:
        answers = list(stub.ModelStreamInfer(requests, timeout=120))
        with pytest.raises(grpc.RpcError) as caught:  # the same, as unary calls
            stub.ModelInfer(huge_shape(0), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "has no data" in (caught.value.details() or "")
        for i in (1, 2):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(huge_shape(i), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, i
    print(f"peak RSS over idle: {peak.peak - idle:.1f} MiB ({HUGE_MESSAGES} messages)")
    assert len(answers) == HUGE_MESSAGES
    messages = [answer.error_message for answer in answers]
    assert all(messages), "every huge shape is refused"
    assert all("has no data" in m for m in messages[0::3])
    assert all("raw_input_contents[0] is 12 bytes" in m for m in messages[1::3])
    assert peak.peak - idle < PEAK_RSS_BOUND_MIB
    assert stub.ModelInfer(one_step(1), timeout=10).outputs  # and the server goes on


def test_an_idle_stream_ends_after_the_idle_timeout(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """One answer, then silence: the server ends the stream with DEADLINE_EXCEEDED."""
    release = threading.Event()

    def requests() -> Iterator[service_pb2.ModelInferRequest]:
        yield one_step(0)
        release.wait(60)  # the client holds the stream open, sending nothing

    answers = stub.ModelStreamInfer(requests(), timeout=60)
    try:
        assert next(answers).infer_response.id == "0"
        with pytest.raises(grpc.RpcError) as caught:
            next(answers)
    finally:
        release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert caught.value.details() == (
        f"no message for {IDLE_S} s (grpc_stream_idle_timeout_s); closing the stream"
    )
