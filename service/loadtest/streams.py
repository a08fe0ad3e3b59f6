"""Streams at scale: many concurrent sequences, one timestep per message.

``python -m service.loadtest.streams --streams 1000 --seconds 10`` starts the
service (or targets ``--url``) and drives ``--streams`` sequences at once, each
sending one timestep, waiting for its answer, and sending the next, for a
bounded time, two ways:

- ``ws``: one WebSocket per stream (``/v1/models/{m}/stream``), the state held
  by the connection;
- ``v1``: server-held state over keep-alive HTTP (``sequence_id``, the first
  step with ``sequence_start``), one connection per stream. With ``offsets``
  (``--offsets``) each chunk also sends ``sequence_offset`` (the retry-safe
  chunks of a store-backed server) and checks the answer's ``sequence_steps``;
  a server before the store refuses the field, so it is off by default. With
  more than one worker the server needs a shared store (``LSTM_SERVE_STATE_URL``,
  ``--state-url``), or it refuses server-held sequences (422).

It reports steps/s and the latency of a step (p50/p99). Steps of different
streams that arrive together share one onnxruntime call (each step is a
one-sequence request with its states; the batcher merges them), so steps/s can
exceed the single-sequence request rate. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson

from service.loadtest.client import encode_request
from service.loadtest.process import ServerProcess
from service.loadtest.spec import Target, parse_target
from service.settings import DEFAULT_REPOSITORY

Mode = Literal["ws", "v1"]


@dataclass
class Tally:
    """Steps answered, their latencies, and failures, across every stream."""

    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.errors[why] = self.errors.get(why, 0) + 1


def _step(rng: np.random.Generator, features: int) -> list[list[float]]:
    return [[round(float(v), 4) for v in rng.normal(size=features)]]


class _WebSocket:
    """The client half of RFC 6455, as lean as ``lstm-bench``'s HTTP: what one stream needs.

    The ``websockets`` library costs ~80 µs of client CPU a message, which on a
    machine shared with the server is CPU the server does not get; this sends one
    masked text frame and reads one unfragmented text frame per step (the server,
    uvicorn's websockets-sansio, sends each message whole; no extension is offered).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, target: Target, path: str) -> _WebSocket:
        reader, writer = await asyncio.open_connection(target.host, target.port)
        key = base64.b64encode(os.urandom(16)).decode()
        headers = (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        )
        writer.write(encode_request(target, "GET", path, b"", headers))
        head = await reader.readuntil(b"\r\n\r\n")
        accept = base64.b64encode(hashlib.sha1((key + _WS_GUID).encode()).digest())
        if not head.startswith(b"HTTP/1.1 101") or accept not in head:
            writer.close()
            raise ConnectionError(f"no WebSocket handshake: {head[:40]!r}")
        return cls(reader, writer)

    def send_text(self, payload: bytes) -> None:
        size = len(payload)
        if size < 126:
            head = bytes((0x81, 0x80 | size))
        else:
            head = bytes((0x81, 0x80 | 126)) + size.to_bytes(2, "big")
        mask = os.urandom(4)
        stream = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(
            size, "big"
        )
        self.writer.write(head + mask + masked)

    async def receive_text(self) -> bytes:
        first, second = await self.reader.readexactly(2)
        size = second & 0x7F
        if size == 126:
            size = int.from_bytes(await self.reader.readexactly(2), "big")
        elif size == 127:
            size = int.from_bytes(await self.reader.readexactly(8), "big")
        payload = await self.reader.readexactly(size)
        if first != 0x81:  # not a whole text frame: a close (0x88) or something unexpected
            raise ConnectionError(f"WebSocket frame 0x{first:02x}: {payload[:80]!r}")
        return payload

    def close(self) -> None:
        self.writer.close()


_WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def _ws_stream(
    url: str, model: str, features: int, end: float, seed: int, tally: Tally
) -> None:
    rng = np.random.default_rng(seed)
    try:
        ws = await _WebSocket.connect(parse_target(url), f"/v1/models/{model}/stream")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        tally.fail(type(exc).__name__)
        return
    try:
        while time.monotonic() < end:
            start = time.perf_counter()
            ws.send_text(orjson.dumps({"timesteps": _step(rng, features)}))
            answer = orjson.loads(await ws.receive_text())
            if "error" in answer:
                tally.fail(str(answer["error"])[:80])
                return
            tally.latencies.append(time.perf_counter() - start)
    except (OSError, asyncio.IncompleteReadError) as exc:
        tally.fail(type(exc).__name__)
    finally:
        ws.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """The status, whether the server closes the connection after it, and the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lowered = head.lower()
    at = lowered.find(b"content-length:")
    length = int(lowered[at + 15 : lowered.find(b"\r\n", at)]) if at >= 0 else 0
    body = await reader.readexactly(length)
    return status, b"\r\nconnection: close\r\n" in lowered, body


async def _v1_stream(
    url: str, model: str, features: int, end: float, seed: int, tally: Tally, offsets: bool
) -> None:
    rng = np.random.default_rng(seed)
    target: Target = parse_target(url)
    path = f"/v1/models/{model}:predict"
    headers = (("Content-Type", "application/json"),)
    writer: asyncio.StreamWriter | None = None
    steps = 0
    try:
        while time.monotonic() < end:
            if writer is None:  # the first request, or the server closed the last connection
                reader, writer = await asyncio.open_connection(target.host, target.port)
            body: dict[str, Any] = {"instances": [_step(rng, features)], "sequence_id": seed}
            if steps == 0:
                body["sequence_start"] = True
            if offsets:
                body["sequence_offset"] = steps
            start = time.perf_counter()
            writer.write(encode_request(target, "POST", path, orjson.dumps(body), headers))
            status, closing, answer = await _read_response(reader)
            if status != 200:
                tally.fail(f"HTTP {status}")
                return
            steps += 1
            if offsets and orjson.loads(answer).get("sequence_steps") != steps:
                tally.fail("sequence_steps out of step")
                return
            tally.latencies.append(time.perf_counter() - start)
            if closing:  # the server answered Connection: close: reconnect
                writer.close()
                writer = None
    except (OSError, asyncio.IncompleteReadError) as exc:
        tally.fail(type(exc).__name__)
    finally:
        if writer is not None:
            writer.close()


async def drive(
    url: str,
    mode: Mode,
    model: str,
    features: int,
    streams: int,
    seconds: float,
    offsets: bool = False,
) -> dict[str, Any]:
    """``streams`` sequences for ``seconds``; steps/s and per-step latency.

    ``offsets``: ``v1`` chunks carry ``sequence_offset`` and their answers'
    ``sequence_steps`` are checked."""
    parse_target(url)  # refuses any address but loopback (SpecError), before a byte is sent
    tally = Tally()
    started = time.monotonic()
    end = started + seconds
    await asyncio.gather(
        *(
            _ws_stream(url, model, features, end, i + 1, tally)
            if mode == "ws"
            else _v1_stream(url, model, features, end, i + 1, tally, offsets)
            for i in range(streams)
        )
    )
    elapsed = time.monotonic() - started
    ms = np.array(tally.latencies) * 1000 if tally.latencies else np.array([np.nan])
    return {
        "mode": mode,
        "streams": streams,
        "offsets": offsets,
        "steps": len(tally.latencies),
        "steps_per_s": len(tally.latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": tally.errors,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.loadtest.streams", description=__doc__)
    parser.add_argument("--url", help="a running server (loopback); default: start one")
    parser.add_argument("--model", default="basic_motions")
    parser.add_argument("--features", type=int, default=6)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mode", choices=["ws", "v1", "both"], default="both")
    parser.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--offsets", action="store_true", help="v1: send sequence_offset")
    parser.add_argument(
        "--state-url", help="the started server's LSTM_SERVE_STATE_URL (v1 with --workers > 1)"
    )
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if url is None:
        env = {"LSTM_SERVE_WORKERS": str(args.workers), "LSTM_SERVE_LOG_LEVEL": "warning"}
        if args.state_url:
            env["LSTM_SERVE_STATE_URL"] = args.state_url
        server = ServerProcess(args.repository, env)
        server.wait_ready(timeout=120.0)
        url = server.url
    modes: list[Mode] = ["ws", "v1"] if args.mode == "both" else [args.mode]
    try:
        results = [
            asyncio.run(
                drive(url, m, args.model, args.features, args.streams, args.seconds, args.offsets)
            )
            for m in modes
        ]
    finally:
        if server is not None:
            server.stop()
    for r in results:
        print(
            f"{r['mode']:>3}: {r['streams']} streams, {r['steps_per_s']:.0f} steps/s, "
            f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, errors {r['errors'] or 0}",
            file=sys.stderr,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
