"""State across requests: client-carried states and server-held sequences.

``infer`` is the one entry for a request that asked anything about state
(``options.py``): server-held chunks go to ``Sequences`` (``sequences.py``, over the
store of ``store.py``: ``memory.py`` or ``redis_store.py``); carried states are
decoded and attached here. Nothing in this package knows about HTTP or gRPC.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.core.model import ServedModel
from service.core.state.options import (
    SequenceId,
    StateOptions,
    check_options,
    check_stateful,
    parse_sequence_id,
    parse_sequence_offset,
)
from service.core.state.sequences import Sequences
from service.core.types import InferenceRequest, RunResult, State, stack_states

__all__ = [
    "Decoder",
    "SequenceId",
    "Sequences",
    "StateOptions",
    "check_stateful",
    "infer",
    "parse_sequence_id",
    "parse_sequence_offset",
]

Decoder = Callable[[Any, int], list[State]]
"""A protocol's wire format for one carried state: (token, index) -> per layer (h, c), or
(h,) for a GRU layer."""


async def infer(
    model: ServedModel,
    sequences: Sequences,
    request: InferenceRequest,
    options: StateOptions,
    decode: Decoder | None = None,
) -> tuple[RunResult, int | None]:
    """Run the request with the state it asked for: its result, and for a server-held
    chunk the timesteps its sequence has consumed after it (None otherwise).

    The options are checked before any carried state is decoded, so a request
    that cannot mean anything is told so rather than that its state is malformed.
    """
    check_options(options, request.batch_size)
    check_stateful(model)
    if options.return_states:
        request.outputs = request.outputs.with_states()
    if options.sequence_id is not None:
        return await sequences.run(model, request, options)
    if options.initial_states is not None:
        if decode is None:
            raise TypeError("initial_states need the protocol's decoder")
        zeros = model.runtime.zero_states(1)
        request.states = stack_states(
            [zeros if s is None else decode(s, i) for i, s in enumerate(options.initial_states)]
        )
    return await model.batcher.submit(request), None
