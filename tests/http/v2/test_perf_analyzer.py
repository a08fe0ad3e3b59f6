"""Triton's ``perf_analyzer`` against a real server over HTTP: it reads the model's
metadata and configuration, then sends load, so it checks that both follow
Triton's conventions (``v2/metadata.py``).

The binary comes with the ``tritonclient[http]==2.51.0`` wheel (later wheels need
a newer glibc than Debian 12's); it needs ``libcudart.so.12`` (the
``nvidia-cuda-runtime-cu12`` wheel) and Debian's ``libb64-0d``. The fixture
installs the two wheels into a cache directory of their own, apart from the
project's ``tritonclient`` 2.73.0, and the Debian package with apt-get when it
may, so the README's test command sets all of it up on a fresh machine. Runs
are short (a concurrency sweep of 1 and 2, three windows of 100 requests each): the test
asserts that perf_analyzer succeeded and measured throughput, never how much.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.settings import DEFAULT_REPOSITORY
from tests.conftest import ServerProcess, start_server

VERSION = "2.51.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm-serving"
TARGET = CACHE / f"perf_analyzer-{VERSION}"
MODEL = "basic_motions"
STEPS, FEATURES = 100, 6
REQUESTS_PER_WINDOW = 100
"""perf_analyzer's windows: three of 100 requests per concurrency level."""


def _install() -> Path:
    """perf_analyzer and libcudart in ``TARGET`` (once), libb64 from Debian when missing."""
    binary = TARGET / "bin" / "perf_analyzer"
    if not binary.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(TARGET),
                f"tritonclient=={VERSION}",
                "nvidia-cuda-runtime-cu12",
            ],
            check=True,
        )
    if ctypes.util.find_library("b64") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.fail("perf_analyzer needs Debian's libb64-0d; install it (apt-get, as root)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "libb64-0d"],
            check=True,
            env=env,
        )
    return binary


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    return _install()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(DEFAULT_REPOSITORY, tmp_path_factory.mktemp("pa") / "server.log")
    yield process
    process.stop()


def input_data(path: Path, with_lengths: bool) -> Path:
    """perf_analyzer's ``--input-data`` file: four real-valued sequences of 100 steps,
    with ragged ``lengths`` (shape [1] per request, as the config's dims say) or none."""
    x = np.random.default_rng(0).normal(size=(4, STEPS, FEATURES))
    steps = []
    for i, sequence in enumerate(x):
        step: dict[str, object] = {
            "x": {"content": sequence.reshape(-1).tolist(), "shape": [STEPS, FEATURES]}
        }
        if with_lengths:
            step["lengths"] = {"content": [STEPS - 10 * i], "shape": [1]}
        steps.append(step)
    path.write_text(json.dumps({"data": steps}))
    return path


def run(
    binary: Path, server: ServerProcess, data: Path, tensor_format: str, concurrency: str
) -> str:
    lib = TARGET / "nvidia" / "cuda_runtime" / "lib"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    completed = subprocess.run(
        [
            str(binary),
            "-m",
            MODEL,
            "-i",
            "http",
            "-u",
            server.url.removeprefix("http://"),
            "--input-data",
            str(data),
            "--concurrency-range",
            concurrency,
            "--input-tensor-format",
            tensor_format,
            "--output-tensor-format",
            tensor_format,
            # Bounded by count, and any three windows accepted as "stable": on a
            # shared machine no timing can be relied on, and none is asserted.
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(REQUESTS_PER_WINDOW),
            "--stability-percentage",
            "100000",
            "--max-trials",
            "3",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = completed.stdout + completed.stderr
    assert completed.returncode == 0, report[-4000:]
    return report


@pytest.mark.parametrize("tensor_format", ["binary", "json"])
@pytest.mark.parametrize("with_lengths", [True, False], ids=["lengths", "no-lengths"])
def test_concurrency_sweep(
    perf_analyzer: Path,
    server: ServerProcess,
    tmp_path: Path,
    tensor_format: str,
    with_lengths: bool,
) -> None:
    data = input_data(tmp_path / "data.json", with_lengths)
    report = run(perf_analyzer, server, data, tensor_format, "1:2")
    sweep = re.findall(r"Concurrency: (\d+), throughput: ([\d.]+) infer/sec, latency (\d+)", report)
    assert [int(c) for c, _, _ in sweep] == [1, 2], report[-4000:]
    assert all(float(t) > 0 and int(latency) > 0 for _, t, latency in sweep)
    assert "error" not in report.lower(), report[-4000:]
