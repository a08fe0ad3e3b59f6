"""The model repository contract: the only thing models/ and service/ share.

A model version lives at ``<repository>/<name>/<version>/`` and holds two files:
``model.onnx`` and ``metadata.json``. The exporter (``models/export.py``) writes
the metadata with these classes; the server (``service/core/repository.py``) reads it
with the same classes and learns everything about a model from it: tensor names,
shapes, labels, normalisation. Nothing here imports torch or onnxruntime, so the
serving image can depend on it and the training side can too.

Bump ``SCHEMA_VERSION`` on any change an older reader could misread; readers
refuse versions they do not know rather than guess. The optional ``quantization``
block (int8 versions, ``models/quantize.py``; its classes in ``quantization.py``)
did not bump it: fp32 metadata is unchanged, and an older reader refuses an int8
version's unknown block (extra fields are forbidden) rather than serving it as fp32.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

from service.core.forecast import Forecast, forecast_problems
from service.core.quantization import Quantization
from service.core.state_names import STATE_TENSORS, StateNames, state_problems

SCHEMA_VERSION = 1
MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"

Task = Literal["classification", "regression"]
Target = Literal["final", "sequence", "forecast"]


def file_sha256(path: Path) -> str:
    """The checksum that ``onnx.sha256`` records (and datasets' provenance), read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LayerSpec(_Frozen):
    """One recurrent layer: its cell, its units per direction, and which way it reads.

    ``cell`` is ``lstm`` (state (h, c)) or ``gru`` (Keras's GRU, state h alone;
    ``reset_after`` false is the ONNX GRU's ``linear_before_reset=0``). GRU
    layers exported before GRU state was carried have no state tensors: such a
    model runs each sequence whole.

    Each layer has its own direction: forward (the default), both ways
    (``bidirectional``: its states hold two directions), or backward only
    (``go_backwards``, Keras's setting: one direction, reading each sequence
    from its end). Any backward reading needs the whole sequence at once.
    """

    units: int = Field(gt=0)
    bidirectional: bool = False
    go_backwards: bool = False
    cell: Literal["lstm", "gru"] = "lstm"
    reset_after: bool = True

    @model_validator(mode="after")
    def _one_direction(self) -> LayerSpec:
        if self.bidirectional and self.go_backwards:
            raise ValueError("a layer is bidirectional or go_backwards, not both")
        if self.cell == "lstm" and not self.reset_after:
            raise ValueError("reset_after is a GRU setting; an LSTM layer keeps the default")
        return self

    @model_serializer(mode="wrap")
    def _lstm_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An LSTM layer is written as before GRU layers existed (no ``cell``, no
        ``reset_after``), so servers that predate them still read LSTM models; they
        refuse a GRU layer's unknown fields rather than serve it as an LSTM."""
        data: dict[str, Any] = handler(self)
        if self.cell == "lstm":
            data.pop("cell", None)
            data.pop("reset_after", None)
        return data

    @property
    def reads_backwards(self) -> bool:
        return self.bidirectional or self.go_backwards

    @property
    def state_tensors(self) -> tuple[str, ...]:
        """The layer's state tensors in carried order: ("h", "c"), or ("h",) for a GRU."""
        return STATE_TENSORS[self.cell]

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        return self.units * self.directions


class Normalization(_Frozen):
    """Per-feature standardisation fitted on the training split.

    ``in_graph`` says whether the ONNX graph already applies ``(x - mean) / std``.
    The exporter bakes it in, so that any onnxruntime client of the file gets the
    same numbers as the server; a reader must apply it itself when it is false.
    """

    mean: list[float]
    std: list[float]
    in_graph: bool = True


class TensorNames(_Frozen):
    """Names of every graph input and output the server feeds or reads.

    Shapes, by convention of the exporter (and checked by the server at load):
    ``x`` float32 [batch, time, features]; ``lengths`` int64 [batch];
    each state float32 [directions, batch, units] (``state_names.py``: a GRU
    layer has ``h`` only, an LSTM layer ``h`` and ``c``);
    ``sequence_output`` float32 [batch, time, outputs];
    ``final_output`` float32 [batch, outputs].
    The state lists are empty for a model with a front end or a forecast, and for GRU
    models exported before GRU state was carried.
    A forecaster (``forecast.py``) has no ``sequence_output`` (None) and its
    ``final_output`` is float32 [batch, horizon, outputs].
    """

    x: str = "x"
    lengths: str = "lengths"
    initial_states: list[StateNames]
    sequence_output: str | None = "sequence_output"
    final_output: str = "final_output"
    final_states: list[StateNames]


class ParityCase(_Frozen):
    """One torch-vs-onnxruntime comparison made at export time."""

    batch: int
    time: int
    lengths: list[int]
    max_abs_diff: float


class Parity(_Frozen):
    """Export-time agreement of onnxruntime with torch over every output.

    ``max_abs_diff`` is absolute for outputs within [-1, 1] (probabilities,
    hidden states) and relative to the magnitude for larger ones (cell states,
    regression values), whose float32 rounding grows with them.
    """

    tolerance: float
    max_abs_diff: float
    cases: list[ParityCase]


class DataProvenance(_Frozen):
    """Where the training data came from, so a model can be traced to its inputs."""

    source: str
    sha256: str
    citation: str | None = None
    n_train: int
    n_validation: int
    n_test: int


class TrainingInfo(_Frozen):
    hyperparameters: dict[str, float | int | str | bool | list[int] | None]
    epochs_run: int
    metrics: dict[str, float | list[list[int]] | list[str]]
    data: DataProvenance


class OnnxInfo(_Frozen):
    file: str = MODEL_FILENAME
    opset: int
    sha256: str
    exporter: str = "torch.onnx (TorchScript, dynamo=False)"


class FrontEndLayer(_Frozen):
    """One Conv1D or pooling layer before the recurrent ones, as Keras names it."""

    kind: Literal["Conv1D", "MaxPooling1D", "AveragePooling1D"]
    name: str


class FrontEnd(_Frozen):
    """Conv1D/pooling layers before the recurrent ones (``models/frontend.py``).

    The graph reads each request's whole time axis and takes no lengths past it, so
    the server runs such a model on equal-length sequences of at least ``min_length``
    steps, never in time chunks, and it carries no state. ``reshapes_time`` says which
    layer and setting make the recurrent layers' steps differ from the input's ("" when
    they match one to one); per-timestep outputs are served only when they match.
    """

    layers: list[FrontEndLayer] = Field(min_length=1)
    min_length: int = Field(ge=1)
    reshapes_time: str = ""


class ModelMetadata(_Frozen):
    """Everything the server needs to know about one exported model version."""

    schema_version: int = SCHEMA_VERSION
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    version: int = Field(ge=1)
    task: Task
    target: Target = "final"
    num_features: int = Field(gt=0)
    feature_names: list[str] | None = None
    classes: list[str] | None = None
    output_size: int = Field(gt=0)
    layers: list[LayerSpec] = Field(min_length=1)
    # What /v1 answers when a request does not say return_sequences: true for a
    # model whose own output is per timestep (Keras's return_sequences=True head).
    default_return_sequences: bool = False
    # Conv1D/pooling layers before the recurrent ones, if the model was imported so.
    front_end: FrontEnd | None = None
    dropout: float = 0.0
    normalization: Normalization
    tensors: TensorNames
    onnx: OnnxInfo
    parity: Parity
    training: TrainingInfo | None = None
    quantization: Quantization | None = None
    # An encoder-decoder forecaster's horizon (target "forecast"): see forecast.py
    forecast: Forecast | None = None
    created_at: datetime
    library_versions: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelMetadata:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"metadata schema_version {self.schema_version} is not supported "
                f"(this server reads version {SCHEMA_VERSION})"
            )
        if self.task == "classification" and (
            not self.classes or len(self.classes) != self.output_size
        ):
            raise ValueError("a classification model needs one class name per output")
        if self.feature_names is not None and len(self.feature_names) != self.num_features:
            raise ValueError("feature_names must name every feature")
        for label, values in (("mean", self.normalization.mean), ("std", self.normalization.std)):
            if len(values) != self.num_features:
                raise ValueError(f"normalization.{label} needs {self.num_features} values")
        if self.quantization and self.quantization.source_version >= self.version:
            raise ValueError("an int8 version must come after its fp32 source version")
        t = self.tensors
        states = bool(t.initial_states or t.final_states)
        n = len(self.layers)
        if found := forecast_problems(self.target, self.forecast, n, t.sequence_output, states):
            raise ValueError("; ".join(found))
        if self.front_end is not None or self.forecast is not None:
            if states:
                raise ValueError(
                    "a model with a front end or a forecast carries no state: it names no states"
                )
            if self.front_end and self.front_end.reshapes_time and self.default_return_sequences:
                raise ValueError("per-timestep outputs need a front end that keeps the time axis")
        # A GRU model may name none: it was exported before GRU state was carried.
        elif states or not self.has_gru:
            cells = [layer.cell for layer in self.layers]
            if found := state_problems(cells, t.initial_states, t.final_states):
                raise ValueError("; ".join(found))
        return self

    @model_serializer(mode="wrap")
    def _as_before_forecasts(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``forecast`` key unless there is one: other models' metadata stays as it was,
        readable by servers that predate forecasters (which refuse a forecaster's block)."""
        data: dict[str, Any] = handler(self)
        if self.forecast is None:
            data.pop("forecast", None)
        return data

    @property
    def horizon(self) -> int | None:
        """Future steps per answer of a forecaster; None for any other model."""
        return self.forecast.horizon if self.forecast else None

    @property
    def dtype(self) -> str:
        """The weights' type as clients read it: ``int8`` for a quantized version."""
        return self.quantization.dtype if self.quantization else "float32"

    @property
    def bidirectional(self) -> bool:
        """True if any layer reads backwards (bidirectional or go_backwards): such a
        model needs each sequence whole, so it cannot carry state forward."""
        return any(layer.reads_backwards for layer in self.layers)

    @property
    def has_gru(self) -> bool:
        """True if any layer is a GRU (whose state is h alone)."""
        return any(layer.cell == "gru" for layer in self.layers)

    @property
    def has_state_tensors(self) -> bool:
        """Whether the graph takes and returns states: not with a front end, nor for a
        GRU model exported before GRU state was carried."""
        return bool(self.tensors.initial_states)

    @property
    def carries_state(self) -> bool:
        """Whether the model can run a sequence in pieces, state carried between them:
        state tensors (LSTM, GRU or both), no backward reading, no front end, not a
        forecaster. Otherwise each sequence runs whole."""
        return (
            self.has_state_tensors
            and not self.bidirectional
            and self.front_end is None
            and self.forecast is None
        )

    def state_shape(self, layer: int, batch: int) -> tuple[int, int, int]:
        spec = self.layers[layer]
        return (spec.directions, batch, spec.units)
