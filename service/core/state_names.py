"""The contract's per-layer state tensors: an LSTM layer holds (h, c), a GRU layer h alone.

``TensorNames`` (``contract.py``) lists one ``StateNames`` per layer for the graph's
initial states (``h0_i``, ``c0_i``) and final states (``hn_i``, ``cn_i``). Which
tensors a layer has follows from its cell: a GRU layer's state is one tensor, so its
``c`` is None and the graph has no ``c0_i``/``cn_i`` for it. Everything that carries
a state (the runtime's feeds, the sequence store, the wire formats) reads the names
from here, so a stack that mixes the two cells needs no special case anywhere.

It lives in its own module, beside ``contract.py`` which holds the lists, so the
concept reads in one place; like the rest of the contract it imports neither torch
nor onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

Cell = Literal["lstm", "gru"]

STATE_TENSORS: dict[str, tuple[str, ...]] = {"lstm": ("h", "c"), "gru": ("h",)}
"""Which state tensors a layer of each cell holds, in the order they are carried."""


class StateNames(BaseModel):
    """Graph tensor names of one layer's state: ``h``, and ``c`` for an LSTM layer only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    h: str
    c: str | None = None

    @model_serializer(mode="wrap")
    def _no_c_for_gru(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A GRU layer's names are written without ``c``: an LSTM layer's stay as they
        were, and a server that predates GRU state refuses the missing ``c`` (it is
        required there) rather than feed a GRU as an LSTM."""
        data: dict[str, Any] = handler(self)
        if self.c is None:
            data.pop("c", None)
        return data

    @property
    def names(self) -> tuple[str, ...]:
        """The layer's tensor names in carried order: (h, c), or (h,) for a GRU layer."""
        return (self.h,) if self.c is None else (self.h, self.c)


def state_names(cells: Sequence[str], h: str, c: str) -> list[StateNames]:
    """One ``StateNames`` per layer, ``h``/``c`` as prefixes (``h0_`` -> ``h0_0``, ...)."""
    return [
        StateNames(h=f"{h}{i}", c=f"{c}{i}" if "c" in STATE_TENSORS[cell] else None)
        for i, cell in enumerate(cells)
    ]


def state_problems(
    cells: Sequence[str], initial: Sequence[StateNames], final: Sequence[StateNames]
) -> list[str]:
    """What is wrong with a model's state names (empty when consistent): one entry per
    layer in both lists, each naming exactly its cell's tensors."""
    if len(initial) != len(cells) or len(final) != len(cells):
        return ["tensors must name the initial and final states of every layer"]
    found = []
    for which, names in (("initial_states", initial), ("final_states", final)):
        for i, (cell, layer) in enumerate(zip(cells, names, strict=True)):
            if (layer.c is not None) != ("c" in STATE_TENSORS[cell]):
                holds = " and ".join(STATE_TENSORS[cell])
                found.append(
                    f"tensors.{which}[{i}] names {' and '.join(('h', 'c')[: len(layer.names)])} "
                    f"for a{'n' if cell == 'lstm' else ''} {cell.upper()} layer, whose state "
                    f"is {holds}"
                )
    return found
