"""Fixtures shared by every test package: tiny model repositories, in-process apps and
real servers (``service/loadtest/process.py``, the same helpers the benchmark uses)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from models.testing import make_stateless_gru, make_tiny_model
from service.app import create_app
from service.core.contract import ModelMetadata
from service.loadtest.process import ROOT, ServerProcess, start_server
from service.settings import Settings
from tests.scaleout.cluster import RedisServer

# In-process apps (make_client) start no gRPC server on Triton's fixed port 8001 unless a
# test asks for one; real servers get LSTM_SERVE_GRPC_PORT=0 from ServerProcess too.
os.environ.setdefault("LSTM_SERVE_GRPC_PORT", "0")

__all__ = ["ROOT", "ServerProcess", "make_client", "reference", "start_server"]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the session (``tests/scaleout/cluster.py``)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with a classifier (two versions) and a bidirectional regressor."""
    root = tmp_path_factory.mktemp("repository")
    make_tiny_model(root, "tiny", 1, features=3, layers=(8, 4), classes=3, seed=1)
    make_tiny_model(root, "tiny", 2, features=3, layers=(8, 4), classes=3, seed=2)
    make_tiny_model(
        root,
        "tiny_bi",
        1,
        features=2,
        layers=(6, 5),
        bidirectional=True,
        task="regression",
        output_size=2,
        seed=3,
    )
    return root


@pytest.fixture(scope="session")
def gru_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GRU state models: a GRU stack (``gru``), an LSTM into a GRU (``mixed``, regression),
    and a GRU stack exported as before GRU state was carried (``gru_stateless``)."""
    root = tmp_path_factory.mktemp("gru-repository")
    make_tiny_model(root, "gru", 1, features=3, layers=(8, 4), cells=("gru", "gru"), seed=4)
    make_tiny_model(
        root,
        "mixed",
        1,
        features=3,
        layers=(8, 4),
        cells=("lstm", "gru"),
        task="regression",
        output_size=2,
        seed=5,
    )
    make_stateless_gru(root, "gru_stateless")
    return root


def reference(version_dir: Path, x: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """In-process onnxruntime on the model file, zero initial states: the numbers to match."""
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds: dict[str, np.ndarray] = {
        meta.tensors.x: x.astype(np.float32),
        meta.tensors.lengths: lengths,
    }
    for i, names in enumerate(meta.tensors.initial_states):
        shape = meta.state_shape(i, x.shape[0])  # h and c, or a GRU layer's h alone
        feeds.update(dict.fromkeys(names.names, np.zeros(shape, np.float32)))
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, feeds), strict=True))


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    """Start servers with ``server_factory(repository, env)``; all are stopped afterwards."""
    started: list[ServerProcess] = []

    def factory(
        repository: Path, env: dict[str, str] | None = None, wait_path: str = "/v2/health/ready"
    ) -> ServerProcess:
        server = start_server(repository, tmp_path / f"server-{len(started)}.log", env, wait_path)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


def make_client(repository: Path, **overrides: object) -> TestClient:
    """An in-process app (real onnxruntime, the real ASGI stack) over ``repository``."""
    settings = Settings(model_repository=repository, **overrides)  # type: ignore[arg-type]
    # Host 127.0.0.1, not TestClient's "testserver": a loopback bind serves loopback names only.
    return TestClient(
        create_app(settings), base_url="http://127.0.0.1", raise_server_exceptions=False
    )


@pytest.fixture(scope="module")
def client(tiny_repository: Path) -> Iterator[TestClient]:
    with make_client(
        tiny_repository, max_instances=16, max_timesteps=64, max_body_bytes=65536
    ) as c:
        yield c
