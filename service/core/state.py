"""State across requests: server-held sequences, client-carried states, and their checks.

Two ways to continue a sequence across requests, as Keras ``stateful=True`` does
within one model object:

- **Server-held** (Triton's sequence batcher): a client sends a long sequence in
  chunks under one sequence id; between chunks ``SequenceStore`` keeps every
  layer's (h, c), so the outputs are exactly those of the whole sequence.
  ``start`` begins (or restarts) a sequence, ``end`` forgets it after the chunk;
  a chunk for an id that is not live is refused, never silently started; chunks
  of one sequence run one at a time, in arrival order (a per-sequence lock), so
  they never interleave, while chunks of different sequences batch together; a
  sequence stays on the model version it started with; idle sequences are
  evicted after ``idle_timeout_s`` and at most ``max_sequences`` live at once,
  so held memory is bounded. A sequence belongs to its caller: it lives under
  (owner, model name, id), the owner being the API key's id when keys are on,
  so another key, or the same id on another model, names a different sequence
  and can neither read, continue nor end it.
- **Client-carried**: the request brings each sequence's initial states (already
  decoded by its protocol's wire format, e.g. ``http/v1/state_json.py``) and may
  ask for the final states back, so any replica can continue it.

``infer`` is the one entry for a request that asked for either; it is the only
place that widens a request's ``Outputs`` to include the states. Nothing here
knows about HTTP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.core.errors import (
    InvalidInput,
    Overloaded,
    SequenceGone,
    SequenceLimit,
    SequenceNotFound,
)
from service.core.metrics import LIVE_SEQUENCES, SEQUENCE_STATE_BYTES
from service.core.model import ServedModel
from service.core.request import InferenceRequest
from service.core.runtime import RunResult, State, stack_states

SequenceId = str | int
SequenceKey = tuple[str, str, SequenceId]
"""(owner, model name, sequence id): what a live sequence is filed under."""


@dataclass(frozen=True)
class StateOptions:
    """What a request asked for about state, in protocol-neutral terms.

    ``initial_states`` has one entry per sequence of the request: that
    sequence's state as its protocol carries it (decoded by the ``decode`` that
    ``infer`` is given), or None to start from zeros.
    """

    sequence_id: SequenceId | None = None
    sequence_start: bool = False
    sequence_end: bool = False
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


def check_options(options: StateOptions, batch: int) -> None:
    """Refuse combinations that cannot mean anything, before any state is decoded."""
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


def check_stateful(model: ServedModel) -> None:
    if model.metadata.bidirectional:
        raise InvalidInput(
            f"model {model.name!r} has bidirectional layers: its backward direction needs the "
            "whole sequence at once, so it cannot carry state across requests"
        )


Decoder = Callable[[Any, int], list[State]]
"""A protocol's wire format for one carried state: (token, index) -> per-layer (h, c)."""


async def infer(
    model: ServedModel,
    store: SequenceStore,
    request: InferenceRequest,
    options: StateOptions,
    decode: Decoder | None = None,
) -> RunResult:
    """Run the request with the state it asked for.

    The options are checked before any carried state is decoded, so a request
    that cannot mean anything is told so rather than that its state is malformed.
    """
    check_options(options, request.batch_size)
    check_stateful(model)
    if options.return_states:
        request.outputs = request.outputs.with_states()
    if options.sequence_id is not None:
        return await store.run_chunk(
            options.sequence_id,
            model,
            request,
            start=options.sequence_start,
            end=options.sequence_end,
            owner=options.owner,
        )
    if options.initial_states is not None:
        if decode is None:
            raise TypeError("initial_states need the protocol's decoder")
        zeros = model.runtime.zero_states(1)
        request.states = stack_states(
            [zeros if s is None else decode(s, i) for i, s in enumerate(options.initial_states)]
        )
    return await model.batcher.submit(request)


@dataclass
class HeldSequence:
    model: ServedModel
    states: list[State]
    last_used: float = field(default_factory=time.monotonic)
    steps: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def nbytes(self) -> int:
        return sum(h.nbytes + c.nbytes for h, c in self.states)


class SequenceStore:
    def __init__(self, max_sequences: int, idle_timeout_s: float) -> None:
        self.max_sequences = max_sequences
        self.idle_timeout_s = idle_timeout_s
        self._live: dict[SequenceKey, HeldSequence] = {}
        self._bytes = 0  # held state bytes, a running total: O(1) per request, not O(live)

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def state_bytes(self) -> int:
        return self._bytes

    def _put(self, key: SequenceKey, held: HeldSequence) -> None:
        previous = self._live.get(key)
        self._bytes += held.nbytes - (previous.nbytes if previous is not None else 0)
        self._live[key] = held

    def _pop(self, key: SequenceKey) -> HeldSequence | None:
        held = self._live.pop(key, None)
        if held is not None:
            self._bytes -= held.nbytes
        return held

    def _publish(self) -> None:
        LIVE_SEQUENCES.set(self.live)
        SEQUENCE_STATE_BYTES.set(self.state_bytes)

    def evict_idle(self, now: float | None = None) -> int:
        """Forget sequences idle past the timeout (and not running a chunk right now)."""
        now = time.monotonic() if now is None else now
        stale = [
            key
            for key, held in self._live.items()
            if now - held.last_used > self.idle_timeout_s and not held.lock.locked()
        ]
        for key in stale:
            self._pop(key)
        if stale:
            self._publish()
        return len(stale)

    def end(self, key: SequenceKey) -> bool:
        found = self._pop(key) is not None
        self._publish()
        return found

    def _begin(self, key: SequenceKey, model: ServedModel) -> HeldSequence:
        check_stateful(model)
        previous = self._live.get(key)
        if previous is None and len(self._live) >= self.max_sequences:
            self.evict_idle()
            if len(self._live) >= self.max_sequences:
                raise SequenceLimit(
                    f"{self.max_sequences} sequences are live, the configured maximum; end "
                    f"finished ones (sequence_end) or wait {self.idle_timeout_s:g} s for idle "
                    "ones to be evicted"
                )
        held = HeldSequence(model=model, states=model.runtime.zero_states(1))
        if previous is not None:
            held.lock = previous.lock  # a restart still waits for the chunk in flight
        self._put(key, held)
        return held

    def _lookup(self, key: SequenceKey) -> HeldSequence:
        """The caller's own live sequence; another caller's is indistinguishable from none."""
        held = self._live.get(key)
        if held is None:
            sequence_id = key[2]
            raise SequenceNotFound(
                f"sequence {sequence_id!r} is not live (never started, already ended, or "
                f"evicted after {self.idle_timeout_s:g} s idle); send its first chunk with "
                "sequence_start set to begin it"
            )
        return held

    async def run_chunk(
        self,
        sequence_id: SequenceId,
        model: ServedModel,
        request: InferenceRequest,
        *,
        start: bool,
        end: bool,
        owner: str = "",
    ) -> RunResult:
        """Run one chunk (batch of one sequence) on the held state and keep the new state."""
        if request.batch_size != 1:
            raise InvalidInput(f"a stateful request carries one sequence; got {request.batch_size}")
        key: SequenceKey = (owner, model.name, sequence_id)
        held = self._begin(key, model) if start else self._lookup(key)
        timeout = max(0.0, request.deadline - time.monotonic())
        try:
            await asyncio.wait_for(held.lock.acquire(), timeout)
        except TimeoutError:
            raise Overloaded(
                f"sequence {sequence_id!r} was busy with earlier chunks past this request's "
                "deadline"
            ) from None
        try:
            if self._live.get(key) is not held:
                raise SequenceNotFound(
                    f"sequence {sequence_id!r} was ended or restarted while this chunk waited"
                )
            request.states = held.states
            request.outputs = request.outputs.with_states()  # the store keeps them
            result = await self._submit(key, held, request)
            states = [(h.copy(), c.copy()) for h, c in result.final_states]
            if self._live.get(key) is held:  # not ended or restarted meanwhile
                self._bytes += sum(h.nbytes + c.nbytes for h, c in states) - held.nbytes
            held.states = states
            held.steps += int(request.lengths[0])
            held.last_used = time.monotonic()
        finally:
            held.lock.release()
        if end:
            self.end(key)
        else:
            self._publish()
        return result

    async def _submit(
        self, key: SequenceKey, held: HeldSequence, request: InferenceRequest
    ) -> RunResult:
        """The chunk's result on the sequence's own version; ``SequenceGone`` (and the
        sequence ended) once a rollout retired that version, so the client gets one
        definitive answer rather than an endless "retry"."""
        batcher = held.model.batcher
        try:
            if batcher.closing:
                raise Overloaded("retired")
            return await batcher.submit(request)
        except Overloaded:
            if not batcher.closing:
                raise
            if self._live.get(key) is held:
                self._pop(key)
                self._publish()
            raise SequenceGone(
                f"sequence {key[2]!r} ran on model {held.model.name!r} version "
                f"{held.model.version}, which was unloaded; its state went with it: start "
                "the sequence again (sequence_start) on the version now serving"
            ) from None

    async def evict_forever(self, every_s: float) -> None:
        """Background task: evict idle sequences periodically."""
        while True:
            await asyncio.sleep(every_s)
            self.evict_idle()
