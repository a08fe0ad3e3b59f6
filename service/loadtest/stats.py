"""Turn recorded outcomes into a ``LoadResult`` and print it as a table.

Latencies are kept as raw seconds during the run (one list append per
request) and reduced to percentiles once at the end, so the hot loop never
sorts or bins anything.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from service.loadtest.spec import LoadSpec

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0}
LATENCY_KEYS = ("p50", "p90", "p99", "max", "mean")


@dataclass
class Recorder:
    """What the measured phase produced; only requests issued inside it are recorded."""

    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    ok: int = 0
    dropped: int = 0
    first_start: float = math.inf
    last_end: float = -math.inf
    lag_sum_s: float = 0.0
    lag_max_s: float = 0.0

    def record(self, outcome: int | str, started: float, finished: float) -> None:
        """One finished request: a 2xx counts its latency, anything else its error key."""
        if isinstance(outcome, int) and 200 <= outcome < 300:
            self.ok += 1
            self.latencies_s.append(finished - started)
        else:
            self.errors[str(outcome)] += 1
        self.first_start = min(self.first_start, started)
        self.last_end = max(self.last_end, finished)

    def lag(self, started: float, sent: float) -> None:
        """How late the client wrote a request after its scheduled time (open loop)."""
        lag = sent - started
        self.lag_sum_s += lag
        if lag > self.lag_max_s:
            self.lag_max_s = lag

    @property
    def requests(self) -> int:
        return self.ok + sum(self.errors.values())


@dataclass
class LoadResult:
    """The figures of one run; ``latency_ms`` is over successful requests only."""

    spec: LoadSpec
    requests: int
    ok: int
    errors: dict[str, int]
    dropped: int
    elapsed_s: float
    requests_per_s: float
    sequences_per_s: float
    latency_ms: dict[str, float]
    client_cpu_s: float
    sequences: int = 0
    features: int = 0
    client_cpu_us_per_request: float = 0.0
    event_loop: str = "asyncio"
    # Open loop: how late requests left the client after their scheduled time (the
    # timer resolution is ~1 ms); this part of ``latency_ms`` is the client's, not the server's.
    send_lag_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN latencies (no successful request) become ``None``."""
        data = asdict(self)
        data["latency_ms"] = {
            key: None if math.isnan(value) else value for key, value in self.latency_ms.items()
        }
        return data


def latency_summary(latencies_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in ms; NaN when there is nothing to summarise."""
    if not latencies_s:
        return dict.fromkeys(LATENCY_KEYS, math.nan)
    ms = np.asarray(latencies_s, dtype=np.float64) * 1000.0
    summary = {name: float(np.percentile(ms, q)) for name, q in PERCENTILES.items()}
    summary["max"] = float(ms.max())
    summary["mean"] = float(ms.mean())
    return summary


def summarise(
    spec: LoadSpec,
    recorder: Recorder,
    *,
    measure_start: float,
    client_cpu_s: float,
    features: int,
    event_loop: str,
) -> LoadResult:
    """Rates over the measured phase: from its start to the last recorded completion."""
    requests = recorder.requests
    elapsed = max(recorder.last_end - measure_start, 0.0) if requests else 0.0
    per_s = requests / elapsed if elapsed > 0 else 0.0
    return LoadResult(
        spec=spec,
        requests=requests,
        ok=recorder.ok,
        errors=dict(sorted(recorder.errors.items())),
        dropped=recorder.dropped,
        elapsed_s=elapsed,
        requests_per_s=per_s,
        sequences_per_s=recorder.ok * spec.batch / elapsed if elapsed > 0 else 0.0,
        latency_ms=latency_summary(recorder.latencies_s),
        client_cpu_s=client_cpu_s,
        sequences=recorder.ok * spec.batch,
        features=features,
        client_cpu_us_per_request=client_cpu_s / requests * 1e6 if requests else 0.0,
        event_loop=event_loop,
        send_lag_ms={
            "mean": recorder.lag_sum_s / requests * 1000 if requests else 0.0,
            "max": recorder.lag_max_s * 1000,
        },
    )


def _mode(spec: LoadSpec) -> str:
    if spec.rate is not None:
        return f"open loop {spec.rate:g} req/s"
    return f"closed loop x{spec.concurrency}"


def _errors(result: LoadResult) -> str:
    return ", ".join(f"{key}: {count}" for key, count in result.errors.items()) or "none"


def format_result(result: LoadResult) -> str:
    """A readable block for one run."""
    spec = result.spec
    lat = result.latency_ms
    rows = [
        ("target", f"{spec.url} {spec.protocol} model={spec.model}"),
        ("shape", f"batch {spec.batch} x {spec.timesteps} steps x {result.features} features"),
        ("mode", f"{_mode(spec)}, {result.elapsed_s:.2f} s measured"),
        ("requests", f"{result.requests} ({result.ok} ok, {result.dropped} dropped)"),
        ("throughput", f"{result.requests_per_s:,.1f} req/s, {result.sequences_per_s:,.1f} seq/s"),
        ("latency ms", "  ".join(f"{key} {lat[key]:.2f}" for key in LATENCY_KEYS)),
        ("errors", _errors(result)),
        (
            "client cpu",
            f"{result.client_cpu_s:.2f} s, {result.client_cpu_us_per_request:.1f} us/request"
            f" ({result.event_loop})",
        ),
    ]
    if spec.rate is not None:
        lag = result.send_lag_ms
        rows.append(("send lag", f"mean {lag['mean']:.2f} ms, max {lag['max']:.2f} ms (client)"))
    return "\n".join(f"{name:<12}{value}" for name, value in rows)


def format_sweep(results: list[LoadResult]) -> str:
    """One line per sweep point."""
    header = (
        f"{'point':>10} {'req/s':>10} {'seq/s':>10} {'p50':>8} {'p90':>8} {'p99':>8}"
        f" {'max':>8} {'ok':>8} {'dropped':>8}  errors"
    )
    lines = [header + "   (latency in ms)"]
    for r in results:
        point = f"{r.spec.rate:g}/s" if r.spec.rate is not None else f"c={r.spec.concurrency}"
        lat = r.latency_ms
        lines.append(
            f"{point:>10} {r.requests_per_s:>10.1f} {r.sequences_per_s:>10.1f}"
            f" {lat['p50']:>8.2f} {lat['p90']:>8.2f} {lat['p99']:>8.2f} {lat['max']:>8.2f}"
            f" {r.ok:>8} {r.dropped:>8}  {_errors(r)}"
        )
    return "\n".join(lines)
