"""A lean HTTP/1.1 keep-alive client: one ``asyncio.Protocol`` per connection.

The load client shares the CPU with the server it measures, so every
microsecond it spends per request is stolen from the thing under test. General
clients (httpx, aiohttp) build header objects, parse every header and run
several coroutines per request; here a request is one pre-encoded ``bytes``
written in one call, and a response is parsed only as far as the status code
and the body's end (``Content-Length``, chunked, or connection close). The
result is delivered by a plain callback, not a future, so a closed loop can
send the next request from inside ``data_received`` without a task switch.

One request is in flight per connection at a time (no pipelining), which is
what browsers, load balancers and benchmark tools do against HTTP/1.1 servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import orjson

from service.loadtest.spec import Target

# An HTTP status, or how the transport failed: "timeout" or "connection".
Outcome = int | str
TIMEOUT = "timeout"
CONNECTION = "connection"
MAX_HEAD = 64 * 1024  # a longer response head is not a server we understand

_CHUNKED = b"\r\ntransfer-encoding: chunked"
_LENGTH = b"\r\ncontent-length:"
_CLOSE = b"\r\nconnection: close"


class ProtocolError(Exception):
    """The peer sent something that is not an HTTP/1.1 response we can frame."""


def encode_request(
    target: Target,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The complete request as bytes, written with one ``transport.write`` per send."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {target.authority}", "User-Agent: lstm-bench"]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """Status, body length (-1: unknown), chunked, and whether the server will close."""
    if not head.startswith(b"HTTP/1.") or len(head) < 12:
        raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
    status = int(head[9:12])
    lowered = head.lower()
    chunked = _CHUNKED in lowered
    close = _CLOSE in lowered or head.startswith(b"HTTP/1.0")
    if chunked or status in (204, 304) or 100 <= status < 200:
        return status, 0 if not chunked else -1, chunked, close
    at = lowered.find(_LENGTH)
    if at < 0:
        return status, -1, False, True  # the body ends when the connection does
    end = lowered.find(b"\r\n", at + 2)
    return status, int(lowered[at + len(_LENGTH) : end if end >= 0 else None]), False, close


class ChunkedBody:
    """Finds the end of a chunked body fed in pieces; the data itself is discarded."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip = 0  # chunk bytes (plus CRLF) still to drop

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Add bytes; True once the terminating zero-size chunk and trailers are in."""
        self._buffer += data
        buf = self._buffer
        while True:
            if self._skip:
                take = min(self._skip, len(buf))
                del buf[:take]
                self._skip -= take
                if self._skip:
                    return False
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return False
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            if size == 0:
                if buf.startswith(b"\r\n", line_end + 2):
                    return True
                return buf.find(b"\r\n\r\n", line_end) >= 0
            del buf[: line_end + 2]
            self._skip = size + 2


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``on_done(conn, outcome, finished_at)`` after each response.

    ``started`` and ``counted`` are the engine's bookkeeping for the request in
    flight (its latency origin and whether it falls in the measured phase);
    keeping them on the connection spares a closure per request.
    """

    def __init__(self, on_done: Callable[[Connection, Outcome, float], None]) -> None:
        self._on_done = on_done
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False
        self.started = 0.0
        self.sent_at = 0.0
        self.counted = False
        self._buffer = bytearray()
        self._status = 0
        self._remaining = 0
        self._in_body = False
        self._chunks: ChunkedBody | None = None
        self._until_close = False
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, started: float, counted: bool) -> None:
        """Write one request; the connection must be open and idle."""
        assert self.transport is not None and not self.busy
        self.busy = True
        self.started = started
        self.counted = counted
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            self._fail(CONNECTION)  # bytes nobody asked for: the framing is lost
            return
        try:
            if not self._in_body:
                rest = self._read_head(data)
                if rest is None:
                    return
                data = rest
            self._read_body(data)
        except (ProtocolError, ValueError):
            self._fail(CONNECTION)

    def _read_head(self, data: bytes) -> bytes | None:
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if not self._buffer:
                self._buffer += data
            if len(self._buffer) > MAX_HEAD:
                raise ProtocolError("response head too long")
            return None
        self._buffer.clear()
        status, length, chunked, close = _parse_head(data[: end + 2])
        self._status, self._remaining, self._close_after = status, length, close
        self._chunks = ChunkedBody() if chunked else None
        self._until_close = length < 0 and not chunked
        self._in_body = True
        return data[end + 4 :]

    def _read_body(self, data: bytes) -> None:
        if self._chunks is not None:
            if self._chunks.feed(data):
                self._finish(self._status)
        elif not self._until_close:
            self._remaining -= len(data)
            if self._remaining == 0:
                self._finish(self._status)
            elif self._remaining < 0:
                raise ProtocolError("more bytes than Content-Length")

    def _finish(self, outcome: Outcome) -> None:
        finished = time.perf_counter()
        self.busy = False
        self._in_body = False
        self._chunks = None
        self._until_close = False
        if self._close_after or not isinstance(outcome, int):
            self.close()
        self._on_done(self, outcome, finished)

    def _fail(self, outcome: str) -> None:
        if self.busy:
            self._finish(outcome)
        else:
            self.close()

    def expire(self) -> None:
        """Give up on the request in flight: it is a timeout, and the connection is unusable."""
        self._fail(TIMEOUT)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.busy:
            ends_body = self._in_body and self._until_close
            self._finish(self._status if ends_body else CONNECTION)


async def open_connection(
    target: Target, on_done: Callable[[Connection, Outcome, float], None]
) -> Connection:
    """Connect one ``Connection`` to ``target``; raises ``OSError`` if nobody answers."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: Connection(on_done), target.host, target.port
    )
    return protocol


async def get_json(
    target: Target, path: str, timeout: float, headers: tuple[tuple[str, str], ...] = ()
) -> tuple[int, Any]:
    """``GET path`` once, outside any measurement (model metadata): status and parsed body."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(target.host, target.port), timeout
    )
    try:
        request = encode_request(target, "GET", path, headers=(("Connection", "close"), *headers))
        writer.write(request)
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        raise ProtocolError(f"no complete response to GET {path}")
    status, _, chunked, _ = _parse_head(raw[: end + 2])
    body = raw[end + 4 :]
    if chunked:
        raise ProtocolError(f"GET {path}: chunked metadata responses are not supported")
    try:
        return status, orjson.loads(body)
    except orjson.JSONDecodeError:
        return status, None
