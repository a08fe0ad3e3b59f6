"""``inference.GRPCInferenceService``: the calls ``tritonclient.grpc`` and ``perf_analyzer``
make, translated onto the same core and data plane as REST.

Each call only translates: health and metadata read the core's ``Server`` and V2's
dicts (``http/v2/metadata.py``); ``ModelInfer`` and every request of a
``ModelStreamInfer`` go through ``DataPlane.infer`` with the gRPC codec
(``codec.py``); the repository calls run REST's load/unload under the same control
mode, scope and audit line (``http/v2/repository.py``).

A stream answers its requests one at a time, in order: a sequence's chunks can only
run one after another anyway, and a client's stream then holds at most one request's
memory. A request that fails gets Triton's in-stream answer (``error_message``) and
the stream goes on, as Triton does; a bad key ends the stream at once, and so does
``grpc_stream_idle_timeout_s`` without a message (``DEADLINE_EXCEEDED``), as an idle
WebSocket is closed.

Keys (``auth.py``): ``ServerLive`` and ``ServerReady`` are open (REST's probes are);
the repository calls need ``admin``; everything else ``inference``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn, TypeAlias

import grpc
from google.protobuf import json_format

from service.core.errors import ModelNotFound, NotReady, ServingError
from service.core.model import ServedModel
from service.core.repository import parse_version
from service.core.server import Server
from service.dataplane import DataPlane
from service.grpc.auth import ADMIN, INFERENCE, Keys
from service.grpc.codec import GrpcCodec, Payload
from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as rpc
from service.grpc.generated import model_config_pb2 as mc
from service.grpc.status import code_of, trailers_of
from service.v2.control import audit, check_mode, load_model
from service.v2.metadata import model_config, model_metadata, server_metadata

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


async def abort(context: Context, exc: ServingError) -> NoReturn:
    """End the call with the error's status and REST's message."""
    await context.abort(code_of(exc), exc.message, trailing_metadata=trailers_of(exc))
    raise AssertionError("unreachable")  # abort raises


def _version(text: str) -> int | None:
    return parse_version(text) if text else None


class InferenceServicer(rpc.GRPCInferenceServiceServicer):
    """The service over one worker's ``Server`` and ``DataPlane``."""

    def __init__(self, server: Server, dataplane: DataPlane, keys: Keys, version: str) -> None:
        self.server = server
        self.dataplane = dataplane
        self.keys = keys
        self.version = version
        self.codec = GrpcCodec(server.settings)

    # -- health and metadata ------------------------------------------------

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=bool(self.server.live))

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=not self.server.not_ready_reason())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        await self.keys.check(context, INFERENCE)
        try:
            self._resolve(request.name, request.version)
        except (ModelNotFound, NotReady):
            return pb.ModelReadyResponse(ready=False)  # as Triton: not an error
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        await self.keys.check(context, INFERENCE)
        return pb.ServerMetadataResponse(**server_metadata(self.version))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        await self.keys.check(context, INFERENCE)
        try:
            model = self._resolve(request.name, request.version)
        except ServingError as exc:
            await abort(context, exc)
        versions = [m.version for m in self.server.repository.versions(request.name)]
        meta = model_metadata(model, versions)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        await self.keys.check(context, INFERENCE)
        try:
            model = self._resolve(request.name, request.version)
        except ServingError as exc:
            await abort(context, exc)
        repository = self.server.repository
        config = model_config(model, self.server.settings, repository.policy(request.name))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, mc.ModelConfig()))

    def _resolve(self, name: str, version: str) -> ServedModel:
        return self.server.repository.resolve(name, _version(version))

    # -- inference ----------------------------------------------------------

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        owner = await self.keys.check(context, INFERENCE)
        try:
            return await self._infer(request, context, owner)
        except ServingError as exc:
            await abort(context, exc)
        except Exception as exc:
            await self._internal(context, exc)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        owner = await self.keys.check(context, INFERENCE)
        idle_s = self.server.settings.grpc_stream_idle_timeout_s
        requests = aiter(request_iterator)
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    request = await anext(requests)
            except StopAsyncIteration:
                return
            except TimeoutError:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no message for {idle_s:g} s (grpc_stream_idle_timeout_s); closing the stream",
                )
            try:
                response = await self._infer(request, context, owner)
            except ServingError as exc:
                # Triton's in-stream error: tritonclient's callback gets it as its error.
                yield pb.ModelStreamInferResponse(error_message=exc.message)
                continue
            except Exception as exc:
                await self._internal(context, exc)
            yield pb.ModelStreamInferResponse(infer_response=response)

    async def _infer(
        self, request: pb.ModelInferRequest, context: Context, owner: str
    ) -> pb.ModelInferResponse:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        payload: Payload = (request, deadline)

        async def read() -> Payload:
            return payload

        response: pb.ModelInferResponse = await self.dataplane.infer(
            self.codec,
            request.model_name,
            _version(request.model_version),
            read,
            size=request.ByteSize(),
            owner=owner,
        )
        return response

    async def _internal(self, context: Context, exc: Exception) -> NoReturn:
        log.exception("unhandled error in a gRPC call", exc_info=exc)
        await context.abort(
            grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"
        )
        raise AssertionError("unreachable")

    # -- the repository extension -------------------------------------------

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        owner = await self.keys.check(context, ADMIN)
        async with audit("index", "", owner, context.peer()):
            statuses = self.server.repository.index()
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                entry(name=s.name, version=str(s.version), state=s.state, reason=s.reason)
                for s in statuses
                if not request.ready or s.state == "READY"
            ]
        )

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> pb.RepositoryModelLoadResponse:
        owner = await self.keys.check(context, ADMIN)
        try:
            async with audit("load", request.model_name, owner, context.peer()):
                check_mode(self.server.settings, "load")
                await load_model(self.server.repository, request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> pb.RepositoryModelUnloadResponse:
        owner = await self.keys.check(context, ADMIN)
        try:
            async with audit("unload", request.model_name, owner, context.peer()):
                check_mode(self.server.settings, "unload")
                await self.server.repository.unload_model(request.model_name)
        except ServingError as exc:
            await abort(context, exc)
        return pb.RepositoryModelUnloadResponse()
