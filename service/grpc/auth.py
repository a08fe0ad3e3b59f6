"""API keys over gRPC: ``authorization: Bearer <key>`` metadata, REST's keys and scopes.

The key table and its constant-time lookup are ``service/keys.py``'s, so a key means
the same on both ports. No key, or one that is not
valid: ``UNAUTHENTICATED``; a key without the call's scope: ``PERMISSION_DENIED``.
Refusals are logged (``service.security``, never the key) and counted in
``lstm_requests_refused_total`` as REST's are.
"""

from __future__ import annotations

import logging
from typing import Any, NoReturn

import grpc

from service.keys import REFUSED
from service.keys import Keys as KeyTable
from service.settings import Settings

INFERENCE = "inference"
ADMIN = "admin"

log = logging.getLogger("service.security")


class Keys:
    """The server's keys; ``check`` returns the caller's key id ("" when keys are off)."""

    def __init__(self, settings: Settings) -> None:
        self.table = KeyTable(settings)
        self.enabled = self.table.enabled

    async def check(self, context: grpc.aio.ServicerContext[Any, Any], scope: str) -> str:
        if not self.enabled:
            return ""
        token = b""
        for name, value in context.invocation_metadata() or ():
            if name == "authorization":
                text = value.decode("latin-1") if isinstance(value, bytes) else value
                if text[:7].lower() == "bearer ":
                    token = text[7:].strip().encode("latin-1")
        if not token:
            await self._refuse(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "this API needs a key: send the metadata authorization: Bearer <key>",
                "missing_key",
            )
        key = self.table.find(token)
        if key is None:
            await self._refuse(
                context, grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid", "invalid_key"
            )
        if scope not in key.scopes:
            await self._refuse(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"key {key.id!r} has scopes {', '.join(sorted(key.scopes))}; this call needs "
                f"the {scope} scope",
                "scope",
                key.id,
            )
        return key.id

    @staticmethod
    async def _refuse(
        context: grpc.aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        message: str,
        reason: str,
        key_id: str | None = None,
    ) -> NoReturn:
        REFUSED.labels(reason).inc()
        log.warning(
            "refused gRPC call from %s: %s %s",
            context.peer(),
            code.name,
            message,
            extra={
                "client": context.peer(),
                "status": code.name,
                "reason": reason,
                "key_id": key_id,
            },
        )
        await context.abort(code, message)
        raise AssertionError("unreachable")
