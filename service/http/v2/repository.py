"""The Open Inference Protocol's model repository extension (as Triton serves it).

``POST /v2/repository/index`` lists every version on disk with its state;
``.../models/{m}/load`` brings a model in line with the disk and its version
policy (the rolling update: new versions load and warm up, then old ones drain
and close); ``.../models/{m}/unload`` drains and closes all of its versions.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.core.errors import BadRequest
from service.http.asgi import server_of
from service.http.body import json_response
from service.http.openapi import errors, json_answer
from service.http.responses import Empty, RepositoryEntry

router = APIRouter(prefix="/v2/repository", tags=["v2 repository"])


@router.post(
    "/index",
    summary="Every model version on disk, with its state",
    responses=json_answer(list[RepositoryEntry], "Every version on disk"),
)
async def index(request: Request) -> Response:
    return json_response(
        [
            {"name": s.name, "version": str(s.version), "state": s.state, "reason": s.reason}
            for s in server_of(request).repository.index()
        ]
    )


@router.post(
    "/models/{name}/load",
    summary="Load new versions, retire those the policy drops",
    responses={**json_answer(Empty, "Loaded"), **errors(400, 404)},
)
async def load(request: Request, name: str) -> Response:
    repository = server_of(request).repository
    failed = await repository.load_model(name)
    if failed:
        reasons = "; ".join(f"version {s.version}: {s.reason}" for s in failed)
        serving = ", ".join(str(m.version) for m in repository.versions(name)) or "none"
        raise BadRequest(f"failed to load {name!r} {reasons}; versions serving: {serving}")
    return json_response({})


@router.post(
    "/models/{name}/unload",
    summary="Drain and unload every version of a model",
    responses={**json_answer(Empty, "Unloaded"), **errors(404)},
)
async def unload(request: Request, name: str) -> Response:
    await server_of(request).repository.unload_model(name)
    return json_response({})
