"""V2 tensors of a served LSTM: how they arrive and how they leave, JSON or binary.

Every tensor is batch-first, as Triton requires of a model with
``max_batch_size > 0``:

- inputs: ``x`` FP32 [B, T, F] (FP16 and FP64 accepted and converted), and the
  optional ``lengths`` INT64 [B] (INT32 accepted; [B, 1] too) of a right-padded
  batch; without it every sequence runs all T steps;
- outputs: ``sequence_output`` FP32 [B, T, K], ``final_output`` FP32 [B, K] and
  each layer's final states ``hn_i``/``cn_i`` FP32 [B, directions, units]. The
  graph's states are [directions, B, units]; they are transposed here, so that a
  later stateful V2 can take them back as batch-first inputs too.

Outputs are the graph's tensors as they are, padded timesteps included: a V2
client gets what in-process onnxruntime returns (``/v1`` trims, V2 does not).
Binary data arrives as ``memoryview`` slices of the body (``http/v2/codec.py``).

Decoding is one numpy call per tensor: ``np.frombuffer`` on the body's bytes for
binary data, ``np.asarray`` on the parsed JSON list otherwise. Python only walks
the data again to name the place of a non-finite value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.contract import ModelMetadata
from service.core.errors import BadRequest, CostLimit, InvalidInput
from service.core.frontend import no_steps
from service.core.types import Outputs, RunResult, first_boolean, first_non_finite
from service.v2.schema import InputTensor, OutputSpec, RequestedOutput, output_specs

# Little-endian, as the binary extension specifies, whatever the host's order.
DTYPES: dict[str, np.dtype[Any]] = {
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
X_DATATYPES = ("FP32", "FP16", "FP64")
LENGTHS_DATATYPES = ("INT64", "INT32")


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_timesteps: int
    max_input_bytes: int = 64 * 1024 * 1024
    """x as float32, checked from its shape before FP16/FP64 data is converted."""


def _numbers(tensor: InputTensor, count: int, kinds: str, what: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as one flat numpy array of ``count`` values."""
    data = tensor.data
    if not isinstance(data, list):
        raise BadRequest(
            f"input {tensor.name!r}: data must be a list of {what} (flat or nested, row-major)"
        )
    try:
        values = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(
            f"input {tensor.name!r}: data is a ragged nested list; send it flat or as a "
            f"nested list of shape {tensor.shape}"
        ) from None
    if values.dtype.kind not in kinds:
        raise BadRequest(f"input {tensor.name!r}: data must hold only {what}")
    place = first_boolean(values, data)  # numpy reads a boolean among numbers as 0 or 1
    if place is not None:
        at = "".join(f"[{i}]" for i in place)
        raise BadRequest(
            f"input {tensor.name!r}: data{at} is a boolean; data must hold only {what}"
        )
    if values.size != count:
        raise BadRequest(
            f"input {tensor.name!r}: data has {values.size} values; shape {tensor.shape} "
            f"needs {count}"
        )
    return values.reshape(-1)


def _decode(
    tensor: InputTensor, buffer: memoryview | None, accepted: tuple[str, ...], kinds: str, what: str
) -> np.ndarray:
    """The tensor's values as an array of its declared shape (dtype as sent)."""
    if tensor.datatype not in accepted:
        others = " or ".join(accepted[1:])
        raise BadRequest(
            f"input {tensor.name!r} has datatype {tensor.datatype}; expected {accepted[0]} "
            f"({others} accepted too)"
        )
    count = math.prod(tensor.shape)
    if buffer is None:
        if tensor.data is None:
            raise BadRequest(
                f"input {tensor.name!r} has no data: send data, or parameters.binary_data_size "
                "and the bytes after the JSON header"
            )
        return _numbers(tensor, count, kinds, what).reshape(tensor.shape)
    if tensor.data is not None:
        raise BadRequest(
            f"input {tensor.name!r} has both data and parameters.binary_data_size; send one"
        )
    dtype = DTYPES[tensor.datatype]
    if len(buffer) != count * dtype.itemsize:
        raise BadRequest(
            f"input {tensor.name!r}: parameters.binary_data_size is {len(buffer)} bytes; "
            f"shape {tensor.shape} of {tensor.datatype} is {count * dtype.itemsize} bytes"
        )
    values = np.frombuffer(buffer, dtype=dtype, count=count)
    if not values.flags.aligned:  # the JSON header's length decides the offset
        values = values.copy()
    return values.reshape(tensor.shape)


def _check_x_shape(tensor: InputTensor, meta: ModelMetadata, limits: Limits) -> None:
    shape = tensor.shape
    features = meta.num_features
    if len(shape) != 3 or shape[2] != features or min(shape) < 0:
        raise BadRequest(
            f"input {tensor.name!r} has shape {shape}; model {meta.name!r} expects "
            f"[batch, timesteps, {features}]"
        )
    batch, steps = shape[0], shape[1]
    if batch < 1 or steps < 1:
        raise BadRequest(
            f"input {tensor.name!r} has shape {shape}; send at least one sequence of at "
            "least one timestep"
        )
    if batch > limits.max_instances:
        raise BadRequest(
            f"input {tensor.name!r} has {batch} sequences; the limit is {limits.max_instances}"
        )
    if steps > limits.max_timesteps:
        raise BadRequest(
            f"input {tensor.name!r} has {steps} timesteps; the limit is {limits.max_timesteps}"
        )
    size = batch * steps * features * 4
    if size > limits.max_input_bytes:
        raise CostLimit(
            f"input {tensor.name!r} of shape {shape} is {size} bytes as FP32; the limit is "
            f"{limits.max_input_bytes} bytes (max_input_bytes)"
        )


def _x(tensor: InputTensor, buffer: memoryview | None) -> np.ndarray:
    values = _decode(tensor, buffer, X_DATATYPES, "fiu", "numbers")
    # FP64 and JSON values beyond float32's range become inf here and are refused below.
    with np.errstate(over="ignore", invalid="ignore"):
        x = values.astype(np.float32, copy=False)
    place = first_non_finite(x)
    if place is not None:
        raise BadRequest(
            f"input {tensor.name!r} holds {float(values[place])!r} at {list(place)}; only finite "
            "numbers within float32 range are accepted"
        )
    return x


def _lengths(tensor: InputTensor, buffer: memoryview | None, batch: int, steps: int) -> np.ndarray:
    if tensor.shape not in ([batch], [batch, 1]):
        raise BadRequest(
            f"input {tensor.name!r} has shape {tensor.shape}; expected [{batch}] "
            "(one length per sequence of x)"
        )
    values = _decode(tensor, buffer, LENGTHS_DATATYPES, "iu", "integers").reshape(batch)
    # onnxruntime accepts 0 and lengths past T without complaint; refuse them here.
    bad = np.flatnonzero((values < 1) | (values > steps))
    if bad.size:
        i = int(bad[0])
        raise BadRequest(
            f"input {tensor.name!r}[{i}] is {int(values[i])}; each length must be between 1 "
            f"and {steps} (the timesteps of x)"
        )
    return values.astype(np.int64, copy=False)


def decode_inputs(
    tensors: Sequence[InputTensor],
    buffers: Sequence[memoryview | None],
    meta: ModelMetadata,
    limits: Limits,
) -> tuple[np.ndarray, np.ndarray]:
    """The request's inputs as the core's (x float32 [B, T, F], lengths int64 [B])."""
    t = meta.tensors
    valid = [t.x, t.lengths]
    by_name: dict[str, tuple[InputTensor, memoryview | None]] = {}
    for tensor, buffer in zip(tensors, buffers, strict=True):
        if tensor.name not in valid:
            raise BadRequest(
                f"unknown input {tensor.name!r}; model {meta.name!r} has inputs {_names(valid)}"
            )
        if tensor.name in by_name:
            raise BadRequest(f"input {tensor.name!r} is given twice")
        by_name[tensor.name] = (tensor, buffer)
    if t.x not in by_name:
        raise BadRequest(
            f"input {t.x!r} is missing; model {meta.name!r} has inputs {_names(valid)} "
            f"({t.lengths!r} is optional)"
        )
    x_tensor, x_buffer = by_name[t.x]
    _check_x_shape(x_tensor, meta, limits)
    batch, steps = x_tensor.shape[0], x_tensor.shape[1]
    if t.lengths in by_name:
        lengths = _lengths(*by_name[t.lengths], batch, steps)
    else:
        lengths = np.full(batch, steps, dtype=np.int64)
    # The cost limits are the batcher's (core/batching.py), checked once, at submit;
    # max_input_bytes above already bounds what converting x allocates.
    return _x(x_tensor, x_buffer), lengths


@dataclass(frozen=True)
class Selected:
    """An output to return, and whether as binary data."""

    spec: OutputSpec
    binary: bool


def select_outputs(
    requested: Sequence[RequestedOutput] | None, meta: ModelMetadata, binary_default: bool
) -> list[Selected]:
    """The outputs named by the request, in its order; every output when it names none."""
    specs = output_specs(meta)
    if not requested:
        return [Selected(spec, binary_default) for spec in specs]
    by_name = {spec.tensor.name: spec for spec in specs}
    selected: list[Selected] = []
    seen: set[str] = set()
    for output in requested:
        if output.name == meta.tensors.sequence_output and no_steps(meta):
            raise InvalidInput(no_steps(meta))
        if output.name not in by_name:
            raise BadRequest(
                f"unknown output {output.name!r}; model {meta.name!r} has outputs "
                f"{_names(list(by_name))}"
            )
        if output.name in seen:
            raise BadRequest(f"output {output.name!r} is requested twice")
        seen.add(output.name)
        selected.append(Selected(by_name[output.name], output.binary(binary_default)))
    return selected


def requested(selected: Sequence[Selected]) -> Outputs:
    """What the runtime must return for these outputs (both V2 bindings ask the same)."""
    roles = {choice.spec.role for choice in selected}
    return Outputs(
        sequence="sequence" in roles, final="final" in roles, states=bool(roles & {"h", "c"})
    )


def encode_outputs(
    selected: Sequence[Selected], result: RunResult
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """``$response_output`` objects, and the arrays whose bytes follow the JSON, in order."""
    outputs: list[dict[str, Any]] = []
    buffers: list[np.ndarray] = []
    for choice in selected:
        array = np.ascontiguousarray(choice.spec.array(result), dtype=DTYPES["FP32"])
        entry: dict[str, Any] = {
            "name": choice.spec.tensor.name,
            "datatype": "FP32",
            "shape": list(array.shape),
        }
        if choice.binary:
            entry["parameters"] = {"binary_data_size": array.nbytes}
            buffers.append(array)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    return outputs, buffers
