"""The Open Inference Protocol's shapes: the inference request envelope (pydantic) and
the tensors a served LSTM declares (inputs, outputs, and where each output comes from).

Only the envelope is validated here: tensor ``data`` stays the raw list orjson
parsed, so that numpy reads it in one call (``tensors.py``) instead of
pydantic building a Python float per element. Unknown fields are refused, so a
typo such as ``"output"`` for ``"outputs"`` is an error rather than a request
silently answered with every output.

Request-level ``parameters`` the service acts on are read by the methods here;
others (``priority``, custom ones) are accepted and ignored, as Triton does.
Parameters it cannot honour (the sequence extension, shared memory, the
classification extension) are refused, because ignoring them would return an
answer to a different question than the one asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.core.contract import ModelMetadata
from service.core.errors import BadRequest
from service.core.frontend import no_steps
from service.core.state import StateOptions, parse_sequence_id, parse_sequence_offset
from service.core.types import RunResult


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputTensor(_Strict):
    """One ``$request_input``: JSON ``data`` or, with the binary extension, a byte count."""

    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class RequestedOutput(_Strict):
    """One ``$request_output``: a name, and whether to send it as binary data."""

    name: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)

    def binary(self, default: bool) -> bool:
        """``parameters.binary_data`` if given, else the request's ``binary_data_output``."""
        if "classification" in self.parameters:
            raise BadRequest(
                f"output {self.name!r}: parameters.classification asks for the classification "
                "extension, which this server does not support; request the output itself"
            )
        if "shared_memory_region" in self.parameters:
            raise BadRequest(
                f"output {self.name!r}: parameters.shared_memory_region asks for the shared "
                "memory extension, which this server does not support"
            )
        value = self.parameters.get("binary_data", default)
        if not isinstance(value, bool):
            raise BadRequest(
                f"output {self.name!r}: parameters.binary_data must be true or false; got {value!r}"
            )
        return value


class InferenceRequestBody(_Strict):
    """The JSON part of ``POST .../infer`` (the whole body without the binary extension)."""

    id: StrictStr | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None

    def binary_data_output(self) -> bool:
        """Whether outputs that do not say otherwise are sent as binary data."""
        value = self.parameters.get("binary_data_output", False)
        if not isinstance(value, bool):
            raise BadRequest(f"parameters.binary_data_output must be true or false; got {value!r}")
        return value

    def timeout_s(self) -> float | None:
        """Triton's ``timeout`` parameter (microseconds) in seconds, if the client set one."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadRequest(
                f"parameters.timeout must be a positive integer of microseconds; got {value!r}"
            )
        if value >= 2**63:  # Triton's is a uint64; beyond, value / 1e6 overflows a float
            raise BadRequest(f"parameters.timeout is {value} microseconds; it must be below 2^63")
        return value / 1e6

    def state_options(self, owner: str = "") -> StateOptions:
        """Triton's sequence extension: ``sequence_id`` (0 or absent: no sequence),
        ``sequence_start`` and ``sequence_end``, routed to the server-held state; and
        ``sequence_offset``, this project's retry-safe chunks (``core/state/sequences.py``)."""
        if not self.parameters.keys() & _SEQUENCE_PARAMETERS:  # the usual stateless request
            return _NO_STATE if not owner else StateOptions(owner=owner)
        flags = {}
        for key in ("sequence_start", "sequence_end"):
            value = self.parameters.get(key, False)
            if not isinstance(value, bool):
                raise BadRequest(f"parameters.{key} must be true or false; got {value!r}")
            flags[key] = value
        raw_id = self.parameters.get("sequence_id")
        return StateOptions(
            owner=owner,
            sequence_id=None if raw_id in (None, 0, "") else parse_sequence_id(raw_id),
            sequence_start=flags["sequence_start"],
            sequence_end=flags["sequence_end"],
            sequence_offset=parse_sequence_offset(self.parameters.get("sequence_offset")),
        )


_SEQUENCE_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "sequence_offset"}
)
_NO_STATE = StateOptions()


# -- the tensors of a served LSTM ---------------------------------------------

Role = Literal["sequence", "final", "h", "c"]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor as V2 metadata describes it: -1 marks a dimension fixed per request."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class OutputSpec:
    """An output and where it comes from in a ``RunResult``."""

    tensor: TensorSpec
    role: Role
    layer: int = 0

    def array(self, result: RunResult) -> np.ndarray:
        if self.role == "sequence":
            assert result.sequence_output is not None
            return result.sequence_output
        if self.role == "final":
            assert result.final_output is not None
            return result.final_output
        state = result.final_states[self.layer]  # (h, c), or a GRU layer's (h,)
        return state[0 if self.role == "h" else 1].transpose(1, 0, 2)


def input_specs(meta: ModelMetadata) -> list[TensorSpec]:
    t = meta.tensors
    return [
        TensorSpec(t.x, "FP32", (-1, -1, meta.num_features)),
        TensorSpec(t.lengths, "INT64", (-1,), optional=True),
    ]


_SPECS: dict[int, tuple[ModelMetadata, tuple[OutputSpec, ...]]] = {}
"""A version's output specs, built once (every V2 request selects from them): keyed by
the metadata object's id, which the entry keeps alive so the id cannot be reused."""
_SPECS_KEPT = 64
"""Versions remembered; past it the oldest is dropped (rebuilt if asked again)."""


def output_specs(meta: ModelMetadata) -> tuple[OutputSpec, ...]:
    """Every output, in the order a request without ``outputs`` gets them (no
    ``sequence_output`` where a front end shortens the time axis: ``core/frontend.py``)."""
    found = _SPECS.get(id(meta))
    if found is not None and found[0] is meta:
        return found[1]
    specs = tuple(_output_specs(meta))
    if len(_SPECS) >= _SPECS_KEPT:
        del _SPECS[next(iter(_SPECS))]
    _SPECS[id(meta)] = (meta, specs)
    return specs


def _output_specs(meta: ModelMetadata) -> list[OutputSpec]:
    t = meta.tensors
    k = meta.output_size
    if t.sequence_output is None:  # a forecaster: one output, [B, horizon, K]
        forecast = TensorSpec(t.final_output, "FP32", (-1, meta.horizon or 1, k))
        return [OutputSpec(forecast, "final")]
    specs = [OutputSpec(TensorSpec(t.final_output, "FP32", (-1, k)), "final")]
    if not no_steps(meta):  # none per timestep where a front end shortens the time axis
        specs.insert(0, OutputSpec(TensorSpec(t.sequence_output, "FP32", (-1, -1, k)), "sequence"))
    for i, names in enumerate(t.final_states):  # none for a graph without state tensors
        layer = meta.layers[i]
        shape = (-1, layer.directions, layer.units)
        specs.append(OutputSpec(TensorSpec(names.h, "FP32", shape), "h", i))
        if names.c is not None:  # a GRU layer's state is h alone: no cn_i
            specs.append(OutputSpec(TensorSpec(names.c, "FP32", shape), "c", i))
    return specs
