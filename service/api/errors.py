"""Core errors to HTTP answers: one status per kind, ``{"error": "..."}`` bodies.

The body shape is the Open Inference Protocol's and TF-Serving's. Anything the
core did not anticipate is logged with its traceback and answered with a 500
that says so without leaking internals; tests assert bad input never gets there.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.api.responses import json_response
from service.errors import (
    BadRequest,
    BodyTimeout,
    InvalidInput,
    ModelNotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServingError,
)
from service.sequences import SequenceLimit, SequenceNotFound

log = logging.getLogger(__name__)

STATUS: dict[type[ServingError], int] = {
    BadRequest: 400,
    ModelNotFound: 404,
    SequenceNotFound: 404,
    SequenceLimit: 429,
    PayloadTooLarge: 413,
    BodyTimeout: 408,
    InvalidInput: 422,
    Overloaded: 503,
    NotReady: 503,
}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return json_response({"error": message}, status=status, headers=headers)


def status_of(exc: ServingError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def response_for(request: Request, exc: Exception) -> Response:
    """The answer to any exception a route raised: the one place errors become HTTP."""
    if isinstance(exc, ServingError):
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, Overloaded) else None
        return error_response(status_of(exc), exc.message, headers)
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
