"""The real thing: ``python -m service`` under uvicorn on a loopback port, driven by httpx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import reference


def test_real_server_answers_like_onnxruntime(tiny_repository: Path, server_factory) -> None:
    server = server_factory(tiny_repository)
    rng = np.random.default_rng(0)
    seqs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 12, 1)]
    body = {"instances": [s.tolist() for s in seqs]}
    response = httpx.post(f"{server.url}/v1/models/tiny:predict", json=body, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    x = np.zeros((3, 12, 3), np.float32)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    want = reference(tiny_repository / "tiny" / "2", x, np.array([5, 12, 1]))["final_output"]
    got = np.array([p["probabilities"] for p in response.json()["predictions"]])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert "loaded tiny version 2 on CPUExecutionProvider" in server.log()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit reads as -15.
    assert server.stop() in (0, -15)
    assert "Finished server process" in server.log()


def test_server_with_no_models_is_live_but_not_ready(tmp_path: Path, server_factory) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    server = server_factory(empty, wait_path="/v2/health/live")
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).json() == {
        "ready": False,
        "reason": "no model is loaded (the repository holds none)",
    }
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
    assert "no model loaded from" in server.log()


def test_bad_model_is_reported_and_the_rest_serve(
    tiny_repository: Path, tmp_path: Path, server_factory
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository, root)
    (root / "tiny" / "2" / "model.onnx").write_bytes(b"not an onnx file")
    server = server_factory(root)
    status = httpx.get(f"{server.url}/v1/models/tiny_bi", timeout=5)
    assert status.status_code == 200
    missing = httpx.get(f"{server.url}/v1/models/tiny", timeout=5)
    assert missing.status_code == 404
    assert "failed to load tiny version 2" in server.log()


def test_explicit_model_control_with_several_workers_refuses_to_start(tmp_path: Path) -> None:
    """A load call would reach one worker of two: refused at startup, saying what to set."""
    env = {
        **os.environ,
        "LSTM_SERVE_WORKERS": "2",
        "LSTM_SERVE_MODEL_CONTROL_MODE": "explicit",
        "LSTM_SERVE_MODEL_REPOSITORY": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "service"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert (
        "lstm-serve: LSTM_SERVE_MODEL_CONTROL_MODE=explicit changes the models of the one "
        "process that answers the call, so 2 workers would serve different models"
    ) in done.stderr
