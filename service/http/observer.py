"""``RequestObserver``, the outermost ASGI layer: a request id, metrics and one
access-log line per request (and per WebSocket session).

Pure ASGI rather than ``BaseHTTPMiddleware`` because it costs almost nothing per
request and does not buffer streaming bodies. Probes and ``/metrics`` are counted
but not logged (``paths.OBSERVABILITY_PATHS``).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core import cpu_budget, metric_writes
from service.http.metrics import (
    REQUEST_DURATION,
    REQUESTS,
    WEBSOCKET_DURATION,
    WEBSOCKET_MESSAGES,
    WEBSOCKET_SESSIONS,
)
from service.http.paths import OBSERVABILITY_PATHS

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")

# Generated request ids: 128 random bits each, which tell a client nothing (a
# per-process prefix and a counter named the worker and its request count). The
# OS's random source is read 256 ids at a time: one read per id (uuid4) cost ~13%
# of a small request's CPU here (uuid4: 1.8 us an id, secrets.token_hex: 0.53 us);
# a batch costs 0.16 us an id (measured on the shared 2-core machine).
_ID_BATCH = 256


def _random_ids() -> Iterator[str]:
    while True:
        block = os.urandom(16 * _ID_BATCH).hex()
        for start in range(0, len(block), 32):
            yield block[start : start + 32]


_ids = _random_ids()


def _fresh_ids_after_fork() -> None:
    global _ids
    _ids = _random_ids()  # a forked child must not hand out its parent's buffered ids


os.register_at_fork(after_in_child=_fresh_ids_after_fork)

access_log = logging.getLogger("service.access")


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's id when it is sane (bounded, printable), else a fresh one."""
    for key, value in headers:
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
    return next(_ids)


_CHILDREN: dict[tuple[object, ...], Any] = {}
MAX_CHILDREN = 4096
"""A backstop: past this many remembered children ``_child`` stops remembering."""


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: the lookup costs more than the increment.

    Bounded like the labels themselves, which come only from fixed sets: route
    templates (``unmatched`` for any other path), status codes the app answers,
    model names and versions only once the version was found (a name in a URL that
    names no loaded version is never a label), and WebSocket close codes folded by
    ``close_code_label``. ``MAX_CHILDREN`` bounds what is remembered even so.
    """
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = metric.labels(*labels)
        if len(_CHILDREN) < MAX_CHILDREN:
            _CHILDREN[key] = child
    return child


CLOSE_CODES = frozenset(range(1000, 1016))
"""The close codes RFC 6455 registers (1000-1015); a client may send any of 3000-4999 too."""


def close_code_label(code: int) -> str:
    """A session's close code as a label: 0 (refused or dropped), a registered code, or
    ``other``, so a client choosing its close code cannot add label values."""
    return str(code) if code == 0 or code in CLOSE_CODES else "other"


_QUIET_ENDPOINTS = OBSERVABILITY_PATHS


class RequestObserver:
    """Pure ASGI middleware: request id, metrics and one access-log line per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        rid = request_id.encode()
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # The message is the sender's, made for this one send (as Starlette's own
                # middleware does, it is completed in place rather than copied).
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid)]
            await send(message)

        scope.setdefault("state", {})["request_id"] = request_id
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            cpu_budget.step("http: access log, metrics")
            self._record(scope, request_id, status, time.perf_counter() - start)

    def _record(self, scope: Scope, request_id: str, status: int, duration: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        state = scope.get("state", {})
        model = str(state.get("model", ""))
        version = str(state.get("version", ""))
        metric_writes.count(_child(REQUESTS, model, version, endpoint, str(status)))
        metric_writes.observe(_child(REQUEST_DURATION, endpoint), duration)
        level = logging.DEBUG if endpoint in _QUIET_ENDPOINTS else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        access_log.log(
            level,
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "model": model or None,
                "version": version or None,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
                "client": _client(scope),
                "key_id": state.get("key_id"),
            },
        )

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A session's access line (opened, closed, messages, duration) and its metrics."""
        request_id = request_id_from(scope.get("headers", []))
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        counts = {"received": 0, "sent": 0}
        code = 0  # refused, or dropped without a close frame
        accepted = False

        async def counting_receive() -> Message:
            nonlocal code
            message = await receive()
            if message["type"] == "websocket.receive":
                counts["received"] += 1
            elif message["type"] == "websocket.disconnect":
                code = code or int(message.get("code", 1005))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal code, accepted
            kind = message["type"]
            if kind == "websocket.send":
                counts["sent"] += 1
            elif kind == "websocket.accept":
                accepted = True
            elif kind == "websocket.close":
                code = code or int(message.get("code", 1000))
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            duration = time.perf_counter() - start
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            _child(WEBSOCKET_SESSIONS, endpoint, close_code_label(code)).inc()
            _child(WEBSOCKET_DURATION, endpoint).observe(duration)
            for direction, n in counts.items():
                _child(WEBSOCKET_MESSAGES, endpoint, direction).inc(n)
            access_log.info(
                "WEBSOCKET %s %s %d",
                scope["path"],
                "closed" if accepted else "refused",
                code,
                extra={
                    "request_id": request_id,
                    "method": "WEBSOCKET",
                    "path": scope["path"],
                    "accepted": accepted,
                    "close_code": code,
                    "received": counts["received"],
                    "sent": counts["sent"],
                    "duration_ms": round(duration * 1000, 3),
                    "client": _client(scope),
                    "key_id": scope["state"].get("key_id"),
                },
            )


def _client(scope: Scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
