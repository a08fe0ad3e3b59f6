"""``GET /metrics`` in the Prometheus text format, and the HTTP layer's request metrics.

With several worker processes each keeps its own counters; when
``PROMETHEUS_MULTIPROC_DIR`` is set (``lstm-serve`` sets it for workers > 1)
the answer aggregates every worker's files, so a scrape of any one process sees
the whole server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from fastapi import APIRouter
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.responses import Response

from service import metrics_files
from service.core import metric_writes
from service.core.metrics import LATENCY_BUCKETS
from service.http.paths import METRICS

router = APIRouter(tags=["metrics"])

REQUESTS = Counter(
    "lstm_requests_total",
    "HTTP requests answered, by model, version, route template and status code.",
    ["model", "version", "endpoint", "code"],
)
REQUEST_DURATION = Histogram(
    "lstm_request_duration_seconds",
    "Time from the request's first byte to its response, by route template.",
    ["endpoint"],
    buckets=LATENCY_BUCKETS,
)

WEBSOCKET_SESSIONS = Counter(
    "lstm_websocket_sessions_total",
    "WebSocket sessions ended, by route template and close code (0: refused or dropped; "
    "other: a code outside RFC 6455's 1000-1015).",
    ["endpoint", "code"],
)
WEBSOCKET_MESSAGES = Counter(
    "lstm_websocket_messages_total",
    "WebSocket messages, by route template and direction (received, sent).",
    ["endpoint", "direction"],
)
WEBSOCKET_DURATION = Histogram(
    "lstm_websocket_session_duration_seconds",
    "How long WebSocket sessions lasted, from handshake to close.",
    ["endpoint"],
    buckets=(0.1, 1, 10, 60, 300, 1800, 3600),
)


class _WriteFailures(Collector):
    """Metrics writes this process could not make (a full or read-only folder): counted
    in memory, since the files are what failed (``service/metrics_files.py``)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "lstm_metrics_write_failures",
            "Metrics writes to PROMETHEUS_MULTIPROC_DIR that failed in the answering process.",
            value=metrics_files.failures,
        )


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(_WriteFailures())
        return registry
    return REGISTRY


@router.get(METRICS, summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    metric_writes.flush()  # this worker's pending counts first (core/metric_writes.py)
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
