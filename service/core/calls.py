"""One batch on a worker thread: merge the requests, run them as bounded calls, split.

``DynamicBatcher`` (``batching.py``) decides which requests share a batch;
this module does the batch's work, off the event loop. ``execute``
(``cost.py``) turns the merged batch into onnxruntime calls within the cost
limits, all sharing one ``RunOptions`` that the batcher sets to ``terminate``
when every request of the batch has gone (deadline passed or caller gone).
"""

from __future__ import annotations

import functools
import logging
import operator
import time

import numpy as np
import onnxruntime as ort

from service.core.cost import CostLimits, execute
from service.core.errors import DeadlineExceeded
from service.core.runtime import ModelRuntime
from service.core.types import InferenceRequest, RunResult, State, stack_states

log = logging.getLogger(__name__)


def merge(requests: list[InferenceRequest], runtime: ModelRuntime) -> InferenceRequest:
    """One right-padded batch out of several requests, rows in request order."""
    if len(requests) == 1:
        return requests[0]
    steps = max(r.x.shape[1] for r in requests)
    total = sum(r.batch_size for r in requests)
    x = np.zeros((total, steps, requests[0].x.shape[2]), dtype=np.float32)
    row = 0
    for r in requests:
        x[row : row + r.batch_size, : r.x.shape[1]] = r.x
        row += r.batch_size
    states: list[State] | None = None
    if any(r.states is not None for r in requests):
        states = stack_states([r.states or runtime.zero_states(r.batch_size) for r in requests])
    return InferenceRequest(
        x=x,
        lengths=np.concatenate([r.lengths for r in requests]),
        states=states,
        outputs=functools.reduce(operator.or_, (r.outputs for r in requests)),
    )


def split(result: RunResult, requests: list[InferenceRequest]) -> list[RunResult]:
    """Each request's rows of a merged result, trimmed to its own padded length.

    States are copied: a sequence's held state must not keep the whole batch's
    arrays alive between requests.
    """
    if len(requests) == 1:
        return [result]
    parts: list[RunResult] = []
    row = 0
    for r in requests:
        rows = slice(row, row + r.batch_size)
        row += r.batch_size
        part = RunResult()
        if r.outputs.sequence and result.sequence_output is not None:
            part.sequence_output = result.sequence_output[rows, : r.x.shape[1]]
        if r.outputs.final and result.final_output is not None:
            part.final_output = result.final_output[rows]
        if r.outputs.states:
            part.final_states = [
                (h[:, rows].copy(), c[:, rows].copy()) for h, c in result.final_states
            ]
        parts.append(part)
    return parts


def run_batch(
    runtime: ModelRuntime,
    requests: list[InferenceRequest],
    limits: CostLimits | None = None,
    run_options: ort.RunOptions | None = None,
) -> list[RunResult | Exception]:
    """Merge, run as bounded calls, split; on a worker thread. Requests past their
    deadline are skipped."""
    start = time.monotonic()
    metrics = runtime.metrics
    expired = [start > r.deadline for r in requests]
    live = [r for r, late in zip(requests, expired, strict=True) if not late]
    parts: list[RunResult | Exception] = []
    if live:
        for r in live:
            metrics.queue_duration.observe(start - r.enqueued_at)
        batch = merge(live, runtime)
        try:
            result = execute(
                runtime,
                batch.x,
                batch.lengths,
                batch.states,
                batch.outputs,
                limits or CostLimits(),
                run_options,
            )
            parts = list(split(result, live))
        except Exception as error:  # reach every caller; the batcher itself must survive
            exc: Exception = error
            if run_options is not None and run_options.terminate:
                log.info("stopped a call of %d sequences: nobody waits for it", batch.batch_size)
                exc = DeadlineExceeded("the request did not finish before its deadline")
            else:
                log.exception("onnxruntime failed on a batch of %d sequences", batch.batch_size)
            parts = [exc] * len(live)
        metrics.compute_duration.observe(time.monotonic() - start)
        metrics.batch_sequences.observe(batch.batch_size)
    answers = iter(parts)
    return [
        DeadlineExceeded("the request waited past its deadline before it could run")
        if late
        else next(answers)
        for late in expired
    ]
