"""Where a request's CPU goes: each step of the serving path, timed in-process.

The benchmark measures what the server's processes spend per request (CPU time
of the process tree over a load point, divided by the requests answered). This
module times, in this process, the same functions the server runs for the same
request body, step by step:

- ``parse``: the body's bytes parsed: for ``/v1``, simdjson and the check that the
  instances are simple (``v1/fast_instances.py``, the path the server takes for
  these bodies); for V2 the JSON header to Python objects (``http/body.py``; the
  framing split is slicing);
- ``validate``: the envelope (pydantic);
- ``decode``: the data to the core's float32 arrays (for ``/v1`` the numbers copied
  to float32 in C and padded, ``fast_instances.py``; ``tensors.py`` for V2);
- ``merge``: padding the request into a batch of ``merge_with`` like it and
  splitting the result back (``core/batching.py``), per request;
- ``session.run``: onnxruntime on the request's arrays (at the batch the
  batcher would run, divided per request);
- ``encode``: the answer to bytes (``predictions.py`` + JSON, or ``tensors.py``).

What the server spends beyond their sum is the HTTP server, the event loop and
the ASGI stack (uvicorn's parsing, the request observer, futures and thread
hand-offs): the row ``server, loop, ASGI`` of the budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from starlette.responses import Response

from service.core.calls import merge, split
from service.core.model import load_version
from service.core.request import FINAL, InferenceRequest
from service.core.runtime import ModelRuntime, RuntimeOptions
from service.http.body import JsonLimits, json_response, parse_json
from service.http.v1 import fast_instances
from service.http.v1.predictions import format_predictions
from service.http.v1.routes import PredictRequest
from service.http.v2.schema import InferenceRequestBody
from service.http.v2.tensors import (
    Limits,
    binary_response,
    decode_inputs,
    encode_outputs,
    select_outputs,
    slice_buffers,
    split_body,
)
from service.loadtest.payloads import build_payload, random_inputs
from service.loadtest.spec import Protocol

_NOT_SIMPLE = "the benchmark's /v1 body is not one that fast_instances.py reads"


def _per_call_us(fn: Callable[[], Any], budget_s: float = 0.2) -> float:
    """Median of a few rounds of back-to-back calls, in µs of this thread's CPU per call.

    CPU time, not wall time, so that other processes on the machine (the server,
    the client) do not inflate the figure; onnxruntime runs with one intra-op
    thread, on this thread.
    """
    fn()
    rounds: list[float] = []
    for _ in range(5):
        calls, start = 0, time.thread_time()
        while (elapsed := time.thread_time() - start) < budget_s / 5:
            fn()
            calls += 1
        rounds.append(elapsed / calls * 1e6)
    return float(np.median(rounds))


def _runtime(version_dir: Path) -> ModelRuntime:
    # One intra-op thread, as the service runs: session.run's CPU is this thread's.
    options = RuntimeOptions(intra_op_threads=1)
    return load_version(version_dir, options, lambda _: None).runtime  # type: ignore[arg-type,return-value]


def stage_costs(
    version_dir: Path, protocol: Protocol, batch: int, steps: int, merge_with: int
) -> dict[str, float]:
    """µs of CPU per request for each step of the path, for one request of ``batch``."""
    runtime = _runtime(version_dir)
    meta = runtime.metadata
    x = random_inputs(1, batch, steps, meta.num_features, seed=0)[0]
    payload = build_payload(protocol, meta.name, x, return_sequences=False)
    headers = payload.header_dict()
    limits = Limits(max_instances=1 << 20, max_timesteps=1 << 20)
    costs: dict[str, float] = {}
    if protocol == "v1":
        # The server's path for the benchmark's bodies (simple ones): fast_instances.py.
        parsed = fast_instances.parse(payload.body, meta.num_features)
        if parsed is None:
            raise ValueError(_NOT_SIMPLE)
        costs["parse"] = _per_call_us(lambda: fast_instances.parse(payload.body, meta.num_features))
        costs["validate"] = _per_call_us(lambda: PredictRequest.model_validate(parsed.envelope))

        def decode() -> tuple[np.ndarray, np.ndarray]:
            simple = parsed.numbers()
            if simple is None:
                raise ValueError(_NOT_SIMPLE)
            return simple.padded(max_timesteps=1 << 20, max_input_bytes=None)

        costs["decode"] = _per_call_us(decode)
        arrays, lengths = decode()
    else:
        declared = headers.get("Inference-Header-Content-Length")
        header = payload.body[: int(declared)] if declared else payload.body
        parts = asyncio.run(split_body(payload.body, declared, JsonLimits(1 << 30, 1 << 30)))
        v2 = InferenceRequestBody.model_validate(parts.json)
        # The framing is slicing; its cost is the JSON header's parse.
        costs["parse"] = _per_call_us(lambda: parse_json(header))
        costs["validate"] = _per_call_us(lambda: InferenceRequestBody.model_validate(parts.json))

        def decode() -> tuple[np.ndarray, np.ndarray]:
            return decode_inputs(v2.inputs, slice_buffers(parts.tail, v2.inputs), meta, limits)

        costs["decode"] = _per_call_us(decode)
        arrays, lengths = decode()
    request = InferenceRequest(arrays, lengths, outputs=FINAL)
    group = [InferenceRequest(arrays, lengths, outputs=FINAL) for _ in range(merge_with)]
    merged = merge(group, runtime)
    result = runtime.run(merged.x, merged.lengths, merged.states, merged.outputs)
    costs["merge"] = _per_call_us(lambda: (merge(group, runtime), split(result, group))) / max(
        merge_with, 1
    )
    costs["session.run"] = _per_call_us(
        lambda: runtime.run(merged.x, merged.lengths, merged.states, merged.outputs)
    ) / max(merge_with, 1)
    one = runtime.run(request.x, request.lengths, None, FINAL)
    if protocol == "v1":
        costs["encode"] = _per_call_us(
            lambda: json_response({"predictions": format_predictions(meta, one, lengths, False)})
        )
    else:
        selected = select_outputs(v2.outputs, meta, v2.binary_data_output())

        def encode_v2() -> Response:
            outputs, buffers = encode_outputs(selected, one)
            header = {"model_name": meta.name, "outputs": outputs}
            return binary_response(header, buffers) if buffers else json_response(header)

        costs["encode"] = _per_call_us(encode_v2)
    return costs
