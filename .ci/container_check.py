"""Check a built serving image for real: run it as production would and talk to it.

Run by ``.ci/container-check`` (which builds the image) with the project's venv:
``.venv/bin/python .ci/container_check.py --image lstm-serve:ci``. Every request goes
to 127.0.0.1. Prints one PASS/FAIL line per check and exits 1 on the first failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.loadtest.process import free_port  # noqa: E402  (the checkout's, as above)

MODEL = "basic_motions"
FEATURES = 6
UID = "10001"
# The in-flight request during SIGTERM: a few seconds of onnxruntime on one core.
SLOW_BATCH, SLOW_STEPS = 512, 2000
TOLERANCE = 1e-5
# The image requires API keys (LSTM_SERVE_AUTH=required): one made for this check.
CHECK_SECRET = os.urandom(24).hex()
CHECK_KEY = f"check:inference:{CHECK_SECRET}"
AUTH = {"Authorization": f"Bearer {CHECK_SECRET}"}


class CheckFailed(Exception):
    pass


def say(status: str, message: str) -> None:
    print(f"[container_check] {status}: {message}", flush=True)


def check(condition: bool, message: str, detail: str = "") -> None:
    if not condition:
        raise CheckFailed(f"{message}{': ' + detail if detail else ''}")
    say("PASS", message)


def docker(*args: str, check_rc: bool = True, timeout: float = 120.0) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check_rc and result.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass
class Container:
    """A detached container of the image on a loopback port; removed on exit."""

    image: str
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    name: str = field(default_factory=lambda: f"lstm-serve-check-{os.getpid()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, workers: int) -> None:
        docker("rm", "--force", "--volumes", self.name, check_rc=False)
        docker(
            "run", "--detach", "--name", self.name,
            "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # The image's own HEALTHCHECK command, polled faster than its 10 s default.
            "--health-interval", "1s", "--health-start-period", "60s",
            "--env", "LSTM_SERVE_HOST=127.0.0.1",
            "--env", f"LSTM_SERVE_PORT={self.port}",
            "--env", f"LSTM_SERVE_GRPC_PORT={self.grpc_port}",
            "--env", f"LSTM_SERVE_WORKERS={workers}",
            "--env", f"LSTM_SERVE_API_KEYS={json.dumps([CHECK_KEY])}",
            # The drain check needs a request that computes for seconds (512 x 2,000
            # steps), over the default cap on one request's timesteps (262,144).
            "--env", f"LSTM_SERVE_MAX_REQUEST_TIMESTEPS={SLOW_BATCH * SLOW_STEPS}",
            self.image,
        )  # fmt: skip

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name)

    def logs(self, lines: int = 30, width: int = 400) -> str:
        result = subprocess.run(
            ["docker", "logs", "--tail", str(lines), self.name],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return "\n".join(line[:width] for line in (result.stdout + result.stderr).splitlines())

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def remove(self) -> None:
        docker("rm", "--force", "--volumes", self.name, check_rc=False)


@contextmanager
def running(image: str, workers: int) -> Iterator[Container]:
    container = Container(image)
    container.start(workers)
    try:
        yield container
    except CheckFailed:
        print(f"--- last lines of the container's log ---\n{container.logs()}", file=sys.stderr)
        raise
    finally:
        container.remove()


def wait_until(predicate: Any, what: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.25)
    raise CheckFailed(f"{what} not within {timeout:.0f} s")


def is_ready(container: Container) -> bool:
    if not container.running():
        raise CheckFailed(f"the container stopped: {container.inspect('{{.State.Status}}')}")
    try:
        return httpx.get(f"{container.url}/v2/health/ready", timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


def is_live(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/live", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def check_image(image: str) -> None:
    """No torch, no load-testing code, no compiler, no checkpoint, a numeric non-root user."""
    probe = (
        "import importlib.util, pathlib, shutil; "
        "print(importlib.util.find_spec('torch') is None, "
        "importlib.util.find_spec('service.loadtest') is None, shutil.which('lstm-bench'), "
        "[c for c in ('gcc', 'cc', 'g++', 'clang') if shutil.which(c)], "
        "sorted(str(p) for p in pathlib.Path('/models').rglob('checkpoint.pt')))"
    )
    out = docker("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe)
    check(
        out == "True True None [] []",
        "image has no torch, no load-testing code, no compiler and no checkpoint.pt",
        out,
    )
    user = docker("image", "inspect", "--format", "{{.Config.User}}", image)
    check(user == f"{UID}:{UID}", "image runs as a numeric non-root user", user)


def check_running(container: Container) -> None:
    took = wait_until(lambda: is_ready(container), "readiness", 90.0)
    say("PASS", f"ready on {container.url} after {took:.1f} s (read-only, cap-drop ALL)")
    wait_until(
        lambda: container.inspect("{{.State.Health.Status}}") == "healthy", "HEALTHCHECK", 30.0
    )
    say("PASS", "the image's HEALTHCHECK reports healthy")
    uid = docker("exec", container.name, "id", "-u")
    check(uid == UID, f"the server process runs as uid {UID}", uid)
    top = docker("top", container.name, "-o", "uid,pid,cmd")
    uids = {line.split()[0] for line in top.splitlines()[1:]}
    check(uids == {UID}, "every process in the container is non-root", top)
    touched = subprocess.run(
        ["docker", "exec", container.name, "touch", "/models/x"], capture_output=True, check=False
    )
    check(touched.returncode != 0, "the model repository is not writable")
    metrics = httpx.get(f"{container.url}/metrics", timeout=5.0)
    check(metrics.status_code == 200, "/metrics answers with several workers (tmpfs /tmp)")


def sequences(seed: int) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    lengths = [120, 57, 1, 300]
    return [rng.normal(scale=3.0, size=(n, FEATURES)).round(4).tolist() for n in lengths]


def in_process(body: dict[str, Any]) -> dict[str, Any]:
    """The same request answered by the app in this process, on the repository's models."""
    with warnings.catch_warnings():  # starlette's TestClient deprecation notice
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(model_repository=ROOT / "models" / "repository", device="cpu", grpc_port=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        response = client.post(f"/v1/models/{MODEL}:predict", json=body)
    if response.status_code != 200:
        raise CheckFailed(f"in-process predict: {response.status_code} {response.text}")
    result: dict[str, Any] = response.json()
    return result


def check_grpc(container: Container) -> None:
    """The image serves V2 over gRPC too, with the same keys and the same answer."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{container.grpc_port}")
    check(client.is_server_live(), f"gRPC answers on port {container.grpc_port}")
    x = np.random.default_rng(11).normal(size=(2, 50, FEATURES)).astype(np.float32)
    inputs = [grpcclient.InferInput("x", list(x.shape), "FP32")]
    inputs[0].set_data_from_numpy(x)
    key = {"authorization": AUTH["Authorization"]}
    answer = client.infer(MODEL, inputs, headers=key).as_numpy("final_output")
    rest = httpx.post(
        f"{container.url}/v2/models/{MODEL}/infer",
        json={
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.reshape(-1).tolist(),
                }
            ],
            "outputs": [{"name": "final_output"}],
        },
        headers=AUTH,
        timeout=30.0,
    ).json()["outputs"][0]
    want = np.array(rest["data"], np.float32).reshape(rest["shape"])
    check(
        answer is not None and np.allclose(answer, want, atol=1e-6),
        "gRPC ModelInfer (with the key) equals the REST V2 answer",
    )


def check_prediction(container: Container) -> None:
    body = {"instances": sequences(seed=7)}
    response = httpx.post(
        f"{container.url}/v1/models/{MODEL}:predict", json=body, headers=AUTH, timeout=30.0
    )
    check(response.status_code == 200, "POST /v1 predict answers 200", response.text[:300])
    keyless = httpx.post(f"{container.url}/v1/models/{MODEL}:predict", json=body, timeout=30.0)
    check(
        keyless.status_code == 401 and "www-authenticate" in keyless.headers,
        "the image requires API keys: a predict without one gets 401 + WWW-Authenticate",
        f"{keyless.status_code} {keyless.text[:200]}",
    )
    served = response.json()["predictions"]
    expected = in_process(body)["predictions"]
    check_grpc(container)
    got = np.array([p["probabilities"] for p in served])
    want = np.array([p["probabilities"] for p in expected])
    worst = float(np.abs(got - want).max())
    labels_match = [p["label"] for p in served] == [p["label"] for p in expected]
    check(
        got.shape == want.shape and worst <= TOLERANCE and labels_match,
        f"container predictions equal in-process ones (max |diff| {worst:.1e} <= {TOLERANCE})",
        f"{served} != {expected}",
    )


def slow_request(url: str, outcome: dict[str, Any]) -> None:
    """A V2 binary request with ~1-3 s of compute; records its status and when it ended."""
    x = np.random.default_rng(3).normal(size=(SLOW_BATCH, SLOW_STEPS, FEATURES))
    data = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "final_output", "parameters": {"binary_data": False}}],
        }
    ).encode()
    outcome["started"] = time.monotonic()
    try:
        response = httpx.post(
            f"{url}/v2/models/{MODEL}/infer",
            content=header + data,
            headers={
                **AUTH,
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(header)),
            },
            timeout=60.0,
        )
        outcome["status"] = response.status_code
        outcome["shape"] = response.json()["outputs"][0]["shape"] if response.is_success else None
    except httpx.HTTPError as error:
        outcome["status"] = repr(error)
    outcome["ended"] = time.monotonic()


def check_graceful_shutdown(container: Container) -> None:
    """SIGTERM with a request in flight: it still gets its 200, nothing new is served."""
    outcome: dict[str, Any] = {}
    client = threading.Thread(target=slow_request, args=(container.url, outcome), daemon=True)
    client.start()
    time.sleep(0.6)  # uploaded (12 MB over loopback) and computing by now
    check(client.is_alive(), "the slow request is still in flight when SIGTERM is sent")
    docker("kill", "--signal", "TERM", container.name)
    signalled = time.monotonic()
    refused_after = wait_until(
        lambda: not is_live(container.url), "refusing new requests after SIGTERM", 10.0
    )
    check(
        client.is_alive(),
        f"new requests go unanswered {refused_after:.1f} s after SIGTERM, "
        "while the slow request is still in flight",
        f"it ended {outcome.get('ended', 0) - outcome.get('started', 0):.1f} s after it began",
    )
    client.join(timeout=60.0)
    check(
        outcome.get("status") == 200 and outcome.get("shape") == [SLOW_BATCH, 4],
        f"the request in flight at SIGTERM completed with 200 "
        f"({outcome.get('ended', 0) - signalled:.1f} s after the signal)",
        str(outcome),
    )
    check(outcome["ended"] > signalled, "that request ended after the signal, not before")
    wait = docker("wait", container.name, timeout=45.0)
    exited = time.monotonic() - signalled
    check(
        wait in {"0", "143"},
        f"the container exited {exited:.1f} s after SIGTERM with code {wait} (0 or 143)",
        wait,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers in the container")
    args = parser.parse_args()
    try:
        check_image(args.image)
        with running(args.image, args.workers) as container:
            check_running(container)
            check_prediction(container)
            check_graceful_shutdown(container)
    except (CheckFailed, subprocess.TimeoutExpired) as failure:
        say("FAIL", str(failure))
        return 1
    say("PASS", "all container checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
