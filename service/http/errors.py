"""Core errors to HTTP answers: one status table per protocol, ``{"error": "..."}`` bodies.

The body shape is the Open Inference Protocol's and TF-Serving's. The tables
differ in one place: a request that does not fit the model (``InvalidInput``) is
a 422 on ``/v1`` and a 400 on V2, as each protocol's servers answer it. Anything
the core did not anticipate is logged with its traceback and answered with a 500
that says so without leaking internals; tests assert bad input never gets there.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.core.errors import (
    BadRequest,
    BodyTimeout,
    Conflict,
    CostLimit,
    Forbidden,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    SequenceConflict,
    SequenceGone,
    SequenceLimit,
    SequenceNotFound,
    ServingError,
)
from service.http.body import json_response

log = logging.getLogger(__name__)

V1_STATUS: dict[type[ServingError], int] = {
    BadRequest: 400,
    Forbidden: 403,
    ModelNotFound: 404,
    Conflict: 409,
    SequenceNotFound: 404,
    SequenceConflict: 409,
    SequenceGone: 410,
    SequenceLimit: 429,
    PayloadTooLarge: 413,
    BodyTimeout: 408,
    InvalidInput: 422,
    CostLimit: 422,
    Overloaded: 503,
    NotReady: 503,
}
"""``/v1`` (and everything outside ``/v2``), as TF-Serving answers."""

V2_STATUS: dict[type[ServingError], int] = {**V1_STATUS, InvalidInput: 400, CostLimit: 422}
"""The Open Inference Protocol: a request that does not fit the model is a 400."""


NOT_READY_RETRY_S = 1
"""``Retry-After`` of a 503 for a model version that is loading or draining."""


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status=status, headers=headers)


def status_of(exc: ServingError, table: dict[type[ServingError], int] = V1_STATUS) -> int:
    for kind in type(exc).__mro__:
        if kind in table:
            return table[kind]
    return 500


def table_for(path: str) -> dict[type[ServingError], int]:
    """The status table of the protocol that ``path`` belongs to."""
    return V2_STATUS if path.startswith("/v2/") else V1_STATUS


def response_for(request: Request, exc: Exception) -> Response:
    """The answer to any exception a route raised: the one place errors become HTTP."""
    if isinstance(exc, ServingError):
        headers = None
        if isinstance(exc, Overloaded | NotReady):  # both pass: say when to come back
            headers = {"Retry-After": str(getattr(exc, "retry_after_s", NOT_READY_RETRY_S))}
        elif isinstance(exc, BodyTimeout):  # the rest of a slow body is not waited for
            headers = {"Connection": "close"}
        status = status_of(exc, table_for(request.scope["path"]))
        return error_response(status, exc.message, headers)
    if isinstance(exc, StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):
        return error_response(422, describe_validation_errors(exc.errors()))
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


async def _handle(request: Request, exc: Exception) -> Response:
    return response_for(request, exc)


def describe_validation_errors(errors: object) -> str:
    """pydantic's error list as one readable line: ``field.path: message; ...``."""
    parts = []
    for err in errors if isinstance(errors, list | tuple) else []:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"


def install(app: FastAPI) -> None:
    for kind in (ServingError, StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(kind, _handle)
