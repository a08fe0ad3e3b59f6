"""Streaming over a WebSocket: timesteps in as they happen, per-timestep outputs out.

``/v1/models/{name}/stream`` (or ``.../versions/{v}/stream``) keeps one
sequence per connection, its (h, c) held by the connection itself, so closing
the socket frees it. Messages, JSON both ways:

- ``{"timesteps": [[f1, ..., fF], ...]}`` (one or several timesteps) ->
  ``{"predictions": [one per timestep], "steps": <total so far>}``
- ``{"reset": true}`` -> ``{"reset": true, "steps": 0}`` (zero state again)
- ``{"end": true}`` -> ``{"ended": true, "steps": n}``, then a normal close (1000)

A bad message (a binary frame included) gets ``{"error": "..."}`` and the stream
goes on. Every stream is bounded: at most ``max_websockets`` open per worker
(beyond, an error and close 1013), ``websocket_idle_timeout_s`` without a message
(an error and close 1001), ``max_websocket_message_bytes`` per message after
permessage-deflate (uvicorn's websockets closes with 1009). A stream whose model
version is retired (unloaded, or replaced by a rollout) is closed at once with an
error message and close 1012 (service restart) naming the version. Messages are
handled one at a time: a client that sends faster than the model computes fills
the socket's bounded receive queue and then TCP's window, which slows the client
(backpressure) instead of growing memory here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.core.errors import InvalidInput, ServingError
from service.core.model import ServedModel
from service.core.repository import parse_version
from service.core.request import SEQUENCE, InferenceRequest
from service.core.runtime import State
from service.core.server import Server
from service.core.state import check_stateful
from service.http.asgi import server_of
from service.http.v1.instances import decode_sequence
from service.http.v1.predictions import format_predictions

router = APIRouter(prefix="/v1", tags=["v1 streaming"])

POLICY_VIOLATION = 1008
GOING_AWAY = 1001  # idle past websocket_idle_timeout_s
TRY_AGAIN_LATER = 1013  # max_websockets streams already open on this worker
SERVICE_RESTART = 1012  # the stream's model version was retired (unloaded or rolled over)


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY).decode())


async def _step(
    server: Server, model: ServedModel, message: Any, states: list[State]
) -> tuple[dict[str, Any], list[State], int]:
    """Handle one ``timesteps`` message: its answer, the new state, timesteps consumed."""
    if not isinstance(message, dict) or set(message) != {"timesteps"}:
        raise InvalidInput(
            'a message is {"timesteps": [[...], ...]}, {"reset": true} or {"end": true}'
        )
    meta = model.metadata
    x = decode_sequence(
        message["timesteps"],
        features=meta.num_features,
        model=meta.name,
        max_timesteps=server.settings.max_timesteps,
        name="timesteps",
    )
    lengths = np.array([len(x)], dtype=np.int64)
    result = await model.batcher.submit(
        InferenceRequest(
            x=x[None],
            lengths=lengths,
            states=states,
            outputs=SEQUENCE.with_states(),  # the connection holds the state
            deadline=time.monotonic() + server.settings.request_timeout_s,
        )
    )
    predictions = format_predictions(meta, result, lengths, return_sequences=True)[0]
    return {"predictions": predictions}, result.final_states, len(x)


async def _serve(websocket: WebSocket, name: str, version: str | None) -> None:
    server = server_of(websocket)
    await websocket.accept()
    state = websocket.app.state
    limit = server.settings.max_websockets
    if getattr(state, "open_streams", 0) >= limit:
        await _send(websocket, {"error": f"{limit} streams are open on this worker; retry later"})
        await websocket.close(TRY_AGAIN_LATER)
        return
    state.open_streams = getattr(state, "open_streams", 0) + 1
    try:
        await _serve_open(websocket, server, name, version)
    finally:
        state.open_streams -= 1


async def _receive_text(
    websocket: WebSocket, idle_s: float, model: ServedModel, watch: _Retirement
) -> str | None:
    """The next text message; None once the client left, was idle for ``idle_s``, or the
    stream's version was retired: then the stream is closed with 1012 and a reason, at
    once, not left to answer "retry" to every message.

    One timer per message and no task: a stream's messages are the hot path at scale
    (an ``asyncio.wait`` on a fresh task per message was ~13% of a step's CPU). The
    retirement reaches a waiting receive by cancelling it (``_Retirement``).
    """
    while True:
        if watch.retired.done():
            await _close_retired(websocket, model)
            return None
        try:
            watch.waiting = True
            async with asyncio.timeout(idle_s):
                message = await websocket.receive()
        except TimeoutError:
            await _send(websocket, {"error": f"no message for {idle_s:g} s; closing the stream"})
            await websocket.close(GOING_AWAY)
            return None
        except asyncio.CancelledError:
            if not watch.retired.done() or not watch.cancelled:
                raise  # the server is stopping, or the client's task is cancelled
            watch.cancelled = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await _close_retired(websocket, model)
            return None
        finally:
            watch.waiting = False
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is not None:
            return str(text)
        await _send(websocket, {"error": "binary messages are not accepted; send JSON as text"})


class _Retirement:
    """Cancels the stream's receive when its model version is retired, and only then:
    a step in flight finishes and is answered first."""

    def __init__(self, model: ServedModel) -> None:
        self.retired = asyncio.ensure_future(model.batcher.wait_closed())
        self.waiting = False
        self.cancelled = False
        self._task = asyncio.current_task()
        self.retired.add_done_callback(self._cancel_wait)

    def _cancel_wait(self, retired: asyncio.Future[None]) -> None:
        if self.waiting and not retired.cancelled() and self._task is not None:
            self.cancelled = True
            self._task.cancel()

    def close(self) -> None:
        self.retired.remove_done_callback(self._cancel_wait)
        self.retired.cancel()


async def _close_retired(websocket: WebSocket, model: ServedModel) -> None:
    reason = (
        f"model {model.name!r} version {model.version} was unloaded; reconnect to "
        "stream on the version now serving"
    )
    await _send(websocket, {"error": reason})
    await websocket.close(SERVICE_RESTART, reason=reason)


async def _serve_open(websocket: WebSocket, server: Server, name: str, version: str | None) -> None:
    try:
        model = server.repository.resolve(name, None if version is None else parse_version(version))
        check_stateful(model)
    except ServingError as exc:
        await _send(websocket, {"error": exc.message})
        await websocket.close(POLICY_VIOLATION)
        return
    states = model.runtime.zero_states(1)
    steps = 0
    idle_s = server.settings.websocket_idle_timeout_s
    watch = _Retirement(model)
    try:
        while (raw := await _receive_text(websocket, idle_s, model, watch)) is not None:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                await _send(websocket, {"error": f"message is not valid JSON: {exc}"})
                continue
            if message == {"end": True}:
                await _send(websocket, {"ended": True, "steps": steps})
                await websocket.close(1000)
                return
            if message == {"reset": True}:
                states, steps = model.runtime.zero_states(1), 0
                await _send(websocket, {"reset": True, "steps": 0})
                continue
            try:
                answer, states, consumed = await _step(server, model, message, states)
            except ServingError as exc:
                await _send(websocket, {"error": exc.message})
                continue
            steps += consumed
            await _send(websocket, {**answer, "steps": steps})
    except WebSocketDisconnect:
        return  # the client left; its state goes with the connection
    finally:
        watch.close()


@router.websocket("/models/{name}/stream")
async def stream(websocket: WebSocket, name: str) -> None:
    await _serve(websocket, name, None)


@router.websocket("/models/{name}/versions/{version}/stream")
async def stream_version(websocket: WebSocket, name: str, version: str) -> None:
    await _serve(websocket, name, version)
