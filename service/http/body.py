"""Request bodies in, JSON out: bounded reads, orjson both ways (numpy arrays without a detour)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from service.core.errors import BadRequest, BodyTimeout, PayloadTooLarge
from service.settings import Settings

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
BODY_COMPLETE = "lstm.body_complete"
"""Set in the scope's ``extensions`` by the connection protocol (``connections.py``) when
a request's whole body arrived before the app read any of it: ``read_raw`` then reads it
without arming the upload clocks, which have nothing left to bound."""
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """orjson writes float32 arrays in their shortest exact form, so values round-trip."""
    return Response(
        orjson.dumps(content, option=_OPTIONS),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


@dataclass(frozen=True)
class BodyLimits:
    """What reading one body may take: bytes, time, and the lingering close's budget."""

    max_bytes: int
    timeout_s: float
    linger_bytes: int = 0
    linger_s: float = 0.0
    encoded: bool = False
    """Decode a ``Content-Encoding`` (gzip, deflate) within ``max_bytes`` (V2)."""
    min_rate: float = 0.0
    """Bytes per second a body must keep up after ``grace_s`` (0: no minimum)."""
    grace_s: float = 0.0

    @classmethod
    def of(cls, settings: Settings, *, encoded: bool = False) -> BodyLimits:
        return cls(
            settings.max_body_bytes,
            settings.request_timeout_s,
            settings.lingering_close_bytes,
            settings.lingering_close_s,
            encoded,
            settings.min_upload_bytes_per_s,
            settings.min_upload_grace_s,
        )


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    """The body within ``limits`` (decoded when they say so)."""
    body = await read_raw(
        request,
        limits.max_bytes,
        limits.timeout_s,
        limits.linger_bytes,
        limits.linger_s,
        limits.min_rate,
        limits.grace_s,
    )
    if limits.encoded:
        return decode_content(body, request.headers.get("content-encoding"), limits.max_bytes)
    return body


async def read_raw(
    request: Request,
    limit: int,
    timeout_s: float,
    linger_bytes: int = 0,
    linger_s: float = 0.0,
    min_rate: float = 0.0,
    grace_s: float = 0.0,
) -> bytes:
    """The request body, refusing more than ``limit`` bytes, taking over ``timeout_s``, or
    arriving slower than ``min_rate`` bytes a second once ``grace_s`` has passed.

    The time bounds stop a client that sends headers and then stalls, or trickles a
    large body, from holding a task and its buffers for long (uvicorn bounds idle
    keep-alive, not uploads). An over-limit body is discarded up to ``linger_bytes``
    more (``linger_s`` at most) before its 413: ``urllib`` and ``requests`` send the
    whole body before reading, and a server that closes mid-upload gives them a
    connection reset instead of the answer (nginx's lingering close).
    """
    if request.scope.get("extensions", {}).get(BODY_COMPLETE):
        # Arrived whole before the app began (the usual small body): nothing to time.
        return await _read(request, limit, None)
    clock = _BodyClock(timeout_s, min_rate, grace_s)
    try:
        return await _read(request, limit, clock)
    except asyncio.CancelledError:
        if clock.expired():  # our own cancellation (as ``asyncio.timeout`` makes its own)
            raise BodyTimeout(clock.why(declared_length(request))) from None
        raise
    except PayloadTooLarge:
        clock.stop()
        await _discard_rest(request, linger_bytes, linger_s)
        raise
    finally:
        clock.stop()


class _BodyClock:
    """One timer per body for both time bounds: the total (``timeout_s``) and the pace.

    A body gets ``grace_s`` plus one second per ``min_rate`` bytes received (Apache's
    mod_reqtimeout ``MinRate``). Chunks only add to ``received``; the timer is set for
    the deadline the bytes so far earn and, when it fires, moves on to the one the bytes
    since have earned (at most once per ``grace_s`` for a client keeping the pace), or
    cancels the reading task, as ``asyncio.timeout`` would (whose object and second
    timer this saves). No timer is set or cancelled per chunk.
    """

    __slots__ = (
        "_cancelling",
        "_expired",
        "_handle",
        "_task",
        "began",
        "grace_s",
        "loop",
        "min_rate",
        "received",
        "slow",
        "timeout_s",
    )

    def __init__(self, timeout_s: float, min_rate: float, grace_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.grace_s = grace_s
        self.received = 0
        self.began = self.loop.time()
        self.slow = False  # expired by the pace, not by the total time
        self._expired = False
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling() if self._task is not None else 0
        self._handle: asyncio.TimerHandle | None = self.loop.call_at(self._due(), self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> float:
        end = self.began + self.timeout_s
        if self.min_rate <= 0:
            return end
        return min(end, self.began + self.grace_s + self.received / self.min_rate)

    def _check(self) -> None:
        due = self._due()
        now = self.loop.time()
        if now < due:  # bytes arrived since the timer was set: they earned more time
            self._handle = self.loop.call_at(due, self._check)
            return
        self._handle = None
        if self._task is None or self._task.done():
            return
        self.slow = due < self.began + self.timeout_s
        self._expired = True
        self._task.cancel()

    def expired(self) -> bool:
        """Whether this clock cancelled the task, and nobody else did meanwhile (then the
        cancellation is taken back here and the read is refused with a 408)."""
        if not self._expired or self._task is None:
            return False
        return self._task.uncancel() <= self._cancelling

    def why(self, declared: int | None) -> str:
        if not self.slow:
            return (
                f"the request body did not arrive within {self.timeout_s:g} s; send it whole "
                "and promptly"
            )
        took = max(self.loop.time() - self.began, 1e-3)
        of = f" of {declared}" if declared is not None else ""
        return (
            f"the request body arrived at {_rate(self.received / took)} ({self.received}{of} "
            f"bytes in {took:.1f} s), under the minimum of {_rate(self.min_rate)} after the "
            f"first {self.grace_s:g} s (setting min_upload_bytes_per_s); send it faster"
        )


def _rate(per_s: float) -> str:
    if per_s >= 1024:
        return f"{per_s / 1024:.3g} KiB/s"
    return f"{per_s:.0f} B/s"


async def _discard_rest(request: Request, budget: int, timeout_s: float) -> None:
    """Read and drop what is left of the body, within ``budget`` bytes and ``timeout_s``.

    Past either bound the connection is closed after the 413 (``http/connections.py``
    closes a connection whose body was not read to the end).
    """
    with contextlib.suppress(BadRequest):  # a malformed length was refused before this
        declared = declared_length(request)
        if declared is not None and declared > budget:
            return  # hopeless: do not read what will be cut off anyway
    with contextlib.suppress(TimeoutError, ClientDisconnect):
        async with asyncio.timeout(timeout_s):
            while budget >= 0:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    return
                budget -= len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


def declared_length(request: Request) -> int | None:
    """The body's ``Content-Length``, or None when the client did not declare it."""
    declared = next((v for k, v in request.scope["headers"] if k == b"content-length"), None)
    if declared is None:
        return None
    if not declared.isdigit():
        raise BadRequest(f"Content-Length {declared.decode('latin-1')!r} is not a number of bytes")
    return int(declared)


async def _read(request: Request, limit: int, clock: _BodyClock | None) -> bytes:
    """Reads the ASGI messages itself rather than through ``Request.stream()``: on the
    hot routes every microsecond is a fraction of the request."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if clock is not None:
            clock.received = size
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """Parse with orjson; fall back to the stdlib only to read NaN/Infinity literals.

    orjson refuses those tokens outright. Reading them anyway lets validation say
    *where* the non-finite number is, which helps a client far more than
    "invalid JSON at byte 1234".
    """
    if not body:
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _parse_leniently(body, exc)


def _parse_leniently(body: bytes, error: orjson.JSONDecodeError) -> Any:
    """The stdlib's reading of what orjson refused, held to what orjson accepts otherwise.

    The stdlib would also take UTF-16/32 bodies, nesting until RecursionError,
    integers of any size and lone surrogates (which no JSON encoder writes back):
    each is refused here with what was wrong, so only the non-finite literals
    get through to validation.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {error} (JSON is sent as UTF-8, RFC 8259; "
            f"byte {exc.start} is not: {exc.reason})"
        ) from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise BadRequest(
            f"request body is not valid JSON: {error} (JSON may nest at most "
            f"{MAX_JSON_DEPTH} levels)"
        ) from None
    except ValueError:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # lone surrogates, integers past 64 bits, depth
        raise BadRequest(f"request body holds a value that is refused: {exc}") from None
    return value


MAX_JSON_DEPTH = 1024
"""orjson's nesting limit for parsing."""


@dataclass(frozen=True)
class JsonLimits:
    """How much JSON one body may hold, and from what size it is parsed off the loop."""

    max_bytes: int = 4 * 1024 * 1024
    thread_bytes: int = 256 * 1024


async def load_json(body: bytes, limits: JsonLimits) -> Any:
    """``parse_json`` within ``limits``: the size is checked before parsing, because the
    parsed objects take up to ~20x the text (a nested list of small numbers), and a large
    body is parsed on a worker thread so the event loop is not held meanwhile.

    orjson holds the GIL while it parses, so the thread bounds the loop's stall by the
    size limit rather than removing it; the limit is the bound that matters.
    """
    if len(body) > limits.max_bytes:
        raise PayloadTooLarge(
            f"the JSON in the request body is {len(body)} bytes; the limit is "
            f"{limits.max_bytes} (max_json_bytes): send large tensors as V2 binary data, "
            "or fewer sequences per request"
        )
    if len(body) > limits.thread_bytes:
        return await asyncio.to_thread(parse_json, body)
    return parse_json(body)


def decode_content(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` (tritonclient's request compression).

    The decompressed size is bounded by the same limit as the body itself, so a
    small compressed body cannot expand into unbounded memory.
    """
    kind = (encoding or "").strip().lower()
    if kind in ("", "identity"):
        return body
    if kind not in _WBITS:
        raise BadRequest(
            f"Content-Encoding {encoding!r} is not supported; send gzip, deflate or no encoding"
        )
    inflater = zlib.decompressobj(_WBITS[kind])
    try:
        plain = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"request body is not valid {kind} data: {exc}") from None
    if len(plain) > limit:
        raise PayloadTooLarge(f"request body is over the limit of {limit} bytes once decompressed")
    if not inflater.eof or inflater.unused_data:
        raise BadRequest(f"request body is not one complete {kind} stream")
    return plain
