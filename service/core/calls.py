"""A batch's work, off the event loop: merge its requests, run them as onnxruntime
calls of bounded cost, split the results back.

``DynamicBatcher`` (``batching.py``) decides which requests share a batch and refuses,
before queueing, a request the cost limits forbid (``check_request``); ``run_batch``
does the batch's work on the version's threads.

**Bounded cost per call.** An onnxruntime call's memory follows its padded cells (batch
x timesteps): the LSTM op holds every step's gates and outputs, ~1.5 KB a cell for the
default model. A batch whose lengths differ would pay for its longest sequence in every
row; a long batch would need all its steps at once. So ``execute`` plans:

- **Length buckets**: rows are grouped by the geometric bucket of their length
  (``length_bucket``, the batcher's rule across requests), and each group is
  padded only to its own longest row, so padding stays within the bucket ratio.
- **Row groups**: a group whose rows x length exceeds ``max_call_cells`` runs as
  several calls.
- **Time chunks** (unidirectional models): a row group still too large runs in
  chunks of time, each call starting from the states the previous one returned
  (each layer's (h, c), or h for a GRU layer), which is exact. A bidirectional
  sequence needs its whole length in one call; ``check_request`` refuses one longer
  than ``max_call_cells``.

Results are scattered back into the batch's own layout; padded steps that no
call ran get ``runtime.padding_output``, what one whole call returns there.

Every call shares the batch's ``RunOptions``: setting ``terminate`` stops the call in
flight and the calls not yet started (``DynamicBatcher`` does so when nobody waits for
the batch any more).
"""

from __future__ import annotations

import functools
import logging
import math
import operator
import time
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from service.core import cpu_budget, metric_writes
from service.core.contract import ModelMetadata
from service.core.errors import CostLimit, DeadlineExceeded
from service.core.frontend import runs_whole_reason
from service.core.runtime import ModelRuntime
from service.core.types import (
    InferenceRequest,
    Outputs,
    RunResult,
    State,
    copy_states,
    select_states,
    stack_states,
)


def length_bucket(steps: int, ratio: float) -> int:
    """Geometric bucket of a padded length: 1, [2, 4), [4, 8), ... for ratio 2."""
    return int(math.log(steps) / math.log(ratio)) if steps > 1 else 0


@dataclass(frozen=True)
class CostLimits:
    max_request_timesteps: int = 262_144
    """Real timesteps (the sum of the lengths) of one request."""
    max_call_cells: int = 65_536
    """Padded cells (batch x timesteps) of one onnxruntime call."""
    bucket_ratio: float = 2.0
    """Lengths within one call differ by less than this factor."""


def runs_whole(metadata: ModelMetadata) -> str:
    """Why a sequence of this model must run whole in one call ("" when it can be chunked
    in time, its states carried from call to call), in the words of a refusal."""
    if any(layer.bidirectional for layer in metadata.layers):
        return "is bidirectional"
    if any(layer.go_backwards for layer in metadata.layers):
        return "reads backwards (go_backwards)"
    if metadata.front_end is not None:
        return runs_whole_reason(metadata)
    if metadata.forecast is not None:
        return "is a forecaster (its encoder's state is not carried between calls)"
    if not metadata.has_state_tensors:  # GRU layers exported before GRU state was carried
        return "has GRU layers exported without state tensors (re-export it to carry state)"
    return ""


def check_request(lengths: np.ndarray, limits: CostLimits, whole: str = "") -> None:
    """Refuse, before any work, a request that no plan can run within the limits."""
    total = int(lengths.sum())
    if total > limits.max_request_timesteps:
        raise CostLimit(
            f"the request has {total} timesteps in all (the sum of its sequences' lengths); "
            f"the limit is {limits.max_request_timesteps} (max_request_timesteps): send "
            "fewer or shorter sequences per request"
        )
    if not whole:
        return
    longest = int(lengths.max())
    if longest > limits.max_call_cells:
        raise CostLimit(
            f"a sequence has {longest} timesteps; this model {whole}, so a sequence "
            f"runs whole in one call, and a call is limited to {limits.max_call_cells} "
            "padded timesteps (max_call_cells)"
        )


def _fits(lengths: np.ndarray, steps: int, limits: CostLimits) -> bool:
    """One call as it is: within the cells, and no row padded past the bucket ratio."""
    if lengths.size * steps > limits.max_call_cells:
        return False
    shortest = int(lengths.min())
    return shortest == steps or steps < limits.bucket_ratio * shortest


def _groups(lengths: np.ndarray, limits: CostLimits) -> list[np.ndarray]:
    """Row indices per length bucket, rows in ascending length within each."""
    order = np.argsort(lengths, kind="stable")
    ratio = limits.bucket_ratio
    buckets = np.array([length_bucket(int(n), ratio) for n in lengths[order]])
    cuts = np.flatnonzero(np.diff(buckets)) + 1
    return np.split(order, cuts)


def _calls(rows: np.ndarray, steps: int, bidirectional: bool, cells: int) -> list[np.ndarray]:
    """A bucket's rows as calls of at most ``cells`` cells (time chunks aside).

    A unidirectional group keeps at least 16 rows a call (batching pays up to
    ~32) and is time-chunked instead when that is over the cells.
    """
    per_call = max(1, cells // steps)
    if not bidirectional:
        per_call = max(per_call, 16)
    return [rows[i : i + per_call] for i in range(0, rows.size, per_call)]


def _select(states: list[State] | None, rows: np.ndarray) -> list[State] | None:
    return None if states is None else select_states(states, rows)


def _write(into: list[State], rows: np.ndarray, part: list[State]) -> None:
    """``part``'s states into ``into``'s ``rows``, layer by layer, tensor by tensor."""
    for held, new in zip(into, part, strict=True):
        for array, values in zip(held, new, strict=True):
            array[:, rows] = values


class _Result:
    """The batch's outputs, filled call by call."""

    def __init__(self, runtime: ModelRuntime, batch: int, steps: int, outputs: Outputs) -> None:
        k = runtime.padding_output.shape[0]
        self.sequence: np.ndarray | None = None
        self.final: np.ndarray | None = None
        if outputs.sequence:
            self.sequence = np.empty((batch, steps, k), np.float32)
            self.sequence[...] = runtime.padding_output
        if outputs.final:  # [batch, K], or a forecaster's [batch, horizon, K]
            horizon = runtime.metadata.horizon
            shape = (k,) if horizon is None else (horizon, k)
            self.final = np.empty((batch, *shape), np.float32)
        self.states: list[State] = []
        if outputs.states:
            zeros = runtime.zero_states(batch)
            self.states = zeros

    def put(self, rows: np.ndarray, start: int, part: RunResult, ends: np.ndarray | None) -> None:
        """Write one call's rows; ``ends``: which of them ended in it (None: all)."""
        if self.sequence is not None and part.sequence_output is not None:
            out = part.sequence_output
            self.sequence[rows, start : start + out.shape[1]] = out
        if self.final is not None and part.final_output is not None:
            if ends is None:
                self.final[rows] = part.final_output
            else:
                self.final[rows[ends]] = part.final_output[ends]
        if self.states and part.final_states:
            _write(self.states, rows, part.final_states)

    def result(self) -> RunResult:
        return RunResult(self.sequence, self.final, self.states)


def _run_chunked(
    runtime: ModelRuntime,
    x: np.ndarray,
    lengths: np.ndarray,
    states: list[State] | None,
    outputs: Outputs,
    chunk: int,
    run_options: ort.RunOptions | None,
    into: _Result,
    rows: np.ndarray,
) -> None:
    """A unidirectional group in time chunks, each call carrying the states on."""
    carried = copy_states(states or runtime.zero_states(x.shape[0]))
    for start in range(0, int(lengths.max()), chunk):
        active = np.flatnonzero(lengths > start)
        part_lengths = np.minimum(lengths[active] - start, chunk)
        steps = int(part_lengths.max())
        ends = lengths[active] <= start + chunk
        wanted = Outputs(outputs.sequence, outputs.final and bool(ends.any()), True)
        part = runtime.run(
            np.ascontiguousarray(x[active, start : start + steps]),
            part_lengths,
            _select(carried, active),
            wanted,
            run_options,
        )
        _write(carried, active, part.final_states)
        if not outputs.states:
            part.final_states = []
        into.put(rows[active], start, part, ends)
    if outputs.states:
        into.put(rows, 0, RunResult(final_states=carried), None)


def execute(
    runtime: ModelRuntime,
    x: np.ndarray,
    lengths: np.ndarray,
    states: list[State] | None,
    outputs: Outputs,
    limits: CostLimits,
    run_options: ort.RunOptions | None = None,
) -> RunResult:
    """The batch's result, computed in calls that each stay within ``limits``."""
    batch, steps = int(x.shape[0]), int(x.shape[1])
    if _fits(lengths, steps, limits):
        return runtime.run(x, lengths, states, outputs, run_options)
    bidirectional = not runtime.metadata.carries_state  # each sequence runs whole
    into = _Result(runtime, batch, steps, outputs)
    for group in _groups(lengths, limits):
        longest = int(lengths[group[-1]])
        for rows in _calls(group, longest, bidirectional, limits.max_call_cells):
            part_x = x[rows, :longest]
            part_states = _select(states, rows)
            if rows.size * longest > limits.max_call_cells and not bidirectional:
                chunk = max(1, limits.max_call_cells // rows.size)
                _run_chunked(
                    runtime, part_x, lengths[rows], part_states, outputs, chunk,
                    run_options, into, rows,
                )  # fmt: skip
                continue
            part = runtime.run(part_x, lengths[rows], part_states, outputs, run_options)
            into.put(rows, 0, part, None)
    return into.result()


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
            part.final_states = copy_states(select_states(result.final_states, rows))
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
    budget = cpu_budget.section("metrics")
    start = time.monotonic()
    metrics = runtime.metrics
    expired = [start > r.deadline for r in requests]
    live = [r for r, late in zip(requests, expired, strict=True) if not late]
    parts: list[RunResult | Exception] = []
    if live:
        for r in live:
            metric_writes.observe(metrics.queue_duration, start - r.enqueued_at)
        cpu_budget.step("merge")
        batch = merge(live, runtime)
        try:
            cpu_budget.step("feeds, outputs (around session.run)")
            result = execute(
                runtime,
                batch.x,
                batch.lengths,
                batch.states,
                batch.outputs,
                limits or CostLimits(),
                run_options,
            )
            cpu_budget.step("split")
            parts = list(split(result, live))
        except Exception as error:  # reach every caller; the batcher itself must survive
            exc: Exception = error
            if run_options is not None and run_options.terminate:
                log.info("stopped a call of %d sequences: nobody waits for it", batch.batch_size)
                exc = DeadlineExceeded("the request did not finish before its deadline")
            else:
                log.exception("onnxruntime failed on a batch of %d sequences", batch.batch_size)
            parts = [exc] * len(live)
        cpu_budget.step("metrics")
        metric_writes.observe(metrics.compute_duration, time.monotonic() - start)
        metric_writes.observe(metrics.batch_sequences, batch.batch_size)
    cpu_budget.end(budget)
    answers = iter(parts)
    return [
        DeadlineExceeded("the request waited past its deadline before it could run")
        if late
        else next(answers)
        for late in expired
    ]
