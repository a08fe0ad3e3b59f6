"""The core's vocabulary, at the bottom of every import: states, a request, its result.

Everything else in the service imports these one way; this module imports nothing
of the service.

An inference request as the core sees it: arrays in, and which outputs to bring back.

Routes turn their protocol's body into an ``InferenceRequest`` (arrays, not
JSON) whose ``outputs`` says, once, which results the client wants: ``/v1``'s
``return_sequences``, V2's requested output names and server-held state all
become one ``Outputs`` value, read by ``ModelRuntime.run`` to ask onnxruntime
for exactly those tensors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

State = tuple[np.ndarray, ...]
"""One layer's state, each array float32 [directions, batch, units]: (h, c) for an LSTM
layer, (h,) for a GRU layer (``contract.LayerSpec.state_tensors``). One tuple shape for
both cells, so that batching, splitting and storing states never ask which cell a
layer is: they map over the tuple."""


@dataclass(frozen=True)
class Outputs:
    """Which results one onnxruntime call must return.

    ``sequence``: the head at every timestep [B, T, K]; ``final``: the head at each
    sequence's last valid step [B, K]; ``states``: every layer's final state.
    """

    sequence: bool = True
    final: bool = True
    states: bool = False

    def __or__(self, other: Outputs) -> Outputs:
        return Outputs(
            self.sequence or other.sequence, self.final or other.final, self.states or other.states
        )

    def with_states(self) -> Outputs:
        return self if self.states else replace(self, states=True)


FINAL = Outputs(sequence=False, final=True)
SEQUENCE = Outputs(sequence=True, final=False)


@dataclass
class InferenceRequest:
    """A right-padded batch of sequences for one model version.

    ``x`` float32 [B, T, F]; ``lengths`` int64 [B], each in 1..T. ``states`` are
    the initial state of every layer, or None for zeros. ``deadline`` is a
    ``time.monotonic()`` instant after which the work is no longer wanted.
    """

    x: np.ndarray
    lengths: np.ndarray
    states: list[State] | None = None
    outputs: Outputs = Outputs()
    deadline: float = field(default_factory=lambda: time.monotonic() + 30.0)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])


def first_non_finite(values: np.ndarray) -> tuple[int, ...] | None:
    """The index of the first NaN or infinity in ``values``, or None when all are finite.

    The one finiteness check of every decoder (``/v1`` instances, V2 tensors,
    carried states): each names the place in its own terms.
    """
    finite = np.isfinite(values)
    if finite.all():
        return None
    return tuple(int(i) for i in np.argwhere(~finite)[0])


@dataclass
class RunResult:
    """What one ``session.run`` returned, by role rather than by graph name."""

    sequence_output: np.ndarray | None = None
    final_output: np.ndarray | None = None
    final_states: list[State] = field(default_factory=list)


def stack_states(per_sequence: list[list[State]]) -> list[State]:
    """Per-sequence states [directions, 1, units] -> batched [directions, B, units]."""
    return [
        tuple(
            np.concatenate([seq[i][k] for seq in per_sequence], axis=1) for k in range(len(layer))
        )
        for i, layer in enumerate(per_sequence[0])
    ]


def select_states(states: list[State], rows: np.ndarray | slice) -> list[State]:
    """The ``rows`` of batched states [directions, B, units] (views where numpy gives them)."""
    return [tuple(array[:, rows] for array in layer) for layer in states]


def copy_states(states: list[State]) -> list[State]:
    """Copies: a batch's final states are views into the whole batch's arrays, which a
    held state must not keep alive."""
    return [tuple(array.copy() for array in layer) for layer in states]


def first_boolean(array: np.ndarray, source: Any) -> tuple[int, ...] | None:
    """Where ``source`` (nested lists that numpy read as ``array``) holds a JSON boolean.

    numpy reads ``[true, 0.5]`` as ``[1.0, 0.5]``: a boolean among numbers is
    silently a number. Only values equal to 0 or 1 can have been booleans, so
    only those places are looked at in Python (~2 µs for 100 x 6 values
    without exact zeros and ones).
    """
    # |v - 0.5| == 0.5 holds for 0 and 1 (and for values too small to move 0.5,
    # which the walk below then clears): one pass instead of two comparisons.
    candidates = np.abs(array - 0.5) == 0.5
    if not candidates.any():
        return None
    for place in np.argwhere(candidates):
        value = source
        for i in place:
            value = value[i]
        if isinstance(value, bool):
            return tuple(int(i) for i in place)
    return None
