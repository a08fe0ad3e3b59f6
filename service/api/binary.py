"""The binary tensor data extension's framing: a JSON header, then raw tensor bytes.

Request: ``Inference-Header-Content-Length: N`` says the first N bytes of the
body are the JSON object; the rest is the raw little-endian bytes of the inputs
that carry ``parameters.binary_data_size``, concatenated in the order those
inputs appear in the JSON. Response: the same layout, announced by the same
header and ``Content-Type: application/octet-stream``.

Nothing here copies tensor bytes: the request tail is sliced as ``memoryview``s
that ``np.frombuffer`` reads in place, and the response joins the output arrays'
buffers once. Every way the framing can be inconsistent is a ``BadRequest``
naming the numbers that do not add up, never an exception from deeper down.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from service.api.responses import parse_json
from service.errors import BadRequest, PayloadTooLarge

HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"

_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


@dataclass(frozen=True)
class Body:
    """A request body split at the JSON header: the parsed JSON and the bytes after it."""

    json: Any
    tail: memoryview


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


def split_body(body: bytes, header_length: str | None) -> Body:
    """Parse the JSON part of the body; without the header, the whole body is JSON."""
    if header_length is None:
        try:
            return Body(parse_json(body), memoryview(b""))
        except BadRequest as exc:
            if not body:
                raise
            raise BadRequest(
                f"{exc.message} (a body with binary tensor data needs the {HEADER_LENGTH} header)"
            ) from None
    text = header_length.strip()
    if not text.isdigit():
        raise BadRequest(f"{HEADER_LENGTH} {header_length!r} is not a number of bytes")
    size = int(text)
    if size > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {size} bytes but the body has only {len(body)}")
    if size == 0:
        raise BadRequest(f"{HEADER_LENGTH} is 0: the body must start with a JSON object")
    view = memoryview(body)
    return Body(parse_json(bytes(view[:size])), view[size:])


def slice_buffers(
    tail: memoryview, sizes: Sequence[tuple[str, int | None]]
) -> list[memoryview | None]:
    """Each input's bytes out of the tail, in order; None for inputs sent as JSON.

    ``sizes`` pairs each input's name with its ``binary_data_size`` (or None).
    The sizes must account for the tail exactly: a shortfall would read past the
    body, a surplus means the client and server disagree on the layout.
    """
    declared = [(name, size) for name, size in sizes if size is not None]
    total = sum(size for _, size in declared)
    if total != len(tail):
        listed = ", ".join(f"{name!r}: {size}" for name, size in declared)
        which = f"({listed})" if listed else "(no input has parameters.binary_data_size)"
        raise BadRequest(
            f"binary tensor data does not add up: the inputs declare {total} bytes {which} "
            f"but {len(tail)} bytes follow the JSON header"
        )
    buffers: list[memoryview | None] = []
    offset = 0
    for _, size in sizes:
        if size is None:
            buffers.append(None)
            continue
        buffers.append(tail[offset : offset + size])
        offset += size
    return buffers


def binary_response(header: dict[str, Any], buffers: Sequence[np.ndarray]) -> Response:
    """JSON header then each buffer's bytes; ``buffers`` are C-contiguous little-endian arrays."""
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(
        b"".join([head, *(array.data for array in buffers)]),
        media_type=OCTET_STREAM,
        headers={HEADER_LENGTH: str(len(head))},
    )
