"""The Open Inference Protocol (KServe V2) as Triton speaks it, so its clients and tools work.

``GET /v2``, ``GET /v2/models/{m}[/versions/{v}]`` (+ ``/ready``, ``/config``) and
``POST .../infer``, with the binary tensor data extension both ways and Triton's
sequence extension (``parameters.sequence_id``, routed to ``core/state/``).
Health routes live in ``http/health.py``, the repository extension in
``repository.py``.

Routes only translate: an infer hands the data plane (``service/dataplane.py``) its
body reader (``http/body.py``, Content-Encoding decoded) and the V2 codec
(``codec.py``), and answers JSON or the binary tensor extension.

Status codes follow the protocol (``http/errors.py``'s V2 table): a request that
does not fit the model is a 400 here (``/v1`` answers 422 for the same core
error), an unknown model or version 404, a loading one or a full queue 503, all
with ``{"error": "..."}``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.core.model import ServedModel
from service.core.repository import parse_version
from service.core.server import Server
from service.http.asgi import hot, label, server_of
from service.http.body import declared_length, json_response, read_body
from service.http.openapi import (
    INFER_ERRORS,
    MODEL_ERRORS,
    binary_answer,
    errors,
    json_answer,
    request_body,
)
from service.http.responses import (
    InferenceResponse,
    ModelConfig,
    ModelMetadata,
    ModelReady,
    ServerMetadata,
)
from service.http.security import caller
from service.http.v2.codec import HEADER_LENGTH, Payload, binary_response
from service.v2.metadata import model_config, model_metadata, server_metadata
from service.v2.schema import InferenceRequestBody

router = APIRouter(prefix="/v2", tags=["v2"])


def resolve(server: Server, name: str, version: str | None) -> ServedModel:
    """The served version asked for; 503 rather than 404 while it is loading or draining."""
    return server.repository.resolve(name, None if version is None else parse_version(version))


async def infer(request: Request, name: str, version: str | None) -> Response:
    app = request.app.state
    limits = app.body_limits_decoded

    async def read() -> Payload:
        return await read_body(request, limits), request.headers.get(HEADER_LENGTH)

    header, arrays = await app.dataplane.infer(
        app.v2_codec,
        name,
        None if version is None else parse_version(version),
        read,
        size=declared_length(request),
        owner=caller(request),
        resolved=partial(label, request),
    )
    return binary_response(header, arrays) if arrays else json_response(header)


_X = [0.1, 0.2, 0.3, 0.0, 0.1, 0.2, 0.2, 0.1, 0.0, 0.1, 0.0, 0.1]
EXAMPLES = {
    "final output": {
        "inputs": [{"name": "x", "shape": [1, 2, 6], "datatype": "FP32", "data": _X}],
        "outputs": [{"name": "final_output"}],
    },
    "ragged batch with lengths": {
        "inputs": [
            {"name": "x", "shape": [2, 2, 6], "datatype": "FP32", "data": _X + _X},
            {"name": "lengths", "shape": [2], "datatype": "INT64", "data": [2, 1]},
        ],
        "outputs": [{"name": "final_output"}],
    },
}
"""Requests for the default model (input ``x``, 6 features), for Swagger UI's "Try it out"."""

BINARY = (
    "The binary tensor data extension: the JSON request, whose inputs carry "
    "parameters.binary_data_size instead of data, then each input's raw little-endian bytes "
    "in order; the header Inference-Header-Content-Length gives the JSON part's size. "
    "Outputs asked for with parameters.binary_data come back the same way."
)

INFER_DOCS: dict[str, Any] = {
    "openapi_extra": request_body(InferenceRequestBody, EXAMPLES, binary=BINARY),
    "responses": {
        **binary_answer(InferenceResponse, "The outputs"),
        **errors(*INFER_ERRORS),
    },
}
MODEL_DOCS = errors(*MODEL_ERRORS)


# The infer routes come first: routes are matched in order, and these are the hot ones.
@hot(router, "/models/{name}/infer", summary="Infer with the latest version", **INFER_DOCS)
async def model_infer(request: Request, name: str) -> Response:
    return await infer(request, name, None)


@hot(
    router,
    "/models/{name}/versions/{version}/infer",
    summary="Infer with one version",
    **INFER_DOCS,
)
async def version_infer(request: Request, name: str, version: str) -> Response:
    return await infer(request, name, version)


@router.get(
    "",
    summary="Server metadata and the protocol extensions it supports",
    responses=json_answer(ServerMetadata, "The server"),
)
async def metadata(request: Request) -> Response:
    return json_response(server_metadata(request.app.version))


def _describe(request: Request, name: str, version: str | None) -> Response:
    server = server_of(request)
    model = resolve(server, name, version)
    versions = [m.version for m in server.repository.versions(name)]
    return json_response(model_metadata(model, versions))


def _ready(request: Request, name: str, version: str | None) -> Response:
    model = resolve(server_of(request), name, version)
    return json_response({"name": model.name, "version": str(model.version), "ready": True})


def _config(request: Request, name: str, version: str | None) -> Response:
    server = server_of(request)
    model = resolve(server, name, version)
    return json_response(model_config(model, server.settings, server.repository.policy(name)))


@router.get(
    "/models/{name}",
    summary="Inputs and outputs of a model's latest version",
    responses={**json_answer(ModelMetadata, "The model's tensors"), **MODEL_DOCS},
)
async def model(request: Request, name: str) -> Response:
    return _describe(request, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    summary="Inputs and outputs of one version",
    responses={**json_answer(ModelMetadata, "The version's tensors"), **MODEL_DOCS},
)
async def model_version(request: Request, name: str, version: str) -> Response:
    return _describe(request, name, version)


@router.get(
    "/models/{name}/ready",
    summary="200 when the model can take requests",
    responses={**json_answer(ModelReady, "Ready"), **MODEL_DOCS},
)
async def model_ready(request: Request, name: str) -> Response:
    return _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="200 when the version can",
    responses={**json_answer(ModelReady, "Ready"), **MODEL_DOCS},
)
async def version_ready(request: Request, name: str, version: str) -> Response:
    return _ready(request, name, version)


@router.get(
    "/models/{name}/config",
    summary="Triton model configuration (perf_analyzer)",
    responses={**json_answer(ModelConfig, "The configuration"), **MODEL_DOCS},
)
async def config(request: Request, name: str) -> Response:
    return _config(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/config",
    summary="Configuration of one version",
    responses={**json_answer(ModelConfig, "The configuration"), **MODEL_DOCS},
)
async def version_config(request: Request, name: str, version: str) -> Response:
    return _config(request, name, version)
