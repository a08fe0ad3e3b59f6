"""A response head leaves with its body (``service/http/coalesce.py``), on a real uvloop
transport over a socket pair: what the peer can read after each write."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from service.http.coalesce import HeadWithBody

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def _readable(peer: socket.socket) -> bytes:
    """What the peer can read right now (b"" when nothing has arrived)."""
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def _transport(ours: socket.socket) -> asyncio.Transport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return transport


def _run(test: object) -> None:
    uvloop.run(test)  # type: ignore[arg-type]


@pytest.fixture
def pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    yield ours, peer
    peer.close()


def test_the_head_waits_for_the_body_and_both_leave_in_one_send(pair) -> None:
    ours, peer = pair

    async def go() -> None:
        transport = HeadWithBody(await _transport(ours))
        transport.write(HEAD)
        await asyncio.sleep(0.05)
        assert _readable(peer) == b""  # held: nothing on the wire yet
        assert transport.get_write_buffer_size() == len(HEAD)  # counted as unsent
        transport.write(b"{}")
        await asyncio.sleep(0.05)
        assert _readable(peer) == HEAD + b"{}"  # one read: head and body together
        transport.write(b"more")  # after the head, writes pass straight through
        await asyncio.sleep(0.05)
        assert _readable(peer) == b"more"
        transport.close()

    _run(go())


def test_an_interim_100_continue_is_not_held(pair) -> None:
    ours, peer = pair

    async def go() -> None:
        transport = HeadWithBody(await _transport(ours))
        transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await asyncio.sleep(0.05)
        assert _readable(peer) == b"HTTP/1.1 100 Continue\r\n\r\n"
        transport.write(HEAD)
        await asyncio.sleep(0.05)
        assert _readable(peer) == b""
        transport.close()

    _run(go())


def test_closing_sends_a_held_head_and_aborting_drops_it(pair) -> None:
    ours, peer = pair

    async def go() -> None:
        transport = HeadWithBody(await _transport(ours))
        transport.write(HEAD)
        transport.close()  # e.g. the app failed after http.response.start
        await asyncio.sleep(0.05)
        assert _readable(peer) == HEAD

    _run(go())
    other, other_peer = socket.socketpair()
    other_peer.setblocking(False)

    async def aborted() -> None:
        transport = HeadWithBody(await _transport(other))
        transport.write(HEAD)
        transport.abort()
        await asyncio.sleep(0.05)
        assert _readable(other_peer) == b""  # dropped, and the connection is gone

    _run(aborted())
    other_peer.close()


def test_a_real_server_answers_head_and_pipelined_requests(tiny_repository) -> None:
    """HEAD has no body write to carry a held head (it must not wait forever), and two
    pipelined requests on one connection each get their whole answer."""
    from service.loadtest.process import ServerProcess

    server = ServerProcess(tiny_repository)
    try:
        server.wait_ready(timeout=120.0)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(b"HEAD /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(65536)
            # (405: the probe is GET only) The whole head arrives, with no body after it.
            assert head.startswith(b"HTTP/1.1 405 ") and head.endswith(b"\r\n\r\n")
            body = b'{"instances": [[[0.1, 0.2, 0.3]]]}'
            request = (
                b"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            sock.sendall(request + request)
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < 2 or not received.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, received
                received += chunk
            assert received.count(b'"predictions"') == 2
    finally:
        server.stop()
