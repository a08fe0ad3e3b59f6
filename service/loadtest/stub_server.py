"""A trivial HTTP/1.1 server that answers every request at once: to price the client.

Run against this stub, a load run's CPU time is (almost) all the client's own,
so ``client_cpu_us_per_request`` shows what lstm-bench takes away from a real
server sharing the machine. ``python -m service.loadtest.stub_server --port 8999``
(loopback only). It finds each request's end itself (the blank line after the head,
then ``Content-Length`` bytes): no parser, so that it costs as little as possible.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

RESPONSE_BODY = b'{"predictions":[{"label":"stub","probabilities":[1.0]}]}'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(RESPONSE_BODY)).encode() + b"\r\n\r\n" + RESPONSE_BODY
)


class StubProtocol(asyncio.Protocol):
    """Reads requests with Content-Length bodies and answers each with ``RESPONSE``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is duck-typed

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            at = head.find(b"content-length:")
            length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
            if len(self._buffer) < end + 4 + length:
                return
            del self._buffer[: end + 4 + length]
            assert self._transport is not None
            self._transport.write(RESPONSE)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubProtocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8999)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.run(serve(args.port))
    except ImportError:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
