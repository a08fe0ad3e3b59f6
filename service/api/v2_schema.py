"""The Open Inference Protocol's inference request envelope, as pydantic models.

Only the envelope is validated here: tensor ``data`` stays the raw list orjson
parsed, so that numpy reads it in one call (``v2_tensors.py``) instead of
pydantic building a Python float per element. Unknown fields are refused, so a
typo such as ``"output"`` for ``"outputs"`` is an error rather than a request
silently answered with every output.

Request-level ``parameters`` the service acts on are read by the methods here;
others (``priority``, custom ones) are accepted and ignored, as Triton does.
Parameters it cannot honour (the sequence extension, shared memory, the
classification extension) are refused, because ignoring them would return an
answer to a different question than the one asked.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from service.api.stateful import StateOptions, parse_sequence_id
from service.errors import BadRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputTensor(_Strict):
    """One ``$request_input``: JSON ``data`` or, with the binary extension, a byte count."""

    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None

    def binary_data_size(self) -> int | None:
        """``parameters.binary_data_size`` if given: this input's bytes follow the JSON."""
        for key in ("shared_memory_region", "shared_memory_byte_size"):
            if key in self.parameters:
                raise BadRequest(
                    f"input {self.name!r}: parameters.{key} asks for the shared memory "
                    "extension, which this server does not support; send the data in the body"
                )
        size = self.parameters.get("binary_data_size")
        if size is None:
            return None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(
                f"input {self.name!r}: parameters.binary_data_size must be a non-negative "
                f"integer number of bytes; got {size!r}"
            )
        return size


class RequestedOutput(_Strict):
    """One ``$request_output``: a name, and whether to send it as binary data."""

    name: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)

    def binary(self, default: bool) -> bool:
        """``parameters.binary_data`` if given, else the request's ``binary_data_output``."""
        if "classification" in self.parameters:
            raise BadRequest(
                f"output {self.name!r}: parameters.classification asks for the classification "
                "extension, which this server does not support; request the output itself"
            )
        if "shared_memory_region" in self.parameters:
            raise BadRequest(
                f"output {self.name!r}: parameters.shared_memory_region asks for the shared "
                "memory extension, which this server does not support"
            )
        value = self.parameters.get("binary_data", default)
        if not isinstance(value, bool):
            raise BadRequest(
                f"output {self.name!r}: parameters.binary_data must be true or false; got {value!r}"
            )
        return value


class InferenceRequestBody(_Strict):
    """The JSON part of ``POST .../infer`` (the whole body without the binary extension)."""

    id: StrictStr | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None

    def binary_data_output(self) -> bool:
        """Whether outputs that do not say otherwise are sent as binary data."""
        value = self.parameters.get("binary_data_output", False)
        if not isinstance(value, bool):
            raise BadRequest(f"parameters.binary_data_output must be true or false; got {value!r}")
        return value

    def timeout_s(self) -> float | None:
        """Triton's ``timeout`` parameter (microseconds) in seconds, if the client set one."""
        value = self.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadRequest(
                f"parameters.timeout must be a positive integer of microseconds; got {value!r}"
            )
        return value / 1e6

    def state_options(self) -> StateOptions:
        """Triton's sequence extension: ``sequence_id`` (0 or absent: no sequence),
        ``sequence_start`` and ``sequence_end``, routed to the server-held state."""
        flags = {}
        for key in ("sequence_start", "sequence_end"):
            value = self.parameters.get(key, False)
            if not isinstance(value, bool):
                raise BadRequest(f"parameters.{key} must be true or false; got {value!r}")
            flags[key] = value
        raw_id = self.parameters.get("sequence_id")
        return StateOptions(
            sequence_id=None if raw_id in (None, 0, "") else parse_sequence_id(raw_id),
            sequence_start=flags["sequence_start"],
            sequence_end=flags["sequence_end"],
        )
