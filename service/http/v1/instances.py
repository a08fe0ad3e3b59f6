"""JSON sequences to padded numpy arrays, with errors that point at the culprit.

The fast path hands the whole nested list to numpy in one C-level call; only
when that fails (ragged batch or a bad value) does Python walk the input, and
then only far enough to name the first place that is wrong, e.g.
``instances[2][13] has 5 features; model 'basic_motions' expects 6``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.errors import CostLimit, InvalidInput
from service.core.types import first_boolean, first_non_finite

_NUMERIC_KINDS = "fiu"  # float, signed and unsigned int: booleans and strings are refused


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _locate(where: str, sequence: list[Any], features: int, model: str) -> InvalidInput:
    """Walk one sequence to find why numpy could not read it as a [T, F] array."""
    for t, step in enumerate(sequence):
        here = f"{where}[{t}]"
        if not isinstance(step, list):
            return InvalidInput(f"{here} must be a list of {features} numbers; got {_kind(step)}")
        if len(step) != features:
            return InvalidInput(
                f"{here} has {len(step)} features; model {model!r} expects {features}"
            )
        for f, value in enumerate(step):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return InvalidInput(f"{here}[{f}] must be a number; got {_kind(value)}")
    return InvalidInput(f"{where} could not be read as timesteps of {features} numbers")


def _sequence_array(
    where: str, sequence: Any, features: int, model: str, max_timesteps: int
) -> np.ndarray:
    if not isinstance(sequence, list):
        raise InvalidInput(
            f"{where} must be a list of timesteps, each a list of {features} numbers; "
            f"got {_kind(sequence)}"
        )
    if not sequence:
        raise InvalidInput(f"{where} has no timesteps; a sequence needs at least one")
    check_timesteps(where, len(sequence), max_timesteps)
    try:
        array = np.asarray(sequence)
    except (ValueError, TypeError):
        raise _locate(where, sequence, features, model) from None
    if array.ndim != 2 or array.dtype.kind not in _NUMERIC_KINDS or array.shape[1] != features:
        raise _locate(where, sequence, features, model)
    _refuse_booleans(array, sequence, where)
    return array


def _refuse_booleans(array: np.ndarray, source: list[Any], where: str) -> None:
    """numpy reads a boolean among numbers as 0 or 1: refuse it, naming its place."""
    place = first_boolean(array, source)
    if place is not None:
        at = where + "".join(f"[{i}]" for i in place)
        raise InvalidInput(f"{at} must be a number; got a boolean")


def _check_finite(x: np.ndarray, source: list[Any], name: str) -> None:
    """NaN, infinity and numbers beyond float32's range are refused, with their place."""
    place = first_non_finite(x)
    if place is None:
        return
    value: Any = source
    for i in place:
        value = value[i]
    where = name + "".join(f"[{i}]" for i in place)
    raise InvalidInput(
        f"{where} is {value!r}; only finite numbers within float32 range are accepted"
    )


def check_timesteps(where: str, steps: int, max_timesteps: int) -> None:
    """One sequence's length against ``max_timesteps`` (for ``fast_instances.py`` too)."""
    if steps > max_timesteps:
        raise InvalidInput(f"{where} has {steps} timesteps; the limit is {max_timesteps}")


def check_size(batch: int, steps: int, features: int, max_input_bytes: int | None) -> None:
    """The padded float32 x, refused before it is allocated (by both paths)."""
    size = batch * steps * features * 4
    if max_input_bytes is not None and size > max_input_bytes:
        raise CostLimit(
            f"instances pad to {batch} x {steps} x {features} float32 values ({size} bytes); "
            f"the limit is {max_input_bytes} bytes (max_input_bytes)"
        )


def _padded(
    instances: list[Any], features: int, model: str, max_timesteps: int, max_input_bytes: int | None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        whole = np.asarray(instances)
    except (ValueError, TypeError):  # ragged: sequences of different lengths, or bad nesting
        whole = None
    if (
        whole is not None
        and whole.ndim == 3
        and whole.dtype.kind in _NUMERIC_KINDS
        and whole.shape[1] >= 1
        and whole.shape[2] == features
    ):
        batch, steps = whole.shape[:2]
        check_timesteps("instances[0]", steps, max_timesteps)
        _refuse_booleans(whole, instances, "instances")
        check_size(batch, steps, features, max_input_bytes)
        return whole.astype(np.float32), np.full(batch, steps, dtype=np.int64)
    arrays = [
        _sequence_array(f"instances[{i}]", s, features, model, max_timesteps)
        for i, s in enumerate(instances)
    ]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    check_size(len(arrays), int(lengths.max()), features, max_input_bytes)
    x = np.zeros((len(arrays), int(lengths.max()), features), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i, : len(a)] = a
    return x, lengths


def decode_instances(
    instances: list[Any],
    *,
    features: int,
    model: str,
    max_timesteps: int,
    max_input_bytes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Nested lists [B][T_i][F] -> (x float32 [B, max T_i, F] right-padded, lengths int64 [B])."""
    if not instances:
        raise InvalidInput("instances is empty; send at least one sequence")
    # Values beyond float32's range become inf in the cast; _check_finite reports them.
    with np.errstate(over="ignore", invalid="ignore"):
        x, lengths = _padded(instances, features, model, max_timesteps, max_input_bytes)
    _check_finite(x, instances, "instances")
    return x, lengths


_FEW_STEPS = 8
"""Sequences up to this long (a stream's message) are checked in plain Python first."""
_INT64 = 2**63  # larger integers are left to numpy's own reading (and its refusals)


def _few_steps(sequence: Any, features: int) -> np.ndarray | None:
    """A short, well-formed sequence as float32, or None for the general path.

    A stream sends a timestep or a few per message, where numpy's checks (booleans,
    finiteness, each a ufunc call on a handful of values) cost more than the values:
    type checks in Python and one conversion take ~3 µs against ~15 µs.
    """
    if type(sequence) is not list or not 0 < len(sequence) <= _FEW_STEPS:
        return None
    for step in sequence:
        if type(step) is not list or len(step) != features:
            return None
        for value in step:
            kind = type(value)  # exact types: a bool is not an int here
            if kind is not float and (kind is not int or not -_INT64 <= value < _INT64):
                return None
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, refused below
            x = np.array(sequence, dtype=np.float32)
    except OverflowError:  # an integer beyond float64: the general path says where
        return None
    return x if bool(np.isfinite(x).all()) else None


def decode_sequence(
    sequence: Any, *, features: int, model: str, max_timesteps: int, name: str
) -> np.ndarray:
    """One sequence [T][F] -> float32 [T, F], errors naming ``name[t][f]``."""
    if (few := _few_steps(sequence, features)) is not None and len(few) <= max_timesteps:
        return few
    with np.errstate(over="ignore", invalid="ignore"):
        x = _sequence_array(name, sequence, features, model, max_timesteps).astype(np.float32)
    _check_finite(x, sequence, name)
    return x
