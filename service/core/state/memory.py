"""The in-process sequence store: the default, for one worker (``lstm-serve`` on a
laptop, one process per pod with affinity), needing no other service.

Records are kept as they are (no bytes), expire ``ttl_s`` after their last write,
and are purged oldest first: every record of one TTL expires in write order, so a
queue per TTL finds the expired ones without scanning the live ones.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from service.core.errors import SequenceLimit
from service.core.metrics import LIVE_SEQUENCES, SEQUENCE_STATE_BYTES
from service.core.state.store import Limits, Record, SequenceKey


@dataclass
class _Entry:
    record: Record
    expires: float
    ttl_s: float


class MemoryStore:
    """``SequenceStore`` in this process's memory."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.monotonic
        self._entries: dict[SequenceKey, _Entry] = {}
        self._queues: dict[float, OrderedDict[SequenceKey, None]] = {}
        self._owners: Counter[str] = Counter()
        self._bytes = 0

    @property
    def live(self) -> int:
        return len(self._entries)

    @property
    def state_bytes(self) -> int:
        return self._bytes

    def _remove(self, key: SequenceKey) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        self._queues[entry.ttl_s].pop(key, None)
        self._owners[key[0]] -= 1
        if not self._owners[key[0]]:
            del self._owners[key[0]]
        self._bytes -= entry.record.nbytes

    def purge(self) -> int:
        """Forget every record past its expiry; how many went."""
        now = self._clock()
        gone = 0
        for queue in self._queues.values():
            while queue:
                key = next(iter(queue))
                if self._entries[key].expires > now:
                    break
                self._remove(key)
                gone += 1
        if gone:
            self._publish()
        return gone

    def _publish(self) -> None:
        LIVE_SEQUENCES.set(self.live)
        SEQUENCE_STATE_BYTES.set(self._bytes)

    async def get(self, key: SequenceKey, deadline: float | None = None) -> Record | None:
        entry = self._entries.get(key)
        if entry is None or entry.expires <= self._clock():
            return None
        return entry.record

    async def put(
        self,
        key: SequenceKey,
        record: Record,
        *,
        expected_rev: int | None,
        ttl_s: float,
        limits: Limits,
        deadline: float | None = None,
    ) -> bool:
        current = await self.get(key)
        if expected_rev is not None and (current is None or current.rev != expected_rev):
            return False
        if current is None:
            self.purge()
            self._remove(key)  # an expired one not purged yet
            check_limits(len(self._entries), self._owners[key[0]], limits)
        else:
            self._remove(key)
        self._entries[key] = _Entry(record, self._clock() + ttl_s, ttl_s)
        self._queues.setdefault(ttl_s, OrderedDict())[key] = None
        self._owners[key[0]] += 1
        self._bytes += record.nbytes
        self._publish()
        return True

    async def delete(self, key: SequenceKey, deadline: float | None = None) -> None:
        self._remove(key)
        self._publish()

    async def close(self) -> None:
        self._entries.clear()
        self._queues.clear()
        self._owners.clear()
        self._bytes = 0
        self._publish()


def check_limits(total: int, owned: int, limits: Limits) -> None:
    """``SequenceLimit`` when one more live sequence would pass a limit (both stores)."""
    if total >= limits.total:
        raise SequenceLimit(
            f"{limits.total} sequences are live, the configured maximum "
            "(LSTM_SERVE_MAX_SEQUENCES); end finished ones (sequence_end) or wait for idle "
            "ones to be evicted"
        )
    if limits.per_owner is not None and owned >= limits.per_owner:
        raise SequenceLimit(
            f"this API key has {owned} sequences live, its maximum "
            "(LSTM_SERVE_MAX_SEQUENCES_PER_KEY); end finished ones (sequence_end) or wait "
            "for idle ones to be evicted"
        )
