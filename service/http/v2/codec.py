"""V2 infer's half of the request path (``service/dataplane.py``): the body (JSON, or
the binary tensor extension) to the core's request, and the result to
``$inference_response`` with each output as JSON data or raw bytes.

The binary framing is split and joined here too (below), the envelope validated
(``schema.py``), the tensors decoded into the core's arrays and encoded back
(``tensors.py``). Triton's sequence extension becomes the core's state options.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.responses import Response

from service.core.errors import BadRequest
from service.core.model import ServedModel
from service.core.types import InferenceRequest
from service.dataplane import Decoded, Outcome
from service.http.body import JsonLimits, load_json
from service.http.errors import describe_validation_errors
from service.settings import Settings
from service.v2.schema import InferenceRequestBody, InputTensor
from service.v2.tensors import (
    Limits,
    Selected,
    decode_inputs,
    encode_outputs,
    requested,
    select_outputs,
)

Payload = tuple[bytes, str | None]
"""The body, decoded from any Content-Encoding, and its ``Inference-Header-Content-Length``."""

Answer = tuple[dict[str, Any], list[np.ndarray]]
"""The JSON header, and the arrays whose bytes follow it (none: a plain JSON answer)."""


def envelope_of(payload: Any) -> InferenceRequestBody:
    if not isinstance(payload, dict):
        raise BadRequest("the inference request must be a JSON object with 'inputs'")
    try:
        return InferenceRequestBody.model_validate(payload)
    except ValidationError as exc:
        raise BadRequest(describe_validation_errors(exc.errors())) from None


class V2Codec:
    """Decode and encode for ``.../infer``, with the server's limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.json_limits = JsonLimits(settings.max_json_bytes, settings.json_thread_bytes)

    async def decode(
        self, payload: Payload, model: ServedModel
    ) -> Decoded[tuple[InferenceRequestBody, list[Selected]]]:
        settings = self.settings
        body, header_length = payload
        parts = await split_body(body, header_length, self.json_limits)
        envelope = envelope_of(parts.json)
        options = envelope.state_options()
        buffers = slice_buffers(parts.tail, envelope.inputs)
        meta = model.metadata
        x, lengths = decode_inputs(
            envelope.inputs,
            buffers,
            meta,
            Limits(settings.max_instances, settings.max_timesteps, settings.max_input_bytes),
        )
        selected = select_outputs(envelope.outputs, meta, envelope.binary_data_output())
        wait_s = min(settings.request_timeout_s, envelope.timeout_s() or settings.request_timeout_s)
        request = InferenceRequest(
            x=x,
            lengths=lengths,
            outputs=requested(selected),
            deadline=time.monotonic() + wait_s,
        )
        return Decoded(request, (envelope, selected), options)

    def encode(self, outcome: Outcome[tuple[InferenceRequestBody, list[Selected]]]) -> Answer:
        envelope, selected = outcome.decoded.context
        meta = outcome.model.metadata
        outputs, arrays = encode_outputs(selected, outcome.result)
        header: dict[str, Any] = {"model_name": meta.name, "model_version": str(meta.version)}
        if envelope.id is not None:
            header["id"] = envelope.id
        if outcome.steps is not None:
            header["parameters"] = {"sequence_steps": outcome.steps}
        header["outputs"] = outputs
        return header, arrays


# -- the binary tensor data extension's framing ----------------------------------
#
# The binary tensor data extension's framing: ``Inference-Header-Content-Length: N``
# says the first N bytes of the body are the JSON object; the rest is the raw
# little-endian bytes of the inputs that carry ``parameters.binary_data_size``,
# concatenated in the order those inputs appear in the JSON. A response uses the
# same layout, announced by the same header and ``application/octet-stream``.
# Nothing copies tensor bytes: the tail is sliced as ``memoryview``s that
# ``np.frombuffer`` reads in place, and the response joins the output buffers
# once. Every way the framing can be inconsistent is a ``BadRequest`` naming the
# numbers that do not add up, never an exception from deeper down.

HEADER_LENGTH = "Inference-Header-Content-Length"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Body:
    """A request body split at the JSON header: the parsed JSON and the bytes after it."""

    json: Any
    tail: memoryview


async def split_body(body: bytes, header_length: str | None, limits: JsonLimits) -> Body:
    """Parse the JSON part of the body; without the header, the whole body is JSON."""
    if header_length is None:
        try:
            return Body(await load_json(body, limits), memoryview(b""))
        except BadRequest as exc:
            if not body:
                raise
            raise BadRequest(
                f"{exc.message} (a body with binary tensor data needs the {HEADER_LENGTH} header)"
            ) from None
    text = header_length.strip()
    if not (text.isascii() and text.isdigit()):  # str.isdigit() also takes "²", int() not
        raise BadRequest(f"{HEADER_LENGTH} {header_length!r} is not a number of bytes")
    size = int(text)
    if size > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {size} bytes but the body has only {len(body)}")
    if size == 0:
        raise BadRequest(f"{HEADER_LENGTH} is 0: the body must start with a JSON object")
    view = memoryview(body)
    return Body(await load_json(bytes(view[:size]), limits), view[size:])


def binary_data_size(tensor: InputTensor) -> int | None:
    """``parameters.binary_data_size`` if given: this input's bytes follow the JSON."""
    for key in ("shared_memory_region", "shared_memory_byte_size"):
        if key in tensor.parameters:
            raise BadRequest(
                f"input {tensor.name!r}: parameters.{key} asks for the shared memory "
                "extension, which this server does not support; send the data in the body"
            )
    size = tensor.parameters.get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(
            f"input {tensor.name!r}: parameters.binary_data_size must be a non-negative "
            f"integer number of bytes; got {size!r}"
        )
    return size


def slice_buffers(tail: memoryview, tensors: Sequence[InputTensor]) -> list[memoryview | None]:
    """Each input's bytes out of the tail, in order; None for inputs sent as JSON.

    The inputs' ``binary_data_size`` must account for the tail exactly: a
    shortfall would read past the body, a surplus means the client and server
    disagree on the layout.
    """
    sizes = [(tensor.name, binary_data_size(tensor)) for tensor in tensors]
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
