"""One request path for every protocol: admit -> resolve and hold -> read -> decode ->
state -> submit -> encode.

As MLServer's ``handlers/dataplane.py`` and KServe's ``DataPlane``: a protocol
layer (``http/v1``, ``http/v2``, and gRPC) only translates. It hands ``infer`` a
``read`` (how its request's payload arrives: an HTTP body with its limits, a gRPC
message) and a ``Codec`` (its payload to the core's ``InferenceRequest`` and state
options, and the core's result back to its answer); everything between is here,
once:

1. **admit**: a request declared (or not declared) large waits for one of
   ``max_large_requests`` places, within its deadline, so a worker's memory stays
   within one large request's bound (``LargeRequests``);
2. **resolve and hold** the model version: an unload's drain waits for this
   request, payload and all;
3. **read** and **decode** (the protocol's);
4. **state** (carried or server-held, ``core/state/``) and **submit** to the
   version's batcher (``core/batching.py``), the only way to ``session.run``;
5. **encode** (the protocol's).

Nothing here knows HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Generic, Protocol, TypeVar

from service.core import cpu_budget
from service.core.errors import Overloaded
from service.core.model import ServedModel
from service.core.server import Server
from service.core.state import Decoder, StateOptions
from service.core.state import infer as infer_with_state
from service.core.types import InferenceRequest, RunResult

Payload = TypeVar("Payload", contravariant=True)
Context = TypeVar("Context")
Answer = TypeVar("Answer", covariant=True)


@dataclass
class Decoded(Generic[Context]):
    """A protocol's request in the core's terms, and what its encoder needs back.

    ``context`` is the protocol's own (the envelope, the outputs asked for);
    ``options`` what it asked about state; ``carried`` decodes a client-carried
    state in the protocol's wire format.
    """

    request: InferenceRequest
    context: Context
    options: StateOptions = field(default_factory=StateOptions)
    carried: Decoder | None = None


@dataclass(frozen=True)
class Outcome(Generic[Context]):
    """What the encoder answers from: the version that ran, the request as decoded,
    the result, and for a server-held chunk the timesteps its sequence has consumed."""

    model: ServedModel
    decoded: Decoded[Context]
    result: RunResult
    steps: int | None


class Codec(Protocol[Payload, Context, Answer]):
    """A protocol's two halves of the path."""

    async def decode(self, payload: Payload, model: ServedModel) -> Decoded[Context]: ...

    def encode(self, outcome: Outcome[Context]) -> Answer: ...


class LargeRequests:
    """At most ``slots`` large requests per worker at once: what makes the memory bound
    hold under concurrency.

    Every limit of ``core/calls.py`` and ``http/body.py`` bounds one request. A worker
    that decodes many large requests at once would still add those bounds up, so a
    request whose payload is over ``threshold_bytes`` (or whose size is not declared)
    takes one of ``slots`` places from before its payload is read until it is answered;
    the next waits for a place, within its deadline, then gets ``Overloaded`` (503,
    Retry-After). Ordinary requests never wait here.
    """

    def __init__(self, slots: int, threshold_bytes: int) -> None:
        self.slots = slots
        self.threshold_bytes = threshold_bytes
        self._places = asyncio.Semaphore(slots)

    def is_large(self, declared_bytes: int | None) -> bool:
        return declared_bytes is None or declared_bytes > self.threshold_bytes

    @asynccontextmanager
    async def admit(self, declared_bytes: int | None, timeout_s: float) -> AsyncIterator[None]:
        """Hold a place for the request's lifetime when it is large; yield at once if not."""
        if not self.is_large(declared_bytes):
            yield
            return
        try:
            async with asyncio.timeout(timeout_s):
                await self._places.acquire()
        except TimeoutError:
            raise Overloaded(
                f"{self.slots} large request(s) (bodies over {self.threshold_bytes} bytes) "
                "are being served, the limit per worker (max_large_requests); retry later"
            ) from None
        try:
            yield
        finally:
            self._places.release()


class DataPlane:
    """The request path, over the server's repository, admission and sequences."""

    def __init__(self, server: Server) -> None:
        self._server = server
        settings = server.settings
        self._large = LargeRequests(settings.max_large_requests, settings.large_request_bytes)
        self._wait_s = server.settings.request_timeout_s

    async def infer(
        self,
        codec: Codec[Payload, Context, Answer],
        name: str,
        version: int | None,
        read: Callable[[], Awaitable[Payload]],
        *,
        size: int | None,
        owner: str = "",
        resolved: Callable[[ServedModel], None] | None = None,
    ) -> Answer:
        """Serve one inference request.

        ``size`` is the payload's declared size (None: undeclared, which counts as
        large); ``owner`` the caller's key id (server-held state is theirs);
        ``resolved`` is told the version before the payload is read (access logs).
        """
        if not self._large.is_large(size):  # the usual case, without a wait
            return await self._admitted(codec, name, version, read, owner, resolved)
        async with self._large.admit(size, self._wait_s):
            return await self._admitted(codec, name, version, read, owner, resolved)

    async def _admitted(
        self,
        codec: Codec[Payload, Context, Answer],
        name: str,
        version: int | None,
        read: Callable[[], Awaitable[Payload]],
        owner: str,
        resolved: Callable[[ServedModel], None] | None,
    ) -> Answer:
        model = self._server.repository.resolve(name, version)
        if resolved is not None:
            resolved(model)
        with model.holds:  # a rollout's drain waits for this request, body and all
            cpu_budget.step("read body")
            payload = await read()
            cpu_budget.step("decode")
            decoded = await codec.decode(payload, model)
            asked = decoded.options
            cpu_budget.step("submit, wait, resume")
            if asked.stateful:
                if owner:
                    asked = replace(asked, owner=owner)
                result, steps = await infer_with_state(
                    model, self._server.sequences, decoded.request, asked, decoded.carried
                )
            else:
                result, steps = await model.batcher.submit(decoded.request), None
            cpu_budget.step("encode")
            return codec.encode(Outcome(model, decoded, result, steps))
