"""Client-carried state: every layer's (h, c), or h for a GRU layer, of one sequence, as a
JSON object.

With the state travelling in requests and responses, any replica behind a load
balancer can continue a sequence: no sticky routing, nothing held server-side.
The floats travel as base64 of their little-endian float32 bytes, so a state
round-trips bit for bit (decimal text cannot promise that), and the object names
the model version it belongs to, so a state cannot be fed to another model::

    {"model": "basic_motions", "version": "1", "dtype": "float32",
     "layers": [64, 32], "directions": [1, 1], "tensors": [["h", "c"], ["h"]],
     "data": "<base64 of h0, c0, h1>"}

``directions`` is per layer (each layer's states hold that many directions), and so is
``tensors``: which state tensors the layer holds, in the order ``data`` holds them (an
LSTM layer's h and c, a GRU layer's h alone). A client that sends ``tensors`` back is
held to it: a state that names a ``c`` for a GRU layer is refused naming the layer,
rather than read as bytes of the wrong size.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from service.core.contract import ModelMetadata
from service.core.errors import InvalidInput
from service.core.types import State, first_non_finite

_DTYPE = np.dtype("<f4")


def _layout(meta: ModelMetadata) -> list[int]:
    """Floats per state tensor (h or c) of each layer, for one sequence."""
    return [layer.directions * layer.units for layer in meta.layers]


def state_nbytes(meta: ModelMetadata) -> int:
    floats = zip(meta.layers, _layout(meta), strict=True)
    return sum(len(layer.state_tensors) * size for layer, size in floats) * _DTYPE.itemsize


def _expected(meta: ModelMetadata) -> str:
    """What ``data`` must hold, in a refusal's words: every layer's tensors and units."""
    cells = {layer.cell for layer in meta.layers}
    if len(cells) == 1:
        sizes = ", ".join(str(layer.units) for layer in meta.layers)
        return f"{' and '.join(meta.layers[0].state_tensors)} of layers with {sizes} units"
    return ", ".join(
        f"{' and '.join(layer.state_tensors)} of {layer.cell.upper()} layer {i} "
        f"({layer.units} units)"
        for i, layer in enumerate(meta.layers)
    )


def _check_tensors(meta: ModelMetadata, token: dict[str, Any], where: str) -> None:
    """A state that says which tensors it holds must say what each layer holds."""
    named = token.get("tensors")
    if named is None:
        return
    expected = [list(layer.state_tensors) for layer in meta.layers]
    if not isinstance(named, list) or len(named) != len(expected):
        raise InvalidInput(
            f"{where}.tensors must list the state tensors of each of model {meta.name!r}'s "
            f"{len(expected)} layers: {expected}"
        )
    for i, (got, want) in enumerate(zip(named, expected, strict=True)):
        if got != want:
            cell = meta.layers[i].cell.upper()
            raise InvalidInput(
                f"{where}.tensors[{i}] is {got!r}; layer {i} of model {meta.name!r} is "
                f"a{'n' if cell == 'LSTM' else ''} {cell} layer, whose state is {want!r}"
            )


def encode_states(meta: ModelMetadata, states: list[State]) -> list[dict[str, Any]]:
    """Batched final states [directions, B, units] -> one state object per sequence."""
    batch = states[0][0].shape[1]
    header = {
        "model": meta.name,
        "version": str(meta.version),
        "dtype": "float32",
        "layers": [layer.units for layer in meta.layers],
        "directions": [layer.directions for layer in meta.layers],
        "tensors": [list(layer.state_tensors) for layer in meta.layers],
    }
    out = []
    for b in range(batch):
        parts = [array[:, b, :].astype(_DTYPE).tobytes() for layer in states for array in layer]
        out.append({**header, "data": base64.b64encode(b"".join(parts)).decode("ascii")})
    return out


def decode_state(meta: ModelMetadata, token: Any, where: str) -> list[State]:
    """One state object -> per layer (h, c) or a GRU's (h,), each float32 [directions, 1,
    units]."""
    if not isinstance(token, dict):
        raise InvalidInput(f"{where} must be a state object as returned by the server")
    if token.get("model") != meta.name or token.get("version") != str(meta.version):
        raise InvalidInput(
            f"{where} belongs to model {token.get('model')!r} version {token.get('version')!r}; "
            f"this request goes to {meta.name!r} version {meta.version}"
        )
    _check_tensors(meta, token, where)
    data = token.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise InvalidInput(f"{where}.data must be a base64 string")
    expected = state_nbytes(meta)
    if len(raw) != expected:
        raise InvalidInput(
            f"{where}.data holds {len(raw)} bytes; model {meta.name!r} expects {expected} "
            f"({_expected(meta)}, float32)"
        )
    flat = np.frombuffer(raw, dtype=_DTYPE).astype(np.float32)
    if first_non_finite(flat) is not None:
        raise InvalidInput(f"{where} holds NaN or infinite values")
    states: list[State] = []
    offset = 0
    for layer, size in zip(meta.layers, _layout(meta), strict=True):
        shape = (layer.directions, 1, layer.units)
        count = len(layer.state_tensors)
        states.append(
            tuple(
                flat[offset + k * size : offset + (k + 1) * size].reshape(shape)
                for k in range(count)
            )
        )
        offset += count * size
    return states
