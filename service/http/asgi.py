"""How the ASGI app is put together: ``HotRoutes`` in front of FastAPI, the ``@hot``
declaration, and how a route reaches the core (``server_of``, ``label``).

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
silently skip. The whole stack (``app.py``): ``RequestObserver`` (``observer.py``)
-> ``Security`` (``security.py``) -> ``HotRoutes`` -> FastAPI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core import cpu_budget
from service.core.model import ServedModel
from service.core.server import Server
from service.http.errors import response_for

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
        cpu_budget.step("http: respond (headers, uvicorn's write)")
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


class BudgetedApp:
    """The outermost layer when ``LSTM_SERVE_CPU_BUDGET`` is on: each HTTP request's
    handling on the event loop charged to the steps it passes (``core/cpu_budget.py``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await cpu_budget.timed(
            self.app(scope, receive, send), "http: request id, security, routing"
        )
