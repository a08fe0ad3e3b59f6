"""The GPU check, prepared for a machine with an NVIDIA GPU: ``python -m service.loadtest.gpu``.

On a machine whose onnxruntime offers ``CUDAExecutionProvider`` (the
``onnxruntime-gpu`` wheel installed instead of ``onnxruntime``) it:

1. checks parity: the default model on CUDA against CPU, at several batch sizes
   and lengths, padded ones included (max |CUDA - CPU| must stay within 1e-4);
2. measures throughput in-process on each provider at batch 1 to 1,024;
3. starts the service with ``LSTM_SERVE_DEVICE=cuda`` and drives it over HTTP
   (V2 binary, 32 sequences per request), checking that the server really runs
   on CUDA (``/v2/models/{m}/config`` reports ``KIND_GPU``).

Where CUDA is not offered, it says so, runs the CPU half of every step (so the
command and its report are exercised anywhere, CI included), and exits 0 with
``"cuda": false`` in the report: a fallback to CPU is reported, never hidden.

    python -m service.loadtest.gpu --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.contract import ModelMetadata
from service.core.runtime import CPU, CUDA
from service.loadtest import LoadSpec, run_load
from service.loadtest.process import ServerProcess
from service.settings import DEFAULT_REPOSITORY

MODEL = "basic_motions"
PARITY_TOLERANCE = 1e-4
PARITY_SHAPES = ((1, 1), (3, 7), (32, 50), (64, 100))
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def session(version_dir: Path, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    providers = [provider] if provider == CPU else [provider, CPU]
    return ort.InferenceSession(str(version_dir / "model.onnx"), options, providers)


def feeds(meta: ModelMetadata, x: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    batch = x.shape[0]
    out = {meta.tensors.x: x, meta.tensors.lengths: lengths}
    for i, names in enumerate(meta.tensors.initial_states):
        out.update(dict.fromkeys(names.names, np.zeros(meta.state_shape(i, batch), np.float32)))
    return out


def parity(meta: ModelMetadata, cpu: ort.InferenceSession, gpu: ort.InferenceSession) -> float:
    """Largest |CUDA - CPU| over every output, at shapes with padding."""
    rng = np.random.default_rng(0)
    worst = 0.0
    outputs = [o.name for o in cpu.get_outputs()]
    for batch, steps in PARITY_SHAPES:
        x = rng.normal(size=(batch, steps, meta.num_features)).astype(np.float32)
        lengths = rng.integers(1, steps + 1, size=batch).astype(np.int64)
        want = cpu.run(outputs, feeds(meta, x, lengths))
        got = gpu.run(outputs, feeds(meta, x, lengths))
        worst = max(worst, *(float(np.abs(g - w).max()) for g, w in zip(got, want, strict=True)))
    return worst


def throughput(
    meta: ModelMetadata, sess: ort.InferenceSession, steps: int, seconds: float
) -> dict[str, float]:
    """Sequences/s at each batch size, ``seconds`` of back-to-back calls each."""
    rng = np.random.default_rng(1)
    result: dict[str, float] = {}
    outputs = [meta.tensors.final_output]
    for batch in BATCHES:
        x = rng.normal(size=(batch, steps, meta.num_features)).astype(np.float32)
        data = feeds(meta, x, np.full(batch, steps, np.int64))
        sess.run(outputs, data)  # warm-up: allocation and kernel selection
        calls, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            sess.run(outputs, data)
            calls += 1
        result[str(batch)] = batch * calls / elapsed
    return result


def over_http(device: str, steps: int, seconds: float, repository: Path) -> dict[str, Any]:
    """The service on ``device``, driven over HTTP; the instance kind it reports."""
    server = ServerProcess(repository, {"LSTM_SERVE_DEVICE": device, "LSTM_SERVE_WORKERS": "1"})
    try:
        server.wait_ready(timeout=180.0)
        with urllib.request.urlopen(f"{server.url}/v2/models/{MODEL}/config", timeout=5) as r:
            kind = json.loads(r.read())["instance_group"][0]["kind"]
        spec = LoadSpec(
            url=server.url,
            model=MODEL,
            protocol="v2-binary",
            batch=32,
            timesteps=steps,
            concurrency=4,
            duration_s=seconds,
            warmup_s=1.0,
        )
        load = run_load(spec)
        return {
            "instance_kind": kind,
            "sequences_per_s": load.sequences_per_s,
            "p99_ms": load.latency_ms["p99"],
            "errors": load.errors,
        }
    finally:
        server.stop()


def run(steps: int, seconds: float, repository: Path) -> dict[str, Any]:
    version_dir = max((repository / MODEL).iterdir(), key=lambda p: int(p.name))
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
    cuda = CUDA in ort.get_available_providers()
    report: dict[str, Any] = {"cuda": cuda, "providers": ort.get_available_providers()}
    cpu = session(version_dir, CPU)
    report["cpu_sequences_per_s"] = throughput(meta, cpu, steps, seconds)
    report["http_cpu"] = over_http("cpu", steps, seconds * 4, repository)
    if not cuda:
        report["note"] = (
            "onnxruntime offers no CUDAExecutionProvider here (install onnxruntime-gpu instead "
            "of onnxruntime on a machine with an NVIDIA GPU): CPU figures only"
        )
        return report
    gpu = session(version_dir, CUDA)
    report["gpu_session_providers"] = gpu.get_providers()
    report["parity_max_abs_diff"] = parity(meta, cpu, gpu)
    report["parity_ok"] = report["parity_max_abs_diff"] <= PARITY_TOLERANCE
    report["cuda_sequences_per_s"] = throughput(meta, gpu, steps, seconds)
    report["http_cuda"] = over_http("cuda", steps, seconds * 4, repository)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.loadtest.gpu", description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="per batch size and provider")
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--json", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    report = run(args.timesteps, args.seconds, args.repository)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if report["cuda"] and not (
        report["parity_ok"] and report["http_cuda"]["instance_kind"] == "KIND_GPU"
    ):
        sys.exit("CUDA parity or the server's device check failed; see the report")


if __name__ == "__main__":
    main()
