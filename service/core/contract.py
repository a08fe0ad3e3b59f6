"""The model repository contract: the only thing models/ and service/ share.

A model version lives at ``<repository>/<name>/<version>/`` and holds two files:
``model.onnx`` and ``metadata.json``. The exporter (``models/export.py``) writes
the metadata with these classes; the server (``service/core/repository.py``) reads it
with the same classes and learns everything about a model from it: tensor names,
shapes, labels, normalisation. Nothing here imports torch or onnxruntime, so the
serving image can depend on it and the training side can too.

Bump ``SCHEMA_VERSION`` on any change an older reader could misread; readers
refuse versions they do not know rather than guess.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1
MODEL_FILENAME = "model.onnx"
METADATA_FILENAME = "metadata.json"

Task = Literal["classification", "regression"]
Target = Literal["final", "sequence"]


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
    """One LSTM layer: its units per direction, and whether it reads both ways."""

    units: int = Field(gt=0)
    bidirectional: bool = False

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


class StateNames(_Frozen):
    """Graph tensor names of one layer's hidden and cell state."""

    h: str
    c: str


class TensorNames(_Frozen):
    """Names of every graph input and output the server feeds or reads.

    Shapes, by convention of the exporter (and checked by the server at load):
    ``x`` float32 [batch, time, features]; ``lengths`` int64 [batch];
    each state float32 [directions, batch, units];
    ``sequence_output`` float32 [batch, time, outputs];
    ``final_output`` float32 [batch, outputs].
    """

    x: str = "x"
    lengths: str = "lengths"
    initial_states: list[StateNames]
    sequence_output: str = "sequence_output"
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
    dropout: float = 0.0
    normalization: Normalization
    tensors: TensorNames
    onnx: OnnxInfo
    parity: Parity
    training: TrainingInfo | None = None
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
        n = len(self.layers)
        if len(self.tensors.initial_states) != n or len(self.tensors.final_states) != n:
            raise ValueError("tensors must name the initial and final states of every layer")
        return self

    @property
    def bidirectional(self) -> bool:
        """True if any layer reads backwards: such a model cannot carry state forward."""
        return any(layer.bidirectional for layer in self.layers)

    def state_shape(self, layer: int, batch: int) -> tuple[int, int, int]:
        spec = self.layers[layer]
        return (spec.directions, batch, spec.units)
