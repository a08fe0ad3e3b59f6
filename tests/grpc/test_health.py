"""The standard ``grpc.health.v1.Health`` service, called with its own client stub
(``grpc_health.v1``, what Kubernetes' gRPC probe and ``grpc_health_probe`` speak), on
real servers: its status is REST's ``/v2/health/ready``, keys or not.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.loadtest.process import free_port
from tests.conftest import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE = "inference.GRPCInferenceService"
INFER_KEY = "ci:inference:" + "i" * 32


def check(port: int, service: str = "") -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        status: int = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        return status


def rest_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5) as answer:
            return bool(json.loads(answer.read())["ready"])
    except urllib.error.HTTPError as error:
        assert error.code == 503
        return False


def test_serving_without_a_key_and_unknown_services_not_found(
    tiny_repository: Path, tmp_path: Path
) -> None:
    """Keys required for inference; health is open, as REST's probes are."""
    port = free_port()
    process = start_server(
        tiny_repository,
        tmp_path / "server.log",
        env={"LSTM_SERVE_GRPC_PORT": str(port), "LSTM_SERVE_API_KEYS": f'["{INFER_KEY}"]'},
    )
    try:
        assert rest_ready(process.url)
        assert check(port) == SERVING
        assert check(port, SERVICE) == SERVING
        with pytest.raises(grpc.RpcError) as caught:
            check(port, "no.such.Service")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # The inference service itself still wants the key.
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        process.stop()


def test_not_serving_until_ready_then_serving_and_watch_sees_both(
    tiny_repository: Path, tmp_path: Path
) -> None:
    """A poll-mode server on an empty repository is not ready (REST 503): NOT_SERVING.
    A model copied in is loaded by the next poll: SERVING, on Check and on a Watch
    stream opened before; and NOT_SERVING again when the server stops."""
    repository = tmp_path / "repository"
    repository.mkdir()
    port = free_port()
    process = start_server(
        repository,
        tmp_path / "server.log",
        env={
            "LSTM_SERVE_GRPC_PORT": str(port),
            "LSTM_SERVE_MODEL_CONTROL_MODE": "poll",
            "LSTM_SERVE_MODEL_CONTROL_POLL_S": "1",
        },
        wait_path="/v2/health/live",
    )
    try:
        deadline = time.monotonic() + 30
        while "serving gRPC" not in process.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not rest_ready(process.url)
        assert check(port) == NOT_SERVING
        assert check(port, SERVICE) == NOT_SERVING

        seen: queue.Queue[int] = queue.Queue()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

        def follow() -> None:
            try:
                for answer in watch:
                    seen.put(answer.status)
            except grpc.RpcError:
                pass
            seen.put(-1)  # the stream ended

        threading.Thread(target=follow, daemon=True).start()
        assert seen.get(timeout=10) == NOT_SERVING

        shutil.copytree(tiny_repository / "tiny", repository / "tiny")
        assert seen.get(timeout=30) == SERVING
        assert rest_ready(process.url)
        assert check(port) == SERVING
        assert check(port, SERVICE) == SERVING

        process.stop()  # SIGTERM: NOT_SERVING before the gRPC server goes
        assert seen.get(timeout=30) == NOT_SERVING
        assert seen.get(timeout=30) == -1
        channel.close()
    finally:
        process.stop()
