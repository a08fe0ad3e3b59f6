"""Fixtures shared by every test package: tiny model repositories and real servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from models.testing import make_tiny_model
from service.contract import ModelMetadata

ROOT = Path(__file__).resolve().parent.parent


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
        shape = meta.state_shape(i, x.shape[0])
        feeds[names.h] = np.zeros(shape, np.float32)
        feeds[names.c] = np.zeros(shape, np.float32)
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(outputs, feeds), strict=True))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A real ``python -m service`` on a loopback port, stopped by its own PID."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


def start_server(
    repository: Path,
    log_path: Path,
    env: dict[str, str] | None = None,
    wait_path: str = "/v2/health/ready",
    ready_timeout: float = 60.0,
) -> ServerProcess:
    port = free_port()
    full_env = {
        **os.environ,
        "LSTM_SERVE_HOST": "127.0.0.1",
        "LSTM_SERVE_PORT": str(port),
        "LSTM_SERVE_MODEL_REPOSITORY": str(repository),
        **(env or {}),
    }
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        env=full_env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}{wait_path}", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready after {ready_timeout}s:\n{server.log()}")


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
