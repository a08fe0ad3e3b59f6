"""Worker processes behind SO_REUSEPORT: balanced, replaced when they die, stopped together."""

from __future__ import annotations

import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.workers import listening_socket
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
