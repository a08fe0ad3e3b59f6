"""Where a request's CPU goes: each step of the serving path, timed in-process.

The benchmark measures what the server's processes spend per request (CPU time
of the process tree over a load point, divided by the requests answered). This
module times, in this process, the same code the server runs for the same
request body, step by step, through the same codecs the data plane calls
(``service/dataplane.py``), not a copy of them:

- ``decode``: the protocol's codec, body bytes to the core's request: for ``/v1``
  simdjson, the envelope and the numbers to float32 (``http/v1/codec.py``); for V2
  the framing, the JSON header, the envelope and the tensors (``http/v2/codec.py``);
- ``merge``: padding the request into a batch of ``merge_with`` like it and
  splitting the result back (``core/calls.py``), per request;
- ``session.run``: onnxruntime on the request's arrays (at the batch the
  batcher would run, divided per request);
- ``encode``: the codec's answer, then its bytes (JSON, or the binary extension).

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
from service.core.model import ServedModel, load_version
from service.core.runtime import RuntimeOptions
from service.core.types import InferenceRequest
from service.dataplane import Outcome
from service.http.body import json_response
from service.http.v1.codec import V1Codec
from service.http.v2.codec import V2Codec, binary_response
from service.loadtest.payloads import build_payload, random_inputs
from service.loadtest.spec import Protocol
from service.settings import Settings


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


def _model(version_dir: Path) -> ServedModel:
    # One intra-op thread, as the service runs: session.run's CPU is this thread's.
    options = RuntimeOptions(intra_op_threads=1)
    return load_version(version_dir, options, lambda _: None)  # type: ignore[arg-type,return-value]


def stage_costs(
    version_dir: Path, protocol: Protocol, batch: int, steps: int, merge_with: int
) -> dict[str, float]:
    """µs of CPU per request for each step of the path, for one request of ``batch``."""
    model = _model(version_dir)
    runtime = model.runtime
    meta = runtime.metadata
    x = random_inputs(1, batch, steps, meta.num_features, seed=0)[0]
    payload = build_payload(protocol, meta.name, x, return_sequences=False)
    settings = Settings(max_instances=1 << 20, max_timesteps=1 << 20)
    codec: V1Codec | V2Codec
    if protocol == "v1":
        codec = V1Codec(settings)
        wire: Any = payload.body
    else:
        codec = V2Codec(settings)
        wire = (payload.body, payload.header_dict().get("Inference-Header-Content-Length"))
    loop = asyncio.new_event_loop()
    try:
        costs = {"decode": _per_call_us(lambda: loop.run_until_complete(codec.decode(wire, model)))}
        decoded: Any = loop.run_until_complete(codec.decode(wire, model))
    finally:
        loop.close()
    request = decoded.request
    group = [InferenceRequest(request.x, request.lengths, outputs=request.outputs)] * merge_with
    merged = merge(group, runtime)
    result = runtime.run(merged.x, merged.lengths, merged.states, merged.outputs)
    costs["merge"] = _per_call_us(lambda: (merge(group, runtime), split(result, group))) / max(
        merge_with, 1
    )
    costs["session.run"] = _per_call_us(
        lambda: runtime.run(merged.x, merged.lengths, merged.states, merged.outputs)
    ) / max(merge_with, 1)
    one = runtime.run(request.x, request.lengths, None, request.outputs)
    outcome = Outcome(model, decoded, one, None)
    if isinstance(codec, V1Codec):
        costs["encode"] = _per_call_us(lambda: json_response(codec.encode(outcome)))
    else:

        def encode_v2() -> Response:
            header, buffers = codec.encode(outcome)
            return binary_response(header, buffers) if buffers else json_response(header)

        costs["encode"] = _per_call_us(encode_v2)
    return costs
