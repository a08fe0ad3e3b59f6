"""A client of the scale-out tests: every request on a new connection, retries by resending.

A new connection per request lets nginx's round robin put consecutive chunks of one
sequence on different replicas. A chunk whose answer was lost (502, 503, 504, or a
connection error) is sent again unchanged, same ``sequence_offset``: the server answers a
retry of the last applied chunk again without stepping the state twice.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

MODEL = "seq"
PREDICT = f"/v1/models/{MODEL}:predict"
RETRIED = frozenset({502, 503, 504})


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (connection refused, reset, timed out)
    headers: dict[str, str]
    body: dict[str, Any]
    error: str = ""

    @property
    def failed(self) -> bool:
        """Lost: worth resending the identical request."""
        return self.status == 0 or self.status in RETRIED


def post(url: str, path: str, body: dict[str, Any], timeout: float = 20.0) -> Reply:
    """POST ``body`` as JSON on a connection of its own (closed after the answer)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout
    )
    try:
        connection.request(
            "POST",
            path,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Connection": "close"},
        )
        response = connection.getresponse()
        raw = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
    except (OSError, http.client.HTTPException) as error:
        return Reply(0, {}, {}, f"{type(error).__name__}: {error}")
    finally:
        connection.close()
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        parsed = {"raw": raw.decode(errors="replace")}
    return Reply(response.status, headers, parsed if isinstance(parsed, dict) else {})


def chunk_body(
    sequence_id: str, chunk: np.ndarray, offset: int, *, start: bool, end: bool
) -> dict[str, Any]:
    return {
        "instances": [chunk.tolist()],
        "return_sequences": True,
        "sequence_id": sequence_id,
        "sequence_start": start,
        "sequence_end": end,
        "sequence_offset": offset,
    }


def probabilities(reply: Reply) -> np.ndarray:
    """Per-timestep outputs of the one sequence of a ``return_sequences`` answer."""
    return np.array([step["probabilities"] for step in reply.body["predictions"][0]])


@dataclass
class Failure:
    at: float  # time.monotonic() when the attempt's answer (or error) came
    sequence_id: str
    chunk: int
    status: int
    detail: str


@dataclass
class Sequence:
    """One sequence streamed chunk by chunk; what the server answered to each chunk."""

    sequence_id: str
    chunks: list[np.ndarray]
    outputs: list[np.ndarray] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)  # sequence_steps of each chunk's answer
    problems: list[str] = field(default_factory=list)

    @property
    def x(self) -> np.ndarray:
        return np.concatenate(self.chunks)


@dataclass
class Streamer:
    """Streams sequences through ``url``, recording failed attempts and progress."""

    url: str
    retries: int = 20
    retry_sleep_s: float = 0.1
    pace_s: float = 0.0  # at least this long between one thread's consecutive chunks
    deadline: float = float("inf")  # time.monotonic() past which nothing more is sent
    failures: list[Failure] = field(default_factory=list)
    answered: int = 0  # chunks answered 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send_chunk(self, sequence: Sequence, index: int) -> Reply | None:
        """Send one chunk until it is answered (not lost); None if retries ran out."""
        offset = sum(len(c) for c in sequence.chunks[:index])
        body = chunk_body(
            sequence.sequence_id,
            sequence.chunks[index],
            offset,
            start=index == 0,
            end=index == len(sequence.chunks) - 1,
        )
        for _ in range(self.retries + 1):
            if time.monotonic() > self.deadline:
                return None
            reply = post(self.url, PREDICT, body)
            if not reply.failed:
                return reply
            with self.lock:
                self.failures.append(
                    Failure(
                        time.monotonic(),
                        sequence.sequence_id,
                        index,
                        reply.status,
                        reply.error or str(reply.body)[:200],
                    )
                )
            time.sleep(self.retry_sleep_s)
        return None

    def stream(self, sequence: Sequence) -> None:
        for index in range(len(sequence.chunks)):
            sent = time.monotonic()
            reply = self.send_chunk(sequence, index)
            if reply is None:
                sequence.problems.append(f"chunk {index}: no answer (retries or time ran out)")
                return
            if reply.status != 200:
                sequence.problems.append(f"chunk {index}: {reply.status} {reply.body}")
                return
            sequence.outputs.append(probabilities(reply))
            sequence.steps.append(int(reply.body.get("sequence_steps", -1)))
            if reply.body.get("sequence_id") != sequence.sequence_id:
                sequence.problems.append(f"chunk {index}: answered for {reply.body}")
            with self.lock:
                self.answered += 1
            time.sleep(max(0.0, sent + self.pace_s - time.monotonic()))
