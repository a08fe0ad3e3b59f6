"""What a request asks about state, in protocol-neutral terms, and the checks on it.

Two ways to continue a sequence across requests, as Keras ``stateful=True`` does
within one model object:

- **Server-held** (Triton's sequence batcher): chunks under one ``sequence_id``;
  the sequence's states (each layer's (h, c), or a GRU layer's h) live in the
  sequence store between chunks
  (``state/sequences.py``), so any worker of any replica can continue it.
- **Client-carried**: the request brings each sequence's initial states (decoded
  by its protocol's wire format) and may ask for the final states back.

Protocols turn their fields into a ``StateOptions``; nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.core.errors import InvalidInput
from service.core.frontend import describe
from service.core.model import ServedModel

SequenceId = str | int


@dataclass(frozen=True)
class StateOptions:
    """The state a request asked for.

    ``initial_states`` has one entry per sequence of the request: that sequence's
    state as its protocol carries it (decoded by the decoder ``infer`` is given),
    or None to start from zeros. ``sequence_offset`` is the number of timesteps of
    the sequence consumed before this chunk, as the client counts them: the
    retry-safety check (``state/sequences.py``).
    """

    sequence_id: SequenceId | None = None
    sequence_start: bool = False
    sequence_end: bool = False
    sequence_offset: int | None = None
    initial_states: list[Any] | None = None
    return_states: bool = False
    owner: str = ""
    """Who is asking (the API key's id; "" when keys are off): server-held state is theirs."""

    @property
    def stateful(self) -> bool:
        """Anything asked about state, so that ``infer`` must check and route it."""
        return (
            self.sequence_id is not None
            or self.initial_states is not None
            or self.return_states
            or self.sequence_start
            or self.sequence_end
            or self.sequence_offset is not None
        )


def parse_sequence_id(value: Any) -> SequenceId | None:
    """Triton's rule: a sequence id is an unsigned integer or a string."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return value
    if isinstance(value, str) and 1 <= len(value) <= 128:
        return value
    raise InvalidInput(
        f"sequence_id {value!r} must be an unsigned 64-bit integer or a string of 1 to 128 "
        "characters"
    )


def parse_sequence_offset(value: Any) -> int | None:
    """A chunk's first timestep within its sequence: a non-negative integer."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    raise InvalidInput(
        f"sequence_offset {value!r} must be a non-negative integer: the number of timesteps "
        "of the sequence consumed before this chunk"
    )


def check_options(options: StateOptions, batch: int) -> None:
    """Refuse combinations that cannot mean anything, before any state is decoded."""
    if options.sequence_id is None and (
        options.sequence_start or options.sequence_end or options.sequence_offset is not None
    ):
        raise InvalidInput("sequence_start, sequence_end and sequence_offset need a sequence_id")
    if options.sequence_id is not None:
        if options.initial_states is not None:
            raise InvalidInput(
                "use either sequence_id (state held by the server) or initial_states "
                "(state carried by the client), not both"
            )
        if batch != 1:
            raise InvalidInput(
                f"a request with a sequence_id carries exactly one sequence; got {batch}"
            )
        if options.sequence_start and options.sequence_offset not in (None, 0):
            raise InvalidInput(
                f"sequence_offset is {options.sequence_offset} on a chunk with "
                "sequence_start: a sequence starts at timestep 0"
            )
    if options.initial_states is not None and len(options.initial_states) != batch:
        raise InvalidInput(
            f"initial_states has {len(options.initial_states)} entries; the request has "
            f"{batch} sequences (use null for a sequence that starts from zero state)"
        )


def check_stateful(model: ServedModel) -> None:
    """Only unidirectional models with state tensors (LSTM, GRU or both) can carry state:
    a backward direction needs it all, a front end reads each sequence whole, a
    forecaster's state is not carried yet, and a GRU model exported before GRU state
    was carried has no state tensors to carry."""
    front = model.metadata.front_end
    if front is not None:
        raise InvalidInput(
            f"model {model.name!r} has a Conv1D/pooling front end ({describe(front)}): its "
            "windows cannot resume from a carried state, so it cannot carry state across "
            "requests; send each sequence whole (without sequence_id, initial_states or "
            "return_states)"
        )
    if model.metadata.forecast is not None:
        raise InvalidInput(
            f"model {model.name!r} is a forecaster: each answer is its next "
            f"{model.metadata.forecast.horizon} steps from the whole input, and its state is "
            "not carried across requests; send each sequence whole (without sequence_id, "
            "initial_states or return_states)"
        )
    if model.metadata.bidirectional:
        backward = any(layer.go_backwards for layer in model.metadata.layers)
        kind = "go_backwards layers" if backward else "bidirectional layers"
        raise InvalidInput(
            f"model {model.name!r} has {kind}: its backward direction needs the "
            "whole sequence at once, so it cannot carry state across requests"
        )
    if not model.metadata.has_state_tensors:
        raise InvalidInput(
            f"model {model.name!r} version {model.version} has GRU layers but was exported "
            "before GRU state was carried: its graph has no state tensors, so it cannot "
            "carry state across requests; export or import it again, or send each sequence "
            "whole (without sequence_id, initial_states or return_states)"
        )
