"""A real server as a child process: start it on a free loopback port, watch it, stop it.

Shared by the benchmark, the test suite and ``.ci/container_check.py``, so that
"start ``python -m service``, wait for readiness, sample the memory of its
process tree, stop it by its own PID" is written once.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
"""The project's root: the server runs from there, so the checkout's code is imported."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (worker processes), in MiB."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        pending.extend(int(c) for c in children)
    return total


_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU time (user + system) of a process and all its live descendants, in seconds."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            stat = Path(f"/proc/{current}/stat").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        total += (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime
        pending.extend(int(c) for c in children)
    return total


class PeakRss:
    """The largest ``tree_rss_mib`` of ``pid``, sampled in a thread while in a ``with``."""

    def __init__(self, pid: int, every_s: float = 0.05) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = tree_rss_mib(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, tree_rss_mib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class ServerProcess:
    """``python -m service`` on a loopback port, its output in ``log_path`` (or discarded).

    ``new_session``: the server leads its own process group, so that ``os.killpg`` reaches
    its worker processes too (a crash of the whole replica, as the scale-out tests make).
    """

    def __init__(
        self,
        repository: Path,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        port: int | None = None,
        *,
        new_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {
            **os.environ,
            "LSTM_SERVE_HOST": "127.0.0.1",
            "LSTM_SERVE_PORT": str(self.port),
            "LSTM_SERVE_MODEL_REPOSITORY": str(repository),
            # gRPC only where asked for (env LSTM_SERVE_GRPC_PORT): Triton's fixed 8001
            # would collide between servers started side by side.
            "LSTM_SERVE_GRPC_PORT": "0",
            **(env or {}),
        }
        output: IO[bytes] | int = log_path.open("wb") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            env=full_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            # Its own process group (pgid = pid), so a test can signal it with its workers.
            start_new_session=new_session,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, path: str = "/v2/health/ready", timeout: float = 60.0) -> None:
        """Return once ``path`` answers 200; raise with the log if the server dies or stalls."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}{path}", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server by its own PID and wait for it; SIGKILL if it outstays ``timeout``."""
        if self.process.poll() is None:
            os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=10)


def start_server(
    repository: Path,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
    wait_path: str = "/v2/health/ready",
    ready_timeout: float = 60.0,
) -> ServerProcess:
    """Start a server and wait until ``wait_path`` answers 200."""
    server = ServerProcess(repository, env, log_path)
    server.wait_ready(wait_path, ready_timeout)
    return server


@contextmanager
def loopback_redis() -> Iterator[str]:
    """A ``redis-server`` on a free loopback port, no persistence, for the ``with``: its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis: no redis-server on PATH (or give --state-url)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10.0
        while True:  # up once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("--redis: redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
