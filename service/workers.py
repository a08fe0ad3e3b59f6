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
stop replacing after repeated quick deaths rather than spin.

The workers share nothing but their port: each is a whole server of its own (its
models, batchers, connections and counters), and a call reaches whichever worker
the kernel's hash picked for its connection. What must outlive one process, such
as server-held sequences, goes through a shared state store, as between replicas.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
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

_RESTART_WINDOW_S = 10.0
_MAX_QUICK_DEATHS = 5


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


def _worker_main(settings: Settings) -> None:
    """One worker process: its own socket, its own event loop, the whole app, on the
    settings ``lstm-serve`` read once (a spawned process inherits nothing else)."""
    from service.app import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format == "json")
    sock = listening_socket(settings.host, settings.port)
    app = create_app(settings)
    uvicorn.Server(uvicorn.Config(app, **uvicorn_options(settings))).run(sockets=[sock])


class Supervisor:
    """Runs ``count`` workers until SIGTERM or SIGINT, replacing ones that die."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.count = settings.workers
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess] = []
        self._stopping = False
        self._deaths: list[float] = []

    def _spawn(self) -> BaseProcess:
        process = self._context.Process(
            target=_worker_main, args=(self.settings,), name="lstm-serve-worker"
        )
        process.start()
        log.info("started worker process %d", process.pid)
        return process

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        if not self._stopping:
            log.info("received %s: stopping workers", signal.Signals(signum).name)
        self._stopping = True

    def _replace_dead(self) -> None:
        for i, process in enumerate(self._workers):
            if process.is_alive():
                continue
            log.error("worker process %d exited with %s", process.pid, process.exitcode)
            _mark_dead(process.pid)
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < _RESTART_WINDOW_S] + [now]
            if len(self._deaths) > _MAX_QUICK_DEATHS:
                log.error("workers keep dying; stopping the server instead of restarting them")
                self._stopping = True
                return
            self._workers[i] = self._spawn()

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
