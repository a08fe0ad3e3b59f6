"""The sequence store's interface: what a server-held sequence is, and the four
operations its backends offer (``memory.py`` for one process, ``redis_store.py`` for
any number of workers and replicas).

A backend stores records; it knows nothing of models, chunks or offsets. The rules
(when a chunk applies, when it is a retry, when it conflicts) live in one place,
``sequences.py``, over these operations:

- ``get``: the record, or None;
- ``put``: write a record if the one stored still has revision ``expected_rev``
  (None: whatever is stored, for a start), within the limits on live sequences
  (in total and per owner) when the key is new; returns False when the revision
  moved (another chunk won), raises ``SequenceLimit`` at a limit;
- ``delete``;
- ``close``.

Every record expires ``ttl_s`` after its last write (idle eviction), in the store
itself: a Redis key's TTL, a deadline in memory. ``deadline`` (a ``time.monotonic()``
instant, the request's) bounds a call to a store outside the process.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import orjson

from service.core.types import State

SequenceKey = tuple[str, str, str]
"""(owner, model name, sequence id as text): what a live sequence is filed under.

The id is typed into the text (``i:42`` or ``s:42``) so that the integer 42 and
the string "42" stay two sequences, as Triton keeps them."""


@dataclass(frozen=True)
class LastChunk:
    """What a retry of the most recent chunk needs to be answered again: where the
    chunk started, a digest of its timesteps, and the states before it."""

    offset: int
    digest: bytes
    states_before: list[State]


@dataclass(frozen=True)
class Record:
    """One server-held sequence: the model version it runs on, the timesteps it has
    consumed, every layer's state after them ((h, c), or a GRU layer's (h,)), and its
    last chunk (for retries).

    ``ended``: its final chunk was applied; the record stays only so that a retry of
    that chunk is answered again (``sequences.ENDED_RETRY_S``)."""

    version: int
    steps: int
    states: list[State]
    rev: int = 0
    last: LastChunk | None = None
    ended: bool = False

    @property
    def nbytes(self) -> int:
        held = sum(array.nbytes for array in _arrays(self.states))
        if self.last is not None:
            held += sum(array.nbytes for array in _arrays(self.last.states_before))
        return held


@dataclass(frozen=True)
class Limits:
    """Live sequences at most: in total, and per owner (None: no per-owner limit, as when
    keys are off and every caller is the same owner)."""

    total: int
    per_owner: int | None


class SequenceStore(Protocol):
    """The operations ``sequences.py`` runs server-held sequences on."""

    async def get(self, key: SequenceKey, deadline: float | None = None) -> Record | None: ...

    async def put(
        self,
        key: SequenceKey,
        record: Record,
        *,
        expected_rev: int | None,
        ttl_s: float,
        limits: Limits,
        deadline: float | None = None,
    ) -> bool: ...

    async def delete(self, key: SequenceKey, deadline: float | None = None) -> None: ...

    async def close(self) -> None: ...


def key_digest(key: SequenceKey) -> str:
    """A fixed-size, injection-free name for a key (Redis keys, metrics never see ids)."""
    return hashlib.sha256(b"\0".join(part.encode() for part in key)).hexdigest()


def owner_digest(owner: str) -> str:
    return hashlib.sha256(owner.encode()).hexdigest()


# -- bytes, for stores outside the process --------------------------------------

_LENGTH = struct.Struct("<I")


def _arrays(states: list[State]) -> list[np.ndarray]:
    return [array for layer in states for array in layer]


def encode(record: Record) -> bytes:
    """A record as bytes: a length-prefixed JSON header, then float32 arrays in order.

    ``tensors`` says how many arrays each layer holds (2 for an LSTM layer, 1 for a
    GRU layer); a record without it was written before GRU state was carried, when
    every layer held two.
    """
    arrays = _arrays(record.states)
    last = record.last
    if last is not None:
        arrays += _arrays(last.states_before)
    header = {
        "version": record.version,
        "steps": record.steps,
        "rev": record.rev,
        "ended": record.ended,
        "shapes": [list(a.shape) for a in _arrays(record.states)],
        "tensors": [len(layer) for layer in record.states],
        "last": None if last is None else {"offset": last.offset, "digest": last.digest.hex()},
    }
    head = orjson.dumps(header)
    parts = [_LENGTH.pack(len(head)), head]
    parts += [np.ascontiguousarray(a, dtype=np.float32).tobytes() for a in arrays]
    return b"".join(parts)


def decode(blob: bytes) -> Record:
    """The inverse of ``encode``; arrays are copies, owned by the caller."""
    (size,) = _LENGTH.unpack_from(blob)
    header = orjson.loads(blob[_LENGTH.size : _LENGTH.size + size])
    at = _LENGTH.size + size
    shapes = [tuple(s) for s in header["shapes"]]
    tensors = header.get("tensors") or [2] * (len(shapes) // 2)

    def read(count: int) -> list[State]:
        nonlocal at
        arrays = []
        for shape in shapes[:count]:
            n = int(np.prod(shape)) * 4
            arrays.append(np.frombuffer(blob, np.float32, n // 4, at).reshape(shape).copy())
            at += n
        layers, first = [], 0
        for held in tensors:
            layers.append(tuple(arrays[first : first + held]))
            first += held
        return layers

    states = read(len(shapes))
    last = None
    if header["last"] is not None:
        last = LastChunk(
            offset=int(header["last"]["offset"]),
            digest=bytes.fromhex(header["last"]["digest"]),
            states_before=read(len(shapes)),
        )
    return Record(
        version=int(header["version"]),
        steps=int(header["steps"]),
        states=states,
        rev=int(header["rev"]),
        last=last,
        ended=bool(header["ended"]),
    )
