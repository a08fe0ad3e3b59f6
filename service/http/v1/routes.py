"""TF-Serving-style REST: ``/v1/models/{name}[/versions/{v}]:predict`` and model status.

Routes are thin: read the body (``http/body.py``; a simple one's instances straight
to float32, ``fast_instances.py``), validate the envelope with pydantic, turn the
instances into arrays (``instances.py``, or the numbers already read), hand them to the
model version's batcher (``core/batching.py``, through ``core/state/`` when the
request carries or continues state), and shape the answer (``predictions.py``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError
from starlette.responses import Response

from service.core import state
from service.core.contract import ModelMetadata
from service.core.errors import InvalidInput
from service.core.model import ServedModel
from service.core.repository import parse_version
from service.core.request import FINAL, SEQUENCE, InferenceRequest
from service.core.server import Server
from service.http.asgi import hot, server_of
from service.http.body import JsonLimits, declared_length, json_response, load_json, read_body
from service.http.errors import describe_validation_errors
from service.http.openapi import PREDICT_ERRORS, errors, json_answer, request_body
from service.http.responses import ModelDescription as ModelDescriptionAnswer
from service.http.responses import ModelList, ModelStatus, PredictResponse
from service.http.security import caller
from service.http.v1.fast_instances import SimpleInstances, read_simple
from service.http.v1.instances import decode_instances
from service.http.v1.predictions import format_predictions
from service.http.v1.state_json import decode_state, encode_states
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["v1"])


class PredictRequest(BaseModel):
    """The envelope only: ``instances`` stay raw lists until numpy reads them in one go."""

    model_config = ConfigDict(extra="forbid")

    # (Not in the docstring, which is the schema's description.) A simple body's
    # instances are validated as []: fast_instances.py has read its numbers already,
    # and _arrays takes them from there.
    instances: list[Any] = Field(
        description="sequences, each a list of timesteps, each a list of the model's features"
    )
    return_sequences: StrictBool = Field(
        default=False,
        description="true: one prediction per timestep (Keras return_sequences=True); "
        "false: one per sequence, at its last timestep",
    )
    # Server-held state (Keras stateful=True across requests), as Triton's sequence batcher.
    sequence_id: Any = Field(default=None, description="integer or string id of the sequence")
    sequence_start: StrictBool = False
    sequence_end: StrictBool = False
    sequence_offset: Any = Field(
        default=None,
        description="timesteps of the sequence consumed before this chunk: a chunk that "
        "does not start there is refused (409), and the last chunk resent unchanged is "
        "answered again without stepping the state twice (retry-safe chunks)",
    )
    # Client-carried state: any replica can continue the sequence.
    initial_states: list[dict[str, Any] | None] | None = None
    return_states: StrictBool = False

    def state_options(self, owner: str = "") -> state.StateOptions:
        """The state asked for, on behalf of ``owner`` (the caller's key id)."""
        return state.StateOptions(
            owner=owner,
            sequence_id=state.parse_sequence_id(self.sequence_id),
            sequence_start=self.sequence_start,
            sequence_end=self.sequence_end,
            sequence_offset=state.parse_sequence_offset(self.sequence_offset),
            initial_states=self.initial_states,
            return_states=self.return_states,
        )


async def _predict(request: Request, name: str, version: int | None) -> Response:
    server = server_of(request)
    declared = declared_length(request)
    if not server.large_requests.is_large(declared):  # the usual case, without a wait
        return await _admitted(request, server, name, version)
    async with server.large_requests.admit(declared, server.settings.request_timeout_s):
        return await _admitted(request, server, name, version)


async def _admitted(request: Request, server: Server, name: str, version: int | None) -> Response:
    model = server.repository.resolve(name, version)
    request.state.model, request.state.version = model.name, model.version
    with model.batcher.held():  # a rollout's drain waits for this request, body and all
        return await _served(request, server, model)


async def _served(request: Request, server: Server, model: ServedModel) -> Response:
    settings = server.settings
    body = await read_body(
        request,
        settings.max_body_bytes,
        settings.request_timeout_s,
        settings.lingering_close_bytes,
        settings.lingering_close_s,
    )
    meta = model.metadata
    limits = JsonLimits(settings.max_json_bytes, settings.json_thread_bytes)
    payload, simple = await _read_payload(body, limits, meta.num_features)
    try:
        envelope = PredictRequest.model_validate(payload)
    except ValidationError as exc:
        raise InvalidInput(describe_validation_errors(exc.errors())) from None
    options = envelope.state_options(caller(request))
    x, lengths = _arrays(envelope, simple, settings, meta)
    inference = InferenceRequest(
        x=x,
        lengths=lengths,
        outputs=SEQUENCE if envelope.return_sequences else FINAL,
        deadline=time.monotonic() + settings.request_timeout_s,
    )
    steps = None
    if options.stateful:
        result, steps = await state.infer(
            model,
            server.sequences,
            inference,
            options,
            lambda token, i: decode_state(meta, token, f"initial_states[{i}]"),
        )
    else:
        result = await model.batcher.submit(inference)
    answer: dict[str, Any] = {
        "model": meta.name,
        "version": str(meta.version),
        "predictions": format_predictions(meta, result, lengths, envelope.return_sequences),
    }
    if envelope.sequence_id is not None:
        answer["sequence_id"] = envelope.sequence_id
        answer["sequence_steps"] = steps
    if options.return_states:
        answer["states"] = encode_states(meta, result.final_states)
    return json_response(answer)


async def _read_payload(
    body: bytes, limits: JsonLimits, features: int
) -> tuple[Any, SimpleInstances | None]:
    """What pydantic validates, and the instances already as numbers when the body is simple.

    A simple body (``fast_instances.py``) is read without Python objects for its
    numbers; any other goes through ``load_json``, whose errors the client gets. A body
    over ``limits.max_bytes`` goes straight to ``load_json``, which refuses it (413);
    one over ``limits.thread_bytes`` is read on a worker thread, as ``load_json`` does.
    """
    if len(body) <= limits.max_bytes:
        if len(body) > limits.thread_bytes:
            read = await asyncio.to_thread(read_simple, body, features)
        else:
            read = read_simple(body, features)
        if read is not None:
            return read
    return await load_json(body, limits), None


def _arrays(
    envelope: PredictRequest,
    simple: SimpleInstances | None,
    settings: Settings,
    meta: ModelMetadata,
) -> tuple[np.ndarray, np.ndarray]:
    """The instances as (x, lengths), within the limits: from the simple body's numbers,
    or from the envelope's lists (``instances.py``), with the same checks and messages."""
    count = len(envelope.instances) if simple is None else len(simple)
    if count > settings.max_instances:
        raise InvalidInput(
            f"instances has {count} sequences; the limit is {settings.max_instances}"
        )
    if simple is not None:
        return simple.padded(
            max_timesteps=settings.max_timesteps, max_input_bytes=settings.max_input_bytes
        )
    return decode_instances(
        envelope.instances,
        features=meta.num_features,
        model=meta.name,
        max_timesteps=settings.max_timesteps,
        max_input_bytes=settings.max_input_bytes,
    )


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
        "outputs": {
            "final": {"shape": [-1, meta.output_size]},
            "sequence": {"shape": [-1, -1, meta.output_size]},
        },
        "classes": meta.classes,
        "layers": [layer.model_dump() for layer in meta.layers],
        "bidirectional": meta.bidirectional,
        "stateful": not meta.bidirectional,
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
