"""Metrics, request ids and one JSON log line per request.

Metric names follow Prometheus conventions (``_total`` counters, units in the
name). Every label value comes from a bounded set: route templates rather than
raw paths, model names only when the model exists, status codes. Request ids
go to logs and the ``X-Request-ID`` header, never into labels.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:/=+-]{1,128}$")

# Generated request ids: a random per-process prefix and a counter. Unique across
# workers and restarts like a uuid4, at a fraction of its cost (uuid4 reads the
# OS's random source on every call, ~13% of a small request's CPU here).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "lstm_requests_total",
    "HTTP requests answered, by model, version, route template and status code.",
    ["model", "version", "endpoint", "code"],
)
REQUEST_DURATION = Histogram(
    "lstm_request_duration_seconds",
    "Time from the request's first byte to its response, by route template.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "lstm_queue_duration_seconds",
    "Time a request waited before its onnxruntime call started.",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
)
COMPUTE_DURATION = Histogram(
    "lstm_compute_duration_seconds",
    "Duration of one onnxruntime call (one merged batch).",
    ["model", "version"],
    buckets=_LATENCY_BUCKETS,
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


access_log = logging.getLogger("service.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the request fields passed as ``extra``."""

    _FIELDS = ("request_id", "method", "path", "model", "version", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in self._FIELDS:
            if hasattr(record, field):
                entry[field] = getattr(record, field)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, json_logs: bool = True) -> None:
    """Root logging for the process; uvicorn's own loggers propagate to it."""
    handler = logging.StreamHandler()
    if json_logs:
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # RequestObserver writes the access log (with request ids); uvicorn's would double it.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's id when it is sane (bounded, printable), else a fresh one."""
    for key, value in headers:
        if key == b"x-request-id":
            candidate = value.decode("latin-1")
            if _SAFE_ID.match(candidate):
                return candidate
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


_CHILDREN: dict[tuple[object, ...], Any] = {}


def _child(metric: Counter | Histogram, *labels: str) -> Any:
    """``metric.labels(*labels)``, remembered: the lookup costs more than the increment.

    Bounded like the labels themselves: route templates, status codes, and model
    names and versions only once the model was found.
    """
    key = (metric, *labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


_QUIET_ENDPOINTS = {"/metrics", "/v2/health/live", "/v2/health/ready"}


class RequestObserver:
    """Pure ASGI middleware: request id, metrics and one access-log line per request.

    Pure ASGI rather than ``BaseHTTPMiddleware`` because it costs almost nothing
    per request and does not buffer streaming bodies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope.get("headers", []))
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        scope.setdefault("state", {})["request_id"] = request_id
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - start)

    def _record(self, scope: Scope, request_id: str, status: int, duration: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        state = scope.get("state", {})
        model = str(state.get("model", ""))
        version = str(state.get("version", ""))
        _child(REQUESTS, model, version, endpoint, str(status)).inc()
        _child(REQUEST_DURATION, endpoint).observe(duration)
        level = logging.DEBUG if endpoint in _QUIET_ENDPOINTS else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        access_log.log(
            level,
            "%s %s %d",
            scope["method"],
            scope["path"],
            status,
            extra={
                "request_id": request_id,
                "method": scope["method"],
                "path": scope["path"],
                "model": model or None,
                "version": version or None,
                "status": status,
                "duration_ms": round(duration * 1000, 3),
            },
        )
