"""Server-held sequence state: Keras ``stateful=True`` across requests.

A client sends a long sequence in chunks under one sequence id; between chunks
the store keeps every layer's (h, c). The outputs are then exactly those of the
whole sequence. As in Triton's sequence batcher:
- ``start`` begins (or restarts) a sequence, ``end`` forgets it after the chunk;
- a chunk for an id that is not live is refused, never silently started;
- chunks of one sequence run one at a time, in arrival order (a per-sequence
  lock), so they never interleave; chunks of different sequences run
  concurrently and batch together in the scheduler;
- a sequence stays on the model version it started with;
- idle sequences are evicted after ``idle_timeout_s``; at most
  ``max_sequences`` live at once, so held memory is bounded.

The store knows nothing about HTTP: routes call ``run_chunk``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from service.errors import InvalidInput, Overloaded, ServingError
from service.inference import InferenceRequest
from service.model import ServedModel
from service.observability import LIVE_SEQUENCES, SEQUENCE_STATE_BYTES
from service.runtime import RunResult, State

SequenceId = str | int


class SequenceNotFound(ServingError):
    """A continuing chunk named a sequence that is not live (never started, ended, evicted)."""


class SequenceLimit(ServingError):
    """Every sequence slot is taken by a live sequence."""


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


def check_stateful(model: ServedModel) -> None:
    if model.metadata.bidirectional:
        raise InvalidInput(
            f"model {model.name!r} has bidirectional layers: its backward direction needs the "
            "whole sequence at once, so it cannot carry state across requests"
        )


class SequenceStore:
    def __init__(self, max_sequences: int, idle_timeout_s: float) -> None:
        self.max_sequences = max_sequences
        self.idle_timeout_s = idle_timeout_s
        self._live: dict[SequenceId, HeldSequence] = {}

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def state_bytes(self) -> int:
        return sum(s.nbytes for s in self._live.values())

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
            del self._live[key]
        if stale:
            self._publish()
        return len(stale)

    def end(self, sequence_id: SequenceId) -> bool:
        found = self._live.pop(sequence_id, None) is not None
        self._publish()
        return found

    def _begin(self, sequence_id: SequenceId, model: ServedModel) -> HeldSequence:
        check_stateful(model)
        previous = self._live.get(sequence_id)
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
        self._live[sequence_id] = held
        return held

    def _lookup(self, sequence_id: SequenceId, model: ServedModel) -> HeldSequence:
        held = self._live.get(sequence_id)
        if held is None:
            raise SequenceNotFound(
                f"sequence {sequence_id!r} is not live (never started, already ended, or "
                f"evicted after {self.idle_timeout_s:g} s idle); send its first chunk with "
                "sequence_start set to begin it"
            )
        if held.model.name != model.name:
            raise InvalidInput(
                f"sequence {sequence_id!r} belongs to model {held.model.name!r}, not {model.name!r}"
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
    ) -> RunResult:
        """Run one chunk (batch of one sequence) on the held state and keep the new state."""
        if request.batch_size != 1:
            raise InvalidInput(f"a stateful request carries one sequence; got {request.batch_size}")
        held = self._begin(sequence_id, model) if start else self._lookup(sequence_id, model)
        timeout = max(0.0, request.deadline - time.monotonic())
        try:
            await asyncio.wait_for(held.lock.acquire(), timeout)
        except TimeoutError:
            raise Overloaded(
                f"sequence {sequence_id!r} was busy with earlier chunks past this request's "
                "deadline"
            ) from None
        try:
            if self._live.get(sequence_id) is not held:
                raise SequenceNotFound(
                    f"sequence {sequence_id!r} was ended or restarted while this chunk waited"
                )
            request.states = held.states
            request.want_states = True  # the store needs them, whatever the client asked
            result = await held.model.infer(request)
            held.states = [(h.copy(), c.copy()) for h, c in result.final_states]
            held.steps += int(request.lengths[0])
            held.last_used = time.monotonic()
        finally:
            held.lock.release()
        if end:
            self.end(sequence_id)
        else:
            self._publish()
        return result

    async def evict_forever(self, every_s: float) -> None:
        """Background task: evict idle sequences periodically."""
        while True:
            await asyncio.sleep(every_s)
            self.evict_idle()
