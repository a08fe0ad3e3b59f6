"""The inference routes, called straight from ASGI: the lean request path.

At thousands of small requests per second per core, FastAPI's per-request
machinery (route scan, dependency solving, three middleware layers) costs about
as much as the inference itself: a constant-returning FastAPI endpoint manages
~14k requests/s on one core here, a bare ASGI app ~50k. The predict and infer
endpoints need none of it, since they take only the ``Request`` and string path
parameters and build their own responses.

So this middleware matches ``POST`` requests against those few routes, as
FastAPI declared them (same path regexes, same endpoint functions, still in the
OpenAPI schema), calls the endpoint directly, and answers errors exactly as the
app's exception handlers would. Every other request goes to FastAPI untouched.
A route joins only if its endpoint's signature is that simple, checked once at
startup, so a future dependency on a hot route cannot be silently skipped.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import response_for


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
    """ASGI middleware in front of FastAPI for the routes named in ``paths``."""

    def __init__(
        self, app: ASGIApp, fastapi: FastAPI, routers: list[APIRouter], paths: set[str]
    ) -> None:
        self.app = app
        self.fastapi = fastapi
        self.routes: list[APIRoute] = []
        for route in (r for router in routers for r in router.routes):
            if isinstance(route, APIRoute) and route.path in paths:
                if not _direct(route):
                    raise TypeError(f"{route.path} cannot be served directly: {route.endpoint}")
                self.routes.append(route)
        missing = paths - {r.path for r in self.routes}
        if missing:
            raise ValueError(f"no such routes to serve directly: {sorted(missing)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        scope["app"] = self.fastapi
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
