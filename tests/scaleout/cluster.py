"""Real scale-out parts as child processes: a Redis server, nginx, and lstm-serve replicas.

Each part is started in its own process group and stopped by its own PID (a replica's
crash is a SIGKILL of its whole group, workers included). Nothing here skips: a missing
``redis-server`` or ``nginx`` fails the test with the command that installs them
(``.ci/run`` installs them under CI).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
import redis

from service.loadtest.process import ServerProcess, free_port

INSTALL_HINT = (
    "install them: apt-get install -y --no-install-recommends redis-server nginx-light "
    "(.ci/run does this under CI)"
)


def require(binary: str) -> str:
    """The path of ``binary`` (sbin included, where nginx lives); fail the test if missing."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    path = shutil.which(binary, path=search)
    if path is None:
        pytest.fail(f"the scale-out tests need {binary!r}, which is not installed: {INSTALL_HINT}")
    return path


def _stop_group(process: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Signal ``process`` by its PID, wait; SIGKILL its whole group if it outstays ``timeout``."""
    if process.poll() is None:
        os.kill(process.pid, sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)
        return process.wait(timeout=10)


def _kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of group ``pgid``; return once none is left (zombies aside)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while _group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(group) == pgid and state not in "ZX":
            members.append(int(entry))
    return members


def _wait_http_200(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited with {process.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url}: no 200 after {timeout} s:\n{_tail(log)}")


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class RedisServer:
    """``redis-server`` on a loopback port, append-only (fsync always) in ``directory``.

    ``stop()`` then ``start()`` (or ``restart()``) brings it back on the same port and
    directory, where the append-only file keeps every key it had acknowledged.
    """

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.binary = require("redis-server")
        self.directory = directory
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self._starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self, timeout: float = 20.0) -> None:
        assert not self.running, "redis-server is already running"
        log = self.directory / f"redis-{self._starts}.log"
        self._starts += 1
        # Opened in the parent (so the handle closes when this returns, not when it is freed).
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--dir", str(self.data), "--appendonly", "yes", "--appendfsync", "always"]
        command += ["--save", ""]  # no snapshots: the append-only file alone
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        client = self.client()
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited:\n{_tail(log)}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop(signal.SIGKILL)
                    raise RuntimeError(f"redis-server not answering after {timeout} s")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it by its own PID (SIGKILL: as a crash; fsync always keeps what it acked)."""
        if self.process is not None:
            _stop_group(self.process, sig, timeout=15)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


class Replica:
    """One ``lstm-serve`` (``python -m service``) on its own loopback port and process group."""

    def __init__(self, index: int, repository: Path, directory: Path, env: dict[str, str]) -> None:
        self.index = index
        self.repository = repository
        self.directory = directory
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: ServerProcess | None = None
        self.incarnation = 0

    @property
    def log_path(self) -> Path:
        return self.directory / f"replica-{self.index}.{self.incarnation}.log"

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.process.pid

    @property
    def alive(self) -> bool:
        return self.server is not None and self.server.process.poll() is None

    def launch(self) -> None:
        """Start the process (on the same port every time); ``wait_ready`` waits for it."""
        assert not self.alive, f"replica {self.index} is running"
        self.incarnation += 1
        self.server = ServerProcess(
            self.repository, self.env, self.log_path, self.port, new_session=True
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        assert self.server is not None
        self.server.wait_ready(timeout=timeout)

    def kill(self) -> None:
        """A crash: SIGKILL to the replica's whole process group; return once all are gone."""
        assert self.server is not None
        _kill_group(self.pid)
        self.server.process.wait(timeout=10)
        assert not _group_members(self.pid), f"replica {self.index}: processes outlived SIGKILL"

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM by its own PID (workers drain), wait; the group is SIGKILLed if it hangs."""
        assert self.server is not None
        return _stop_group(self.server.process, signal.SIGTERM, timeout)

    def roll(self) -> int:
        """A rolling restart: SIGTERM, wait for exit, start again on the same port."""
        code = self.stop()
        self.launch()
        self.wait_ready()
        return code

    def log(self) -> str:
        return _tail(self.log_path, 20_000)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
{optional_temp_paths}
    log_format upstreams '$msec $status "$request" $upstream_status |$upstream_addr';
    access_log {dir}/access.log upstreams;
    client_max_body_size 8m;
    upstream replicas {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
            proxy_send_timeout 30s;
        }}
    }}
}}
"""


class Nginx:
    """nginx on a loopback port, round robin over ``upstream_ports`` (access log: upstreams)."""

    def __init__(self, directory: Path, upstream_ports: list[int]) -> None:
        self.binary = require("nginx")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstream_ports = upstream_ports
        self.conf = directory / "nginx.conf"
        self.access_log = directory / "access.log"
        self.process: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        built = subprocess.run(
            [self.binary, "-V"], capture_output=True, text=True, check=True
        ).stderr
        optional = "\n".join(
            f"    {module}_temp_path {self.directory}/{module};"
            for module in ("uwsgi", "scgi")
            if f"--without-http_{module}_module" not in built
        )
        # A replica down is skipped (connection refused: next upstream) and retried 1 s later.
        servers = "\n".join(
            f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=1s;"
            for port in self.upstream_ports
        )
        return NGINX_CONF.format(
            dir=self.directory, port=self.port, servers=servers, optional_temp_paths=optional
        )

    def start(self, timeout: float = 20.0) -> None:
        self.conf.write_text(self._config())
        log = self.directory / "nginx.out"
        error_log = str(self.directory / "error.log")  # -e: not the default, unwritable one
        command = [self.binary, "-e", error_log, "-c", str(self.conf), "-p", str(self.directory)]
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_http_200(f"{self.url}/v2/health/live", self.process, log, timeout)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"{error}\n{_tail(self.directory / 'error.log')}") from None

    def stop(self) -> None:
        """SIGQUIT by the master's own PID (graceful: workers finish), SIGKILL if it hangs."""
        if self.process is not None:
            _stop_group(self.process, signal.SIGQUIT, timeout=15)

    def upstream_counts(
        self, request_prefix: str = "POST /v1/", since: float = 0.0
    ) -> Counter[int]:
        """Requests whose line starts with ``request_prefix``, logged at or after ``since``
        (``time.time()``), per replica port that answered."""
        counts: Counter[int] = Counter()
        for line in self.access_log.read_text().splitlines():
            request, addresses = line.split('"')[1], line.rsplit("|", 1)[1]
            if float(line.split(" ", 1)[0]) < since:
                continue
            # Several addresses when nginx went on to another replica: the last answered.
            last = addresses.split(" : ")[-1].split(", ")[-1].strip()
            if request.startswith(request_prefix) and last.startswith("127.0.0.1:"):
                counts[int(last.rsplit(":", 1)[1])] += 1
        return counts


class Cluster:
    """A Redis server, replicas sharing state through it, and nginx in front of them."""

    def __init__(
        self,
        directory: Path,
        repository: Path,
        workers: list[int],
        env: dict[str, str] | None = None,
    ) -> None:
        self.redis = RedisServer(directory / "redis")
        replicas_dir = directory / "replicas"
        replicas_dir.mkdir(parents=True, exist_ok=True)
        self.env = {"LSTM_SERVE_STATE_URL": self.redis.url, **(env or {})}
        self.replicas = [
            Replica(i, repository, replicas_dir, {**self.env, "LSTM_SERVE_WORKERS": str(n)})
            for i, n in enumerate(workers)
        ]
        self.nginx = Nginx(directory / "nginx", [r.port for r in self.replicas])

    @property
    def url(self) -> str:
        """nginx's address: what clients call."""
        return self.nginx.url

    def start(self) -> None:
        self.redis.start()
        for replica in self.replicas:  # all start at once; then each is waited for
            replica.launch()
        for replica in self.replicas:
            replica.wait_ready()
        self.nginx.start()

    def heal(self) -> None:
        """Bring back whatever a test took down: Redis, and any replica not running."""
        if not self.redis.running:
            self.redis.start()
        down = [r for r in self.replicas if not r.alive]
        for replica in down:
            replica.launch()
        for replica in down:
            replica.wait_ready()

    def stop(self) -> None:
        for replica in self.replicas:
            if replica.server is not None:
                replica.stop(timeout=20)
        self.nginx.stop()
        self.redis.stop()

    def logs(self) -> str:
        """Every replica's current log, for a failing assertion's message."""
        return "\n".join(f"--- replica {r.index} ---\n{r.log()[-3000:]}" for r in self.replicas)
