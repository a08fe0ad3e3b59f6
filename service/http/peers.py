"""Worker processes as one server: each worker also listens on a private Unix socket.

With ``workers > 1`` every worker process (``service/workers.py``) serves the
same app on two sockets: the public TCP one (shared by ``SO_REUSEPORT``) and
``<peers dir>/worker-<index>.sock``, in a folder of mode 0700 that the CLI makes
and removes, so only the server's own user reaches it. Workers talk to each other
in plain HTTP over these sockets, through the same app and the same ``Security``
checks (a forwarded request keeps the caller's ``Authorization``):

- **Repository changes** (``http/v2/repository.py``): the worker that takes a
  load or unload call sends it to every worker, itself included, under a file
  lock (``control.lock``) so that two concurrent calls apply in the same order
  everywhere, and answers only after every worker answered, with what each one
  did. The index, ``/v1/models`` and V2 metadata then read the same on any
  connection. Why a coordinator-less broadcast rather than a shared state file
  that workers poll: the call answers with each worker's real outcome (a load that
  failed on one worker is reported, not assumed), and nothing polls when nothing
  changes. The changes are also recorded (``changes.json``), so that a worker
  that the supervisor replaces replays the unloads after its startup load.
- **Server-held sequences**: a chunk belongs to worker
  ``blake2b(owner, model, sequence id) % workers`` (a stable hash, the same in
  every process). A chunk that reaches another worker is forwarded there whole
  and its answer relayed, so one process holds each sequence, its chunks run in
  order under that process's per-sequence lock, and any connection continues it.

A request counts as a peer's only if it came over this worker's Unix socket
(uvicorn's ``server`` is then the socket's path) and carries ``PEER_HEADER``; a
client on the TCP port sending the header is treated like any other client.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from service.core import parallel
from service.core.errors import Overloaded
from service.core.server import Server
from service.http.security import caller

PEER_HEADER = "x-lstm-serve-peer"
"""Marks a request one worker sends another (its value: the sender's index)."""

_HOP_BY_HOP = {
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "expect",
    "upgrade",
    "te",
    "x-request-id",
    "content-encoding",  # a forwarded body is already decoded
    "server",
    "date",
}


@dataclass(frozen=True)
class Peers:
    """This worker's place among the server's worker processes."""

    index: int
    count: int
    directory: Path
    tls: bool = False
    """The sockets speak TLS when the server does (uvicorn applies it to every socket)."""

    def socket_path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.sock"

    def owner_of(self, owner: str, model: str, sequence_id: str | int) -> int:
        """The worker that holds this sequence: a hash stable across processes (``hash()``
        is salted per process) of what the sequence is filed under."""
        key = repr((owner, model, sequence_id)).encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count

    @property
    def changes_file(self) -> Path:
        return self.directory / "changes.json"

    def record_change(self, action: str, name: str) -> None:
        """Remember the last control action per model, for a worker started later."""
        changes = self.changes()
        changes[name] = action
        self.changes_file.write_text(json.dumps(changes))

    def changes(self) -> dict[str, str]:
        try:
            recorded = json.loads(self.changes_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in recorded.items()} if isinstance(recorded, dict) else {}


_current: Peers | None = None


def configure(peers: Peers | None) -> None:
    """Set by the worker process before uvicorn imports the app."""
    global _current
    _current = peers


def current() -> Peers | None:
    """This process's peers; None with one worker (nothing to coordinate)."""
    return _current


def is_peer_call(connection: HTTPConnection) -> bool:
    """Sent by a sibling: it came over this worker's Unix socket (uvicorn's ``server`` is
    then ``(socket path, None)``) and carries the header."""
    peers, server = _current, connection.scope.get("server")
    return (
        peers is not None
        and server is not None
        and server[1] is None
        and server[0] == str(peers.socket_path(peers.index))
        and PEER_HEADER in connection.headers
    )


@dataclass(frozen=True)
class PeerAnswer:
    worker: int
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def error(self) -> str:
        """The worker's ``{"error": ...}`` message, or "" for a success."""
        if self.status < 400:
            return ""
        try:
            return str(json.loads(self.body).get("error", ""))
        except (ValueError, AttributeError):
            return self.body[:200].decode(errors="replace")


def _client_tls() -> ssl.SSLContext:
    """TLS to a sibling over its 0700 Unix socket: the folder's permissions authenticate
    the peer, so the certificate (issued for the public name) is not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def call(
    peers: Peers,
    index: int,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout_s: float,
) -> PeerAnswer:
    """One HTTP/1.1 request to worker ``index`` over its Unix socket (a new connection,
    ``Connection: close``); ``Overloaded`` if it cannot be reached or does not answer."""
    sent = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP and k.lower() != PEER_HEADER]
    sent += [(PEER_HEADER, str(peers.index)), ("content-length", str(len(body)))]
    sent.append(("connection", "close"))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent)
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(
                str(peers.socket_path(index)),
                ssl=_client_tls() if peers.tls else None,
                server_hostname="localhost" if peers.tls else None,
                limit=2**20,
            )
            try:
                writer.write(head.encode("latin-1") + b"\r\n" + body)
                await writer.drain()
                status_line, *lines = (
                    (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                )
                fields = (line.partition(":") for line in lines if ":" in line)
                got = [(k.strip().lower(), v.strip()) for k, _, v in fields]
                length = int(dict(got).get("content-length", "0"))
                content = await reader.readexactly(length)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        raise Overloaded(
            f"worker {index} of this server did not answer ({type(exc).__name__}: {exc}); "
            "it may be restarting: retry"
        ) from None
    return PeerAnswer(index, int(status_line.split(" ")[1]), got, content)


async def forward(
    request: Request, peers: Peers, index: int, body: bytes, timeout_s: float
) -> Response:
    """Send ``request`` (with ``body``, already read) to worker ``index``; its answer as ours."""
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    answer = await call(
        peers, index, request.method, path, list(request.headers.items()), body, timeout_s
    )
    kept = {k: v for k, v in answer.headers if k not in _HOP_BY_HOP}
    return Response(answer.body, status_code=answer.status, headers=kept)


HANDOFF_BYTES = 16 * 1024
"""Bodies from this size up are worth handing to an idle sibling (a 32-sequence V2
binary request of the default model is 38 KB, a single-sequence ``/v1`` one 3 KB)."""


HANDOFFS = Counter(
    "lstm_peer_handoffs_total",
    "Requests this worker handed to an idle sibling worker, having a backlog of its own.",
)


def idle_sibling(request: Request, server: Server, body: bytes) -> int | None:
    """The sibling to hand this request to, or None to serve it here.

    The kernel spreads connections over the workers by a hash, so a few keep-alive
    clients can all land on one worker while another idles (measured: 4 clients of
    32-sequence requests all on one of two workers in 1 run of 6, at half the
    throughput). A worker with ``handoff_backlog`` requests in hand hands a large
    one (its body decoded) to a sibling with none (``core/parallel.py``'s board), which
    serves it whole and answers through this worker: the sibling's core does the
    parsing and the compute. Small requests stay (forwarding costs about what they
    do), as do server-held sequences (their holder decides where they run) and
    requests a sibling already handed over.
    """
    peers, backlog = current(), server.settings.handoff_backlog
    if peers is None or not backlog or len(body) < HANDOFF_BYTES or is_peer_call(request):
        return None
    if b"sequence_id" in body:  # possibly server-held: leave it to sequence_holder
        return None
    return parallel.current_board().idle_sibling(backlog)


async def hand_off(request: Request, server: Server, sibling: int, body: bytes) -> Response:
    """The request served by ``sibling``, its answer relayed as this worker's."""
    peers = current()
    assert peers is not None  # idle_sibling found one
    settings = server.settings
    timeout = settings.request_timeout_s + settings.peer_forward_timeout_s
    HANDOFFS.inc()
    return await forward(request, peers, sibling, body, timeout)


def sequence_holder(request: Request, model: str, sequence_id: str | int | None) -> int | None:
    """The worker to forward this server-held chunk to; None to run it here (no sequence,
    one worker, this worker holds it, or a sibling already forwarded it)."""
    peers = current()
    if sequence_id is None or peers is None or is_peer_call(request):
        return None
    holder = peers.owner_of(caller(request), model, sequence_id)
    return None if holder == peers.index else holder


async def forward_to_holder(request: Request, server: Server, holder: int, body: bytes) -> Response:
    """The chunk run by the worker that holds its sequence, answered as if here."""
    peers = current()
    assert peers is not None  # sequence_holder found a holder
    settings = server.settings
    timeout = settings.request_timeout_s + settings.peer_forward_timeout_s
    return await forward(request, peers, holder, body, timeout)


@asynccontextmanager
async def control_lock(peers: Peers) -> AsyncIterator[None]:
    """One repository change at a time across every worker (``flock`` in a thread)."""
    with open(peers.directory / "control.lock", "a") as handle:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


async def broadcast(
    request: Request, peers: Peers, timeout_s: float, body: bytes = b""
) -> list[PeerAnswer]:
    """``request`` sent to every worker at once (this one too); their answers by index."""
    path = request.url.path
    headers: list[tuple[str, str]] = list(request.headers.items())

    async def one(index: int) -> PeerAnswer:
        try:
            return await call(peers, index, request.method, path, headers, body, timeout_s)
        except Overloaded as exc:
            message = json.dumps({"error": exc.message}).encode()
            return PeerAnswer(index, 503, [], message)

    return list(await asyncio.gather(*(one(i) for i in range(peers.count))))


def summary(answers: list[PeerAnswer]) -> tuple[int, dict[str, Any]]:
    """One answer for a broadcast: 200 if every worker succeeded, else the first failure's
    status; the body says what each worker did."""
    workers = [
        {"worker": a.worker, "status": a.status, **({"error": e} if (e := a.error()) else {})}
        for a in answers
    ]
    failed = [a for a in answers if a.status >= 400]
    if not failed:
        return 200, {"workers": workers}
    message = "; ".join(f"worker {a.worker}: {a.error()}" for a in failed)
    if len(failed) < len(answers):
        message += " (the other workers applied the change)"
    return failed[0].status, {"error": message, "workers": workers}
