"""The gRPC server of a worker process: grpcio's asyncio server on ``grpc_port``, in the
same event loop, over the same ``Server`` and ``DataPlane`` as HTTP.

It starts and stops in the app's lifespan (``service/app.py``), so every worker
process serves gRPC as it serves HTTP. With several workers each binds the port with
``SO_REUSEPORT`` (the kernel spreads connections, as for HTTP, ``workers.py``); one
process binds it alone, so a second server on the same port fails to start rather
than share it silently.

Bounds: a message in either direction is at most ``max_body_bytes`` (grpc answers
``RESOURCE_EXHAUSTED`` beyond), a connection carries at most
``grpc_max_concurrent_streams`` calls at once (HTTP/2's own limit, announced to the
client), and a worker runs at most ``grpc_max_concurrent_rpcs`` calls at once
(``RESOURCE_EXHAUSTED`` beyond). TLS uses the HTTP port's certificate and key.

The same server carries the standard ``grpc.health.v1.Health`` service
(``health.py``). It starts before the models load, so that probes get
``NOT_SERVING`` (not a refused connection) until the worker is ready, as REST's
``/v2/health/ready`` answers 503; on stop it turns ``NOT_SERVING`` first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2_grpc

from service.core.server import Server
from service.dataplane import DataPlane
from service.grpc.auth import Keys
from service.grpc.generated import grpc_service_pb2_grpc as rpc
from service.grpc.health import ReadinessHealth
from service.grpc.servicer import InferenceServicer
from service.settings import Settings

log = logging.getLogger("service.grpc")

STOP_GRACE_S = 5.0
"""How long calls in flight may finish when the worker stops (after HTTP's drain)."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def options(settings: Settings) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", settings.max_body_bytes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
    ]


@dataclass
class GrpcServer:
    """A worker's started gRPC server and its health service."""

    aio: grpc.aio.Server
    health: ReadinessHealth

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING at once; then calls in flight get ``grace_s`` to finish."""
        await self.health.stop()
        await self.aio.stop(grace_s)


async def start_grpc(
    server: Server, dataplane: DataPlane, settings: Settings, version: str
) -> GrpcServer | None:
    """The started gRPC server; None when gRPC is off (``grpc_enabled``, ``grpc_port=0``)."""
    if not settings.grpc_enabled or settings.grpc_port == 0:
        return None
    aio = grpc.aio.server(
        options=options(settings), maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs
    )
    servicer = InferenceServicer(server, dataplane, Keys(settings), version)
    rpc.add_GRPCInferenceServiceServicer_to_server(servicer, aio)  # type: ignore[no-untyped-call]
    health = ReadinessHealth(server)
    health_pb2_grpc.add_HealthServicer_to_server(health, aio)
    where = address(settings.host, settings.grpc_port)
    if settings.ssl_certfile is not None and settings.ssl_keyfile is not None:
        pair = (settings.ssl_keyfile.read_bytes(), settings.ssl_certfile.read_bytes())
        aio.add_secure_port(where, grpc.ssl_server_credentials([pair]))
    else:
        aio.add_insecure_port(where)
    await health.start()
    await aio.start()
    scheme = "grpcs" if settings.ssl_certfile is not None else "grpc"
    log.info("serving gRPC on %s://%s", scheme, where)
    return GrpcServer(aio, health)
