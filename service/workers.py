"""Several uvicorn worker processes, each with its own listening socket (``SO_REUSEPORT``).

Why not ``uvicorn --workers``: its workers share one listening socket, and
whichever process wakes first accepts a whole burst of connections. Clients
keep connections alive, so the skew lasts: measured here, 16 keep-alive
clients landed 16/0, 15/1 and 11/5 on two workers, and throughput swung between
one worker's and two workers' worth. With ``SO_REUSEPORT`` every worker listens
on its own socket and the kernel spreads new connections across them by hash
(8/8, 7/9, 6/10 in the same test), so both cores do work. This is what nginx's
``reuseport`` and gunicorn's ``--reuse-port`` do.

The supervisor here is deliberately small: start the workers, forward SIGTERM
and SIGINT to them as SIGTERM (each drains its requests: uvicorn's graceful
shutdown), replace a worker that dies while the server is meant to run, and
back off (exponentially, capped at 30 s) after repeated quick deaths rather than
spin or give up: a cause outside the server, such as a full disk, may go away.

The workers share nothing but their port: each is a whole server of its own (its
models, batchers, connections and counters), and a call reaches whichever worker
the kernel's hash picked for its connection. What must outlive one process, such
as server-held sequences, goes through a shared state store, as between replicas.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

import uvicorn

from service.http.connections import bounded_protocol
from service.settings import Settings

log = logging.getLogger("service.workers")

GRACEFUL_SHUTDOWN_S = 30
"""How long a worker lets requests in flight finish after SIGTERM (uvicorn's timeout)."""

METRICS_FOLDER_PREFIX = "lstm-serve-metrics-"
"""The shared metrics folder the CLI makes for several workers (``tempfile.mkdtemp``)."""

_RESTART_WINDOW_S = 10.0
_MAX_QUICK_DEATHS = 5
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 30.0


def reuse_port_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket on ``host:port`` that other workers may bind too (the kernel balances them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's arguments, the same for one process or these workers."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # keep configure_logging's JSON handler
        "access_log": False,  # RequestObserver writes the access log, with request ids
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # No X-Forwarded-For rewriting: nothing here uses the client address, and
        # the middleware costs ~5% of a small request.
        "proxy_headers": False,
        # BoundedHttpProtocol enforces max_connections itself, answering in JSON and
        # letting probes and complete requests past idle connections (http/connections.py).
        "http": bounded_protocol(settings),
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_websocket_message_bytes,
        "ws_per_message_deflate": settings.websocket_per_message_deflate,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "server_header": False,  # no "server: uvicorn" advertised on every response
        # TLS (issue 14), for deployments with no mesh or ingress to terminate it
        "ssl_certfile": None if settings.ssl_certfile is None else str(settings.ssl_certfile),
        "ssl_keyfile": None if settings.ssl_keyfile is None else str(settings.ssl_keyfile),
    }


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def exit_with_parent(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (a SIGKILLed supervisor leaves no orphans).

    Linux: the kernel's ``PR_SET_PDEATHSIG``, then a check that the parent did not
    die before it was set. Elsewhere: a thread that watches the parent's pid.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0
    except (OSError, AttributeError):
        armed = False
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _worker_main(settings: Settings, parent: int | None = None) -> None:
    """One worker process: its own socket, its own event loop, the whole app, on the
    settings ``lstm-serve`` read once (a spawned process inherits nothing else)."""
    from service.app import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format == "json")
    sock = listening_socket(settings.host, settings.port)

    def orphaned_exit() -> None:
        if parent is not None and os.getppid() != parent:
            log.warning("the supervisor (process %d) is gone: this worker stopped with it", parent)
            remove_metrics_folder_if_orphaned()
            os._exit(0)

    # uvicorn handles SIGTERM while it serves (draining requests), then re-raises it to
    # the handler it found: this one, which cleans up if the supervisor is gone (also
    # for a SIGTERM that arrives before uvicorn took over).
    signal.signal(signal.SIGTERM, lambda *_: orphaned_exit())
    if parent is not None:
        exit_with_parent(parent)
    app = create_app(settings)
    uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings))).run(sockets=[sock])
    orphaned_exit()


def remove_metrics_folder_if_orphaned() -> None:
    """The supervisor's shared metrics folder, once no live process has files in it.

    The supervisor removes it when it stops; when it was killed, its last worker to
    leave does (every worker tries; only the one that finds no live owner succeeds).
    """
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if not os.path.basename(folder.rstrip("/")).startswith(METRICS_FOLDER_PREFIX):
        return  # a folder the operator chose: never ours to remove
    try:
        names = os.listdir(folder)
    except OSError:
        return
    me = os.getpid()
    deadline = time.monotonic() + 5.0  # the other workers are stopping too: wait for them
    while True:
        live = False
        for name in names:
            pid = name.rsplit("_", 1)[-1].removesuffix(".db")
            if not pid.isdigit():
                continue
            if int(pid) == me or not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
            else:
                live = True
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.1)
        try:
            names = os.listdir(folder)
        except OSError:
            return
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # fails while another live worker still has files there


def _alive(pid: int) -> bool:
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


class Supervisor:
    """Runs ``count`` workers until SIGTERM or SIGINT, replacing ones that die."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.workers
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
        self._stopping = False
        self._quick_deaths = 0  # deaths in a row, each within _RESTART_WINDOW_S of its start
        self._started_at: dict[int, float] = {}  # worker slot -> when it was started
        self._restart_at: dict[int, float] = {}  # worker slot -> when it is restarted

    def _spawn(self) -> BaseProcess:
        process = self._context.Process(
            target=_worker_main, args=(self.settings, os.getpid()), name="lstm-serve-worker"
        )
        process.start()
        log.info("started worker process %d", process.pid)
        return process

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if not self._stopping:
            log.info("received %s: stopping workers", signal.Signals(signum).name)
        self._stopping = True

    def _replace_dead(self) -> None:
        now = time.monotonic()
        for i, process in enumerate(self._workers):
            if process.is_alive():
                continue
            if i not in self._restart_at:
                log.error("worker process %d exited with %s", process.pid, process.exitcode)
                _mark_dead(process.pid)
                lived = now - self._started_at.get(i, now)
                self._quick_deaths = self._quick_deaths + 1 if lived < _RESTART_WINDOW_S else 0
                delay = self.backoff_s(self._quick_deaths)
                if delay:
                    log.error(
                        "workers keep dying (%d in a row within %.0f s of starting): "
                        "restarting this one in %.1f s",
                        self._quick_deaths,
                        _RESTART_WINDOW_S,
                        delay,
                    )
                self._restart_at[i] = now + delay
            if now >= self._restart_at[i]:
                del self._restart_at[i]
                self._workers[i] = self._spawn()
                self._started_at[i] = now

    @staticmethod
    def backoff_s(deaths: int) -> float:
        """How long to wait before a restart, given the deaths within the window: none for
        the first few, then doubling up to a cap, so a cause outside the server (a full
        disk, a missing file) is waited out rather than turned into an exit or a spin."""
        if deaths <= _MAX_QUICK_DEATHS:  # a crash now and then: replaced at once
            return 0.0
        return float(min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2 ** (deaths - _MAX_QUICK_DEATHS - 1)))

    def run(self) -> None:
        # Fail here, once and clearly, if the port cannot be had (not in every worker).
        listening_socket(self.settings.host, self.settings.port).close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        log.info(
            "serving on http://%s:%d with %d worker processes (SO_REUSEPORT)",
            self.settings.host,
            self.settings.port,
            self.count,
        )
        self._workers = [self._spawn() for _ in range(self.count)]
        self._started_at = dict.fromkeys(range(self.count), time.monotonic())
        while not self._stopping:
            time.sleep(0.2)
            self._replace_dead()
        self._stop_all()

    def _stop_all(self) -> None:
        for process in self._workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SHUTDOWN_S + 5
        for process in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker process %d did not stop in time; killing it", process.pid)
                process.kill()
                process.join(5)
        log.info("all workers stopped")


def _mark_dead(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the shared multiprocess metrics."""
    if pid is None or "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
