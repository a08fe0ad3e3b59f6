"""Streaming over a WebSocket: timesteps in as they happen, per-timestep outputs out.

``/v1/models/{name}/stream`` (or ``.../versions/{v}/stream``) runs one sequence per
connection. Where its state lives:

- **On the connection** (the default): its (h, c) are held by the connection, so
  closing the socket frees them; any worker, no store needed.
- **In the sequence store**, resumable: ``?sequence_id=ID`` (with
  ``&sequence_start=true`` to begin it) makes every message a chunk of the
  server-held sequence ``ID`` (``core/state/sequences.py``), so a client whose
  connection dropped reconnects with ``?sequence_id=ID`` (to any worker or replica,
  given ``LSTM_SERVE_STATE_URL``) and goes on. A message may carry ``"offset"``
  (timesteps consumed before it, the ``sequence_offset`` rule: a mismatch is an
  error naming the count, the last message resent unchanged is answered again),
  so a resend after a reconnect never steps twice.

Messages, JSON both ways:

- ``{"timesteps": [[f1, ..., fF], ...]}`` (optionally ``"offset": n``) ->
  ``{"predictions": [one per timestep], "steps": <total so far>}``
- ``{"reset": true}`` -> ``{"reset": true, "steps": 0}`` (zero state again)
- ``{"end": true}`` -> ``{"ended": true, "steps": n}``, then a normal close (1000);
  a stored sequence is ended too

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
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.core.errors import InvalidInput, ServingError
from service.core.model import ServedModel
from service.core.repository import parse_version
from service.core.server import Server
from service.core.state import (
    StateOptions,
    check_stateful,
    parse_sequence_id,
    parse_sequence_offset,
)
from service.core.types import SEQUENCE, InferenceRequest
from service.http.asgi import server_of
from service.http.security import caller
from service.http.v1.instances import decode_sequence
from service.http.v1.predictions import format_predictions

router = APIRouter(prefix="/v1", tags=["v1 streaming"])

POLICY_VIOLATION = 1008
GOING_AWAY = 1001  # idle past websocket_idle_timeout_s
TRY_AGAIN_LATER = 1013  # max_websockets streams already open on this worker
SERVICE_RESTART = 1012  # the stream's model version was retired (unloaded or rolled over)


async def _send(websocket: WebSocket, message: dict[str, Any]) -> None:
    await websocket.send_text(orjson.dumps(message, option=orjson.OPT_SERIALIZE_NUMPY).decode())


class _Sequence:
    """Where a stream's state lives: on the connection (``options`` None), or in the
    sequence store under the stream's ``sequence_id`` (resumable from any worker)."""

    def __init__(self, server: Server, model: ServedModel, options: StateOptions | None) -> None:
        self.server = server
        self.model = model
        self.options = options
        self.states = model.runtime.zero_states(1)
        self.steps = 0
        self.start = options is not None and options.sequence_start

    async def step(self, message: Any) -> dict[str, Any]:
        """Handle one ``timesteps`` message: its answer (the new state kept)."""
        if not isinstance(message, dict) or not {"timesteps"} <= set(message) <= _STEP_KEYS:
            raise InvalidInput(
                'a message is {"timesteps": [[...], ...]} (with "offset" on a stream opened '
                'with ?sequence_id=), {"reset": true} or {"end": true}'
            )
        offset = parse_sequence_offset(message.get("offset"))
        if offset is not None and self.options is None:
            raise InvalidInput('"offset" applies to a stream opened with ?sequence_id=')
        meta = self.model.metadata
        x = decode_sequence(
            message["timesteps"],
            features=meta.num_features,
            model=meta.name,
            max_timesteps=self.server.settings.max_timesteps,
            name="timesteps",
        )
        lengths = np.array([len(x)], dtype=np.int64)
        request = InferenceRequest(
            x=x[None],
            lengths=lengths,
            outputs=SEQUENCE,
            deadline=time.monotonic() + self.server.settings.request_timeout_s,
        )
        if self.options is None:
            request.states = self.states
            request.outputs = SEQUENCE.with_states()  # the connection holds the state
            result = await self.model.batcher.submit(request)
            self.states = result.final_states
            self.steps += len(x)
        else:
            asked = replace(self.options, sequence_start=self.start, sequence_offset=offset)
            result, self.steps = await self.server.sequences.run(self.model, request, asked)
            self.start = False
        predictions = format_predictions(meta, result, lengths, return_sequences=True)[0]
        return {"predictions": predictions, "steps": self.steps}

    def reset(self) -> None:
        """Zero state again; a stored sequence starts again with the next timesteps."""
        self.states, self.steps = self.model.runtime.zero_states(1), 0
        self.start = True

    async def end(self) -> None:
        if self.options is not None:
            await self.server.sequences.end(self.model.name, self.options)


_STEP_KEYS = {"timesteps", "offset"}


def _stored(websocket: WebSocket) -> StateOptions | None:
    """``?sequence_id=ID[&sequence_start=true]``: the stream's state in the store."""
    query = websocket.query_params
    if "sequence_id" not in query:
        return None
    start = query.get("sequence_start", "false").lower()
    if start not in ("true", "false", "1", "0"):
        raise InvalidInput(f"sequence_start must be true or false; got {start!r}")
    return StateOptions(
        sequence_id=parse_sequence_id(query["sequence_id"]),
        sequence_start=start in ("true", "1"),
        owner=caller(websocket),
    )


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
        sequence = _Sequence(server, model, _stored(websocket))
    except ServingError as exc:
        await _send(websocket, {"error": exc.message})
        await websocket.close(POLICY_VIOLATION)
        return
    idle_s = server.settings.websocket_idle_timeout_s
    watch = _Retirement(model)
    try:
        while (raw := await _receive_text(websocket, idle_s, model, watch)) is not None:
            try:
                message = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                await _send(websocket, {"error": f"message is not valid JSON: {exc}"})
                continue
            try:
                if message == {"end": True}:
                    await sequence.end()
                    await _send(websocket, {"ended": True, "steps": sequence.steps})
                    await websocket.close(1000)
                    return
                if message == {"reset": True}:
                    sequence.reset()
                    await _send(websocket, {"reset": True, "steps": 0})
                    continue
                answer = await sequence.step(message)
            except ServingError as exc:
                await _send(websocket, {"error": exc.message})
                continue
            await _send(websocket, answer)
    except WebSocketDisconnect:
        return  # the client left; state held by the connection goes with it
    finally:
        watch.close()


@router.websocket("/models/{name}/stream")
async def stream(websocket: WebSocket, name: str) -> None:
    await _serve(websocket, name, None)


@router.websocket("/models/{name}/versions/{version}/stream")
async def stream_version(websocket: WebSocket, name: str, version: str) -> None:
    await _serve(websocket, name, version)
