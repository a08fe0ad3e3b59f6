"""Liveness and readiness, at the Open Inference Protocol's paths.

Live: the process answers. Ready: startup finished and at least one model is
loaded, so an orchestrator sends no traffic before the models can take it. This is
*server* readiness (KServe's and Triton's ``/v2/health/ready``): a version that is
loading, draining or failed to load after startup leaves a serving server ready;
that version's own readiness is ``/v2/models/{m}/versions/{v}/ready``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import metrics_files
from service.http.asgi import server_of
from service.http.body import json_response
from service.http.openapi import json_answer
from service.http.paths import LIVE, READY
from service.http.responses import Live, Ready

router = APIRouter(tags=["health"])


@router.get(LIVE, summary="The process is up", responses=json_answer(Live, "Live"))
async def live(request: Request) -> Response:
    return json_response({"live": bool(server_of(request).live)})


@router.get(
    READY,
    summary="Every model is loaded: send traffic",
    responses={
        **json_answer(Ready, "Ready"),
        503: {"model": Ready, "description": "Not ready yet: startup has not finished"},
    },
)
async def ready(request: Request) -> Response:
    reason = server_of(request).not_ready_reason()
    if not reason:
        if problem := metrics_files.problem():  # serving works: a warning, not unready
            return json_response({"ready": True, "warnings": [problem]})
        return json_response({"ready": True})
    return json_response({"ready": False, "reason": reason}, status=503)
