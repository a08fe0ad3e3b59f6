"""gRPC ModelInfer's half of the request path (``service/dataplane.py``): a
``ModelInferRequest`` to the core's request, the result to a ``ModelInferResponse``.

The tensors go through V2's own decoding (``http/v2/tensors.py``): each input becomes
an ``InputTensor`` (typed ``contents`` as its ``data``) or a ``memoryview`` of its
``raw_input_contents`` entry, so shapes, dtypes, limits and every message are
REST's. Request parameters become the V2 envelope's, so Triton's ``timeout`` and
sequence parameters (``sequence_id``/``start``/``end``, and ``sequence_offset``)
mean what they mean over REST. Outputs always leave as ``raw_output_contents``
(little-endian FP32), as Triton answers and ``tritonclient.grpc`` reads.

The request's deadline is the earliest of ``request_timeout_s``, Triton's
``timeout`` parameter and the client's gRPC deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from service.core.errors import BadRequest
from service.core.model import ServedModel
from service.core.types import InferenceRequest
from service.dataplane import Decoded, Outcome
from service.grpc.generated import grpc_service_pb2 as pb
from service.settings import Settings
from service.v2.schema import InferenceRequestBody, InputTensor, RequestedOutput
from service.v2.tensors import (
    DTYPES,
    Limits,
    Selected,
    decode_inputs,
    encode_outputs,
    requested,
    select_outputs,
)

Payload = tuple[pb.ModelInferRequest, float | None]
"""The request, and the client's deadline (``time.monotonic()``), if it set one."""

Context = tuple[InferenceRequestBody, list[Selected]]

CONTENTS: dict[str, str] = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
}
"""Where ``InferTensorContents`` holds each datatype the model takes (FP16: raw only)."""


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """``map<string, InferParameter>`` as the plain values a V2 JSON body would carry."""
    values: dict[str, Any] = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = None if choice is None else getattr(parameter, choice)
    return values


def _typed_data(tensor: pb.ModelInferRequest.InferInputTensor) -> list[Any] | None:
    """The typed ``contents`` of an input as a flat list (None: it has none)."""
    if not tensor.HasField("contents"):
        return None
    held = [field.name for field, _ in tensor.contents.ListFields()]
    if not held:
        return None
    wanted = CONTENTS.get(tensor.datatype)
    if wanted is None or held != [wanted]:
        where = f"{wanted} (or raw_input_contents)" if wanted else "raw_input_contents"
        raise BadRequest(
            f"input {tensor.name!r} has datatype {tensor.datatype} but its contents are in "
            f"{', '.join(held)}; send them in {where}"
        )
    return list(getattr(tensor.contents, wanted))


def _inputs(request: pb.ModelInferRequest) -> tuple[list[InputTensor], list[memoryview | None]]:
    """The inputs as V2's tensors, and each one's raw bytes (None: typed contents)."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(
            f"raw_input_contents has {len(raw)} entries and the request {len(request.inputs)} "
            "inputs: send one entry per input, in the order of inputs"
        )
    tensors: list[InputTensor] = []
    buffers: list[memoryview | None] = []
    for i, tensor in enumerate(request.inputs):
        data = _typed_data(tensor)
        shape = list(tensor.shape)
        buffer: memoryview | None = None
        if raw:
            if data is not None:
                raise BadRequest(
                    f"input {tensor.name!r} has both contents and raw_input_contents; send one"
                )
            buffer = memoryview(raw[i])
            dtype = DTYPES.get(tensor.datatype)
            if dtype is not None and min(shape, default=0) >= 0:
                size = 1
                for dim in shape:
                    size *= dim
                if len(buffer) != size * dtype.itemsize:
                    raise BadRequest(
                        f"input {tensor.name!r}: raw_input_contents[{i}] is {len(buffer)} bytes; "
                        f"shape {shape} of {tensor.datatype} is {size * dtype.itemsize} bytes"
                    )
        elif data is None:
            raise BadRequest(
                f"input {tensor.name!r} has no data: send its contents, or raw_input_contents"
            )
        tensors.append(
            InputTensor.model_construct(
                name=tensor.name,
                shape=shape,
                datatype=tensor.datatype,
                parameters=parameters_of(tensor.parameters),
                data=data,
            )
        )
        buffers.append(buffer)
    return tensors, buffers


class GrpcCodec:
    """Decode and encode for ``ModelInfer`` and ``ModelStreamInfer``, with the server's
    limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = Limits(
            settings.max_instances, settings.max_timesteps, settings.max_input_bytes
        )

    def envelope(self, request: pb.ModelInferRequest) -> InferenceRequestBody:
        """The request as V2's envelope (without tensor data): its parameters' meaning."""
        return InferenceRequestBody.model_construct(
            id=request.id or None,
            parameters=parameters_of(request.parameters),
            inputs=[],
            outputs=[
                RequestedOutput.model_construct(
                    name=output.name, parameters=parameters_of(output.parameters)
                )
                for output in request.outputs
            ]
            or None,
        )

    async def decode(self, payload: Payload, model: ServedModel) -> Decoded[Context]:
        settings = self.settings
        request, client_deadline = payload
        envelope = self.envelope(request)
        if not request.inputs:
            raise BadRequest("inputs: List should have at least 1 item after validation, not 0")
        options = envelope.state_options()
        tensors, buffers = _inputs(request)
        meta = model.metadata
        x, lengths = decode_inputs(tensors, buffers, meta, self.limits)
        # Every output as raw bytes: gRPC has no JSON form to choose instead.
        selected = [
            Selected(choice.spec, True)
            for choice in select_outputs(envelope.outputs, meta, binary_default=True)
        ]
        now = time.monotonic()
        wait_s = min(settings.request_timeout_s, envelope.timeout_s() or settings.request_timeout_s)
        deadline = now + wait_s
        if client_deadline is not None:
            deadline = min(deadline, client_deadline)
        infer = InferenceRequest(
            x=x,
            lengths=lengths,
            outputs=requested(selected),
            deadline=deadline,
        )
        return Decoded(infer, (envelope, selected), options)

    def encode(self, outcome: Outcome[Context]) -> pb.ModelInferResponse:
        envelope, selected = outcome.decoded.context
        meta = outcome.model.metadata
        outputs, arrays = encode_outputs(selected, outcome.result)
        response = pb.ModelInferResponse(
            model_name=meta.name, model_version=str(meta.version), id=envelope.id or ""
        )
        if outcome.steps is not None:
            response.parameters["sequence_steps"].int64_param = outcome.steps
        for entry in outputs:
            response.outputs.add(
                name=entry["name"], datatype=entry["datatype"], shape=entry["shape"]
            )
        response.raw_output_contents.extend(array.tobytes() for array in arrays)
        return response
