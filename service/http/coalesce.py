"""A response's head leaves in the same ``send`` as its body.

uvicorn writes a response in two ``transport.write`` calls, the head when the app
sends ``http.response.start`` and the body with ``http.response.body``, and uvloop
sends each at once: two ``write`` syscalls per answer, two TCP segments on the
wire, and two wake-ups of the client's reader. For the small answers of the
inference routes that second syscall (the kernel delivers loopback TCP in the
sender's time) was measurable in the CPU budget (``core/cpu_budget.py``).

``HeadWithBody`` stands in for the transport of one request's cycle: it holds the
head and writes it with the next write, the body, as one ``writelines`` (one
``writev``). Anything else goes straight through: an interim ``100 Continue``, and
every write after the head. A head is never held longer than until the body's
first write or the cycle closing the transport, whichever comes first; a HEAD
request's cycle, whose body uvicorn never writes, is left unwrapped
(``connections.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any


class HeadWithBody:
    """One cycle's transport: its response head waits for the first body write."""

    __slots__ = ("_held", "_passed", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._passed = False  # once the head is out, every write passes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._passed:
            self._transport.write(data)
        elif self._held is not None:
            self._passed = True
            held, self._held = self._held, None
            self._transport.writelines([held, data] if data else [held])
        elif bytes(data[9:10]) == b"1":  # "HTTP/1.1 1xx": an interim answer goes now
            self._transport.write(data)
        else:
            self._held = bytes(data)

    def close(self) -> None:
        self._release()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = len(self._held) if self._held is not None else 0
        return self._transport.get_write_buffer_size() + held

    def _release(self) -> None:
        if self._held is not None:
            self._passed = True
            held, self._held = self._held, None
            self._transport.write(held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
