"""``/v1`` predict's half of the request path (``service/dataplane.py``): the JSON body
to the core's request, and the result to TF-Serving's answer.

A simple body's instances are read straight to float32 (``fast_instances.py``);
any other goes through ``load_json`` and ``instances.py``, with the same checks and
messages. The envelope is validated with pydantic; the predictions are shaped by
``predictions.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, WithJsonSchema

from service.core import state
from service.core.contract import ModelMetadata
from service.core.errors import InvalidInput
from service.core.model import ServedModel
from service.core.types import FINAL, SEQUENCE, InferenceRequest, State
from service.dataplane import Decoded, Outcome
from service.http.body import JsonLimits, load_json
from service.http.errors import describe_validation_errors
from service.http.openapi import SEQUENCE_ID_SCHEMA, SEQUENCE_OFFSET_SCHEMA
from service.http.v1.fast_instances import SimpleInstances, read_simple
from service.http.v1.instances import decode_instances
from service.http.v1.predictions import format_predictions
from service.http.v1.state_json import decode_state, encode_states
from service.settings import Settings


class PredictRequest(BaseModel):
    """The envelope only: ``instances`` stay raw lists until numpy reads them in one go."""

    model_config = ConfigDict(extra="forbid")

    # (Not in the docstring, which is the schema's description.) A simple body's
    # instances are validated as []: fast_instances.py has read its numbers already,
    # and _arrays takes them from there.
    instances: list[Any] = Field(
        description="sequences, each a list of timesteps, each a list of the model's features"
    )
    return_sequences: StrictBool | None = Field(
        default=None,
        description="true: one prediction per timestep (Keras return_sequences=True); "
        "false: one per sequence, at its last timestep; absent: as the model's Keras "
        "output is (per timestep for a model imported with a per-timestep head, else one "
        "per sequence). A forecaster answers its horizon of future steps per sequence and "
        "refuses true",
    )
    # Server-held state (Keras stateful=True across requests), as Triton's sequence batcher.
    sequence_id: Annotated[Any, WithJsonSchema(SEQUENCE_ID_SCHEMA)] = Field(
        default=None,
        description="the server-held sequence: an unsigned 64-bit integer or a string of 1 "
        "to 128 characters",
    )
    sequence_start: StrictBool = False
    sequence_end: StrictBool = False
    sequence_offset: Annotated[Any, WithJsonSchema(SEQUENCE_OFFSET_SCHEMA)] = Field(
        default=None,
        description="timesteps of the sequence consumed before this chunk: a chunk that "
        "does not start there is refused (409), and the last chunk resent unchanged is "
        "answered again without stepping the state twice (retry-safe chunks)",
    )
    # Client-carried state: any replica can continue the sequence.
    initial_states: list[dict[str, Any] | None] | None = None
    return_states: StrictBool = False

    def per_timestep(self, meta: ModelMetadata) -> bool:
        """``return_sequences`` as asked, or the model's own default when not asked.

        A forecaster's answer is its horizon of future steps per sequence, never one per
        input timestep: ``return_sequences: true`` is refused rather than answered with
        something else (``false`` and absent both mean the forecast)."""
        if meta.forecast is not None:
            if self.return_sequences:
                raise InvalidInput(
                    f"model {meta.name!r} is a forecaster: it answers its next "
                    f"{meta.forecast.horizon} steps per sequence, not one prediction per input "
                    "timestep; leave out return_sequences (or set it to false)"
                )
            return False
        if self.return_sequences is None:
            return meta.default_return_sequences
        return self.return_sequences

    def state_options(self) -> state.StateOptions:
        """The state asked for (the data plane adds who asks)."""
        if self.model_fields_set <= _STATELESS_FIELDS:  # the usual request: nothing to parse
            return _NO_STATE
        return state.StateOptions(
            sequence_id=state.parse_sequence_id(self.sequence_id),
            sequence_start=self.sequence_start,
            sequence_end=self.sequence_end,
            sequence_offset=state.parse_sequence_offset(self.sequence_offset),
            initial_states=self.initial_states,
            return_states=self.return_states,
        )


_STATELESS_FIELDS = frozenset({"instances", "return_sequences"})
_NO_STATE = state.StateOptions()


class V1Codec:
    """Decode and encode for ``:predict``, with the server's limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = JsonLimits(settings.max_json_bytes, settings.json_thread_bytes)

    async def decode(self, body: bytes, model: ServedModel) -> Decoded[PredictRequest]:
        meta = model.metadata
        payload, simple = await _read_payload(body, self.limits, meta.num_features)
        try:
            envelope = PredictRequest.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(describe_validation_errors(exc.errors())) from None
        x, lengths = _arrays(envelope, simple, self.settings, meta)
        request = InferenceRequest(
            x=x,
            lengths=lengths,
            outputs=SEQUENCE if envelope.per_timestep(meta) else FINAL,
            deadline=time.monotonic() + self.settings.request_timeout_s,
        )
        carried = None
        if envelope.initial_states is not None:  # the wire format's decoder, when used

            def carried(token: Any, i: int) -> list[State]:
                return decode_state(meta, token, f"initial_states[{i}]")

        return Decoded(request, envelope, envelope.state_options(), carried)

    def encode(self, outcome: Outcome[PredictRequest]) -> dict[str, Any]:
        meta = outcome.model.metadata
        envelope = outcome.decoded.context
        lengths = outcome.decoded.request.lengths
        answer: dict[str, Any] = {
            "model": meta.name,
            "version": str(meta.version),
            "predictions": format_predictions(
                meta, outcome.result, lengths, envelope.per_timestep(meta)
            ),
        }
        if envelope.sequence_id is not None:
            answer["sequence_id"] = envelope.sequence_id
            answer["sequence_steps"] = outcome.steps
        if envelope.return_states:
            answer["states"] = encode_states(meta, outcome.result.final_states)
        return answer


async def _read_payload(
    body: bytes, limits: JsonLimits, features: int
) -> tuple[Any, SimpleInstances | None]:
    """What pydantic validates, and the instances already as numbers when the body is simple.

    A simple body (``fast_instances.py``) is read without Python objects for its
    numbers; any other goes through ``load_json``, whose errors the client gets. A body
    over ``limits.max_bytes`` goes straight to ``load_json``, which refuses it (413);
    one over ``limits.thread_bytes`` is read on a worker thread, as ``load_json`` does.
    """
    if len(body) <= limits.max_bytes:
        if len(body) > limits.thread_bytes:
            read = await asyncio.to_thread(read_simple, body, features)
        else:
            read = read_simple(body, features)
        if read is not None:
            return read
    return await load_json(body, limits), None


def _arrays(
    envelope: PredictRequest,
    simple: SimpleInstances | None,
    settings: Settings,
    meta: ModelMetadata,
) -> tuple[np.ndarray, np.ndarray]:
    """The instances as (x, lengths), within the limits: from the simple body's numbers,
    or from the envelope's lists (``instances.py``), with the same checks and messages."""
    count = len(envelope.instances) if simple is None else len(simple)
    if count > settings.max_instances:
        raise InvalidInput(
            f"instances has {count} sequences; the limit is {settings.max_instances}"
        )
    if simple is not None:
        return simple.padded(
            max_timesteps=settings.max_timesteps, max_input_bytes=settings.max_input_bytes
        )
    return decode_instances(
        envelope.instances,
        features=meta.num_features,
        model=meta.name,
        max_timesteps=settings.max_timesteps,
        max_input_bytes=settings.max_input_bytes,
    )
