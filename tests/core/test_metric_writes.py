"""Buffered metric writes (``service/core/metric_writes.py``): once flushed, a child holds
exactly what direct ``inc``/``observe`` calls would have written."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.core import metric_writes

BUCKETS = (0.001, 0.01, 0.1, 1.0, 10.0)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=60))
def test_flushed_histograms_and_counters_equal_direct_ones(values: list[float]) -> None:
    direct, buffered = CollectorRegistry(), CollectorRegistry()
    h_direct = Histogram("d", "d", ["m"], buckets=BUCKETS, registry=direct).labels("x")
    c_direct = Counter("n", "n", ["m"], registry=direct).labels("x")
    h_buffered = Histogram("d", "d", ["m"], buckets=BUCKETS, registry=buffered).labels("x")
    c_buffered = Counter("n", "n", ["m"], registry=buffered).labels("x")
    for value in values:
        h_direct.observe(value)
        c_direct.inc()
        metric_writes.observe(h_buffered, value)
        metric_writes.count(c_buffered)
    if values:
        assert _samples(buffered) != _samples(direct)  # nothing written before the flush
    metric_writes.flush()
    assert _samples(buffered) == _samples(direct)  # bucket edges (value == bound) included


def test_updates_from_several_threads_are_all_written() -> None:
    registry = CollectorRegistry()
    counter = Counter("n", "n", registry=registry)
    histogram = Histogram("d", "d", buckets=BUCKETS, registry=registry)

    def record() -> None:
        for _ in range(5_000):
            metric_writes.count(counter)
            metric_writes.observe(histogram, 0.05)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(50):  # flushes racing the writers lose nothing
        metric_writes.flush()
    for thread in threads:
        thread.join()
    metric_writes.flush()
    samples = _samples(registry)
    assert samples[("n_total", ())] == 20_000
    assert samples[("d_count", ())] == 20_000
    assert samples[("d_bucket", (("le", "0.1"),))] == 20_000
    assert samples[("d_bucket", (("le", "0.01"),))] == 0
