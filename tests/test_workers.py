"""Worker processes behind SO_REUSEPORT: balanced, replaced when they die, stopped together."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.workers import Supervisor, listening_socket
from tests.conftest import ServerProcess


def workers_of(pid: int) -> set[int]:
    """The supervisor's worker processes (spawned children running the app)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {
        int(c)
        for c in children
        if b"multiprocessing.spawn" in Path(f"/proc/{c}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()
    }


def serving_pids(port: int) -> set[int]:
    """Worker pids that own an established connection to ``port`` (from /proc, like ss -p)."""
    inodes: dict[str, int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = int(pid)
        except OSError:
            continue
    owners = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01" and fields[9] in inodes:  # ESTABLISHED
            owners.add(inodes[fields[9]])
    return owners


def test_two_workers_share_connections_and_a_dead_one_is_replaced(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    temporary = tmp_path / "tmp"  # the system's temporary directory, as the server sees it
    temporary.mkdir()
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_WORKERS": "2", "LSTM_SERVE_LOG_LEVEL": "info", "TMPDIR": str(temporary)},
    )
    assert len(metrics_folders(temporary)) == 1
    port = int(server.url.rsplit(":", 1)[1])
    deadline = time.monotonic() + 60
    while len(workers_of(server.process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    first = workers_of(server.process.pid)
    assert len(first) == 2

    # 16 keep-alive connections: the kernel spreads them over both workers' sockets
    # (all 16 on one worker has probability 2 / 2**16).
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(16)]
    try:
        for client in clients:
            assert client.get("/v2/health/live").status_code == 200
        assert serving_pids(port) & first == first
    finally:
        for client in clients:
            client.close()

    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = workers_of(server.process.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.2)
    assert victim not in workers_of(server.process.pid)
    assert len(workers_of(server.process.pid)) == 2
    answer = httpx.post(
        f"{server.url}/v1/models/tiny:predict", json={"instances": [[[0.1, 0.2, 0.3]]]}, timeout=30
    )
    assert answer.status_code == 200
    assert f"worker process {victim} exited with -9" in server.log()

    assert server.stop() in (0, -signal.SIGTERM)
    assert "all workers stopped" in server.log()
    assert not alive(first)
    assert metrics_folders(temporary) == []  # the shared metrics folder went with the server


def metrics_folders(temporary: Path) -> list[Path]:
    return list(temporary.glob("lstm-serve-metrics-*"))


def alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()}


def test_a_port_held_without_reuse_port_is_refused() -> None:
    """Workers share a port only with each other: a socket that holds it alone wins."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(OSError) as refused:
            listening_socket("127.0.0.1", holder.getsockname()[1])
    assert refused.value.errno == errno.EADDRINUSE


def test_workers_exit_with_a_killed_supervisor_and_leave_no_folder(
    tiny_repository: Path, tmp_path: Path
) -> None:
    """SIGKILL of the supervisor (no SIGTERM for it to forward): no orphan keeps serving."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {"LSTM_SERVE_WORKERS": "2", "TMPDIR": str(temporary)}
    server = ServerProcess(tiny_repository, env, tmp_path / "server.log", new_session=True)
    try:
        server.wait_ready()
        deadline = time.monotonic() + 60
        while len(workers_of(server.process.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = workers_of(server.process.pid)
        assert len(workers) == 2
        assert len(metrics_folders(temporary)) == 1
        assert httpx.get(server.url + "/metrics", timeout=10).status_code == 200
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(10)
        deadline = time.monotonic() + 40
        while (running(workers) or metrics_folders(temporary)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not running(workers), server.log()
        assert metrics_folders(temporary) == [], server.log()
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/v2/health/live", timeout=2)
        assert "the supervisor (process" in server.log()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (a zombie waiting for its reaper is not)."""
    out = set()
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            out.add(pid)
    return out


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (the pod's memory-backed /tmp), where mounting one is allowed."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Take every free block of ``folder``'s filesystem; the file that holds them."""
    filler = folder / "filler"
    with filler.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def test_a_full_metrics_folder_is_survived_and_recovered(
    small_tmpfs: Path, tiny_repository: Path, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR on a full tmpfs: workers used to die of SIGBUS on their first
    metrics write and the supervisor gave up after 6 deaths. Now: served, reported, and
    written again once space returns."""
    folder = small_tmpfs / "metrics"
    folder.mkdir()
    filler = fill(small_tmpfs)
    env = {"LSTM_SERVE_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    server = ServerProcess(tiny_repository, env, tmp_path / "server.log", new_session=True)
    try:
        server.wait_ready(timeout=60)
        body = {"instances": [[[0.1, 0.2, 0.3]]]}
        for _ in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as client:  # both workers
                assert client.post("/v1/models/tiny:predict", json=body).status_code == 200
        ready = httpx.get(server.url + "/v2/health/ready").json()
        assert ready["ready"] is True
        assert "metrics are not being written" in ready["warnings"][0]
        assert "No space left on device" in ready["warnings"][0]
        metrics = httpx.get(server.url + "/metrics").text
        failures = [line for line in metrics.splitlines() if line.startswith("lstm_metrics_write")]
        assert failures and float(failures[0].split()[-1]) > 0
        assert "exited with" not in server.log()  # no worker died
        assert "a metrics write failed" in server.log()

        filler.unlink()  # space returns: the next writes go to the files again
        time.sleep(1.5)
        for _ in range(10):
            with httpx.Client(base_url=server.url, timeout=30) as client:
                assert client.post("/v1/models/tiny:predict", json=body).status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'lstm_requests_total{code="200",endpoint="/v1/models/{name}:predict"' in metrics
        assert "exited with" not in server.log()
    finally:
        server.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)


def test_the_supervisor_backs_off_instead_of_giving_up() -> None:
    delays = [Supervisor.backoff_s(n) for n in range(1, 14)]
    assert delays[:5] == [0.0] * 5  # a crash now and then: replaced at once
    assert delays[5:] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # then doubling, capped
