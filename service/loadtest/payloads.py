"""Request bodies for each protocol, built once before a run.

Bodies are encoded ahead of time so the hot loop only writes bytes; a small
pool of distinct random inputs (seeded, so runs are repeatable) keeps the
server from seeing one identical body over and over, which could flatter any
cache along the way. The locustfile builds its bodies here too, so both
clients send exactly the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from service.loadtest.spec import Protocol

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON = "application/json"
OCTET_STREAM = "application/octet-stream"


@dataclass(frozen=True)
class Payload:
    """One POST: its path, body and the headers that describe the body."""

    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)


def random_inputs(
    count: int, batch: int, timesteps: int, features: int, seed: int
) -> list[np.ndarray]:
    """``count`` float32 arrays [batch, timesteps, features], standard normal, seeded."""
    rng = np.random.default_rng(seed)
    shape = (batch, timesteps, features)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(count)]


def output_name(return_sequences: bool) -> str:
    """The V2 output that matches ``/v1``'s ``return_sequences`` choice."""
    return "sequence_output" if return_sequences else "final_output"


def v1_payload(model: str, x: np.ndarray, return_sequences: bool) -> Payload:
    """``POST /v1/models/{m}:predict`` with ``instances`` as nested lists."""
    body = orjson.dumps(
        {"instances": x, "return_sequences": return_sequences},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return Payload(f"/v1/models/{model}:predict", body, (("Content-Type", JSON),))


def _x_input(x: np.ndarray) -> dict[str, object]:
    return {"name": "x", "shape": list(x.shape), "datatype": "FP32"}


def v2_json_payload(model: str, x: np.ndarray, return_sequences: bool) -> Payload:
    """``POST /v2/models/{m}/infer`` with the tensor as flat JSON ``data``."""
    body = orjson.dumps(
        {
            "inputs": [{**_x_input(x), "data": x.ravel()}],
            "outputs": [{"name": output_name(return_sequences)}],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    return Payload(f"/v2/models/{model}/infer", body, (("Content-Type", JSON),))


def v2_binary_payload(model: str, x: np.ndarray, return_sequences: bool) -> Payload:
    """The binary tensor extension: JSON header, then the raw little-endian float32 bytes.

    ``Inference-Header-Content-Length`` tells the server where the JSON ends;
    ``binary_data_size`` on the input says how many of the following bytes are
    ``x``; ``binary_data: true`` on the output asks for the answer in the same form.
    """
    raw = np.ascontiguousarray(x, dtype="<f4").tobytes()
    header = orjson.dumps(
        {
            "inputs": [{**_x_input(x), "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [
                {"name": output_name(return_sequences), "parameters": {"binary_data": True}}
            ],
        }
    )
    headers = (("Content-Type", OCTET_STREAM), (HEADER_LENGTH, str(len(header))))
    return Payload(f"/v2/models/{model}/infer", header + raw, headers)


_BUILDERS = {"v1": v1_payload, "v2-json": v2_json_payload, "v2-binary": v2_binary_payload}


def build_payload(protocol: Protocol, model: str, x: np.ndarray, return_sequences: bool) -> Payload:
    """The request for ``x`` in ``protocol``."""
    return _BUILDERS[protocol](model, x, return_sequences)


def build_payloads(
    protocol: Protocol,
    model: str,
    *,
    batch: int,
    timesteps: int,
    features: int,
    return_sequences: bool = False,
    count: int = 8,
    seed: int = 0,
) -> list[Payload]:
    """``count`` distinct requests of one shape, ready to send round-robin."""
    inputs = random_inputs(count, batch, timesteps, features, seed)
    return [build_payload(protocol, model, x, return_sequences) for x in inputs]
