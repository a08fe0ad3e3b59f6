"""The standard ``grpc.health.v1.Health`` service over the core's readiness.

What Kubernetes' native gRPC probe (``grpc: {port: 8001}``, 1.24+), Envoy, Istio and
``grpc_health_probe`` call. Its answer is the server readiness of
``/v2/health/ready`` (``Server.not_ready_reason``): ``NOT_SERVING`` while the models
load at startup, when no model is loaded, and from the moment the worker begins to
stop; ``SERVING`` otherwise. The overall status (service ``""``) and
``inference.GRPCInferenceService``'s are the same; any other name is ``NOT_FOUND``
(``Check``) or ``SERVICE_UNKNOWN`` (``Watch``), as the protocol says.

grpcio-health-checking's asyncio servicer keeps the table and serves ``Watch``; here
``Check`` re-reads readiness before it answers (so it is never stale), and a task
re-reads it every ``REFRESH_S`` for ``Watch`` streams. Like REST's probes, it needs no
API key.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from service.core.server import Server

OVERALL = ""
INFERENCE_SERVICE = "inference.GRPCInferenceService"
SERVICES = (OVERALL, INFERENCE_SERVICE)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
REFRESH_S = 0.5
"""How often a readiness change reaches ``Watch`` streams."""


class ReadinessHealth(health_aio.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1.Health`` whose statuses follow ``server.ready``."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.core = server
        self._serving: bool | None = None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        """Set every service's status from readiness, when it changed."""
        serving = self.core.ready and not self._stopping
        if serving == self._serving:
            return
        self._serving = serving
        for name in SERVICES:
            await self.set(name, SERVING if serving else NOT_SERVING)

    async def start(self) -> None:
        """NOT_SERVING until the core is ready; then follow it."""
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            await self.refresh()

    async def stop(self) -> None:
        """NOT_SERVING from now on (the worker is stopping): probes take it out first."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.enter_graceful_shutdown()

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        if not self._stopping:
            await self.refresh()
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response
