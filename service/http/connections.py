"""Every connection has a clock and a size: uvicorn's httptools protocol, bounded.

uvicorn bounds an idle keep-alive connection (its 5 s timer) but not a client
that opens a connection and sends nothing, or a request head one byte at a
time, or a header of many megabytes: 2,048 such connections held every slot of
``limit_concurrency`` and the server answered nothing else, probes included.
``BoundedHttpProtocol`` (passed to uvicorn as ``http=``) adds, per connection:

- **a request-head clock** (``head_timeout_s``, nginx's ``client_header_timeout``):
  a deadline set when the connection opens and again when a response completes
  on a keep-alive connection, cleared only once a whole request head has
  arrived. Bytes arriving do not move it, so a trickle cannot keep a connection
  forever. Past it (checked by one sweep per event loop, ``sweeper.py``) a client
  that sent part of a head gets a 408, and the connection closes.
- **a head size limit** (``max_header_bytes``): a request line plus headers over
  it get a 431 and the connection closes, before more of it is buffered.
- **the connection cap, in JSON, with precedence for real requests**: at
  ``max_connections`` a complete request head first evicts the oldest
  connection that has not sent one (it holds nothing but a socket), and only
  when every connection is busy gets a ``{"error": ...}`` 503 with Retry-After.
  The probe and metrics paths (``RESERVED_PATHS``) are always served, so an
  orchestrator does not restart a pod that is merely being flooded.

- **a fair share per client address** (``max_connections_per_address``): a request
  head from an address that already has that many requests in flight (connections
  with an unfinished request) gets a JSON 503 and the connection closes, so one
  address cannot hold every busy slot of the cap (idle ones give way anyway).
  Behind a proxy listed in ``trusted_proxies`` the client is the X-Forwarded-For
  address.
- **a write clock and ceilings on unsent answers** (``write_timeout_s``,
  ``max_unsent_bytes_per_connection``, ``max_unsent_bytes``): a connection whose
  client takes none of its answer for ``write_timeout_s`` is closed (aborted: its
  unsent bytes are freed at once), as is one holding more than
  ``max_unsent_bytes_per_connection`` unsent whose client took none of it since the
  previous sweep; and when the answers waiting for readers exceed
  ``max_unsent_bytes`` in total, the connections stalled longest are closed until
  they fit (all checked by the sweep).

The per-request cost is a deadline set and cleared, a byte count and the cap
check: about 3 µs over uvicorn's own protocol (measured; see the README).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import defaultdict
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.core import cpu_budget
from service.core.cpu_budget import LOOP
from service.http.body import BODY_COMPLETE
from service.http.coalesce import HeadWithBody
from service.http.paths import OBSERVABILITY_PATHS
from service.http.sweeper import Sweeper
from service.settings import Settings

RESERVED_PATHS = frozenset(path.encode() for path in OBSERVABILITY_PATHS)
"""Served even at the connection cap: liveness, readiness and metrics stay observable."""

CAP_RETRY_AFTER_S = 1


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def bounded_protocol(settings: Settings) -> type[BoundedHttpProtocol]:
    """uvicorn's ``http=`` option: the protocol class bound to the server's settings
    (uvicorn builds one protocol per connection, from the class)."""
    proxies = tuple(ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
    return type(
        "BoundedHttpProtocol", (BoundedHttpProtocol,), {"settings": settings, "proxies": proxies}
    )


log = logging.getLogger("service.connections")


def _is_trusted_proxy(address: str, networks: Networks) -> bool:
    if not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def forwarded_client(headers: list[tuple[bytes, bytes]], peer: str, networks: Networks) -> str:
    """The client behind trusted proxies: X-Forwarded-For's rightmost untrusted address."""
    for name, value in headers:
        if name == b"x-forwarded-for":
            for hop in reversed(value.decode("latin-1").split(",")):
                hop = hop.strip()
                if hop and not _is_trusted_proxy(hop, networks):
                    return hop[:64]
    return peer


_by_address: defaultdict[str, int] = defaultdict(int)
"""Requests in flight (connections with an unfinished request) per client address."""


def _raw_response(status: int, reason: bytes, message: str) -> bytes:
    """A complete ``{"error": ...}`` response that closes the connection (no ASGI involved)."""
    body = orjson.dumps({"error": message})
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


def _unavailable_app(message: str) -> Any:
    body = orjson.dumps({"error": message})

    async def unavailable(scope: Any, receive: Any, send: Any) -> None:
        """The connection cap's answer: JSON like every other error (uvicorn's is text)."""
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(CAP_RETRY_AFTER_S).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return unavailable


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head clock, a head size limit and a
    connection cap that answers in JSON and never shuts out probes or real requests."""

    settings: ClassVar[Settings]
    """Set by ``bounded_protocol``, with ``proxies`` (``trusted_proxies`` parsed once)."""
    proxies: ClassVar[Networks] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.settings
        self.head_timeout_s = settings.head_timeout_s
        self.max_header_bytes = settings.max_header_bytes
        self.connection_cap = settings.max_connections
        # The cap is enforced here, not by uvicorn (which would answer it in plain text).
        self.limit_concurrency = None
        self._served_app = self.app
        self.head_deadline: float | None = None  # loop time; None: no head awaited
        self._head_bytes: int | None = 0  # None: a head is complete, a request is running
        self._discarding = False
        self._unavailable = _unavailable_app(
            f"the server is at its limit of {self.connection_cap} connections per worker; "
            f"retry in {CAP_RETRY_AFTER_S} s"
        )
        self.address_cap = settings.max_connections_per_address
        self._address_unavailable = _unavailable_app(
            f"this client address has {self.address_cap} requests in flight on this worker "
            f"already (its share; setting max_connections_per_address); retry in "
            f"{CAP_RETRY_AFTER_S} s"
        )
        self._address: str | None = None  # the client this connection counts against
        self._behind_proxy = False
        self.write_timeout_s = settings.write_timeout_s
        self.max_unsent_bytes = settings.max_unsent_bytes
        self.max_unsent_per_connection = settings.max_unsent_bytes_per_connection
        self.write_stalled_since: float | None = None  # loop time writing paused
        self.unsent_seen = 0

    # The fair share
    def _count(self, address: str | None) -> None:
        if self._address is not None:
            _by_address[self._address] -= 1
            if _by_address[self._address] <= 0:
                del _by_address[self._address]
        self._address = address
        if address is not None:
            _by_address[address] += 1

    def _over_address_cap(self) -> bool:
        peer = self.client[0] if self.client else ""
        behind = self._behind_proxy
        self._count(forwarded_client(self.headers, peer, self.proxies) if behind else peer)
        return self._address is not None and _by_address[self._address] > self.address_cap

    # The write clock
    def pause_writing(self) -> None:
        super().pause_writing()
        self.write_stalled_since = self.loop.time()
        self.unsent_seen = self.transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.write_stalled_since = None

    def abort_unread(self, why: str) -> None:
        log.warning(
            "closing a connection from %s: %s",
            self.client[0] if self.client else "?",
            why,
            extra={"client": self.client[0] if self.client else None, "reason": "unread"},
        )
        self.write_stalled_since = None
        self._disarm()
        self.transport.abort()  # close() would keep the unsent bytes until they are sent

    # The clock
    def _arm(self) -> None:
        self._head_bytes = 0
        self.head_deadline = self.loop.time() + self.head_timeout_s

    def _disarm(self) -> None:
        self._head_bytes = None
        self.head_deadline = None

    def head_timed_out(self) -> None:
        if self.transport.is_closing():
            self._disarm()
            return
        if self._head_bytes:  # part of a head arrived: say why the connection goes
            self._refuse(
                408,
                b"Request Timeout",
                f"the request head did not arrive within {self.head_timeout_s:g} s",
            )
        else:  # nothing since the connection opened or the last response: just close
            self.transport.close()

    def _refuse(self, status: int, reason: bytes, message: str) -> None:
        self._disarm()
        self.transport.write(_raw_response(status, reason, message))
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request httptools cannot parse, in JSON like every error."""
        self._refuse(400, b"Bad Request", f"{msg.rstrip('.')}: the request is not valid HTTP/1.1")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        Sweeper.watch(self.loop, self.connections, self.head_timeout_s, BoundedHttpProtocol)
        self._behind_proxy = _is_trusted_proxy(self.client[0] if self.client else "", self.proxies)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._count(None)
        self.write_stalled_since = None
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes the socket over (bounded by max_websockets)."""
        self._count(None)
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        budget = cpu_budget.section("http: parse (uvicorn, httptools), start the task", LOOP)
        try:
            self._received(data)
        finally:
            cpu_budget.end(budget)

    def _received(self, data: bytes) -> None:
        if self._head_bytes is not None and not self._discarding:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self._head_bytes is not None
            and self._head_bytes > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse(
                431,
                b"Request Header Fields Too Large",
                f"the request line and headers are over {self.max_header_bytes} bytes; "
                f"the limit is {self.max_header_bytes}",
            )

    def on_headers_complete(self) -> None:
        self._disarm()
        self.app = self._admit()
        previous = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        # Not for an upgrade (no new cycle), nor for HEAD: uvicorn writes no body for it,
        # so a held head would never leave.
        if cycle is not previous and cycle is not None and cycle.scope["method"] != "HEAD":
            cycle.transport = HeadWithBody(self.transport)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self.cycle
        if cycle is not None and not cycle.more_body:  # the whole body is here, unread:
            extensions: dict[str, Any] = cycle.scope.setdefault("extensions", {})
            extensions[BODY_COMPLETE] = True  # no upload clock for it (http/body.py)
        if self._discarding:  # the unread body of an answered request is over
            self._discarding = False
            self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._count(None)  # a client is counted per request in flight
        if self.transport.is_closing() or not self.cycle.response_complete:
            return  # closing, or a pipelined request (the latest cycle) is already running
        self._arm()
        if self.cycle.more_body:
            # Answered before its body was read: uvicorn parses and drops the rest,
            # which is not a request head (no 431 for it) but is on the head clock.
            self._discarding = True
            self._head_bytes = None

    # The cap
    def _admit(self) -> Any:
        """The app for this request: the served one, unless every connection is busy."""
        cap = self.connection_cap
        reserved = self.url.split(b"?", 1)[0] in RESERVED_PATHS
        if self._over_address_cap() and not reserved:
            self.logger.warning(
                "%s has more than %d requests in flight: answering 503",
                self._address,
                self.address_cap,
            )
            return self._address_unavailable
        if cap is None or (len(self.connections) < cap and len(self.tasks) < cap):
            return self._served_app
        if reserved:
            return self._served_app
        if len(self.tasks) < cap and self._evict_idle():
            return self._served_app
        self.logger.warning("connection cap of %d reached: answering 503", cap)
        return self._unavailable

    def _evict_idle(self) -> bool:
        """Close the oldest connection still waiting for a request head, if any."""
        oldest: BoundedHttpProtocol | None = None
        for connection in self.connections:
            if (
                isinstance(connection, BoundedHttpProtocol)
                and connection is not self
                and connection._head_bytes is not None
                and connection.head_deadline is not None
                and (oldest is None or connection.head_deadline < oldest.head_deadline)  # type: ignore[operator]
            ):
                oldest = connection
        if oldest is None:
            return False
        oldest._disarm()
        oldest.connections.discard(oldest)  # its slot is free now, not when the close lands
        oldest.transport.close()
        return True
