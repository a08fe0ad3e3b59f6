"""The serving benchmark, in one run: ``python -m service.loadtest.benchmark``.

Not a test: it prints figures, as ratios against a baseline measured minutes
apart on the same machine, because absolute numbers on a shared box mean little.

- **The machine's limit**: the default model in plain onnxruntime, batches of 32
  sequences back to back, no HTTP, no JSON, no queueing, using all the cores the
  service uses: as many one-thread processes as the service has workers, and one
  session with onnxruntime's default threads; the larger of the two. Every row's
  ``x mach`` divides by it; ``x 1thr`` divides by one one-thread session (a
  core's worth), the figure earlier versions of this table used.
- **The service** as shipped (``python -m service``: uvicorn, ``--workers``
  processes, one onnxruntime thread each, dynamic batching on), driven by the
  project's own client (``run_load``, a separate process's worth of asyncio on the
  same cores) at:
  single-sequence requests at concurrency 1, 16 and 64, and 32-sequence requests
  at 1, 2 and 4 keep-alive connections, as ``/v1`` JSON and as V2 binary; then an
  overload at three times the last rate. ``cores`` is the server's CPU seconds per
  second of the point: how much of the machine it kept busy. ``--batching-off``
  measures the same points with dynamic batching off first.
- **Streams**: ``--streams`` (1,000) sequences at once, one timestep per message,
  over the WebSocket and over ``/v1`` server-held state (``streams.py``, each chunk
  with its ``sequence_offset``): steps/s, p50/p99 per step, and steps/s over the
  single-sequence request rate at 16 clients. With more than one worker the ``/v1``
  row needs the shared store: ``--redis`` starts a loopback ``redis-server`` for it
  (no persistence, stopped after), ``--state-url`` names one; without either that
  row is measured with one worker (the in-process store) and says so.
- **The CPU budget** (``budget.py``): the single-sequence points at 1 and 16 clients
  and the 32-sequence ones at 4, again on a server charging its CPU to each step of
  the path (``LSTM_SERVE_CPU_BUDGET``); and **issue 27's targets**,
  each with the figure measured in this run (and 3x KServe's and MLServer's
  fractions of the same limit as issue 19 measured them, ``OTHERS``).

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
import asyncio
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from service.loadtest import LoadSpec, run_load
from service.loadtest.budget import budget_report, run_budget
from service.loadtest.costly import report_costly, run_costly
from service.loadtest.floor import floor_server
from service.loadtest.limit import machine_limit, metadata_of, raw_baseline
from service.loadtest.process import (
    PeakRss,
    ServerProcess,
    free_port,
    loopback_redis,
    tree_cpu_s,
)
from service.loadtest.streams import Mode, drive
from service.loadtest.tables import (
    STREAMS,
    Point,
    Row,
    StreamRow,
    floor_report,
    report,
    streams_report,
    targets_report,
)
from service.settings import DEFAULT_REPOSITORY

MODEL = "basic_motions"


POINTS = (
    Point("1 seq/request, 1 client", "v1", 1, 1),
    Point("1 seq/request, 16 clients", "v1", 1, 16),
    Point("1 seq/request, 64 clients", "v1", 1, 64),
    Point("32 seq/request, 1 client", "v1", 32, 1),
    Point("32 seq/request, 2 clients", "v1", 32, 2),
    Point("32 seq/request, 4 clients", "v1", 32, 4),
    Point("32 seq/request, 1 client, V2 binary", "v2-binary", 32, 1),
    Point("32 seq/request, 2 clients, V2 binary", "v2-binary", 32, 2),
    Point("32 seq/request, 4 clients, V2 binary", "v2-binary", 32, 4),
)
# With batching on, overload follows: three times what the last point achieved,
# offered at a fixed rate whatever the answers, then one client right after.
OVERLOAD = (
    Point("overload: 3x that rate, open loop", "v2-binary", 32, 0, overload=3.0),
    Point("right after: 32 seq/request, 1 client", "v2-binary", 32, 1, warmup_s=0.0),
)


def run_points(
    env: dict[str, str], steps: int, seconds: float, repository: Path, points: tuple[Point, ...]
) -> list[Row]:
    server = ServerProcess(repository, env)
    try:
        server.wait_ready(timeout=120.0)
        return _measure(server, steps, seconds, points)
    finally:
        server.stop(timeout=60.0)


def run_streams(
    env: dict[str, str],
    seconds: float,
    repository: Path,
    streams: int,
    state_url: str | None = None,
) -> list[StreamRow]:
    """The streams on a server of their own, with room for every one of them: a worker
    may take them all (the kernel's hash), each with a step queued. The points above
    keep the default queue, so their overload is the one users get.

    ``/v1`` server-held state with several workers needs the shared store
    (``state_url``); without one, that row gets a one-worker server of its own."""
    room = str(max(256, streams))
    # Room for every stream, all from this one client address (the per-address share
    # would otherwise turn most of them away, as it is meant to).
    env = {
        **env,
        "LSTM_SERVE_MAX_WEBSOCKETS": room,
        "LSTM_SERVE_MAX_QUEUE_SIZE": room,
        "LSTM_SERVE_MAX_CONNECTIONS_PER_ADDRESS": room,
    }
    if state_url:
        env["LSTM_SERVE_STATE_URL"] = state_url
    features = metadata_of(repository / MODEL / "1").num_features
    shared = bool(state_url) or env.get("LSTM_SERVE_WORKERS", "1") == "1"
    plan: list[tuple[dict[str, str], tuple[Mode, ...]]] = [
        (env, ("ws", "v1") if shared else ("ws",))
    ]
    if not shared:
        print("  /v1 server-held: no --redis/--state-url, so 1 worker", file=sys.stderr)
        plan.append(({**env, "LSTM_SERVE_WORKERS": "1"}, ("v1",)))
    rows: list[StreamRow] = []
    for server_env, modes in plan:
        server = ServerProcess(repository, server_env)
        try:
            server.wait_ready(timeout=120.0)
            rows += _measure_streams(server, features, seconds, streams, modes)
        finally:
            server.stop(timeout=60.0)
        for row in rows[-len(modes) :]:
            row.result["workers"] = int(server_env.get("LSTM_SERVE_WORKERS", "1"))
            row.result["store"] = "redis" if state_url else "in-process"
    return rows


def _measure_streams(
    server: ServerProcess,
    features: int,
    seconds: float,
    streams: int,
    modes: tuple[Mode, ...] = ("ws", "v1"),
) -> list[StreamRow]:
    """``streams`` sequences over the WebSocket, then over ``/v1`` server-held state."""
    rows: list[StreamRow] = []
    for mode in modes:
        warm = drive(server.url, mode, MODEL, features, min(streams, 64), 1.0, offsets=True)
        asyncio.run(warm)
        cpu_before, started = tree_cpu_s(server.process.pid), time.monotonic()
        result = asyncio.run(
            drive(server.url, mode, MODEL, features, streams, seconds, offsets=True)
        )
        elapsed = time.monotonic() - started
        cpu_s = tree_cpu_s(server.process.pid) - cpu_before
        rows.append(StreamRow(mode, result, cpu_s / max(result["steps"], 1) * 1e6, cpu_s / elapsed))
        print(f"  {streams} streams, {mode}: {result['steps_per_s']:.0f} steps/s", file=sys.stderr)
    return rows


FLOOR_POINTS = tuple(p for p in POINTS if p.batch == 1)
BUDGET_POINTS = tuple(p for p in POINTS if p.concurrency in (1, 16) and p.batch == 1) + tuple(
    p for p in POINTS if p.batch == 32 and p.concurrency == 4
)


def run_floor(workers: int, steps: int, seconds: float) -> list[Row]:
    """The single-sequence points against FastAPI returning a constant (``floor.py``)."""
    port = free_port()
    with floor_server(port, workers) as process:
        target = _Target(f"http://127.0.0.1:{port}", process)
        return _measure(target, steps, seconds, FLOOR_POINTS, features=6)  # type: ignore[arg-type]


class _Target(NamedTuple):
    """What ``_measure`` needs of a server: its URL and its process."""

    url: str
    process: Any


def _measure(
    server: ServerProcess,
    steps: int,
    seconds: float,
    points: tuple[Point, ...],
    features: int | None = None,
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
                features=features,
                duration_s=seconds,
                warmup_s=0.0,
            )
            if point.warmup_s:  # apart, so that the CPU measured below is the point's own
                run_load(replace(spec, duration_s=point.warmup_s))
            cpu_before = tree_cpu_s(server.process.pid)
            result = run_load(spec)
            cpu_s = tree_cpu_s(server.process.pid) - cpu_before
            answered = sum((result.ok, *result.errors.values()))
            per_request = cpu_s / max(answered, 1) * 1e6
            rows.append(Row(point, result, memory.peak, per_request, cpu_s / result.elapsed_s))
            print(f"  {point.label}: {result.requests_per_s:.0f} req/s", file=sys.stderr)
        return rows


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
    parser.add_argument("--streams", type=int, default=STREAMS, help="0: no streams rows")
    parser.add_argument(
        "--batching-off", action="store_true", help="also measure with dynamic batching off"
    )
    store = parser.add_mutually_exclusive_group()
    store.add_argument(
        "--redis",
        action="store_true",
        help="streams: start a loopback redis-server as the sequence store (/v1 with workers)",
    )
    store.add_argument("--state-url", help="streams: this LSTM_SERVE_STATE_URL (redis://...)")
    args = parser.parse_args(argv)

    print("raw onnxruntime ...", file=sys.stderr)
    version_dir = args.repository / MODEL / "1"
    raw = raw_baseline(version_dir, 32, args.timesteps, args.seconds)
    print("the machine's limit (all cores) ...", file=sys.stderr)
    machine = machine_limit(version_dir, 32, args.timesteps, args.seconds, args.workers)
    # The service as shipped: dynamic batching on.
    env = {"LSTM_SERVE_WORKERS": str(args.workers), "LSTM_SERVE_LOG_LEVEL": args.log_level}
    runs: dict[str, list[Row]] = {}
    plan: list[tuple[str, str, tuple[Point, ...]]] = [("batching on", "true", POINTS + OVERLOAD)]
    if args.batching_off:
        plan.insert(0, ("batching off", "false", POINTS))
    for name, batching, points in plan:
        print(f"{name} ...", file=sys.stderr)
        runs[name] = run_points(
            {**env, "LSTM_SERVE_DYNAMIC_BATCHING": batching},
            args.timesteps,
            args.seconds,
            args.repository,
            points,
        )
    print("the CPU budget (LSTM_SERVE_CPU_BUDGET) ...", file=sys.stderr)
    budgets = run_budget(env, args.repository, MODEL, args.timesteps, args.seconds, BUDGET_POINTS)
    streams: list[StreamRow] = []
    if args.streams:
        print("streams ...", file=sys.stderr)
        if args.redis:
            with loopback_redis() as url:
                streams = run_streams(env, args.seconds * 2, args.repository, args.streams, url)
        else:
            streams = run_streams(
                env, args.seconds * 2, args.repository, args.streams, args.state_url
            )
    print("the framework floor (FastAPI returning a constant) ...", file=sys.stderr)
    floor = run_floor(args.workers, args.timesteps, args.seconds)
    on = runs["batching on"]
    single = next((r for r in on if r.point.label == "1 seq/request, 16 clients"), None)
    print(
        f"\n{MODEL}, T={args.timesteps}, {args.workers} uvicorn workers x 1 onnxruntime "
        f"thread, {os.cpu_count()} cores shared with the client, {args.seconds:g} s per point\n"
    )
    print(report(raw, machine, runs))
    print("\nAgainst the framework floor (FastAPI returning a constant, same workers):\n")
    print(floor_report(on, floor))
    if streams:
        print("\n" + streams_report(streams, single))
    print("\nWhere a request's CPU goes, as the server charged it (µs a request):\n")
    plain = {row.point.label: row.cpu_us_per_request for row in on}
    print(budget_report(budgets, plain, {row.point.label: row.cpu_us_per_request for row in floor}))
    targets, met = targets_report(on, streams, machine["sequences_per_s"], floor)
    print("\nIssue 27's targets, against the limit and the floor measured above:\n")
    print(targets)
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
                     "server_cpu_us_per_request": w.cpu_us_per_request, "server_cores": w.cores,
                     "fraction_of_raw": w.result.sequences_per_s / raw["sequences_per_s"],
                     "fraction_of_machine": w.result.sequences_per_s / machine["sequences_per_s"]}
                    for w in rows
                ]
                for name, rows in runs.items()
            },
            "streams": [{**s.result, "server_cpu_us_per_step": s.cpu_us_per_step,
                         "server_cores": s.cores} for s in streams],
            "targets": met,
            "budget": [vars(b) for b in budgets],
            "costly": costly,
        }  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
