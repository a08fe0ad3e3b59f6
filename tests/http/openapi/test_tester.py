"""Schemathesis, a schema-driven API tester, against a live server: every check, no failures.

It reads ``/openapi.json`` from the server and sends what the document allows
(and what it forbids), then checks each answer against the document: status
codes, content types, response schemas, no 5xx, and that valid requests are
accepted and invalid ones refused. Bounded by a fixed number of generated cases
per operation and a fixed seed, so a run is short and repeatable. The
configuration beside this file lists the two places where the run is told what
the document cannot say, and why (``schemathesis.toml``, ``hooks.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, ServerProcess

HERE = Path(__file__).parent
MAX_EXAMPLES = 30
"""Generated cases per operation and phase: about 1,200 requests, some 15 s here."""


def test_every_check_passes_against_the_live_server(server: ServerProcess) -> None:
    tester = Path(sys.executable).parent / "schemathesis"
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.http.openapi.hooks",
        "PYTHONPATH": str(ROOT),
        "NO_COLOR": "1",
    }
    run = subprocess.run(
        [
            str(tester),
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "17",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-6000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    assert selected is not None and selected[1] == selected[2], report[-2000:]
    assert " passed" in report and "failures" not in report.split("SUMMARY")[-1].lower()
