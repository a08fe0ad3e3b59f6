"""Server-held sequences: the one place their rules live, over any ``SequenceStore``.

A chunk of a sequence (one sequence, some timesteps) runs on the states the store
holds for it and writes the new states back:

- ``sequence_start`` begins the sequence (or begins it again) from zero state;
  a chunk without it needs a live sequence: an id that is not live is refused
  (404), never silently started.
- **Retry-safe offsets.** A chunk may say where it starts (``sequence_offset``,
  timesteps consumed before it). If that is not the count the store holds, the
  chunk is refused with 409 naming the count, and nothing changes, so a client
  that retries after a lost answer can never step the state twice. One exception
  makes the retry useful: a chunk identical to the last one applied (same offset,
  same timesteps, by digest) is *answered again*, computed from the states before
  it, and the state does not move. So after a lost answer the client resends the
  same request and gets the outputs either way. A final chunk (``sequence_end``)
  stays answerable for ``ENDED_RETRY_S``.
- **Atomic.** The write compares the revision the chunk read: two chunks of one
  sequence that run at once (two workers, two replicas) never both apply; the
  later gets 409 and changes nothing. A chunk that fails (bad input, a full
  queue, the store gone) changes nothing either.
- A sequence stays on the model version it started with; once that version is
  unloaded, its next chunk gets 410 and the sequence is ended.
- Bounded: idle sequences expire after ``idle_timeout_s``; at most
  ``max_sequences`` live in total and ``max_per_key`` per API key (not applied when
  keys are off: there is one caller). A sequence belongs to its caller: it is filed
  under (owner, model, id), so another key's id names another sequence.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from service.core.errors import (
    InvalidInput,
    ModelNotFound,
    Overloaded,
    SequenceConflict,
    SequenceGone,
    SequenceNotFound,
)
from service.core.model import ServedModel
from service.core.state.options import SequenceId, StateOptions
from service.core.state.store import LastChunk, Limits, Record, SequenceKey, SequenceStore
from service.core.types import InferenceRequest, RunResult, copy_states

ENDED_RETRY_S = 60.0
"""How long an ended sequence's final chunk can still be retried (and counts as live)."""

Resolver = Callable[[str, int], ServedModel]
"""(model name, version) -> that version as loaded here, or ``ModelNotFound``."""


@dataclass(frozen=True)
class SequencesOptions:
    idle_timeout_s: float
    max_sequences: int
    max_per_key: int
    unavailable: str = ""
    """Why server-held sequences are refused here ("" when they are served): several
    workers and no shared store."""


def sequence_key(owner: str, model: str, sequence_id: SequenceId) -> SequenceKey:
    kind = "i" if isinstance(sequence_id, int) else "s"
    return (owner, model, f"{kind}:{sequence_id}")


def chunk_digest(request: InferenceRequest) -> bytes:
    """What tells a retried chunk from a different one: its timesteps, as float32."""
    steps = int(request.lengths[0])
    return hashlib.blake2b(request.x[0, :steps].tobytes(), digest_size=16).digest()


class Sequences:
    """Runs server-held chunks on a store; ``unavailable`` refuses them all."""

    def __init__(
        self, store: SequenceStore | None, resolve: Resolver, options: SequencesOptions
    ) -> None:
        self.store = store
        self._resolve = resolve
        self.options = options

    def _limits(self, owner: str) -> Limits:
        per_key = self.options.max_per_key if owner else None
        return Limits(self.options.max_sequences, per_key)

    def _store(self) -> SequenceStore:
        if self.store is None:
            raise InvalidInput(self.options.unavailable)
        return self.store

    async def run(
        self, model: ServedModel, request: InferenceRequest, options: StateOptions
    ) -> tuple[RunResult, int]:
        """Run one chunk; its result and the timesteps its sequence has consumed after it."""
        store = self._store()  # the caller checked the model can carry state (check_stateful)
        if request.batch_size != 1:
            raise InvalidInput(f"a stateful request carries one sequence; got {request.batch_size}")
        assert options.sequence_id is not None
        key = sequence_key(options.owner, model.name, options.sequence_id)
        digest = chunk_digest(request)
        record: Record | None = None
        if options.sequence_start:
            held, states_in, replay = model, model.runtime.zero_states(1), False
        else:
            record = await store.get(key, request.deadline)
            if record is None:
                raise SequenceNotFound(
                    f"sequence {options.sequence_id!r} is not live (never started, already "
                    f"ended, or evicted after {self.options.idle_timeout_s:g} s idle); send its "
                    "first chunk with sequence_start set to begin it"
                )
            held = await self._version(model, record, key, request.deadline, options.sequence_id)
            replay = _is_retry(record, options.sequence_offset, digest)
            if not replay:
                _check_offset(record, options, digest)
            states_in = record.last.states_before if replay and record.last else record.states
        request.states = states_in
        request.outputs = request.outputs.with_states()  # the store keeps them
        result = await self._submit(held, request, key, options.sequence_id)
        if replay:
            assert record is not None
            return result, record.steps
        steps = int(request.lengths[0]) + (0 if record is None else record.steps)
        new = Record(
            version=held.version,
            steps=steps,
            states=copy_states(result.final_states),
            rev=secrets.randbits(62),
            last=LastChunk(0 if record is None else record.steps, digest, states_in),
            ended=options.sequence_end,
        )
        ttl_s = ENDED_RETRY_S if options.sequence_end else self.options.idle_timeout_s
        written = await store.put(
            key,
            new,
            expected_rev=None if record is None else record.rev,
            ttl_s=ttl_s,
            limits=self._limits(options.owner),
            deadline=request.deadline,
        )
        if not written:
            raise SequenceConflict(
                f"sequence {options.sequence_id!r} was advanced or restarted by another chunk "
                "while this one ran, so this one was not applied; send chunks of one sequence "
                "one at a time (with sequence_offset to retry safely)"
            )
        return result, steps

    async def _version(
        self,
        model: ServedModel,
        record: Record,
        key: SequenceKey,
        deadline: float,
        sid: SequenceId,
    ) -> ServedModel:
        """The version the sequence started on, whichever the URL named."""
        if record.version == model.version:
            return model
        try:
            return self._resolve(model.name, record.version)
        except ModelNotFound:
            await self._store().delete(key, deadline)
            raise _gone(sid, model.name, record.version) from None

    async def _submit(
        self, model: ServedModel, request: InferenceRequest, key: SequenceKey, sid: SequenceId
    ) -> RunResult:
        """The chunk's result on the sequence's own version; ``SequenceGone`` (and the
        sequence ended) once a rollout retired that version, so the client gets one
        definitive answer rather than an endless "retry"."""
        batcher = model.batcher
        try:
            if batcher.closing:
                raise Overloaded("retired")
            return await batcher.submit(request)
        except Overloaded:
            if not batcher.closing:
                raise
            await self._store().delete(key, request.deadline)
            raise _gone(sid, model.name, model.version) from None

    async def end(self, model: str, options: StateOptions) -> None:
        """Forget a sequence now (a stream's ``end``), whatever chunk it is at."""
        assert options.sequence_id is not None
        await self._store().delete(sequence_key(options.owner, model, options.sequence_id))

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


def _is_retry(record: Record, offset: int | None, digest: bytes) -> bool:
    """The chunk is the last one applied, sent again (its answer was lost)."""
    last = record.last
    return (
        offset is not None
        and last is not None
        and offset == last.offset
        and offset != record.steps
        and digest == last.digest
    )


def _check_offset(record: Record, options: StateOptions, digest: bytes) -> None:
    sid = options.sequence_id
    if record.ended:
        raise SequenceNotFound(
            f"sequence {sid!r} is not live: it has ended (sequence_end); start it again with "
            "sequence_start"
        )
    offset = options.sequence_offset
    if offset is None or offset == record.steps:
        return
    raise SequenceConflict(
        f"sequence {sid!r} has consumed {record.steps} timesteps; this chunk says it starts "
        f"at timestep {offset} (sequence_offset), so it was not applied. Send the chunk that "
        f"starts at {record.steps}"
        + (
            ", or resend the last chunk unchanged to have it answered again"
            if record.last is not None
            else ""
        )
    )


def _gone(sid: SequenceId, model: str, version: int) -> SequenceGone:
    return SequenceGone(
        f"sequence {sid!r} ran on model {model!r} version {version}, which was unloaded; its "
        "state went with it: start the sequence again (sequence_start) on the version now "
        "serving"
    )
