"""Where a request's CPU goes, as the server itself charged it (``core/cpu_budget.py``).

A server started with ``LSTM_SERVE_CPU_BUDGET=true`` charges every step of the
request path to its name, on the thread where it runs, and keeps each thread
kind's and the process's own CPU clock beside them (``lstm_cpu_budget_seconds_total``
on ``/metrics``, summed over the workers). ``measure_budget`` reads that counter
before and after a load point and divides by the requests answered:

- each step's µs per request, per thread kind (event loop, inference threads);
- each thread kind's own clock, and what no step claimed on it (**unattributed**:
  the event loop's own work in C, epoll, the sockets' reads and writes; the
  executor's queue and wake-ups);
- the process's clock, and what neither thread kind claimed (other threads).

The timers cost 3-14 % of a request's CPU; the benchmark reports the same point's
CPU with the budget off beside it.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from service.core.cpu_budget import FLUSH_S, INFERENCE, LOOP
from service.loadtest import LoadSpec, run_load
from service.loadtest.process import ServerProcess
from service.loadtest.tables import Point

TOTAL = "thread total"
PROCESS = "process"
_SAMPLE = re.compile(r"^lstm_cpu_budget_seconds_total\{(.*?)\} (\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[tuple[str, str], float]:
    """The budget counter's samples on ``/metrics``: (thread kind, step) -> seconds."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    samples: dict[tuple[str, str], float] = defaultdict(float)
    for labels, value in _SAMPLE.findall(text):
        found = dict(_LABEL.findall(labels))
        samples[(found["thread"], found["step"])] += float(value)
    return samples


@dataclass(frozen=True)
class Budget:
    """One point's CPU per request, step by step (µs)."""

    label: str
    requests: int
    steps: dict[str, dict[str, float]]
    """thread kind -> step -> µs per request (not the totals)."""
    totals: dict[str, float]
    """thread kind -> its own clock, µs per request; ``process`` the process's."""

    def unattributed(self, kind: str) -> float:
        return self.totals.get(kind, 0.0) - sum(self.steps.get(kind, {}).values())

    @property
    def other_threads(self) -> float:
        return (
            self.totals.get(PROCESS, 0.0)
            - self.totals.get(LOOP, 0.0)
            - self.totals.get(INFERENCE, 0.0)
        )

    @property
    def unattributed_total(self) -> float:
        return self.unattributed(LOOP) + self.unattributed(INFERENCE) + max(self.other_threads, 0)


def per_request(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], requests: int
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """The difference of two scrapes, in µs per request: (steps, totals)."""
    steps: dict[str, dict[str, float]] = defaultdict(dict)
    totals: dict[str, float] = {}
    for (kind, step), seconds in after.items():
        us = (seconds - before.get((kind, step), 0.0)) / max(requests, 1) * 1e6
        if step in (TOTAL, PROCESS):
            totals[PROCESS if step == PROCESS else kind] = us
        elif us > 0:
            steps[kind][step] = us
    return dict(steps), totals


def measure_budget(
    server: ServerProcess, model: str, steps: int, seconds: float, points: tuple[Point, ...]
) -> list[Budget]:
    """Each point's budget, on ``server`` (started with ``LSTM_SERVE_CPU_BUDGET=true``)."""
    budgets: list[Budget] = []
    for point in points:
        spec = LoadSpec(
            url=server.url,
            model=model,
            protocol=point.protocol,  # type: ignore[arg-type]
            batch=point.batch,
            timesteps=steps,
            concurrency=max(point.concurrency, 1),
            max_in_flight=4096,
            duration_s=seconds,
            warmup_s=0.0,
        )
        run_load(replace(spec, duration_s=max(point.warmup_s, 0.5)))
        time.sleep(2 * FLUSH_S)  # every worker has flushed the warm-up
        before = scrape(server.url)
        result = run_load(spec)
        time.sleep(2 * FLUSH_S)  # and the point
        after = scrape(server.url)
        answered = sum((result.ok, *result.errors.values()))
        charged, totals = per_request(before, after, answered)
        budgets.append(Budget(point.label, answered, charged, totals))
    return budgets


def run_budget(
    env: dict[str, str],
    repository: Path,
    model: str,
    steps: int,
    seconds: float,
    points: tuple[Point, ...],
) -> list[Budget]:
    """``measure_budget`` on a server of its own with the budget on."""
    server = ServerProcess(repository, {**env, "LSTM_SERVE_CPU_BUDGET": "true"})
    try:
        server.wait_ready(timeout=120.0)
        return measure_budget(server, model, steps, seconds, points)
    finally:
        server.stop(timeout=60.0)


_KINDS = (
    (LOOP, "the event loop", "its own work in C: epoll, socket reads and writes"),
    (INFERENCE, "the inference threads", "the executor's queue and wake-ups, the GIL"),
)


def budget_report(budgets: list[Budget], plain: dict[str, float], floor: dict[str, float]) -> str:
    """Each point's steps, largest first, under its thread kind, with the unattributed
    rest; ``plain`` is the same point's CPU per request with the budget off, ``floor``
    the framework floor's (FastAPI returning a constant), where measured."""
    lines: list[str] = []
    for budget in budgets:
        process = budget.totals.get(PROCESS, 0.0)
        run = budget.steps.get(INFERENCE, {}).get("session.run", 0.0)
        head = f"{budget.label}: {process:.0f} µs of CPU a request with the timers"
        if budget.label in plain:
            head += f" ({plain[budget.label]:.0f} without them)"
        head += f"; session.run {run:.0f} ({run / max(process, 1e-9):.0%})"
        if budget.label in floor:
            head += f"; the floor's whole request {floor[budget.label]:.0f}"
        lines.append(head)
        for kind, name, rest in _KINDS:
            lines.append(f"  {name:<58}{budget.totals.get(kind, 0.0):>8.1f}")
            for step, us in sorted(budget.steps.get(kind, {}).items(), key=lambda s: -s[1]):
                lines.append(f"    {step:<56}{us:>8.1f}")
            lines.append(f"    {'unattributed: ' + rest:<56}{budget.unattributed(kind):>8.1f}")
        lines.append(f"  {'other threads':<58}{budget.other_threads:>8.1f}")
        share = budget.unattributed_total / max(process, 1e-9)
        lines.append(
            f"  {'unattributed in all':<58}{budget.unattributed_total:>8.1f}  ({share:.0%})"
        )
        lines.append("")
    return "\n".join(lines).rstrip()
