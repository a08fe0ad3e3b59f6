"""The locustfile drives the real server with the same payloads, without failures."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServerProcess

LOCUST = Path(sys.executable).with_name("locust")
LOCUSTFILE = ROOT / "service" / "loadtest" / "locustfile.py"


def _locust(url: str, csv_prefix: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4"]
    command += ["-t", "3s", "--host", url, "--only-summary", "--csv", str(csv_prefix)]
    full_env = {**os.environ, "LSTM_BENCH_MODEL": "tiny", **env}
    return subprocess.run(
        command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=60
    )


def _aggregated(csv_prefix: Path) -> dict[str, str]:
    with Path(f"{csv_prefix}_stats.csv").open() as stats:
        rows = [row for row in csv.DictReader(stats) if row["Name"] == "Aggregated"]
    assert len(rows) == 1
    return rows[0]


@pytest.mark.skipif(not LOCUST.exists(), reason="locust is not installed (the test extra)")
def test_locust_runs_the_payloads_without_failures(
    bench_server: ServerProcess, tmp_path: Path
) -> None:
    done = _locust(bench_server.url, tmp_path / "v2", LSTM_BENCH_PROTOCOL="v2-binary")
    assert done.returncode == 0, done.stderr[-3000:]
    totals = _aggregated(tmp_path / "v2")
    assert int(totals["Request Count"]) > 0
    assert int(totals["Failure Count"]) == 0


@pytest.mark.skipif(not LOCUST.exists(), reason="locust is not installed (the test extra)")
def test_locust_refuses_a_non_loopback_host(tmp_path: Path) -> None:
    done = _locust("http://0.0.0.0:9", tmp_path / "remote", LSTM_BENCH_FEATURES="3")
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr
    assert int(_aggregated(tmp_path / "remote")["Request Count"]) == 0
