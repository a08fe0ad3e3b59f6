"""The core's Prometheus metrics: queueing, compute, batches, models and held sequences.

Names follow Prometheus conventions (``_total`` counters, units in the name);
every label value comes from a bounded set (model names and versions that were
loaded). The HTTP layer's own request metrics live in ``http/metrics.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

QUEUE_DURATION = Histogram(
    "lstm_queue_duration_seconds",
    "Time a request waited before its onnxruntime call started.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE_DURATION = Histogram(
    "lstm_compute_duration_seconds",
    "Duration of one onnxruntime call (one merged batch).",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SEQUENCES = Histogram(
    "lstm_batch_sequences",
    "Sequences in each onnxruntime call actually run.",
    ["model", "version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
QUEUE_DEPTH = Gauge(
    "lstm_queue_depth_requests",
    "Requests waiting for or in inference, per model version.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
LIVE_SEQUENCES = Gauge(
    "lstm_live_sequences",
    "Server-held stateful sequences.",
    multiprocess_mode="livesum",
)
SEQUENCE_STATE_BYTES = Gauge(
    "lstm_sequence_state_bytes",
    "Memory held by server-held sequence states.",
    multiprocess_mode="livesum",
)
MODEL_LOAD_DURATION = Histogram(
    "lstm_model_load_duration_seconds",
    "Time to load and warm up one model version.",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
MODEL_LOAD_FAILURES = Counter(
    "lstm_model_load_failures_total", "Model versions that failed to load.", ["model"]
)
MODEL_VERSIONS_LOADED = Gauge(
    "lstm_model_versions_loaded",
    "Model versions loaded and serving, per model.",
    ["model"],
    multiprocess_mode="livesum",
)


@dataclass(frozen=True)
class VersionMetrics:
    """One model version's labelled metric children, resolved once at load.

    ``.labels()`` is a locked dict lookup; a request would otherwise pay for four.
    """

    queue_duration: Any
    compute_duration: Any
    batch_sequences: Any
    queue_depth: Any

    @classmethod
    def of(cls, model: str, version: int) -> VersionMetrics:
        labels = (model, str(version))
        return cls(
            QUEUE_DURATION.labels(*labels),
            COMPUTE_DURATION.labels(*labels),
            BATCH_SEQUENCES.labels(*labels),
            QUEUE_DEPTH.labels(*labels),
        )
