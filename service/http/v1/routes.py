"""TF-Serving-style REST: ``/v1/models/{name}[/versions/{v}]:predict`` and model status.

Routes only translate: a predict hands the data plane (``service/dataplane.py``) its
body reader (``http/body.py``) and the ``/v1`` codec (``codec.py``), and answers JSON.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.core.contract import ModelMetadata
from service.core.frontend import no_steps
from service.core.model import ServedModel
from service.core.repository import parse_version
from service.core.server import Server
from service.http.asgi import hot, label, server_of
from service.http.body import declared_length, json_response, read_body
from service.http.openapi import PREDICT_ERRORS, errors, json_answer, request_body
from service.http.responses import ModelDescription as ModelDescriptionAnswer
from service.http.responses import ModelList, ModelStatus, PredictResponse
from service.http.security import caller
from service.http.v1.codec import PredictRequest

router = APIRouter(prefix="/v1", tags=["v1"])


async def _predict(request: Request, name: str, version: int | None) -> Response:
    app = request.app.state
    answer = await app.dataplane.infer(
        app.v1_codec,
        name,
        version,
        partial(read_body, request, app.body_limits),
        size=declared_length(request),
        owner=caller(request),
        resolved=partial(label, request),
    )
    return json_response(answer)


_STEPS = [[0.1, 0.2, 0.3, 0.0, 0.1, 0.2], [0.2, 0.1, 0.0, 0.1, 0.0, 0.1]]
EXAMPLES = {
    "final outputs": {"instances": [_STEPS, [[1.5, -0.3, 2.2, 0.4, 0.1, -0.9]]]},
    "per-timestep outputs": {"instances": [_STEPS], "return_sequences": True},
}
"""Requests for the default model (6 features), for Swagger UI's "Try it out"."""

PREDICT_DOCS: dict[str, Any] = {
    "openapi_extra": request_body(PredictRequest, EXAMPLES),
    "responses": {**json_answer(PredictResponse, "The predictions"), **errors(*PREDICT_ERRORS)},
}


@hot(router, "/models/{name}:predict", summary="Predict with the latest version", **PREDICT_DOCS)
async def predict(request: Request, name: str) -> Response:
    return await _predict(request, name, None)


@hot(
    router,
    "/models/{name}/versions/{version}:predict",
    summary="Predict with one version",
    **PREDICT_DOCS,
)
async def predict_version(request: Request, name: str, version: str) -> Response:
    return await _predict(request, name, parse_version(version))


def _outputs(meta: ModelMetadata) -> dict[str, Any]:
    """The answer's shapes: a forecaster's one forecast, or the final and per-step outputs."""
    k = meta.output_size
    if meta.horizon is not None:
        return {"forecast": {"shape": [-1, meta.horizon, k]}}
    if no_steps(meta):  # none per timestep where a front end shortens the time axis
        return {"final": {"shape": [-1, k]}}
    return {"final": {"shape": [-1, k]}, "sequence": {"shape": [-1, -1, k]}}


def describe(model: ServedModel) -> dict[str, Any]:
    """What a client needs to call the model, and what an operator needs to trust it."""
    meta = model.metadata
    training = meta.training
    return {
        "name": meta.name,
        "version": str(meta.version),
        "task": meta.task,
        "target": meta.target,
        "inputs": {
            "instances": {
                "shape": [-1, -1, meta.num_features],
                "dtype": "float32",
                "features": meta.feature_names,
            }
        },
        "outputs": _outputs(meta),
        "classes": meta.classes,
        "layers": [layer.model_dump() for layer in meta.layers],
        "bidirectional": meta.bidirectional,
        "stateful": meta.carries_state,
        # per layer, the state tensors carried: LSTM ["h", "c"], GRU ["h"]
        "state_tensors": (
            [list(layer.state_tensors) for layer in meta.layers] if meta.carries_state else []
        ),
        "default_return_sequences": meta.default_return_sequences,
        # Conv1D/pooling layers before the recurrent ones: equal lengths per request, at
        # least min_length steps each, per-timestep outputs only if it keeps the time axis
        "front_end": meta.front_end.model_dump() if meta.front_end else None,
        "min_length": meta.front_end.min_length if meta.front_end else 1,
        # forecasters: the future steps of every answer, and where the decoder starts
        "horizon": meta.horizon,
        "forecast": meta.forecast.model_dump() if meta.forecast else None,
        "metrics": training.metrics if training else {},
        "parity_max_abs_diff": meta.parity.max_abs_diff,
        "dtype": meta.dtype,
        # int8 versions: the source version, the options and the accuracy certificate
        "quantization": meta.quantization.model_dump() if meta.quantization else None,
        "providers": model.runtime.providers,
        "created_at": meta.created_at.isoformat(),
    }


# Triton's repository states as TF-Serving's model_version_status states.
_TF_STATES = {
    "READY": "AVAILABLE",
    "LOADING": "LOADING",
    "UNLOADING": "UNLOADING",
    "UNAVAILABLE": "END",
}


def _status(server: Server, name: str) -> list[dict[str, Any]]:
    return [
        {
            "version": str(s.version),
            "state": _TF_STATES[s.state],
            "status": {
                "error_code": "UNKNOWN" if s.state == "UNAVAILABLE" else "OK",
                "error_message": s.reason,
            },
        }
        for s in server.repository.statuses(name)
    ]


@router.get(
    "/models", summary="Loaded models", responses=json_answer(ModelList, "Every model loaded")
)
async def list_models(request: Request) -> Response:
    server = server_of(request)
    return json_response(
        {"models": [describe(server.repository.get(n)) for n in server.repository.names()]}
    )


@router.get(
    "/models/{name}",
    summary="A model's latest version and the status of all",
    responses={**json_answer(ModelStatus, "The model"), **errors(404)},
)
async def model_status(request: Request, name: str) -> Response:
    server = server_of(request)
    model = server.repository.resolve(name)
    return json_response({**describe(model), "model_version_status": _status(server, name)})


@router.get(
    "/models/{name}/versions/{version}",
    summary="One version of a model",
    responses={**json_answer(ModelDescriptionAnswer, "The version"), **errors(404)},
)
async def version_status(request: Request, name: str, version: str) -> Response:
    server = server_of(request)
    return json_response(describe(server.repository.resolve(name, parse_version(version))))
