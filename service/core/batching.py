"""The scheduler: concurrent requests for one model version become one onnxruntime call.

It is the only path from a request to ``session.run``: with dynamic batching
off, it is the same batcher with a batch of one request, so queue bounds,
deadlines, cancellation and metrics work identically either way.

As Triton's dynamic batcher and MLServer's adaptive batching do, requests wait in
a bounded queue and the model version's batcher merges them, up to
``max_batch_size`` sequences, into one right-padded batch with ``lengths``. The
exported graph feeds ``lengths`` to every LSTM's ``sequence_lens``, so padding
changes nothing (uni- or bidirectional) and every request gets back exactly the
rows it would have got alone.

Why it pays: an onnxruntime call has a fixed cost (~1.5x a sequence's compute at
batch 1 for the default model), and a call per request also costs a thread hop
and a future. Merging amortises both.

Three rules keep it fair and bounded:
- **Length buckets.** Requests are queued by the bucket of their padded length
  (geometric, ratio ``bucket_ratio``), and a batch takes requests from one bucket
  only, so a 500-step sequence never makes thirty 20-step ones pay for 480 steps
  of padding. The bucket whose oldest request is oldest goes first.
- **Natural batching.** A batch forms at the end of the event-loop iteration in
  which requests arrived, or when an inference slot (one of ``slots`` concurrent
  onnxruntime calls) frees up. While every slot is busy, requests accumulate, so
  batches grow with load without any added delay; ``max_queue_delay_s`` can
  additionally hold a non-full batch for company.
- **Bounds.** At most ``max_queue_size`` requests wait; beyond that ``submit``
  fails at once with ``Overloaded``. Each request has a deadline: when it passes
  the caller gets ``Overloaded`` immediately, and if the request is still queued
  its work is dropped, never run. A caller that goes away (cancelled) drops too.

It also counts the requests that hold the version (queued or running), so that
an unload can drain them (``drain``). The batcher knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import operator
import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from service.core.errors import DeadlineExceeded, Overloaded
from service.core.request import InferenceRequest
from service.core.runtime import ModelRuntime, RunResult, State, stack_states

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    dynamic: bool = True
    """Merge concurrent requests. Off: every request is a call of its own."""
    max_batch_size: int = 32
    """Sequences merged into one call. A larger single request still runs, alone."""
    max_queue_delay_s: float = 0.0
    """How long the oldest request may wait for company when its batch is not full."""
    max_queue_size: int = 256
    """Requests waiting (not yet running) before new ones are refused."""
    bucket_ratio: float = 2.0
    """Padded lengths within one bucket differ by less than this factor."""
    slots: int = 2
    """onnxruntime calls of this version handed to the inference threads at once. Without
    dynamic batching, as many as the queue holds: the threads then never wait for the
    event loop to hand them the next request."""


def length_bucket(steps: int, ratio: float) -> int:
    """Geometric bucket of a padded length: 1, [2, 4), [4, 8), ... for ratio 2."""
    return int(math.log(steps) / math.log(ratio)) if steps > 1 else 0


@dataclass
class BatcherStats:
    """Counts since start, kept on the event loop's thread; the tests read them."""

    calls: int = 0
    """onnxruntime calls made."""
    requests: int = 0
    """Requests answered by those calls."""
    sequences: int = 0
    """Sequences run in those calls."""
    dropped: int = 0
    """Requests whose work was never run: deadline passed or caller gone while queued."""


@dataclass(eq=False)
class _Pending:
    request: InferenceRequest
    future: asyncio.Future[RunResult]
    bucket: int
    queued: bool = True


@dataclass
class _Bucket:
    entries: deque[_Pending] = field(default_factory=deque)
    sequences: int = 0  # sequences of the entries still queued

    def head(self) -> _Pending | None:
        """The oldest entry still queued, discarding ones that expired or were cancelled."""
        while self.entries and not self.entries[0].queued:
            self.entries.popleft()
        return self.entries[0] if self.entries else None


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
    runtime: ModelRuntime, requests: list[InferenceRequest]
) -> list[RunResult | Exception]:
    """Merge, run once, split; on a worker thread. Requests past their deadline are skipped."""
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
            result = runtime.run(batch.x, batch.lengths, batch.states, batch.outputs)
            parts = list(split(result, live))
        except Exception as exc:  # reach every caller; the batcher itself must survive
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


def queue_full(limit: int) -> Overloaded:
    return Overloaded(f"the model's queue is full ({limit} requests waiting); retry later")


class DynamicBatcher:
    """The scheduler of one model version (see the module docstring).

    Driven by events, not by a task of its own: a batch is formed when a request
    arrives and a slot is free, or when a batch finishes and work is queued (or
    when a held batch's delay runs out). A single-sequence request therefore
    costs one future and one timer here; each batch one executor hand-off and one
    wake-up of the loop when it is done.
    """

    def __init__(self, runtime: ModelRuntime, executor: Executor, options: BatchingOptions) -> None:
        self._runtime = runtime
        self._executor = executor
        self._options = options
        self._buckets: dict[int, _Bucket] = {}
        self._waiting = 0
        self._free = options.slots
        self._loop: asyncio.AbstractEventLoop | None = None  # known at the first request
        self._hold: asyncio.TimerHandle | None = None
        self._closing = False
        self._soon = False
        self._idle: asyncio.Event | None = None
        self._in_flight = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self._depth = runtime.metrics.queue_depth
        self.stats = BatcherStats()

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def in_flight(self) -> int:
        """Requests inside ``submit``: queued, running, or being answered."""
        return self._in_flight

    @property
    def options(self) -> BatchingOptions:
        return self._options

    async def submit(self, request: InferenceRequest) -> RunResult:
        """The request's result, or ``Overloaded``/``DeadlineExceeded`` when it cannot be run."""
        self._in_flight += 1
        self._depth.inc()
        self._drained.clear()
        try:
            return await self._submit(request)
        finally:
            self._in_flight -= 1
            self._depth.dec()
            if self._in_flight == 0:
                self._drained.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request holds this version; False if the wait ran out."""
        try:
            await asyncio.wait_for(self._drained.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    async def _submit(self, request: InferenceRequest) -> RunResult:
        if self._closing:
            raise Overloaded("the model version is being unloaded; retry")
        limit = self._options.max_queue_size
        # Batching merges what waits, so only waiting requests count against the queue;
        # without it every accepted request is handed to the inference threads at once
        # (they queue there, each its own call), so all of them count.
        if (self._waiting if self._options.dynamic else self._in_flight - 1) >= limit:
            raise queue_full(limit)
        loop = self._loop = asyncio.get_running_loop()
        bucket = length_bucket(int(request.x.shape[1]), self._options.bucket_ratio)
        pending = _Pending(request, loop.create_future(), bucket)
        queue = self._buckets.get(bucket)
        if queue is None:
            queue = self._buckets[bucket] = _Bucket()
        queue.entries.append(pending)
        queue.sequences += request.batch_size
        self._waiting += 1
        timer = loop.call_later(
            max(0.0, request.deadline - time.monotonic()), self._expire, pending
        )
        if not self._soon:
            # Dispatch after this loop iteration, not now: requests whose bytes arrived
            # in the same iteration (several connections' reads) then share one call.
            self._soon = True
            loop.call_soon(self._dispatch_soon)
        try:
            return await pending.future
        finally:
            timer.cancel()
            if pending.queued:  # cancelled by its caller: its work is no longer wanted
                self.stats.dropped += 1
                self._dequeue(pending)

    async def close(self) -> None:
        """Refuse queued and new requests; wait for the batches already running."""
        self._closing = True
        if self._hold is not None:
            self._hold.cancel()
        for queue in self._buckets.values():
            while (head := queue.head()) is not None:
                self._dequeue(head)
                head.future.set_exception(Overloaded("the model version is being unloaded"))
        if self._free < self._options.slots:
            self._idle = asyncio.Event()
            await self._idle.wait()

    # -- inside the batcher ---------------------------------------------------

    def _dequeue(self, pending: _Pending) -> None:
        if pending.queued:
            pending.queued = False
            self._waiting -= 1
            self._buckets[pending.bucket].sequences -= pending.request.batch_size

    def _expire(self, pending: _Pending) -> None:
        if not pending.future.done():
            if pending.queued:
                self.stats.dropped += 1
            self._dequeue(pending)
            pending.future.set_exception(
                DeadlineExceeded("the request did not finish before its deadline")
            )

    def _oldest(self) -> _Bucket | None:
        best: _Bucket | None = None
        oldest = math.inf
        for queue in self._buckets.values():
            head = queue.head()
            if head is not None and head.request.enqueued_at < oldest:
                best, oldest = queue, head.request.enqueued_at
        return best

    def _take(self) -> list[_Pending] | None:
        """The next batch, or None: nothing queued, or the oldest is waiting for company."""
        queue = self._oldest()
        if queue is None:
            return None
        limit = self._options.max_batch_size
        head = queue.head()
        assert head is not None
        hold = head.request.enqueued_at + self._options.max_queue_delay_s - time.monotonic()
        if hold > 0 and queue.sequences < limit:
            if self._hold is None and self._loop is not None:
                self._hold = self._loop.call_later(hold, self._release_hold)
            return None
        batch: list[_Pending] = []
        size = 0
        while (nxt := queue.head()) is not None and (
            not batch or size + nxt.request.batch_size <= limit
        ):
            self._dequeue(nxt)
            batch.append(nxt)
            size += nxt.request.batch_size
        return batch

    def _release_hold(self) -> None:
        self._hold = None
        self._dispatch()

    def _dispatch_soon(self) -> None:
        self._soon = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Start batches while a slot is free and a batch is ready."""
        while self._free > 0 and not self._closing and (batch := self._take()) is not None:
            self._free -= 1
            requests = [p.request for p in batch]
            try:
                done = self._executor.submit(run_batch, self._runtime, requests)
            except RuntimeError as exc:  # the executor is shut down: the server is stopping
                self._finish(batch, [exc] * len(batch))
                continue
            done.add_done_callback(partial(self._from_thread, batch))

    def _from_thread(
        self, batch: list[_Pending], done: Future[list[RunResult | Exception]]
    ) -> None:
        """On the worker thread: hand the outcomes to the event loop."""
        try:
            outcomes = done.result()
        except Exception as exc:  # run_batch reports per request; this is the executor failing
            outcomes = [exc] * len(batch)
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._finish, batch, outcomes)

    def _finish(self, batch: list[_Pending], outcomes: list[RunResult | Exception]) -> None:
        self._free += 1
        ran = [
            p for p, o in zip(batch, outcomes, strict=True) if not isinstance(o, DeadlineExceeded)
        ]
        self.stats.dropped += len(batch) - len(ran)
        if ran:
            self.stats.calls += 1
            self.stats.requests += len(ran)
            self.stats.sequences += sum(p.request.batch_size for p in ran)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if self._idle is not None and self._free == self._options.slots:
            self._idle.set()
        self._dispatch()
