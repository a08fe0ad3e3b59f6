"""Triton's ``perf_analyzer`` against the service, as a Triton user would measure it.

``python -m service.loadtest.perf_analyzer`` starts ``python -m service`` on the
shipped repository and sweeps concurrency over HTTP, binary and JSON tensors, and
over gRPC (``-i grpc``, raw tensors; ``--protocols`` picks), with and without
``lengths``, printing the README's table. The test suite
(``tests/http/v2/test_perf_analyzer.py``, ``tests/grpc/test_perf_analyzer_grpc.py``)
uses the same install and run.

The binary comes with the ``tritonclient[http]==2.51.0`` wheel (later wheels
need glibc 2.38, newer than Debian 12's); it needs ``libcudart.so.12`` (the
``nvidia-cuda-runtime-cu12`` wheel) and Debian's ``libb64-0d``. ``install``
puts the two wheels into a cache directory of their own, apart from the
project's ``tritonclient`` 2.73.0, and the Debian package with apt-get when it
runs as root, so a fresh machine needs nothing by hand. Runs are bounded by
request count (``count_windows``), not time.
"""

from __future__ import annotations

import argparse
import ctypes.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.loadtest.process import ServerProcess, free_port, start_server
from service.settings import DEFAULT_REPOSITORY

VERSION = "2.51.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lstm-serving"
TARGET = CACHE / f"perf_analyzer-{VERSION}"
MODEL = "basic_motions"
FEATURES = 6


def install() -> Path:
    """perf_analyzer and libcudart in ``TARGET`` (once); libb64 from Debian when missing."""
    binary = TARGET / "bin" / "perf_analyzer"
    if not binary.exists():
        wheels = [f"tritonclient=={VERSION}", "nvidia-cuda-runtime-cu12"]
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target"]
        subprocess.run([*pip, str(TARGET), *wheels], check=True)
    if ctypes.util.find_library("b64") is None:
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            raise RuntimeError("perf_analyzer needs Debian's libb64-0d: apt-get install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "libb64-0d"]
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
        subprocess.run(apt, check=True, env=env)
    return binary


def input_data(path: Path, steps: int, with_lengths: bool, count: int = 4) -> Path:
    """An ``--input-data`` file: ``count`` sequences of ``steps`` steps, with ragged
    ``lengths`` (shape [1] per request, as the config's ``dims`` say) or none."""
    x = np.random.default_rng(0).normal(size=(count, steps, FEATURES))
    entries = []
    for i, sequence in enumerate(x):
        entry: dict[str, object] = {
            "x": {"content": sequence.reshape(-1).tolist(), "shape": [steps, FEATURES]}
        }
        if with_lengths:
            length = max(1, steps - i * max(1, steps // 10))
            entry["lengths"] = {"content": [length], "shape": [1]}
        entries.append(entry)
    path.write_text(json.dumps({"data": entries}))
    return path


@dataclass(frozen=True)
class Measured:
    """One concurrency level of a run, as perf_analyzer reports it."""

    concurrency: int
    throughput: float
    p50_us: int | None
    p99_us: int | None


def run(
    binary: Path,
    url: str,
    data: Path,
    tensor_format: str | None,
    concurrency: str,
    requests_per_window: int,
    protocol: str = "http",
) -> tuple[str, list[Measured]]:
    """One perf_analyzer run; its report and what it measured. Raises if it failed.

    ``protocol`` "http" (``url`` http://host:port, ``tensor_format`` binary or json)
    or "grpc" (``url`` host:port of the gRPC port; raw tensors only, so
    ``tensor_format`` None). Any three windows count as stable: on a shared machine
    a stability demand only makes runs fail, and nothing here asserts timing.
    """
    lib = TARGET / "nvidia" / "cuda_runtime" / "lib"
    env = {**os.environ, "LD_LIBRARY_PATH": f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    formats = (
        ("--input-tensor-format", tensor_format, "--output-tensor-format", tensor_format)
        if tensor_format is not None
        else ()
    )
    command = [
        str(binary),
        *("-m", MODEL, "-i", protocol, "-u", url.removeprefix("http://")),
        *("--input-data", str(data), "--concurrency-range", concurrency),
        *formats,
        *("--measurement-mode", "count_windows"),
        *("--measurement-request-count", str(requests_per_window)),
        *("--stability-percentage", "100000", "--max-trials", "3"),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    report = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"perf_analyzer failed ({done.returncode}):\n{report[-4000:]}")
    blocks = re.split(r"Request concurrency: ", report)[1:]
    measured = []
    for block in blocks:
        level = re.match(r"(\d+)", block)
        throughput = re.search(r"Throughput: ([\d.]+) infer/sec", block)
        p50 = re.search(r"p50 latency: (\d+) usec", block)
        p99 = re.search(r"p99 latency: (\d+) usec", block)
        if level and throughput:
            measured.append(
                Measured(
                    int(level[1]),
                    float(throughput[1]),
                    int(p50[1]) if p50 else None,
                    int(p99[1]) if p99 else None,
                )
            )
    return report, measured


def _ms(us: int | None) -> str:
    return "" if us is None else f"{us / 1000:.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--concurrency", default="1,4,16", help="levels, comma-separated")
    parser.add_argument("--steps", type=int, default=50, help="timesteps per sequence")
    parser.add_argument("--requests", type=int, default=1000, help="requests per window")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--protocols", default="http,grpc", help="http and/or grpc, comma-separated"
    )
    args = parser.parse_args(argv)
    binary = install()
    grpc_port = free_port()
    env = {
        "LSTM_SERVE_WORKERS": str(args.workers),
        "LSTM_SERVE_LOG_LEVEL": "warning",
        "LSTM_SERVE_GRPC_PORT": str(grpc_port),
    }
    # (protocol, tensor format): gRPC sends raw tensors only
    modes: list[tuple[str, str | None]] = []
    for protocol in args.protocols.split(","):
        if protocol == "http":
            modes += [("http", "binary"), ("http", "json")]
        elif protocol == "grpc":
            modes.append(("grpc", None))
        else:
            parser.error(f"--protocols: {protocol!r} is neither http nor grpc")
    with tempfile.TemporaryDirectory() as tmp:
        server: ServerProcess = start_server(DEFAULT_REPOSITORY, Path(tmp) / "server.log", env)
        try:
            print("| protocol | tensors | `lengths` | concurrency | infer/s | p50 ms | p99 ms |")
            print("|---|---|---|---|---|---|---|")
            for protocol, tensor_format in modes:
                url = server.url if protocol == "http" else f"127.0.0.1:{grpc_port}"
                for with_lengths in (True, False):
                    data = input_data(Path(tmp) / "data.json", args.steps, with_lengths)
                    for level in args.concurrency.split(","):
                        _, measured = run(
                            binary, url, data, tensor_format, level, args.requests, protocol
                        )
                        for m in measured:
                            print(
                                f"| {protocol} | {tensor_format or 'raw'} | "
                                f"{'sent' if with_lengths else 'none'} | "
                                f"{m.concurrency} | {m.throughput:.0f} | {_ms(m.p50_us)} | "
                                f"{_ms(m.p99_us)} |",
                                flush=True,
                            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
