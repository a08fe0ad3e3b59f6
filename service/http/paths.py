"""The paths every layer treats specially, named once.

Probes and metrics are served past the connection cap (``connections.py``), need
no key (``security.py``, metrics unless ``metrics_auth``) and write no access-log
line (``asgi.py``).
"""

from __future__ import annotations

LIVE = "/v2/health/live"
READY = "/v2/health/ready"
METRICS = "/metrics"

PROBES = frozenset({LIVE, READY})
"""Liveness and readiness: an orchestrator must always reach them."""

OBSERVABILITY_PATHS = PROBES | {METRICS}
"""Probes and metrics: served even at the connection cap, never access-logged."""
