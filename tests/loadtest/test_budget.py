"""The CPU budget: a real server with ``LSTM_SERVE_CPU_BUDGET`` charges its CPU to the
steps of the request path, and the charges add up against its own clocks."""

from __future__ import annotations

from pathlib import Path

import httpx

from service.core.cpu_budget import INFERENCE, LOOP
from service.loadtest.budget import PROCESS, measure_budget, scrape
from service.loadtest.process import ServerProcess, tree_cpu_s
from service.loadtest.tables import Point

LOOP_STEPS = {
    "http: parse (uvicorn, httptools), start the task",
    "http: request id, security, routing",
    "read body",
    "decode",
    "submit, wait, resume",
    "encode",
    "http: respond (headers, uvicorn's write)",
    "http: access log, metrics",
    "batcher: form batches, hand to a thread",
    "batcher: results to requests, next batch",
}
INFERENCE_STEPS = {"session.run", "merge", "split", "metrics", "hand-off to the event loop"}


def test_every_step_is_charged_and_the_charges_add_up(tiny_repository: Path) -> None:
    server = ServerProcess(
        tiny_repository, {"LSTM_SERVE_CPU_BUDGET": "true", "LSTM_SERVE_WORKERS": "2"}
    )
    try:
        server.wait_ready(timeout=120.0)
        cpu_before, charged_before = tree_cpu_s(server.process.pid), scrape(server.url)
        points = (Point("v1", "v1", 1, 4, warmup_s=0.5), Point("v2", "v2-binary", 8, 2))
        budgets = measure_budget(server, "tiny", 10, 1.5, points)
        cpu_s = tree_cpu_s(server.process.pid) - cpu_before
        charged = scrape(server.url)
    finally:
        server.stop()
    for budget in budgets:
        assert budget.requests > 50, budget
        assert set(budget.steps[LOOP]) >= LOOP_STEPS, budget.steps[LOOP]
        assert set(budget.steps[INFERENCE]) >= INFERENCE_STEPS, budget.steps[INFERENCE]
        for kind in (LOOP, INFERENCE):
            # The steps never claim more than the thread's own clock says it spent.
            assert budget.unattributed(kind) >= -0.02 * budget.totals[kind], (kind, budget)
        assert budget.totals[PROCESS] >= budget.totals[LOOP] + budget.totals[INFERENCE] * 0.98
    # The process clocks the workers report agree with the kernel's count for them
    # (the supervisor and the ready probes add a little to the kernel's).
    process_s = sum(
        s - charged_before.get((kind, step), 0.0)
        for (kind, step), s in charged.items()
        if step == PROCESS
    )
    assert 0.7 * cpu_s <= process_s <= 1.05 * cpu_s, (process_s, cpu_s)


def test_off_by_default_nothing_is_charged(tiny_repository: Path) -> None:
    server = ServerProcess(tiny_repository)
    try:
        server.wait_ready(timeout=120.0)
        answer = httpx.post(
            f"{server.url}/v1/models/tiny:predict", json={"instances": [[[0.0] * 3]]}, timeout=10
        )
        assert answer.status_code == 200
        assert scrape(server.url) == {}
    finally:
        server.stop()
