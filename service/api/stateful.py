"""Routing a request to its state: none, server-held (sequence id) or client-carried.

Shared by every protocol (``/v1``, V2): each parses its own fields, then calls
``infer`` here, which talks to the core (``SequenceStore``, ``ServedModel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.errors import InvalidInput
from service.inference import InferenceRequest
from service.model import ServedModel
from service.runtime import RunResult
from service.sequences import SequenceId, SequenceStore, check_stateful
from service.state_codec import decode_state, encode_states, stack_states


@dataclass(frozen=True)
class StateOptions:
    """What a request asked for about state, in protocol-neutral terms."""

    sequence_id: SequenceId | None = None
    sequence_start: bool = False
    sequence_end: bool = False
    initial_states: list[Any] | None = None
    return_states: bool = False

    @property
    def stateful(self) -> bool:
        return self.sequence_id is not None or bool(self.initial_states) or self.return_states


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


def _check(options: StateOptions, batch: int) -> None:
    if options.sequence_id is None and (options.sequence_start or options.sequence_end):
        raise InvalidInput("sequence_start and sequence_end need a sequence_id")
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
    if options.initial_states is not None and len(options.initial_states) != batch:
        raise InvalidInput(
            f"initial_states has {len(options.initial_states)} entries; the request has "
            f"{batch} sequences (use null for a sequence that starts from zero state)"
        )


async def infer(
    model: ServedModel, store: SequenceStore, request: InferenceRequest, options: StateOptions
) -> tuple[RunResult, list[dict[str, Any]] | None]:
    """Run the request with the state it asked for; the states to return, if asked."""
    _check(options, request.batch_size)
    if not options.stateful:
        return await model.infer(request), None
    check_stateful(model)
    request.want_states = request.want_states or options.return_states
    if options.sequence_id is not None:
        result = await store.run_chunk(
            options.sequence_id,
            model,
            request,
            start=options.sequence_start,
            end=options.sequence_end,
        )
    else:
        if options.initial_states is not None:
            zeros = model.runtime.zero_states(1)
            per_sequence = [
                zeros
                if token is None
                else decode_state(model.metadata, token, f"initial_states[{i}]")
                for i, token in enumerate(options.initial_states)
            ]
            request.states = stack_states(per_sequence)
        result = await model.infer(request)
    states = encode_states(model.metadata, result.final_states) if options.return_states else None
    return result, states
