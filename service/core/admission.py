"""At most a few large requests per worker at once: what makes the memory bound hold
under concurrency.

Every limit of ``core/cost.py`` and ``http/body.py`` bounds one request. A worker
that decodes many large requests at once would still add those bounds up, so
a request whose body is over ``threshold_bytes`` (or whose size is not declared)
takes one of ``slots`` places from before its body is read until it is answered;
the next waits for a place, within its deadline, then gets ``Overloaded`` (503,
Retry-After). Ordinary requests never wait here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.core.errors import Overloaded


class LargeRequests:
    def __init__(self, slots: int, threshold_bytes: int) -> None:
        self.slots = slots
        self.threshold_bytes = threshold_bytes
        self._places = asyncio.Semaphore(slots)

    def is_large(self, declared_bytes: int | None) -> bool:
        return declared_bytes is None or declared_bytes > self.threshold_bytes

    @asynccontextmanager
    async def admit(self, declared_bytes: int | None, timeout_s: float) -> AsyncIterator[None]:
        """Hold a place for the request's lifetime when it is large; yield at once if not."""
        if not self.is_large(declared_bytes):
            yield
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._places.acquire()
        except TimeoutError:
            raise Overloaded(
                f"{self.slots} large request(s) (bodies over {self.threshold_bytes} bytes) "
                "are being served, the limit per worker (max_large_requests); retry later"
            ) from None
        try:
            yield
        finally:
            self._places.release()
