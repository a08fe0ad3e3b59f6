"""Per-request metric updates, added up in memory and written to Prometheus's files in
bulk: at most ``FLUSH_S`` apart, and before every scrape.

With several workers, prometheus_client keeps every value in a memory-mapped file
(multiprocess mode) and writes it under a lock on every ``inc`` and ``observe``: a
histogram observation is two writes, and a single-sequence request made seven (the
HTTP counter and duration, the queue wait, and per batch the call's duration and
size). The CPU budget (``cpu_budget.py``) charged them 17 µs of a 275 µs request at
16 clients and 38 µs of 550 at one client. Here an update is a ``bisect`` and a few
integer additions under one uncontended lock (the event loop and the inference
threads both record); ``flush`` turns each child's pending sum and bucket counts
into one write each.

What a scrape sees is therefore current for the worker that answers it (the
``/metrics`` route flushes first) and at most ``FLUSH_S`` old for the others, well
within any scrape interval. The server flushes on stop, so nothing counted is lost
when a worker exits cleanly; a worker that is killed loses its last ``FLUSH_S``.

The buckets are written through the histogram child's own ``_sum`` and ``_buckets``
(prometheus_client's private attributes, as its ``observe`` does);
``tests/core/test_metric_writes.py`` checks that a flushed value equals a direct one.
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from typing import Any

FLUSH_S = 1.0

_lock = threading.Lock()
_counts: dict[int, list[Any]] = {}
"""id(child) -> [child, amount]: counters and gauges' increments."""
_observed: dict[int, list[Any]] = {}
"""id(child) -> [child, sum, [count per bucket]]: histogram observations."""


def count(child: Any, amount: float = 1.0) -> None:
    """``child.inc(amount)``, written at the next flush."""
    with _lock:
        entry = _counts.get(id(child))
        if entry is None:
            _counts[id(child)] = [child, amount]
        else:
            entry[1] += amount


def observe(child: Any, value: float) -> None:
    """``child.observe(value)`` (a histogram's), written at the next flush."""
    bucket = bisect_left(child._upper_bounds, value)  # the first bound >= value, as observe
    with _lock:
        entry = _observed.get(id(child))
        if entry is None:
            entry = _observed[id(child)] = [child, 0.0, [0] * len(child._upper_bounds)]
        entry[1] += value
        entry[2][bucket] += 1


def flush() -> None:
    """Write everything pending: one write per child and per bucket that moved."""
    global _counts, _observed
    with _lock:
        counts, observed = _counts, _observed
        _counts, _observed = {}, {}
    for child, amount in counts.values():
        child.inc(amount)
    for child, total, buckets in observed.values():
        child._sum.inc(total)
        for i, n in enumerate(buckets):
            if n:
                child._buckets[i].inc(n)


async def flush_forever() -> None:
    """The worker's flusher (started with the server); a last flush when it stops."""
    try:
        while True:
            await asyncio.sleep(FLUSH_S)
            flush()
    finally:
        flush()
