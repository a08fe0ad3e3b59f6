"""An inference request as the core sees it, and how it gets to a worker thread.

Routes build an ``InferenceRequest`` (arrays, not JSON) and await a scheduler.
The scheduler decides when and with whom the request runs: ``DirectScheduler``
runs each request on its own; ``batching.DynamicBatcher`` merges concurrent ones.
Both bound how many requests may wait and for how long, so overload turns into
fast ``Overloaded`` errors instead of unbounded memory and latency.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import Overloaded
from service.runtime import ModelRuntime, RunResult, State


@dataclass
class InferenceRequest:
    """A right-padded batch of sequences for one model version.

    ``x`` float32 [B, T, F]; ``lengths`` int64 [B], each in 1..T. ``states`` are
    the initial (h, c) of every layer, or None for zeros. ``deadline`` is a
    ``time.monotonic()`` instant after which the work is no longer wanted.
    """

    x: np.ndarray
    lengths: np.ndarray
    states: list[State] | None = None
    want_sequence: bool = True
    want_final: bool = True
    want_states: bool = False
    deadline: float = field(default_factory=lambda: time.monotonic() + 30.0)
    enqueued_at: float = field(default_factory=time.monotonic)

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])


class Scheduler(Protocol):
    """Turns requests into ``ModelRuntime.run`` calls on worker threads."""

    async def submit(self, request: InferenceRequest) -> RunResult: ...

    async def close(self) -> None: ...

    @property
    def queue_depth(self) -> int: ...


def execute(runtime: ModelRuntime, request: InferenceRequest) -> RunResult:
    """``session.run`` for exactly what the request asked; blocking, on a worker thread."""
    return runtime.run(
        request.x,
        request.lengths,
        request.states,
        sequence_output=request.want_sequence,
        final_output=request.want_final,
        final_states=request.want_states,
    )


def queue_full(limit: int) -> Overloaded:
    return Overloaded(f"the model's queue is full ({limit} requests waiting); retry later")


def run_request(runtime: ModelRuntime, request: InferenceRequest) -> RunResult:
    """Run one request on the calling (worker) thread, unless its deadline has passed.

    Checking here, when a thread finally picks the work up, is what drops work
    nobody waits for any more instead of spending a core on it.
    """
    start = time.monotonic()
    if start > request.deadline:
        raise Overloaded("the request waited past its deadline before it could run")
    metrics = runtime.metrics
    metrics.queue_duration.observe(start - request.enqueued_at)
    result = execute(runtime, request)
    metrics.compute_duration.observe(time.monotonic() - start)
    metrics.batch_sequences.observe(request.batch_size)
    return result


class DirectScheduler:
    """No batching: each request is one onnxruntime call, at most ``max_queue`` waiting."""

    def __init__(self, runtime: ModelRuntime, executor: Executor, max_queue: int) -> None:
        self._runtime = runtime
        self._executor = executor
        self._max_queue = max_queue
        self._pending = 0

    @property
    def queue_depth(self) -> int:
        return self._pending

    async def submit(self, request: InferenceRequest) -> RunResult:
        if self._pending >= self._max_queue:
            raise queue_full(self._max_queue)
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            timeout = max(0.0, request.deadline - time.monotonic())
            future = loop.run_in_executor(self._executor, run_request, self._runtime, request)
            try:
                return await asyncio.wait_for(future, timeout=timeout)
            except TimeoutError:
                raise Overloaded("the request did not finish before its deadline") from None
        finally:
            self._pending -= 1

    async def close(self) -> None:
        """Nothing is held between requests; in-flight calls finish on their threads."""
