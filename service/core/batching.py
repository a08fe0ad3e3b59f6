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
  of padding. The bucket whose oldest request is oldest goes first. A model with a
  Conv1D/pooling front end has one queue per exact length instead (``core/frontend.py``):
  its graph reads the padding, so its merged requests must need none.
- **Natural batching.** A batch forms at the end of the event-loop iteration in
  which requests arrived, or when an inference slot (one of ``slots`` concurrent
  onnxruntime calls) frees up. While every slot is busy, requests accumulate, so
  batches grow with load without any added delay; ``max_queue_delay_s`` can
  additionally hold a non-full batch for company.
- **Bounds.** At most ``max_queue_size`` requests wait; beyond that ``submit``
  fails at once with ``Overloaded``. Each request has a deadline: when it passes
  the caller gets ``Overloaded`` immediately, and if the request is still queued
  its work is dropped, never run. A caller that goes away (cancelled) drops too.

A batch's work (merge, bounded calls, split) is ``calls.run_batch`` on the
version's own threads; the batcher refuses, before queueing, a request that the
cost limits forbid (``cost.check_request``), and tells a running batch's calls to
``terminate`` once none of its requests waits for it any more.

What waits, by bucket, is ``core/waiting.py``'s; this module decides when a batch
forms and where it runs. Its submissions hold the version (``holds``, ``core/holds.py``)
while they run, so an unload drains them. The batcher knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from functools import partial

import onnxruntime as ort

from service.core import cpu_budget
from service.core.calls import CostLimits, check_request, length_bucket, run_batch, runs_whole
from service.core.cpu_budget import LOOP
from service.core.errors import DeadlineExceeded, Overloaded
from service.core.frontend import bucket_key, check_front_end
from service.core.holds import Holds
from service.core.runtime import ModelRuntime
from service.core.types import InferenceRequest, RunResult
from service.core.waiting import Call, Pending, Waiting

__all__ = ["BatchingOptions", "DynamicBatcher", "length_bucket"]


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


class DynamicBatcher:
    """The scheduler of one model version (see the module docstring).

    Driven by events, not by a task of its own: a batch is formed when a request
    arrives and a slot is free, or when a batch finishes and work is queued (or
    when a held batch's delay runs out). A single-sequence request therefore
    costs one future and one timer here; each batch one executor hand-off and one
    wake-up of the loop when it is done.
    """

    def __init__(
        self,
        runtime: ModelRuntime,
        executor: Executor,
        options: BatchingOptions,
        limits: CostLimits | None = None,
        *,
        owns_executor: bool = False,
    ) -> None:
        self._runtime = runtime
        self._executor = executor
        self._owns_executor = owns_executor  # the server gives each version its own threads
        self._options = options
        self._limits = limits or CostLimits(bucket_ratio=options.bucket_ratio)
        self._whole = runs_whole(runtime.metadata)  # why a sequence runs in one call, if so
        self._queue = Waiting()
        self._free = options.slots
        self._loop: asyncio.AbstractEventLoop | None = None  # known at the first request
        self._hold: asyncio.TimerHandle | None = None
        self._closing = False
        self._soon = False
        self._idle: asyncio.Event | None = None
        self._in_flight = 0
        self._running = 0  # requests in calls handed to the threads
        self.holds = Holds()  # an unload drains these (core/holds.py); submissions count
        self._closed = asyncio.Event()  # set by close(): streams on this version end then
        self._depth = runtime.metrics.queue_depth
        self.stats = BatcherStats()

    @property
    def queue_depth(self) -> int:
        return self._queue.count

    @property
    def in_flight(self) -> int:
        """Requests inside ``submit``: queued, running, or being answered."""
        return self._in_flight

    @property
    def options(self) -> BatchingOptions:
        return self._options

    @property
    def limits(self) -> CostLimits:
        """What one request and one call may cost; protocols check them before decoding."""
        return self._limits

    async def submit(self, request: InferenceRequest) -> RunResult:
        """The request's result, or ``Overloaded``/``DeadlineExceeded`` when it cannot be run."""
        self._in_flight += 1
        self.holds.enter()
        try:
            return await self._submit(request)
        finally:
            self._in_flight -= 1
            self.holds.leave()

    @property
    def closing(self) -> bool:
        """True once ``close`` began: the version is retired and takes no more work."""
        return self._closing

    async def wait_closed(self) -> None:
        """Return once the version is retired (``close`` began)."""
        await self._closed.wait()

    async def _submit(self, request: InferenceRequest) -> RunResult:
        if self._closing:
            raise Overloaded("the model version is being unloaded; retry")
        limit = self._options.max_queue_size
        # Batching merges what waits, so only waiting requests count against the queue;
        # without it every accepted request is handed to the inference threads at once
        # (they queue there, each its own call), so all of them count.
        if (self._queue.count if self._options.dynamic else self._in_flight - 1) >= limit:
            raise Overloaded(f"the model's queue is full ({limit} requests waiting); retry later")
        check_request(request.lengths, self._limits, self._whole)
        check_front_end(self._runtime.metadata, request)  # one length, long enough
        steps = int(request.x.shape[1])
        bucket = bucket_key(self._runtime.metadata, steps)
        if bucket is None:
            bucket = length_bucket(steps, self._options.bucket_ratio)
        loop = self._loop = asyncio.get_running_loop()
        pending = Pending(request, loop.create_future(), bucket)
        self._queue.push(pending)
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
                self._queue.remove(pending)
                self._show_depth()
            elif pending.call is not None:  # running: stop it if nobody else waits for it
                pending.call.abandon_if_unwanted()

    async def close(self) -> None:
        """Refuse queued and new requests; wait for the batches already running."""
        self._closing = True
        self._closed.set()
        if self._hold is not None:
            self._hold.cancel()
        for head in self._queue.drain():
            head.future.set_exception(Overloaded("the model version is being unloaded"))
        if self._free < self._options.slots:
            self._idle = asyncio.Event()
            await self._idle.wait()
        if self._owns_executor:
            self._executor.shutdown(wait=False)

    # -- inside the batcher ---------------------------------------------------

    def _expire(self, pending: Pending) -> None:
        if not pending.future.done():
            if pending.queued:
                self.stats.dropped += 1
            self._queue.remove(pending)
            self._show_depth()
            pending.future.set_exception(
                DeadlineExceeded("the request did not finish before its deadline")
            )

    def _take(self) -> list[Pending] | None:
        """The next batch, or None: nothing queued, or the oldest is waiting for company."""
        queue = self._queue.oldest()
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
        batch: list[Pending] = []
        size = 0
        while (nxt := queue.head()) is not None and (
            not batch or size + nxt.request.batch_size <= limit
        ):
            self._queue.remove(nxt)
            batch.append(nxt)
            size += nxt.request.batch_size
        return batch

    def _release_hold(self) -> None:
        self._hold = None
        self._dispatch()

    def _dispatch_soon(self) -> None:
        budget = cpu_budget.section("batcher: form batches, hand to a thread", LOOP)
        self._soon = False
        self._dispatch()
        cpu_budget.end(budget)

    def _dispatch(self) -> None:
        """Start batches while a slot is free and a batch is ready."""
        while self._free > 0 and not self._closing and (batch := self._take()) is not None:
            self._free -= 1
            self._running += len(batch)
            requests = [p.request for p in batch]
            call = Call(batch, ort.RunOptions())
            for pending in batch:
                pending.call = call
            try:
                done = self._executor.submit(
                    run_batch, self._runtime, requests, self._limits, call.options
                )
            except RuntimeError as exc:  # the executor is shut down: the server is stopping
                self._finish(batch, [exc] * len(batch))
                continue
            done.add_done_callback(partial(self._from_thread, batch))
        self._show_depth()

    def _show_depth(self) -> None:
        """The queue-depth gauge: requests queued or in a call, set when a batch starts or
        ends (or one leaves the queue early), not twice per request: each set is a write
        to the metrics' shared file."""
        self._depth.set(self._queue.count + self._running)

    def _from_thread(self, batch: list[Pending], done: Future[list[RunResult | Exception]]) -> None:
        """On the worker thread: hand the outcomes to the event loop."""
        budget = cpu_budget.section("hand-off to the event loop")
        try:
            outcomes = done.result()
        except Exception as exc:  # run_batch reports per request; this is the executor failing
            outcomes = [exc] * len(batch)
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._finish, batch, outcomes)
        cpu_budget.end(budget)

    def _finish(self, batch: list[Pending], outcomes: list[RunResult | Exception]) -> None:
        budget = cpu_budget.section("batcher: results to requests, next batch", LOOP)
        self._finished(batch, outcomes)
        cpu_budget.end(budget)

    def _finished(self, batch: list[Pending], outcomes: list[RunResult | Exception]) -> None:
        self._free += 1
        self._running -= len(batch)
        if batch and batch[0].call is not None:
            batch[0].call.finished = True
        ran = [
            p for p, o in zip(batch, outcomes, strict=True) if not isinstance(o, DeadlineExceeded)
        ]
        self.stats.dropped += len(batch) - len(ran)
        if ran:
            self.stats.calls += 1
            self.stats.requests += len(ran)
            self.stats.sequences += sum(p.request.batch_size for p in ran)
        for pending, outcome in zip(batch, outcomes, strict=True):
            # Break the pending <-> call cycle now, so the batch's arrays go with the last
            # reference rather than at the next cyclic collection (a large request's memory
            # would stay held until then).
            pending.call = None
            if pending.future.done():
                continue
            if isinstance(outcome, Exception):
                pending.future.set_exception(outcome)
            else:
                pending.future.set_result(outcome)
        if self._idle is not None and self._free == self._options.slots:
            self._idle.set()
        self._dispatch()
