"""Who holds a model version: what lets a rollout retire it without cutting anyone off.

A request holds the version it resolved from then until it is answered (the data
plane: body, decode and all), and every submission to the version's batcher holds it
while it runs (a stream's message, a sequence's chunk). An unload first hides the
version from new requests (``repository.py``), then ``drain`` waits for the holders
to finish, within its time, then closes the batcher.
"""

from __future__ import annotations

import asyncio


class Holds:
    """A count of holders and an event set whenever it is zero."""

    def __init__(self) -> None:
        self._count = 0
        self._drained = asyncio.Event()
        self._drained.set()

    @property
    def count(self) -> int:
        return self._count

    def enter(self) -> None:
        self._count += 1
        self._drained.clear()

    def leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._drained.set()

    def __enter__(self) -> None:
        """``with holds:`` holds the version for the block (a plain method pair, not a
        generator-based context manager: it runs once per request)."""
        self.enter()

    def __exit__(self, *_: object) -> None:
        self.leave()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing holds the version; False if the wait ran out."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True
