"""The batcher's waiting room: pending requests queued by length bucket, and the call a
batch of them becomes.

``DynamicBatcher`` (``batching.py``) decides *when* a batch forms and where it runs;
this module keeps *what waits*: one FIFO per bucket (a geometric length bucket, or one
exact length for a model with a front end, ``core/frontend.py``), the count of requests
still queued, and which bucket's oldest request is oldest. A request leaves its queue
lazily: marked not queued (taken, expired or cancelled), it is dropped from the front
when the queue is next looked at. All of it runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnxruntime as ort

from service.core.types import InferenceRequest, RunResult


@dataclass(eq=False)
class Call:
    """A batch handed to the executor, and the options that can stop its calls."""

    batch: list[Pending]
    options: ort.RunOptions
    finished: bool = False

    def abandon_if_unwanted(self) -> None:
        """Stop the work at once when no request of the batch waits for it any more."""
        if not self.finished and all(p.future.done() for p in self.batch):
            self.options.terminate = True


@dataclass(eq=False)
class Pending:
    request: InferenceRequest
    future: asyncio.Future[RunResult]
    bucket: int
    queued: bool = True
    call: Call | None = None


@dataclass
class Bucket:
    entries: deque[Pending] = field(default_factory=deque)
    sequences: int = 0  # sequences of the entries still queued

    def head(self) -> Pending | None:
        """The oldest entry still queued, discarding ones that expired or were cancelled."""
        while self.entries and not self.entries[0].queued:
            self.entries.popleft()
        return self.entries[0] if self.entries else None


class Waiting:
    """The queued requests of one model version, by bucket."""

    def __init__(self) -> None:
        self._buckets: dict[int, Bucket] = {}
        self.count = 0
        """Requests still queued."""

    def push(self, pending: Pending) -> None:
        queue = self._buckets.get(pending.bucket)
        if queue is None:
            queue = self._buckets[pending.bucket] = Bucket()
        queue.entries.append(pending)
        queue.sequences += pending.request.batch_size
        self.count += 1

    def remove(self, pending: Pending) -> None:
        """Take ``pending`` out of the queue (taken, expired or cancelled); once only."""
        if pending.queued:
            pending.queued = False
            self.count -= 1
            self._buckets[pending.bucket].sequences -= pending.request.batch_size

    def oldest(self) -> Bucket | None:
        """The bucket whose oldest queued request is oldest (None: nothing queued)."""
        best: Bucket | None = None
        oldest = math.inf
        emptied: list[int] = []
        for key, queue in self._buckets.items():
            head = queue.head()
            if head is None and key < 0:  # an exact-length queue (front ends): clients name
                emptied.append(key)  # the lengths, so an empty one is not kept
            elif head is not None and head.request.enqueued_at < oldest:
                best, oldest = queue, head.request.enqueued_at
        for key in emptied:
            del self._buckets[key]
        return best

    def drain(self) -> Iterator[Pending]:
        """Every queued request, each taken out of the queue as it is yielded."""
        for queue in self._buckets.values():
            while (head := queue.head()) is not None:
                self.remove(head)
                yield head
