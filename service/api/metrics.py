"""``GET /metrics`` in the Prometheus text format.

With several uvicorn workers each process keeps its own counters; when
``PROMETHEUS_MULTIPROC_DIR`` is set (``lstm-serve`` sets it for workers > 1)
the answer aggregates every worker's files, so a scrape of any one process sees
the whole server.
"""

from __future__ import annotations

import os

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

router = APIRouter(tags=["metrics"])


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST)
