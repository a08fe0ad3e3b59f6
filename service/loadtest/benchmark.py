"""The serving benchmark, in one run: ``python -m service.loadtest.benchmark``.

Not a test: it prints figures, as ratios against a baseline measured minutes
apart on the same machine, because absolute numbers on a shared box mean little.

- **The machine's limit**: the default model in plain onnxruntime, batches of 32
  sequences back to back, no HTTP, no JSON, no queueing, using all the cores the
  service uses: as many one-thread processes as the service has workers, and one
  session with onnxruntime's default threads; the larger of the two. Every row's
  ``x mach`` divides by it; ``x 1thr`` divides by one one-thread session (a
  core's worth), the figure earlier versions of this table used.
- **The service**, started as users start it (``python -m service``: uvicorn,
  ``--workers`` processes, one onnxruntime thread each), once with dynamic
  batching off and once on, driven by the project's own client (``run_load``,
  a separate process's worth of asyncio on the same cores) at:
  single-sequence requests at concurrency 1, 16 and 64, and 32-sequence
  requests at concurrency 4, as ``/v1`` JSON (and V2 binary for the latter).

Then the costly requests of issue 12 (``costly.py``: the small requests that
used to cost gigabytes or seconds, and cases at the edge of the limits), one at
a time against a fresh server: each one's status, time and the server's peak
RSS, and the RSS once it is answered (memory given back).

Every row reports requests/s, sequences/s, p50/p99 latency, the fractions of
the two baselines' sequences/s, and the server's peak resident memory (all worker
processes). The access log is off (``LSTM_SERVE_LOG_LEVEL=warning``), as an
operator would run a service at thousands of requests per second; ``--log-level
info`` measures it on.

    python -m service.loadtest.benchmark --seconds 5 --json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.core.contract import ModelMetadata
from service.loadtest import LoadResult, LoadSpec, run_load
from service.loadtest.budget import stage_costs
from service.loadtest.costly import report_costly, run_costly
from service.loadtest.process import PeakRss, ServerProcess, tree_cpu_s
from service.settings import DEFAULT_REPOSITORY

MODEL = "basic_motions"


@dataclass(frozen=True)
class Point:
    label: str
    protocol: str
    batch: int
    concurrency: int
    overload: float | None = None
    """Open loop at this multiple of the previous point's requests/s, instead of closed."""
    warmup_s: float = 1.0


@dataclass(frozen=True)
class Row:
    """One measured point: the load's figures, the server's peak RSS and CPU per request."""

    point: Point
    result: LoadResult
    rss_mib: float
    cpu_us_per_request: float


POINTS = (
    Point("1 seq/request, 1 client", "v1", 1, 1),
    Point("1 seq/request, 16 clients", "v1", 1, 16),
    Point("1 seq/request, 64 clients", "v1", 1, 64),
    Point("32 seq/request, 4 clients", "v1", 32, 4),
    Point("32 seq/request, 4 clients, V2 binary", "v2-binary", 32, 4),
)
# With batching on, overload follows: three times what the last point achieved,
# offered at a fixed rate whatever the answers, then one client right after.
OVERLOAD = (
    Point("overload: 3x that rate, open loop", "v2-binary", 32, 0, overload=3.0),
    Point("right after: 32 seq/request, 1 client", "v2-binary", 32, 1, warmup_s=0.0),
)


def raw_baseline(
    version_dir: Path, batch: int, steps: int, seconds: float, threads: int = 1
) -> dict[str, float]:
    """Sequences/s and per-call latency of onnxruntime alone, back to back.

    ``threads`` intra-op threads; 0 is onnxruntime's default (one per core).
    """
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
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
        feeds[names.h] = feeds[names.c] = np.zeros(meta.state_shape(i, batch), np.float32)
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


def run_points(
    env: dict[str, str], steps: int, seconds: float, repository: Path, points: tuple[Point, ...]
) -> list[Row]:
    server = ServerProcess(repository, env)
    try:
        server.wait_ready(timeout=120.0)
        return _measure(server, steps, seconds, points)
    finally:
        server.stop(timeout=60.0)


def _measure(
    server: ServerProcess, steps: int, seconds: float, points: tuple[Point, ...]
) -> list[Row]:
    with PeakRss(server.process.pid, every_s=0.1) as memory:
        rows: list[Row] = []
        for point in points:
            rate = None
            if point.overload is not None:
                rate = point.overload * rows[-1].result.requests_per_s
            spec = LoadSpec(
                url=server.url,
                model=MODEL,
                protocol=point.protocol,  # type: ignore[arg-type]
                batch=point.batch,
                timesteps=steps,
                concurrency=max(point.concurrency, 1),
                rate=rate,
                max_in_flight=4096,  # the server, not the client, must shed the excess
                duration_s=seconds,
                warmup_s=0.0,
            )
            if point.warmup_s:  # apart, so that the CPU measured below is the point's own
                run_load(replace(spec, duration_s=point.warmup_s))
            cpu_before = tree_cpu_s(server.process.pid)
            result = run_load(spec)
            cpu_s = tree_cpu_s(server.process.pid) - cpu_before
            answered = sum((result.ok, *result.errors.values()))
            rows.append(Row(point, result, memory.peak, cpu_s / max(answered, 1) * 1e6))
            print(f"  {point.label}: {result.requests_per_s:.0f} req/s", file=sys.stderr)
        return rows


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


def report(
    raw: dict[str, float],
    machine: dict[str, Any],
    runs: dict[str, list[Row]],
) -> str:
    """The table: every figure as a fraction of the machine (and of one thread)."""
    one = raw["sequences_per_s"]
    limit = machine["sequences_per_s"]
    lines = [
        f"{'service':<13}{'load':<40}{'req/s':>8}{'seq/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'x mach':>7}{'x 1thr':>7}{'RSS MiB':>9}  errors",
        f"{'raw ORT':<13}{'32 seq/call, all cores (the limit)':<40}{'':>8}{limit:>9.0f}"
        f"{'':>8}{'':>8}{1.0:>7.2f}{limit / one:>7.2f}{'':>9}{'':>8}",
        f"{'raw ORT':<13}{'32 seq/call, 1 thread, in-process':<40}{'':>8}{one:>9.0f}"
        f"{raw['p50_ms']:>8.2f}{raw['p99_ms']:>8.2f}{one / limit:>7.2f}{1.0:>7.2f}{'':>9}{'':>8}",
    ]
    for name, rows in runs.items():
        for row in rows:
            point, r, rss = row.point, row.result, row.rss_mib
            lat = r.latency_ms
            errors = ",".join(f"{n} {code}" for code, n in r.errors.items()) or "0"
            lines.append(
                f"{name:<13}{point.label:<40}{r.requests_per_s:>8.0f}{r.sequences_per_s:>9.0f}"
                f"{lat['p50']:>8.2f}{lat['p99']:>8.2f}{r.sequences_per_s / limit:>7.2f}"
                f"{r.sequences_per_s / one:>7.2f}{rss:>9.0f}  {errors}"
            )
    return "\n".join(lines)


def budget_report(rows: list[Row], version_dir: Path, steps: int, workers: int) -> str:
    """Each closed-loop point's CPU per request, split into the steps of ``budget.py``.

    The server's figure is measured (process tree CPU over the point / requests);
    the steps are timed in this process for the same body; what is left is the
    HTTP server, the event loop and the ASGI stack. ``merge_with`` (requests per
    call) is estimated as the clients per worker, up to a full batch of 32.
    """
    steps_shown = ("parse", "validate", "decode", "merge", "session.run", "encode")
    lines = [
        f"{'load':<40}{'CPU µs':>8}"
        + "".join(f"{name:>12}" for name in steps_shown)
        + f"{'server, loop, ASGI':>20}"
    ]
    for row in rows:
        point = row.point
        if point.overload is not None or point.concurrency < 1:
            continue
        merge_with = max(1, min(point.concurrency // workers, 32 // point.batch))
        costs = stage_costs(version_dir, point.protocol, point.batch, steps, merge_with)  # type: ignore[arg-type]
        rest = row.cpu_us_per_request - sum(costs.values())
        lines.append(
            f"{point.label:<40}{row.cpu_us_per_request:>8.0f}"
            + "".join(f"{costs[name]:>12.1f}" for name in steps_shown)
            + f"{rest:>20.0f}"
        )
    return "\n".join(lines)


def plot(runs: dict[str, list[Row]], path: Path) -> None:
    """p50 and p99 against achieved sequences/s for the single-sequence sweep, off vs on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for (name, rows), colour in zip(runs.items(), ("tab:red", "tab:blue"), strict=False):
        sweep = [
            (w.point, w.result) for w in rows if w.point.batch == 1 and w.point.overload is None
        ]
        x = [r.sequences_per_s for _, r in sweep]
        for pct, style in (("p50", "o-"), ("p99", "^--")):
            ax.plot(x, [r.latency_ms[pct] for _, r in sweep], style, color=colour,
                    label=f"{name}: {pct}")  # fmt: skip
        for p, r in sweep:
            ax.annotate(f"c={p.concurrency}", (r.sequences_per_s, r.latency_ms["p99"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("achieved throughput (sequences/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{MODEL}, single-sequence /v1 requests: latency vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service.loadtest.benchmark", description=__doc__
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per point")
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--log-level", default="warning", choices=["info", "warning"])
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--plot", type=Path, help="write the latency/throughput PNG here")
    parser.add_argument("--no-costly", action="store_true", help="skip issue 12's cases")
    args = parser.parse_args(argv)

    print("raw onnxruntime ...", file=sys.stderr)
    version_dir = args.repository / MODEL / "1"
    raw = raw_baseline(version_dir, 32, args.timesteps, args.seconds)
    print("the machine's limit (all cores) ...", file=sys.stderr)
    machine = machine_limit(version_dir, 32, args.timesteps, args.seconds, args.workers)
    env = {
        "LSTM_SERVE_WORKERS": str(args.workers),
        "LSTM_SERVE_INFERENCE_THREADS": "1",
        "LSTM_SERVE_INTRA_OP_THREADS": "1",
        "LSTM_SERVE_LOG_LEVEL": args.log_level,
    }
    runs: dict[str, list[Row]] = {}
    for name, batching, points in (
        ("batching off", "false", POINTS),
        ("batching on", "true", POINTS + OVERLOAD),
    ):
        print(f"{name} ...", file=sys.stderr)
        runs[name] = run_points(
            {**env, "LSTM_SERVE_DYNAMIC_BATCHING": batching},
            args.timesteps,
            args.seconds,
            args.repository,
            points,
        )
    print(
        f"\n{MODEL}, T={args.timesteps}, {args.workers} uvicorn workers x 1 onnxruntime "
        f"thread, {os.cpu_count()} cores shared with the client, {args.seconds:g} s per point\n"
    )
    print(report(raw, machine, runs))
    print("\nCPU per request (batching on), and where it goes (µs):\n")
    print(budget_report(runs["batching on"], version_dir, args.timesteps, args.workers))
    costly: list[dict[str, Any]] = []
    if not args.no_costly:
        print("costly requests ...", file=sys.stderr)
        costly = run_costly({**env, "LSTM_SERVE_WORKERS": "1"}, args.repository)
        print("\n" + report_costly(costly))
    if args.json:
        payload: dict[str, Any] = {
            "raw": raw,
            "machine": machine,
            "settings": {**vars(args), "json": str(args.json), "plot": str(args.plot),
                         "repository": str(args.repository)},
            "runs": {
                name: [
                    {**w.result.to_dict(), "label": w.point.label, "server_peak_rss_mib": w.rss_mib,
                     "server_cpu_us_per_request": w.cpu_us_per_request,
                     "fraction_of_raw": w.result.sequences_per_s / raw["sequences_per_s"],
                     "fraction_of_machine": w.result.sequences_per_s / machine["sequences_per_s"]}
                    for w in rows
                ]
                for name, rows in runs.items()
            },
            "costly": costly,
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
