"""Small requests that used to cost gigabytes or seconds (issue 12), and the answers
the cost bounds now give them at the default settings.

Shared by the tests (``tests/http/test_cost_bounds.py``, on a real server, with
RSS sampled over the process tree) and the benchmark (``benchmark.py``, which
times each and reports the server's peak RSS), so both send the same bytes.
"""

from __future__ import annotations

import gzip
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from service.loadtest.payloads import HEADER_LENGTH, JSON, OCTET_STREAM, Payload
from service.loadtest.process import PeakRss, ServerProcess, tree_rss_mib
from service.settings import Settings

MODEL = "basic_motions"
FEATURES = 6


@dataclass(frozen=True)
class Case:
    """One costly request, and what the server must answer at the default settings."""

    label: str
    payload: Payload
    status: int
    message: str = ""
    """A fragment the error message must contain (the limit it names); empty for a 200."""


def _v1(body: bytes) -> Payload:
    return Payload(f"/v1/models/{MODEL}:predict", body, (("content-type", JSON),))


def v2_binary(
    x: np.ndarray, datatype: str, gzipped: bool = False, output: str = "final_output"
) -> Payload:
    """V2 with x as binary data (``tritonclient``'s default) and ``output`` back, binary."""
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(x.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [{"name": output, "parameters": {"binary_data": True}}],
        }
    )
    body = head + x.tobytes()
    headers: tuple[tuple[str, str], ...] = (
        ("content-type", OCTET_STREAM),
        (HEADER_LENGTH, str(len(head))),
    )
    if gzipped:
        body = gzip.compress(body, compresslevel=6)
        headers = (*headers, ("content-encoding", "gzip"))
    return Payload(f"/v2/models/{MODEL}/infer", body, headers)


def cases() -> list[Case]:
    """The issue's table, then cases of the same kind at the edge of the limits."""
    step = [0.0] * FEATURES
    return [
        Case(
            "v1 ragged: 1 x 2,500 steps + 1,023 x 1 step (51 KB)",
            _v1(orjson.dumps({"instances": [[step] * 2500] + [[step]] * 1023})),
            200,
        ),
        Case(
            "v2 FP16 [1024, 2730, 6] zeros, gzip (33 KB)",
            v2_binary(np.zeros((1024, 2730, FEATURES), np.float16), "FP16", gzipped=True),
            422,
            "max_request_timesteps",
        ),
        Case(
            "v2 FP32 [1024, 1363, 6] (33.5 MB)",
            v2_binary(np.zeros((1024, 1363, FEATURES), np.float32), "FP32"),
            422,
            "max_request_timesteps",
        ),
        Case(
            "v1 JSON of 33 MB",
            _v1(orjson.dumps({"instances": [[step] * 1000] * 1270})),
            413,
            "max_json_bytes",
        ),
        Case(
            "v2 FP32 [1024, 256, 6]: max_request_timesteps exactly",
            v2_binary(np.zeros((1024, 256, FEATURES), np.float32), "FP32"),
            200,
        ),
        Case(
            "v1 26 x 10,000 steps (3.6 MB JSON): time-chunked",
            _v1(orjson.dumps({"instances": [[[0] * FEATURES] * 10_000] * 26})),
            200,
        ),
    ]


MIB = 1024 * 1024
CELL_BYTES_PER_UNIT = 20
"""Bytes a call holds per padded cell and per LSTM unit (each direction): the op's four
gates, its output and the transposes around it, 4 bytes each (measured: 1.45-1.5 KB a
cell for basic_motions' 64 + 32 units, under the 1.9 KB this gives)."""


def call_mib(cells: int, units: list[int]) -> float:
    """Peak memory of one onnxruntime call of ``cells`` padded cells, in MiB."""
    return cells * CELL_BYTES_PER_UNIT * sum(units) / MIB


STEP_ANSWER_BYTES = 400
"""A ``/v1`` per-timestep prediction (``return_sequences``) while it is answered: its dict,
its row and its JSON (measured: 26 x 10,000 steps answered in 22.5 MB of JSON)."""


def request_bound_mib(settings: Settings, units: list[int], features: int, outputs: int) -> float:
    """The most one request can add to a worker at ``settings``, in MiB (README's formula):
    its body (read, joined, decompressed), its JSON parse, x, the outputs and their
    per-step answers, and one call per inference thread of its version."""
    body = 3 * settings.max_body_bytes
    parsed = 30 * settings.max_json_bytes
    x = settings.max_input_bytes
    out = settings.max_input_bytes * outputs / features
    answers = STEP_ANSWER_BYTES * settings.max_request_timesteps
    calls = settings.inference_threads * call_mib(settings.max_call_cells, units)
    return (body + parsed + x + out + answers) / MIB + calls


def run_costly(env: dict[str, str], repository: Path) -> list[dict[str, Any]]:
    """Each costly case once, on its own: status, seconds, peak and after RSS (MiB)."""
    import httpx

    server = ServerProcess(repository, env)
    rows: list[dict[str, Any]] = []
    try:
        server.wait_ready(timeout=120.0)
        with httpx.Client(base_url=server.url, timeout=120.0) as client:
            idle = tree_rss_mib(server.process.pid)
            for case in cases():
                payload = case.payload
                with PeakRss(server.process.pid, every_s=0.01) as memory:
                    start = time.perf_counter()
                    answer = client.post(
                        payload.path, content=payload.body, headers=payload.header_dict()
                    )
                    seconds = time.perf_counter() - start
                time.sleep(0.5)
                rows.append(
                    {
                        "label": case.label,
                        "status": answer.status_code,
                        "expected": case.status,
                        "seconds": seconds,
                        "idle_rss_mib": idle,
                        "peak_rss_mib": memory.peak,
                        "after_rss_mib": tree_rss_mib(server.process.pid),
                    }
                )
    finally:
        server.stop(timeout=60.0)
    return rows


def report_costly(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'costly request (issue 12)':<58}{'status':>7}{'s':>7}{'peak MiB':>10}{'after':>7}"]
    for r in rows:
        status = f"{r['status']}" + ("" if r["status"] == r["expected"] else "!")
        lines.append(
            f"{r['label']:<58}{status:>7}{r['seconds']:>7.2f}{r['peak_rss_mib']:>10.0f}"
            f"{r['after_rss_mib']:>7.0f}"
        )
    return "\n".join(lines)
