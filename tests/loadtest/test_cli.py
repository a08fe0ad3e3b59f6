"""``lstm-bench run`` and ``lstm-bench sweep`` end to end: JSON and PNG on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.loadtest.cli import main
from tests.conftest import ROOT, ServerProcess

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--model", "tiny", "--warmup", "0.1", "--quiet"]


def test_run_prints_a_table_and_writes_json(bench_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    command = [sys.executable, "-m", "service.loadtest", "run", "--url", bench_server.url]
    command += [*QUICK, "--protocol", "v2-binary", "--batch", "2", "--duration", "1"]
    command += ["--concurrency", "2", "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for row in ("throughput", "latency ms", "p99", "errors      none"):
        assert row in done.stdout
    result = json.loads(out.read_text())
    assert result["errors"] == {} and result["ok"] == result["requests"] > 0
    assert result["sequences"] == 2 * result["ok"]
    assert result["spec"]["protocol"] == "v2-binary"


@pytest.mark.parametrize(
    ("points", "x_axis"),
    [(["--concurrency", "1,3"], "requests"), (["--rates", "20,40"], "sequences")],
)
def test_sweep_writes_json_and_a_png(
    bench_server: ServerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    points: list[str],
    x_axis: str,
) -> None:
    out, png = tmp_path / "sweep.json", tmp_path / "plots" / "sweep.png"
    argv = ["sweep", "--url", bench_server.url, *QUICK, *points, "--duration", "0.5"]
    assert main([*argv, "--json", str(out), "--plot", str(png), "--x-axis", x_axis]) == 0
    table = capsys.readouterr().out
    assert "p50" in table and f"plot written to {png}" in table
    results = json.loads(out.read_text())["points"]
    assert len(results) == 2
    assert all(r["errors"] == {} and r["ok"] > 0 for r in results)
    if points[0] == "--rates":
        assert [r["spec"]["rate"] for r in results] == [20.0, 40.0]
    else:
        assert [r["spec"]["concurrency"] for r in results] == [1, 3]
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_non_loopback_url_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--url", "http://0.0.0.0:9", "--features", "3", "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "refusing to send load to '0.0.0.0'" in message and "--allow-remote" in message


def test_sweep_needs_its_points() -> None:
    with pytest.raises(SystemExit):
        main(["sweep", "--duration", "1"])
