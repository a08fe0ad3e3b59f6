"""The machine's limit, the base of every benchmark ratio: the default model in plain
onnxruntime, no HTTP, no JSON, no queueing, batches back to back on all the cores the
service uses (``benchmark.py`` and ``grpc_bench.py`` divide by it).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.contract import ModelMetadata


def raw_baseline(
    version_dir: Path, batch: int, steps: int, seconds: float, threads: int = 1
) -> dict[str, float]:
    """Sequences/s and per-call latency of onnxruntime alone, back to back.

    ``threads`` intra-op threads; 0 is onnxruntime's default (one per core).
    """
    meta = metadata_of(version_dir)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(version_dir / "model.onnx"), so, ["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {
        meta.tensors.x: rng.normal(size=(batch, steps, meta.num_features)).astype(np.float32),
        meta.tensors.lengths: np.full(batch, steps, np.int64),
    }
    for i, names in enumerate(meta.tensors.initial_states):
        feeds.update(dict.fromkeys(names.names, np.zeros(meta.state_shape(i, batch), np.float32)))
    outputs = [meta.tensors.final_output]
    for _ in range(20):
        session.run(outputs, feeds)
    latencies: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        session.run(outputs, feeds)
        latencies.append(time.perf_counter() - start)
    ms = np.array(latencies) * 1000
    return {
        "sequences_per_s": batch * len(ms) / (ms.sum() / 1000),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def metadata_of(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())


def _one_process(args: tuple[Path, int, int, float]) -> dict[str, float]:
    return raw_baseline(*args)


def machine_limit(
    version_dir: Path, batch: int, steps: int, seconds: float, processes: int
) -> dict[str, Any]:
    """What the machine's cores can compute, measured two ways, the larger taken.

    ``processes`` one-thread sessions in as many processes at once (how the service
    uses the cores: one worker process each), and one in-process session with
    onnxruntime's default threads. Either can win depending on the machine.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        parts = list(pool.map(_one_process, [(version_dir, batch, steps, seconds)] * processes))
    parallel = sum(part["sequences_per_s"] for part in parts)
    default = raw_baseline(version_dir, batch, steps, seconds, threads=0)["sequences_per_s"]
    return {
        "sequences_per_s": max(parallel, default),
        "processes_x_1_thread": parallel,
        "default_threads": default,
        "processes": processes,
    }
