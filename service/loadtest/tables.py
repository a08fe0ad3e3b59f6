"""The benchmark's tables: its points and rows, and every table it prints.

``benchmark.py`` measures; this module only formats what it measured: the load
rows as fractions of the machine's limit, the streams, and issue 27's targets
against the figures of the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.loadtest import LoadResult


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
    cores: float
    """The server's CPU seconds per second of the point: how many cores it kept busy."""


@dataclass(frozen=True)
class StreamRow:
    """Many sequences at once, one timestep per message (``streams.py``)."""

    mode: str
    result: dict[str, Any]
    cpu_us_per_step: float
    cores: float


STREAMS = 1000
"""Concurrent sequences of the streams rows."""
# Issue 19's figures for KServe 0.21 and MLServer 1.7 (adaptive batching) on this
# machine kind, wrk as the client, as fractions of the same all-core limit (the
# lower end of its ranges, whose base is the larger of the two limits, as here).
OTHERS = {
    "1 seq/request, 16 clients": {"KServe": 0.03, "MLServer": 0.02},
    "32 seq/request, 4 clients": {"KServe": 0.18, "MLServer": 0.15},
}


@dataclass(frozen=True)
class Target:
    """One of issue 27's goals: a row's figure against a bound."""

    label: str
    row: str
    figure: str  # "mach" (fraction of the limit), "floor" (of the floor's req/s), "p99",
    # "p50", or "streams" (x the 16-client request rate)
    bound: float
    at_least: bool = True


SINGLE = "1 seq/request, 16 clients"
TARGETS = (
    Target("/v1, 1 seq/request, 16 clients: x the floor's req/s", SINGLE, "floor", 0.7),
    Target("/v1, 1 seq/request, 16 clients: x mach", SINGLE, "mach", 0.22),
    Target("/v1, 1 seq/request, 16 clients: p99 ms", SINGLE, "p99", 5.0, at_least=False),
    Target("/v1, 1 seq/request, 1 client: p50 ms", "1 seq/request, 1 client", "p50", 0.3,
           at_least=False),
    Target("V2 binary, 32 seq/request, 4 clients: x mach", "32 seq/request, 4 clients, V2 binary",
           "mach", 0.85),
    Target("/v1 JSON, 32 seq/request, 4 clients: x mach", "32 seq/request, 4 clients", "mach",
           0.7),
    Target("WebSocket streams: steps/s over 1-seq req/s (16 clients)", "ws", "streams", 3.0),
    Target("/v1 server-held streams: the same ratio", "v1", "streams", 1.0),
)  # fmt: skip


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
        f"{'x mach':>7}{'x 1thr':>7}{'cores':>6}{'RSS MiB':>9}  errors",
        f"{'raw ORT':<13}{'32 seq/call, all cores (the limit)':<40}{'':>8}{limit:>9.0f}"
        f"{'':>8}{'':>8}{1.0:>7.2f}{limit / one:>7.2f}",
        f"{'raw ORT':<13}{'32 seq/call, 1 thread, in-process':<40}{'':>8}{one:>9.0f}"
        f"{raw['p50_ms']:>8.2f}{raw['p99_ms']:>8.2f}{one / limit:>7.2f}{1.0:>7.2f}",
    ]
    for name, rows in runs.items():
        for row in rows:
            point, r, rss = row.point, row.result, row.rss_mib
            lat = r.latency_ms
            errors = ",".join(f"{n} {code}" for code, n in r.errors.items()) or "0"
            lines.append(
                f"{name:<13}{point.label:<40}{r.requests_per_s:>8.0f}{r.sequences_per_s:>9.0f}"
                f"{lat['p50']:>8.2f}{lat['p99']:>8.2f}{r.sequences_per_s / limit:>7.2f}"
                f"{r.sequences_per_s / one:>7.2f}{row.cores:>6.2f}{rss:>9.0f}  {errors}"
            )
    return "\n".join(lines)


def floor_report(service: list[Row], floor: list[Row]) -> str:
    """Each single-sequence point of the service against the same point on the floor:
    req/s as a fraction of it, and the server CPU per request beyond it."""
    lines = [
        f"{'load':<32}{'floor req/s':>12}{'service':>10}{'x floor':>9}"
        f"{'floor CPU µs':>14}{'service':>9}{'beyond':>8}"
    ]
    by_label = {row.point.label: row for row in service}
    for base in floor:
        own = by_label.get(base.point.label)
        if own is None:
            continue
        lines.append(
            f"{base.point.label:<32}{base.result.requests_per_s:>12.0f}"
            f"{own.result.requests_per_s:>10.0f}"
            f"{own.result.requests_per_s / max(base.result.requests_per_s, 1e-9):>9.2f}"
            f"{base.cpu_us_per_request:>14.0f}{own.cpu_us_per_request:>9.0f}"
            f"{own.cpu_us_per_request - base.cpu_us_per_request:>8.0f}"
        )
    return "\n".join(lines)


def streams_report(rows: list[StreamRow], single: Row | None) -> str:
    """Steps/s of the streams, and as a multiple of single-sequence requests/s."""
    rate = single.result.requests_per_s if single else float("nan")
    lines = [
        f"{'streams':<56}{'steps/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'x req/s':>8}"
        f"{'CPU µs':>8}{'cores':>6}  errors"
    ]
    for row in rows:
        r = row.result
        how = "WebSocket" if row.mode == "ws" else "/v1 server-held state"
        if row.mode == "v1" and "store" in r:  # which store, and how many workers share it
            how += f" ({r['workers']}w, {r['store']})"
        label = f"{r['streams']:,} streams, 1 step/message, {how}"
        lines.append(
            f"{label:<56}{r['steps_per_s']:>9.0f}"
            f"{r['p50_ms']:>8.2f}{r['p99_ms']:>8.2f}{r['steps_per_s'] / rate:>8.2f}"
            f"{row.cpu_us_per_step:>8.0f}{row.cores:>6.2f}  {r['errors'] or 0}"
        )
    label = single.point.label if single else "?"
    lines.append(f"(x req/s: over the {rate:.0f} req/s of '{label}'; CPU µs per step)")
    return "\n".join(lines)


def targets_report(
    rows: list[Row], streams: list[StreamRow], limit: float, floor: list[Row]
) -> tuple[str, list[dict[str, Any]]]:
    """Issue 27's goals, each with the figure measured in this run, and 3x the others'."""
    by_label = {row.point.label: row for row in rows}
    floors = {row.point.label: row.result.requests_per_s for row in floor}
    single = by_label.get(SINGLE)
    by_mode = {row.mode: row for row in streams}
    lines = [f"{'target':<64}{'measured':>9}{'goal':>8}  met"]
    found: list[dict[str, Any]] = []
    for target in TARGETS:
        value = float("nan")
        if target.figure == "streams" and target.row in by_mode and single is not None:
            value = by_mode[target.row].result["steps_per_s"] / single.result.requests_per_s
        elif (row := by_label.get(target.row)) is not None:
            r = row.result
            if target.figure in ("p99", "p50"):
                value = r.latency_ms[target.figure]
            elif target.figure == "floor":
                value = r.requests_per_s / floors.get(target.row, float("nan"))
            else:
                value = r.sequences_per_s / limit
        met = value >= target.bound if target.at_least else value <= target.bound
        goal = f"{'>=' if target.at_least else '<='}{target.bound:g}"
        lines.append(f"{target.label:<64}{value:>9.2f}{goal:>8}  {'yes' if met else 'NO'}")
        found.append({"target": target.label, "measured": value, "goal": target.bound,
                      "at_least": target.at_least, "met": met})  # fmt: skip
    for label, others in OTHERS.items():
        if (row := by_label.get(label)) is None:
            continue
        ours = row.result.sequences_per_s / limit
        for other, theirs in others.items():
            met = ours >= 3 * theirs
            lines.append(
                f"{f'{label}: x mach against 3 x {other} ({theirs:.2f})':<64}{ours:>9.2f}"
                f"{f'>={3 * theirs:.2f}':>8}  {'yes' if met else 'NO'}"
            )
            found.append({"target": f"{label} >= 3 x {other}", "measured": ours,
                          "goal": 3 * theirs, "at_least": True, "met": met})  # fmt: skip
    return "\n".join(lines), found
