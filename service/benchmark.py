"""Serving overhead against raw onnxruntime, measured in one run: ``python -m service.benchmark``.

Not a test: it prints figures. The baseline is the same model run in-process
by a plain onnxruntime session (one intra-op thread), so every HTTP figure is a
ratio against a number taken minutes apart on the same machine. The server runs
in its own process (``python -m service``) on a loopback port; the client sends
requests back to back over one keep-alive connection (closed loop, concurrency
1), so the ratio is the cost of the HTTP path per request, not batching gains.

    python -m service.benchmark --seconds 5 --time-steps 100
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from service.contract import ModelMetadata
from service.settings import DEFAULT_REPOSITORY


def measure(call: Callable[[], None], sequences: int, seconds: float) -> dict[str, float]:
    """Sequences/s and latency percentiles of ``call`` repeated for ``seconds``."""
    for _ in range(3):
        call()  # warm-up
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(latencies) < 100_000:
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    ms = np.array(latencies) * 1000
    return {
        "sequences_per_s": sequences * len(ms) / (ms.sum() / 1000),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "requests": len(ms),
    }


def raw_session(version_dir: Path, meta: ModelMetadata) -> Callable[[np.ndarray], None]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), so, providers=["CPUExecutionProvider"]
    )

    def run(x: np.ndarray) -> None:
        feeds = {meta.tensors.x: x, meta.tensors.lengths: np.full(len(x), x.shape[1], np.int64)}
        for i, names in enumerate(meta.tensors.initial_states):
            zeros = np.zeros(meta.state_shape(i, len(x)), np.float32)
            feeds[names.h], feeds[names.c] = zeros, zeros
        session.run([meta.tensors.final_output], feeds)

    return run


def v2_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": "final_output", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header + x.tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def _post(http: httpx.Client, path: str, content: bytes, headers: dict[str, str] | None) -> None:
    http.post(path, content=content, headers=headers).raise_for_status()


def start_server(repository: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "LSTM_SERVE_PORT": str(port),
        "LSTM_SERVE_HOST": "127.0.0.1",
        "LSTM_SERVE_MODEL_REPOSITORY": str(repository),
        "LSTM_SERVE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not become ready")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.benchmark", description=__doc__)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--model", default="basic_motions")
    parser.add_argument("--time-steps", type=int, default=100)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    version_dir = max((args.repository / args.model).iterdir(), key=lambda p: int(p.name))
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
    raw = raw_session(version_dir, meta)
    process, url = start_server(args.repository)
    rows = []
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            for batch in (int(b) for b in args.batches.split(",")):
                x = (
                    np.random.default_rng(0)
                    .normal(size=(batch, args.time_steps, meta.num_features))
                    .astype(np.float32)
                )
                v1_body = json.dumps({"instances": x.tolist()}).encode()
                v2_json = json.dumps(
                    {
                        "inputs": [
                            {
                                "name": "x",
                                "shape": list(x.shape),
                                "datatype": "FP32",
                                "data": x.ravel().tolist(),
                            }
                        ],
                        "outputs": [{"name": "final_output"}],
                    }
                ).encode()
                body, headers = v2_binary(x)

                post = partial(_post, http)
                v1 = f"/v1/models/{args.model}:predict"
                v2 = f"/v2/models/{args.model}/infer"
                base = measure(partial(raw, x), batch, args.seconds)
                cases = {
                    "raw onnxruntime": base,
                    "/v1 predict JSON": measure(
                        partial(post, v1, v1_body, None),
                        batch,
                        args.seconds,
                    ),
                    "V2 infer JSON": measure(
                        partial(post, v2, v2_json, None),
                        batch,
                        args.seconds,
                    ),
                    "V2 infer binary": measure(
                        partial(post, v2, body, headers),
                        batch,
                        args.seconds,
                    ),
                }
                for name, figures in cases.items():
                    ratio = figures["sequences_per_s"] / base["sequences_per_s"]
                    rows.append((batch, name, figures, ratio))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"model {args.model} v{meta.version}, T={args.time_steps}, closed loop, concurrency 1")
    print(f"{'B':>3}  {'path':<18}{'seq/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x raw':>8}")
    for batch, name, f, ratio in rows:
        print(
            f"{batch:>3}  {name:<18}{f['sequences_per_s']:>10.0f}{f['p50_ms']:>9.2f}"
            f"{f['p99_ms']:>9.2f}{ratio:>8.2f}"
        )
    print(f"server peak RSS: {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
