"""V2 infer's half of the request path (``service/dataplane.py``): the body (JSON, or
the binary tensor extension) to the core's request, and the result to
``$inference_response`` with each output as JSON data or raw bytes.

The framing is split (``framing.py``), the envelope validated
(``schema.py``), the tensors decoded into the core's arrays and encoded back
(``tensors.py``). Triton's sequence extension becomes the core's state options.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.core.errors import BadRequest
from service.core.model import ServedModel
from service.core.types import InferenceRequest, Outputs
from service.dataplane import Decoded, Outcome
from service.http.body import JsonLimits
from service.http.errors import describe_validation_errors
from service.http.v2.framing import slice_buffers, split_body
from service.settings import Settings
from service.v2.schema import InferenceRequestBody
from service.v2.tensors import (
    Limits,
    Selected,
    decode_inputs,
    encode_outputs,
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
        roles = {choice.spec.role for choice in selected}
        wait_s = min(settings.request_timeout_s, envelope.timeout_s() or settings.request_timeout_s)
        request = InferenceRequest(
            x=x,
            lengths=lengths,
            outputs=Outputs(
                sequence="sequence" in roles,
                final="final" in roles,
                states=bool(roles & {"h", "c"}),
            ),
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
