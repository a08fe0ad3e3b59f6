"""The shapes of the answers, for the OpenAPI document (``http/openapi.py``).

The routes build their answers as dicts and write them with orjson (faster than
a pydantic round trip per request); these models only describe them. Fields the
answers always carry are required, so a schema-driven tester catches a route
that drops one; nested values whose shape depends on the model (predictions,
metrics) stay open, with a description of what to expect.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

# -- health ------------------------------------------------------------------------


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool
    reason: str | None = Field(default=None, description="why not ready")
    warnings: list[str] | None = Field(
        default=None, description="what is degraded while ready, e.g. metrics not written"
    )


# -- /v1 -----------------------------------------------------------------------------


class PredictResponse(BaseModel):
    """``:predict``'s answer."""

    model: str
    version: str
    predictions: list[Any] = Field(
        description="one per sequence (or, with return_sequences, a list per sequence, one per "
        "real timestep; a forecaster's, a list of its horizon future steps): classifiers "
        "{label, probabilities in the order of classes}, regressors the output values"
    )
    sequence_id: int | str | None = Field(
        default=None, description="echoed when the request named one"
    )
    sequence_steps: int | None = Field(
        default=None,
        description="with a sequence_id: the timesteps the sequence has consumed after this "
        "chunk (the next chunk's sequence_offset)",
    )
    states: list[Any] | None = Field(
        default=None, description="with return_states: one opaque token per sequence"
    )


class ModelDescription(BaseModel):
    """``describe()`` in ``v1/routes.py``: what a client needs to call the model."""

    name: str
    version: str
    task: str
    target: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    classes: list[str] | None
    layers: list[dict[str, Any]]
    bidirectional: bool
    stateful: bool
    state_tensors: list[list[str]] = Field(
        default_factory=list,
        description="per layer, what a carried state holds: ['h', 'c'] for an LSTM layer, "
        "['h'] for a GRU layer; empty for a model that cannot carry state",
    )
    default_return_sequences: bool = Field(
        default=False,
        description="what :predict answers when a request does not say return_sequences",
    )
    front_end: dict[str, Any] | None = Field(
        default=None,
        description="Conv1D/pooling layers before the recurrent ones (layers, min_length, "
        "reshapes_time): such a model takes sequences of one length per request",
    )
    min_length: int = Field(default=1, description="the fewest timesteps a sequence may have")
    horizon: int | None = Field(
        default=None,
        description="forecasters: the future steps of every answer (outputs.forecast is "
        "[-1, horizon, K]); null for other models",
    )
    forecast: dict[str, Any] | None = Field(
        default=None, description="forecasters: {horizon, encoder_layers}; null otherwise"
    )
    metrics: dict[str, Any]
    parity_max_abs_diff: float | None
    dtype: str = Field(default="float32", description="the weights': float32, or int8")
    quantization: dict[str, Any] | None = Field(
        default=None,
        description="int8 versions: source version, quantizer options and the accuracy "
        "certificate against it (service/core/contract.py, Quantization)",
    )
    providers: list[str]
    created_at: str


class VersionStatus(BaseModel):
    version: str
    state: str = Field(description="AVAILABLE, LOADING, UNLOADING or END (TF-Serving's)")
    status: dict[str, Any]


class ModelStatus(ModelDescription):
    model_version_status: list[VersionStatus]


class ModelList(BaseModel):
    models: list[ModelDescription]


# -- V2 --------------------------------------------------------------------------------


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="batch first; -1 where a request fixes the size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] | None = Field(
        default=None, description="dtype (float32 or int8) and, for int8, quantization"
    )


class ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


class ModelConfig(BaseModel):
    """Triton's model configuration as JSON (``v2/metadata.py``), as perf_analyzer reads it."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    version_policy: dict[str, Any]
    instance_group: list[dict[str, Any]]
    default_model_filename: str
    dynamic_batching: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Triton's string parameters: dtype, and for int8 the quantization as JSON",
    )


class OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[float] | None = Field(default=None, description="row-major, unless binary")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size when the output's bytes follow the JSON"
    )


class InferenceResponse(BaseModel):
    """``$inference_response``; with binary outputs, the JSON part of the body."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="with parameters.sequence_id: sequence_steps, the timesteps the sequence "
        "has consumed after this chunk (the next chunk's parameters.sequence_offset)",
    )
    outputs: list[OutputTensor]


class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str = Field(description="READY, LOADING, UNLOADING or UNAVAILABLE")
    reason: str


class Empty(BaseModel):
    """``{}``: the repository's load and unload answer when they succeeded."""
