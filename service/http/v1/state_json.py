"""Client-carried LSTM state: every layer's (h, c) for one sequence, as a JSON object.

With the state travelling in requests and responses, any replica behind a load
balancer can continue a sequence: no sticky routing, nothing held server-side.
The floats travel as base64 of their little-endian float32 bytes, so a state
round-trips bit for bit (decimal text cannot promise that), and the object names
the model version it belongs to, so a state cannot be fed to another model::

    {"model": "basic_motions", "version": "1", "dtype": "float32",
     "layers": [64, 32], "directions": [1, 1], "data": "<base64 of h0, c0, h1, c1>"}

``directions`` is per layer (each layer's states hold that many directions).
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
    """Floats per (h or c) of each layer, for one sequence."""
    return [layer.directions * layer.units for layer in meta.layers]


def state_nbytes(meta: ModelMetadata) -> int:
    return 2 * sum(_layout(meta)) * _DTYPE.itemsize


def encode_states(meta: ModelMetadata, states: list[State]) -> list[dict[str, Any]]:
    """Batched final states [directions, B, units] -> one state object per sequence."""
    batch = states[0][0].shape[1]
    header = {
        "model": meta.name,
        "version": str(meta.version),
        "dtype": "float32",
        "layers": [layer.units for layer in meta.layers],
        "directions": [layer.directions for layer in meta.layers],
    }
    out = []
    for b in range(batch):
        parts = [array[:, b, :].astype(_DTYPE).tobytes() for h, c in states for array in (h, c)]
        out.append({**header, "data": base64.b64encode(b"".join(parts)).decode("ascii")})
    return out


def decode_state(meta: ModelMetadata, token: Any, where: str) -> list[State]:
    """One state object -> per layer (h, c), each float32 [directions, 1, units]."""
    if not isinstance(token, dict):
        raise InvalidInput(f"{where} must be a state object as returned by the server")
    if token.get("model") != meta.name or token.get("version") != str(meta.version):
        raise InvalidInput(
            f"{where} belongs to model {token.get('model')!r} version {token.get('version')!r}; "
            f"this request goes to {meta.name!r} version {meta.version}"
        )
    data = token.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) else None
    except (binascii.Error, ValueError):
        raw = None
    if raw is None:
        raise InvalidInput(f"{where}.data must be a base64 string")
    expected = state_nbytes(meta)
    if len(raw) != expected:
        sizes = ", ".join(str(u) for u in (layer.units for layer in meta.layers))
        raise InvalidInput(
            f"{where}.data holds {len(raw)} bytes; model {meta.name!r} expects {expected} "
            f"(h and c of layers with {sizes} units, float32)"
        )
    flat = np.frombuffer(raw, dtype=_DTYPE).astype(np.float32)
    if first_non_finite(flat) is not None:
        raise InvalidInput(f"{where} holds NaN or infinite values")
    states: list[State] = []
    offset = 0
    for layer, size in zip(meta.layers, _layout(meta), strict=True):
        shape = (layer.directions, 1, layer.units)
        h = flat[offset : offset + size].reshape(shape)
        c = flat[offset + size : offset + 2 * size].reshape(shape)
        states.append((h, c))
        offset += 2 * size
    return states
