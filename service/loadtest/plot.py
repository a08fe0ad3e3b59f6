"""A sweep as a PNG: latency percentiles against the throughput actually achieved.

Plotting against achieved (not offered) throughput shows the knee honestly: an
overloaded server's points bunch up at its ceiling while latency climbs.
matplotlib is imported inside the plotting function (as in the benchmark's),
with the Agg backend, so neither the client nor the server needs a display or
pays matplotlib's import time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from service.loadtest.stats import LoadResult

XAxis = Literal["requests", "sequences"]
SERIES = (("p50", "o-"), ("p90", "s-"), ("p99", "^-"))


def _point_label(result: LoadResult) -> str:
    spec = result.spec
    return f"{spec.rate:g}/s" if spec.rate is not None else f"c={spec.concurrency}"


def _title(results: Sequence[LoadResult]) -> str:
    spec = results[0].spec
    loop = "open loop (offered rate)" if spec.rate is not None else "closed loop (connections)"
    return (
        f"{spec.model} over {spec.protocol}: batch {spec.batch} x {spec.timesteps} steps\n"
        f"{loop}, {spec.duration_s:g} s per point"
    )


def plot_sweep(results: Sequence[LoadResult], path: Path, x_axis: XAxis = "requests") -> Path:
    """Write the sweep's latency/throughput curve to ``path`` (PNG) and return it."""
    if not results:
        raise ValueError("nothing to plot: the sweep has no results")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.requests_per_s if x_axis == "requests" else r.sequences_per_s for r in results]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    try:
        for key, style in SERIES:
            ax.plot(xs, [r.latency_ms[key] for r in results], style, label=key)
        for x, r in zip(xs, results, strict=True):
            y = r.latency_ms["p50"]
            if not math.isnan(y):
                ax.annotate(
                    _point_label(r), (x, y), textcoords="offset points", xytext=(4, -12), fontsize=8
                )
        finite = [v for r in results for k, _ in SERIES if not math.isnan(v := r.latency_ms[k])]
        if finite and min(finite) > 0 and max(finite) / min(finite) > 20:
            ax.set_yscale("log")
        unit = "requests/s" if x_axis == "requests" else "sequences/s"
        ax.set_xlabel(f"achieved throughput ({unit})")
        ax.set_ylabel("latency (ms)")
        ax.set_title(_title(results), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="latency percentile")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
