"""The Open Inference Protocol's model repository extension (as Triton serves it).

``POST /v2/repository/index`` lists every version on disk with its state;
``.../models/{m}/load`` brings a model in line with the disk and its version
policy (the rolling update: new versions load and warm up, then old ones drain
and close); ``.../models/{m}/unload`` drains and closes all of its versions.

Who may: ``http/security.py`` lets only keys with the ``admin`` scope reach
these routes (when keys are on), and load and unload also need
``model_control_mode=explicit`` (Triton's ``--model-control-mode``): under
``none`` (the default) and ``poll`` they are refused with 403 saying how to
enable them. Every call leaves an audit line (``service.audit``): the action,
the model, the client's address, the key's id, the outcome.

A load or unload applies to the process that answers it: with ``workers > 1``
each worker process keeps its own repository, and nothing is sent to the others.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.http.asgi import server_of
from service.http.body import json_response
from service.http.openapi import errors, json_answer
from service.http.responses import Empty, RepositoryEntry
from service.http.security import caller, client_address
from service.v2.control import audit, check_mode, load_model

router = APIRouter(prefix="/v2/repository", tags=["v2 repository"])

audit_log = logging.getLogger("service.audit")


@asynccontextmanager
async def audited(request: Request, action: str, name: str = "") -> AsyncIterator[None]:
    """Log who did what to which model, and how it ended, whatever happens inside."""
    async with audit(action, name, caller(request), client_address(request.scope)):
        yield


def check_control(request: Request, action: str) -> None:
    check_mode(server_of(request).settings, action)


@router.post(
    "/index",
    summary="Every model version on disk, with its state",
    responses=json_answer(list[RepositoryEntry], "Every version on disk"),
)
async def index(request: Request) -> Response:
    async with audited(request, "index"):
        statuses = server_of(request).repository.index()
    return json_response(
        [
            {"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason}
            for s in statuses
        ]
    )


@router.post(
    "/models/{name}/load",
    summary="Load new versions, retire those the policy drops",
    responses={**json_answer(Empty, "Loaded"), **errors(400, 401, 403, 404)},
)
async def load(request: Request, name: str) -> Response:
    repository = server_of(request).repository
    async with audited(request, "load", name):
        check_control(request, "load")
        await load_model(repository, name)
    return json_response({})


@router.post(
    "/models/{name}/unload",
    summary="Drain and unload every version of a model",
    responses={**json_answer(Empty, "Unloaded"), **errors(401, 403, 404, 409)},
)
async def unload(request: Request, name: str) -> Response:
    async with audited(request, "unload", name):
        check_control(request, "unload")
        await server_of(request).repository.unload_model(name)
    return json_response({})
