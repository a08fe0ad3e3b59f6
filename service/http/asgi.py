"""The ASGI stack around FastAPI: ``RequestObserver`` -> ``HotRoutes`` -> FastAPI.

Routes reach the core through ``server_of(request)`` and declare inference
endpoints with ``@hot``; both live here because both are about how the ASGI
app is put together.

**RequestObserver** (outermost): request id, metrics and one access-log line per
request. Pure ASGI rather than ``BaseHTTPMiddleware`` because it costs almost
nothing per request and does not buffer streaming bodies.

**HotRoutes**: the inference routes, called straight from ASGI. At thousands of
small requests per second per core, FastAPI's per-request machinery (route
scan, dependency solving, middleware layers) costs about as much as the
inference itself: a constant-returning FastAPI endpoint manages ~14k
requests/s on one core here, a bare ASGI app ~50k. The predict and infer
endpoints need none of it: they take only the ``Request`` and string path
parameters and build their own responses. Such an endpoint is declared with
``@hot(router, path)`` beside the others in its routes module; it is still an
ordinary FastAPI route (same path regex, same endpoint, in the OpenAPI schema),
and ``HotRoutes`` calls it directly, answering errors exactly as the app's
exception handlers would. Every other request goes to FastAPI untouched.

Two guards keep the shortcut honest: a route joins only if its endpoint's
signature is that simple (checked when the app is built), and the app refuses
to start if a middleware was added to FastAPI, which the hot routes would
silently skip.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from prometheus_client import Counter, Histogram
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.model import ServedModel
from service.core.server import Server
from service.http.errors import response_for
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

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])

_HOT = "__lstm_hot_route__"


def server_of(connection: HTTPConnection) -> Server:
    """The core behind the app (``create_app`` puts it in ``app.state``)."""
    server: Server = connection.app.state.server
    return server


def label(connection: HTTPConnection, model: ServedModel) -> None:
    """Name the model version that serves the request, for its access-log line and metrics."""
    connection.state.model, connection.state.version = model.name, model.version


def hot(router: APIRouter, path: str, **kwargs: Any) -> Callable[[Endpoint], Endpoint]:
    """``@router.post(path)`` for an inference route that ``HotRoutes`` serves directly."""

    def declare(endpoint: Endpoint) -> Endpoint:
        router.post(path, **kwargs)(endpoint)
        setattr(endpoint, _HOT, True)
        return endpoint

    return declare


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's id when it is sane (bounded, printable), else a fresh one."""
    for key, value in headers:
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
    return next(_ids)


_CHILDREN: dict[tuple[object, ...], Any] = {}


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: the lookup costs more than the increment.

    Bounded like the labels themselves: route templates, status codes, and model
    names and versions only once the model was found.
    """
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


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
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        scope.setdefault("state", {})["request_id"] = request_id
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - start)

    def _record(self, scope: Scope, request_id: str, status: int, duration: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        state = scope.get("state", {})
        model = str(state.get("model", ""))
        version = str(state.get("version", ""))
        _child(REQUESTS, model, version, endpoint, str(status)).inc()
        _child(REQUEST_DURATION, endpoint).observe(duration)
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
            WEBSOCKET_SESSIONS.labels(endpoint, str(code)).inc()
            WEBSOCKET_DURATION.labels(endpoint).observe(duration)
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


def _direct(route: APIRoute) -> bool:
    """True when calling the endpoint as ``endpoint(request, **path_params)`` is all it needs."""
    params = inspect.signature(route.endpoint).parameters.values()
    return (
        route.methods == {"POST"}
        and not route.dependencies
        and all(
            p.annotation in (Request, "Request")
            or (p.annotation in (str, "str") and p.name in route.param_convertors)
            for p in params
        )
    )


class HotRoutes:
    """ASGI middleware in front of FastAPI for the routes declared with ``@hot``."""

    def __init__(self, fastapi: FastAPI, routers: list[APIRouter]) -> None:
        """Serve the ``@hot`` routes of ``routers`` (each included in ``fastapi``).

        The routers' own route lists are read, not the app's: FastAPI may include
        a router lazily, as a single entry standing for all of its routes.
        """
        self.app = fastapi
        self.routes: list[APIRoute] = []
        for route in (r for router in routers for r in router.routes):
            if isinstance(route, APIRoute) and getattr(route.endpoint, _HOT, False):
                if not _direct(route):
                    raise TypeError(f"{route.path} cannot be served directly: {route.endpoint}")
                self.routes.append(route)
        if not self.routes:
            raise ValueError("none of these routers declares a @hot route")

    def skipped_middleware(self) -> list[str]:
        """Middleware added to FastAPI, which requests on the hot routes would not pass."""
        return [getattr(m.cls, "__name__", repr(m.cls)) for m in self.app.user_middleware]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            for route in self.routes:
                match = route.path_regex.match(path)
                if match is not None:
                    await self._serve(route, match.groupdict(), scope, receive, send)
                    return
        await self.app(scope, receive, send)

    async def _serve(
        self, route: APIRoute, params: dict[str, Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        scope["app"] = self.app
        scope["route"] = route  # the access log and metrics label requests by route template
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            response = await route.endpoint(request, **params)
        except ClientDisconnect:
            return  # nobody is left to answer; a queued inference was dropped with the task
        except Exception as exc:
            response = response_for(request, exc)
        await response(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse to start when FastAPI has middleware the hot routes would skip.

        As Starlette's router does with a failing startup: ``lifespan.startup.failed``
        first (uvicorn then stops, with the message, instead of taking the app for
        one without lifespan support), then the error itself.
        """
        skipped = self.skipped_middleware()
        if not skipped:
            await self.app(scope, receive, send)
            return
        error = (
            f"middleware {', '.join(skipped)} was added to the FastAPI app, but the inference "
            "routes are served past FastAPI's middleware stack (service/http/asgi.py): wrap "
            "the ASGI app that create_app() returns instead"
        )
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": error})
        raise RuntimeError(error)
