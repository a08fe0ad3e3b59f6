"""Raw onnxruntime throughput of a model's fp32 version against its int8 version.

    python -m service.loadtest.int8 basic_motions            # newest int8 vs its source
    python -m service.loadtest.int8 basic_motions --fp32 1 --int8 2 --time 100

No server: one onnxruntime session per version, one intra-op thread, set up as
the service sets up its own, fed random sequences of ``--time`` steps at batch 1
and ``--batch`` (32). Rounds alternate between the two versions and the best
round of each is kept (a shared CPU only ever slows a round down). Prints
sequences per second and the int8/fp32 ratio per batch size; ``--json`` writes
them too. Separate from ``benchmark.py``: that one measures the served stack.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.contract import METADATA_FILENAME, ModelMetadata
from service.settings import DEFAULT_REPOSITORY


def _session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _metadata(folder: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((folder / METADATA_FILENAME).read_bytes())


def _versions(repository: Path, name: str, fp32: int | None, int8: int | None) -> tuple[int, int]:
    """The int8 version asked (or the newest one) and its fp32 source (or the one asked)."""
    if int8 is None:
        found = sorted(int(p.name) for p in (repository / name).iterdir() if p.name.isdigit())
        int8 = next(
            (v for v in reversed(found) if _metadata(repository / name / str(v)).quantization),
            None,
        )
        if int8 is None:
            raise SystemExit(f"{name} has no int8 version in {repository} (run lstm-quantize)")
    quantization = _metadata(repository / name / str(int8)).quantization
    if fp32 is None:
        if quantization is None:
            raise SystemExit(f"{name}/{int8} is not an int8 version: give --fp32")
        fp32 = quantization.source_version
    return fp32, int8


def _feeds(meta: ModelMetadata, batch: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = np.asarray(meta.normalization.mean, np.float32)
    std = np.asarray(meta.normalization.std, np.float32)
    x = rng.normal(size=(batch, steps, meta.num_features)).astype(np.float32) * std + mean
    feeds = {meta.tensors.x: x, meta.tensors.lengths: np.full(batch, steps, np.int64)}
    for i, names in enumerate(meta.tensors.initial_states):
        feeds.update(dict.fromkeys(names.names, np.zeros(meta.state_shape(i, batch), np.float32)))
    return feeds


def _rate(
    session: ort.InferenceSession, output: str, feeds: dict[str, np.ndarray], s: float
) -> float:
    session.run([output], feeds)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < s or calls == 0:
        session.run([output], feeds)
        calls += 1
    return calls * len(next(iter(feeds.values()))) / elapsed


def measure(
    repository: Path,
    name: str,
    fp32: int | None = None,
    int8: int | None = None,
    *,
    batches: tuple[int, ...] = (1, 32),
    steps: int = 100,
    threads: int = 1,
    seconds: float = 1.0,
    rounds: int = 3,
) -> list[dict[str, Any]]:
    """One row per batch size: both versions' best seq/s and the ratio."""
    fp32, int8 = _versions(repository, name, fp32, int8)
    folders = {"fp32": repository / name / str(fp32), "int8": repository / name / str(int8)}
    metas = {k: _metadata(f) for k, f in folders.items()}
    sessions = {k: _session(f / metas[k].onnx.file, threads) for k, f in folders.items()}
    rows = []
    for batch in batches:
        feeds = _feeds(metas["fp32"], batch, steps, seed=batch)
        best = dict.fromkeys(sessions, 0.0)
        for _ in range(rounds):
            for key, sess in sessions.items():
                out = metas[key].tensors.final_output
                best[key] = max(best[key], _rate(sess, out, feeds, seconds))
        rows.append(
            {
                "model": name,
                "fp32_version": fp32,
                "int8_version": int8,
                "batch": batch,
                "time": steps,
                "threads": threads,
                "fp32_seq_per_s": best["fp32"],
                "int8_seq_per_s": best["int8"],
                "ratio": best["int8"] / best["fp32"],
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m service.loadtest.int8", description=__doc__)
    p.add_argument("model")
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    p.add_argument("--fp32", type=int, help="default: the int8 version's source")
    p.add_argument("--int8", type=int, help="default: the newest int8 version")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--time", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0, help="per version per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    rows = measure(
        args.repository,
        args.model,
        args.fp32,
        args.int8,
        batches=(1, args.batch),
        steps=args.time,
        threads=args.threads,
        seconds=args.seconds,
        rounds=args.rounds,
    )
    for r in rows:
        print(
            f"{r['model']} batch {r['batch']:>3} T={r['time']} threads={r['threads']}: "
            f"fp32 v{r['fp32_version']} {r['fp32_seq_per_s']:8.0f} seq/s, "
            f"int8 v{r['int8_version']} {r['int8_seq_per_s']:8.0f} seq/s, "
            f"ratio {r['ratio']:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
