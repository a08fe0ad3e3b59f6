"""Who may call what: API keys and scopes, and the cross-site checks, as one pure ASGI layer.

It sits between ``RequestObserver`` and ``HotRoutes`` (``app.py``) because the
hot routes skip FastAPI's middleware: anything here covers every route, the
WebSocket handshakes included. In order, for each HTTP request or handshake:

1. **Host** allow-list (DNS rebinding): a page on ``evil.example`` that rebinds its
   name to 127.0.0.1 still sends ``Host: evil.example``. On a loopback bind only
   loopback names pass by default (setting ``allowed_hosts``). 400 otherwise.
2. **Origin**: a browser names the page that makes a cross-site request (POSTs,
   WebSockets). Same-origin pages (the page at ``/ui/``) and the
   ``cors_allow_origins`` pass, any other Origin gets 403: no form post or
   cross-origin WebSocket from a page the user happens to open.
3. **API key** (``Authorization: Bearer <secret>``, or for browser WebSockets the
   subprotocol ``bearer.<secret>``): 401 with ``WWW-Authenticate`` when missing or
   wrong, 403 when the key lacks the route's scope (``inference``; ``admin`` for
   the model-control API). Keys are read and compared by ``service/keys.py`` (constant
   time, never logged: logs name the key's id).
4. **Content-Type** of POSTs: JSON or binary only (415), so no ``text/plain`` or
   form body, the kinds a page may send cross-site without a preflight.

Every refusal is logged (``service.security``) with the client address and counted
(``lstm_requests_refused_total{reason}``). Health probes need no key; ``/metrics``
needs one only with ``metrics_auth``; the page's static files need none (the
page asks for the key and sends it on its own calls), nor do the API's docs
(``/docs``, ``/redoc``, ``/openapi.json`` and their assets: they hold no secret, and
Swagger UI's Authorize button sends the key on every call made from it).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote_to_bytes

import orjson
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.paths import METRICS, PROBES
from service.keys import LOOPBACK_NAMES, REFUSED, ApiKey, Keys, is_loopback
from service.settings import Settings

SUBPROTOCOL = "lstm-serving"
"""The WebSocket subprotocol the page offers; the handshake answers with it."""
BEARER_SUBPROTOCOL = "bearer."
_OPEN_PATHS = PROBES | {"/", "/ui", "/ui/"}
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""The API's documents (Swagger UI, ReDoc, the OpenAPI document): no secrets in them, and a
browser cannot send a bearer token on a page load, so they are open; every call made from
them still needs its key."""
DOCS_ASSETS_PREFIX = "/docs/assets/"
"""Swagger UI's and ReDoc's static files (``http/openapi.py``'s ``DOCS_ASSETS``): open too."""
_ALLOWED_TYPES = frozenset({"application/json", "application/octet-stream"})

KEY_PARAMETERS = frozenset({"token", "api_key", "apikey", "key", "access_token"})
"""Query parameters that carry a key: refused, since URLs end up in logs and caches."""


def key_in_query(query_string: bytes) -> str | None:
    """The name of a key-carrying parameter in a query string, if it has one."""
    if not query_string:
        return None
    for pair in query_string.split(b"&"):
        name = unquote_to_bytes(pair.split(b"=", 1)[0]).decode("latin-1").strip().lower()
        if name in KEY_PARAMETERS:
            return name
    return None


log = logging.getLogger("service.security")


def required_scope(path: str, metrics_auth: bool) -> str | None:
    """The scope a path needs; None for what stays open (probes, the page's and the docs'
    files)."""
    if path in _OPEN_PATHS or (path.startswith("/ui/") and path.count("/") == 2):
        return None
    if path in DOCS_PATHS or (path.startswith(DOCS_ASSETS_PREFIX) and ".." not in path):
        return None
    if path == METRICS:
        return "inference" if metrics_auth else None
    if path.startswith("/v2/repository"):
        return "admin"
    return "inference"


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names served; None: any."""
    if settings.allowed_hosts:
        names = {h.lower() for h in settings.allowed_hosts}
        return None if "*" in names else frozenset(names)
    return LOOPBACK_NAMES if is_loopback(settings.host) else None


def host_name(value: str) -> str:
    """``Host`` without its port (``[::1]:8000`` -> ``::1``)."""
    if value.startswith("["):
        return value[1 : value.find("]")].lower()
    return value.rsplit(":", 1)[0].lower() if value.count(":") == 1 else value.lower()


def caller(connection: HTTPConnection) -> str:
    """The id of the key that made the request ("" when keys are off): what owns its state."""
    return str(connection.scope.get("state", {}).get("key_id", ""))


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class Refusal(Exception):
    """A request this layer answers itself: status, message, reason label, extra headers."""

    def __init__(
        self, status: int, message: str, reason: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.headers = list(headers)


class Security:
    """Pure ASGI: Host, Origin, API key and Content-Type checks for every route."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.keys = Keys(settings)
        self.enabled = self.keys.enabled
        self.hosts = allowed_hosts(settings)
        self.origins = frozenset(o.rstrip("/") for o in settings.cors_allow_origins)
        self.metrics_auth = settings.metrics_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            cors = self.check(scope)
        except Refusal as refusal:
            self._log(scope, refusal)
            await self._refuse(scope, receive, send, refusal)
            return
        if kind == "websocket":
            send = _with_subprotocol(scope, send)
        elif cors is not None:
            if scope["method"] == "OPTIONS":
                await _preflight(send, cors)
                return
            send = _with_cors(send, cors)
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> bytes | None:
        """Raise Refusal, or return the allowed cross-origin Origin (None: same origin)."""
        host = origin = authorization = content_type = b""
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
            elif name == b"authorization":
                authorization = value
            elif name == b"content-type":
                content_type = value
        host_text = host.decode("latin-1")
        if host and self.hosts is not None and host_name(host_text) not in self.hosts:
            raise Refusal(
                400,
                f"Host {host_text!r} is not served here (DNS rebinding is refused); allowed "
                f"hosts: {', '.join(sorted(self.hosts))} (setting allowed_hosts)",
                "host",
            )
        if (parameter := key_in_query(scope.get("query_string", b""))) is not None:
            raise Refusal(
                400,
                f"keys are not accepted in the URL (query parameter {parameter!r}): URLs are "
                "logged and cached; send Authorization: Bearer <key> (WebSockets may offer "
                "the subprotocol bearer.<key>)",
                "key_in_url",
            )
        cors = self._check_origin(origin, host_text)
        if cors is not None and scope.get("method") == "OPTIONS":
            return cors  # a preflight carries no credentials; the real request will
        path = scope["path"]
        needed = required_scope(path, self.metrics_auth) if self.enabled else None
        if needed is not None:
            key = self._authenticate(scope, authorization)
            if needed not in key.scopes:
                raise Refusal(
                    403,
                    f"key {key.id!r} has scopes {', '.join(sorted(key.scopes))}; {path} needs "
                    f"the {needed} scope",
                    "scope",
                )
        if scope["type"] == "http" and scope["method"] == "POST" and content_type:
            media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
            if media not in _ALLOWED_TYPES and not media.endswith("+json"):
                raise Refusal(
                    415,
                    f"Content-Type {media!r} is not accepted: send application/json, or "
                    "application/octet-stream for binary tensors",
                    "content_type",
                )
        return cors

    def _check_origin(self, origin: bytes, host: str) -> bytes | None:
        if not origin:
            return None
        text = origin.decode("latin-1").rstrip("/")
        if text.split("://", 1)[-1] == host:
            return None  # same origin: the page at /ui/
        if text in self.origins:
            return origin
        raise Refusal(
            403,
            f"Origin {text!r} may not call this API: cross-site requests are refused unless "
            "the origin is in the setting cors_allow_origins",
            "origin",
        )

    def _authenticate(self, scope: Scope, authorization: bytes) -> ApiKey:
        token = b""
        if authorization[:7].lower() == b"bearer ":
            token = authorization[7:].strip()
        elif scope["type"] == "websocket":
            for protocol in scope.get("subprotocols", []):
                if protocol.startswith(BEARER_SUBPROTOCOL):
                    token = protocol[len(BEARER_SUBPROTOCOL) :].encode()
        if not token:
            raise Refusal(
                401,
                "this API needs a key: send Authorization: Bearer <key> (WebSockets may offer "
                "the subprotocol bearer.<key>)",
                "missing_key",
                [("www-authenticate", 'Bearer realm="lstm-serving"')],
            )
        found = self.keys.find(token)
        if found is None:
            raise Refusal(
                401,
                "the API key is not valid",
                "invalid_key",
                [("www-authenticate", 'Bearer realm="lstm-serving", error="invalid_token"')],
            )
        scope.setdefault("state", {})["key_id"] = found.id
        return found

    def _log(self, scope: Scope, refusal: Refusal) -> None:
        REFUSED.labels(refusal.reason).inc()
        log.warning(
            "refused %s %s: %d %s",
            scope.get("method", "WEBSOCKET"),
            scope["path"],
            refusal.status,
            refusal.message,
            extra={
                "client": client_address(scope),
                "path": scope["path"],
                "status": refusal.status,
                "reason": refusal.reason,
                "key_id": scope.get("state", {}).get("key_id"),
            },
        )

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
        body = orjson.dumps({"error": refusal.message})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        headers += [(k.encode(), v.encode()) for k, v in refusal.headers]
        if scope["type"] == "http":
            start = {"type": "http.response.start", "status": refusal.status}
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            start = {"type": "websocket.http.response.start", "status": refusal.status}
            await send({**start, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # the server cannot send a body: a bare 403
            await send({"type": "websocket.close", "code": 1008})


def _with_subprotocol(scope: Scope, send: Send) -> Send:
    """Answer a handshake that offered ``lstm-serving`` with it (the browser insists)."""
    if SUBPROTOCOL not in scope.get("subprotocols", []):
        return send

    async def accept_with_subprotocol(message: Message) -> None:
        if message["type"] == "websocket.accept" and not message.get("subprotocol"):
            message = {**message, "subprotocol": SUBPROTOCOL}
        await send(message)

    return accept_with_subprotocol


_CORS_HEADERS = [
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (
        b"access-control-allow-headers",
        b"authorization, content-type, content-encoding, inference-header-content-length",
    ),
    (b"access-control-max-age", b"600"),
]


async def _preflight(send: Send, origin: bytes) -> None:
    headers = [(b"access-control-allow-origin", origin), (b"vary", b"origin"), *_CORS_HEADERS]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


def _with_cors(send: Send, origin: bytes) -> Send:
    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"access-control-allow-origin", origin)]
            message = {**message, "headers": [*headers, (b"vary", b"origin")]}
        await send(message)

    return send_with_cors
