"""One timer per event loop that enforces every connection's clocks (``connections.py``).

A timer per connection would cost a ``call_later`` and a ``cancel`` on every request
(and cancelled handles pile up in the loop's heap); a sweep a few times per timeout
costs one pass over the open connections. It closes connections past their
request-head deadline, and those whose client leaves its answers unread: past the
write timeout, over the per-connection ceiling with nothing read since the last
sweep, or, oldest stall first, while the unsent answers of all exceed their total
ceiling. What it reads and calls of a connection is ``Swept``.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Protocol


class Swept(Protocol):
    """What the sweeper needs of a connection (``BoundedHttpProtocol``)."""

    transport: asyncio.Transport
    head_deadline: float | None
    write_stalled_since: float | None
    unsent_seen: int
    write_timeout_s: float
    max_unsent_per_connection: int
    max_unsent_bytes: int

    def head_timed_out(self) -> None: ...

    def abort_unread(self, why: str) -> None: ...


class Sweeper:
    """One timer per event loop that closes connections past their head deadline.

    A timer per connection would cost a ``call_later`` and a ``cancel`` on every
    request (and cancelled handles pile up in the loop's heap); a sweep a few
    times per timeout costs one pass over the open connections, and a deadline
    is then kept to within a quarter of ``head_timeout_s`` (at most 1 s late).
    """

    _loops: ClassVar[dict[asyncio.AbstractEventLoop, Sweeper]] = {}

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        connections: set[Any],
        timeout_s: float,
        kind: type[Swept],
    ) -> None:
        self.loop = loop
        self.connections = connections
        self.kind = kind
        self.every_s = min(1.0, timeout_s / 4)
        self.loop.call_later(self.every_s, self.sweep)

    @classmethod
    def watch(
        cls,
        loop: asyncio.AbstractEventLoop,
        connections: set[Any],
        timeout_s: float,
        kind: type[Swept],
    ) -> None:
        """Sweep ``connections`` (uvicorn's set, WebSocket protocols included) on ``loop``,
        the ones of ``kind``: once per loop, however many connections ask."""
        if loop not in cls._loops:
            cls._loops[loop] = cls(loop, connections, timeout_s, kind)

    def sweep(self) -> None:
        if self.loop.is_closed():
            return
        now = self.loop.time()
        late = []
        stalled = []
        for c in self.connections:
            if not isinstance(c, self.kind):
                continue
            if c.head_deadline is not None and c.head_deadline <= now:
                late.append(c)
            if c.write_stalled_since is not None:
                stalled.append(c)
        for connection in late:
            connection.head_timed_out()
        self._sweep_writes(stalled, now)
        self.loop.call_later(self.every_s, self.sweep)

    @staticmethod
    def _sweep_writes(stalled: list[Swept], now: float) -> None:
        """Close connections whose client takes none of its answer within the write
        timeout, or none since the last sweep of one over the per-connection ceiling;
        then, oldest stall first, those beyond the ceiling on unsent bytes in total."""
        unsent = 0
        waiting = []
        for c in stalled:
            if c.transport.is_closing() or c.write_stalled_since is None:
                continue
            size = c.transport.get_write_buffer_size()
            if size < c.unsent_seen:  # the client reads: the clock restarts
                c.unsent_seen, c.write_stalled_since = size, now
            elif now - c.write_stalled_since >= c.write_timeout_s:
                c.abort_unread(
                    f"its client took none of its answer for {c.write_timeout_s:g} s "
                    f"({size} bytes unsent; setting write_timeout_s)"
                )
                continue
            elif size > c.max_unsent_per_connection:  # and nothing read since the last look
                c.abort_unread(
                    f"its client took none of its {size} unsent bytes, over the "
                    f"{c.max_unsent_per_connection} of max_unsent_bytes_per_connection"
                )
                continue
            unsent += size
            waiting.append((c.write_stalled_since, size, c))
        if not waiting or unsent <= waiting[0][2].max_unsent_bytes:
            return
        ceiling = waiting[0][2].max_unsent_bytes
        for _, size, c in sorted(waiting, key=lambda w: w[0]):
            if unsent <= ceiling:
                break
            c.abort_unread(
                f"answers waiting for readers are {unsent} bytes, over the {ceiling} of "
                "max_unsent_bytes; this one waited longest"
            )
            unsent -= size
