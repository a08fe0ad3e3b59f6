"""The OpenAPI document as the server really answers: bodies, responses, every error status.

The ``@hot`` routes read their own bodies (``http/asgi.py``), so FastAPI cannot
see a request model in their signatures and would document them with no body
at all. Their declarations name the pydantic envelope they parse instead
(``request_body``), and ``install`` renders those models into the document's
components: the document shows the very model that validates the request,
while parsing stays on the fast path. Every route lists the statuses it can
answer (``errors``), each with the ``{"error": str}`` body of ``http/errors.py``;
FastAPI's own ``422 HTTPValidationError`` is dropped, because the exception
handlers never answer with that shape.

Bounds that are settings (``max_instances``, ``max_timesteps``) are written into
the request schemas when the document is built, so a client generated from it
knows them too. The examples are requests for the default model
(``basic_motions``, 6 features), so Swagger UI's "Try it out" returns a real
prediction.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.http.errors import V1_STATUS, V2_STATUS
from service.http.security import required_scope
from service.http.v2.codec import HEADER_LENGTH, OCTET_STREAM
from service.settings import Settings

DEFAULT_MODEL = "basic_motions"
"""The model the examples are written for: the one shipped in ``models/repository``."""

BINARY_TENSORS = OCTET_STREAM
"""The binary tensor data extension: a JSON header, then raw little-endian tensor bytes."""

FLOAT32_MAX = 3.4028235677973362e38
"""The largest number that stays finite when cast to float32 (rounding down to its maximum,
3.4028234663852886e38); ``decode_instances`` refuses anything above, which becomes inf."""

DOCS_ASSETS = "/docs/assets"
"""Where Swagger UI's and ReDoc's files (from the ``fastapi-offline`` package) are served."""

SWAGGER_UI_PARAMETERS: dict[str, Any] = {
    # Swagger UI would otherwise show a badge fetched from validator.swagger.io.
    "validatorUrl": None,
    "tryItOutEnabled": True,
    "displayRequestDuration": True,
}


UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1

SEQUENCE_ID_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": UINT64_MAX},
        {"type": "string", "minLength": 1, "maxLength": 128},
        {"type": "null"},
    ]
}
"""``sequence_id`` as ``core/state``'s ``parse_sequence_id`` accepts it (Triton's rule)."""

SEQUENCE_OFFSET_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer", "minimum": 0, "maximum": INT64_MAX}, {"type": "null"}]
}
"""``sequence_offset`` as ``parse_sequence_offset`` accepts it."""

V2_PARAMETERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "the request's parameters; those the server reads are listed, any other "
    "is ignored",
    "properties": {
        "sequence_id": {
            # 0 and "" mean no sequence (Triton's sequence extension).
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": UINT64_MAX},
                {"type": "string", "maxLength": 128},
                {"type": "null"},
            ],
            "description": "the server-held sequence this request continues (0, empty or "
            "absent: none)",
        },
        "sequence_start": {"type": "boolean", "description": "start the sequence afresh"},
        "sequence_end": {"type": "boolean", "description": "end the sequence after this"},
        "sequence_offset": {
            **SEQUENCE_OFFSET_SCHEMA,
            "description": "timesteps of the sequence consumed before this chunk (409 if not "
            "where the sequence stands; the last chunk resent is answered again)",
        },
        "timeout": {
            "type": "integer",
            "minimum": 1,
            "maximum": INT64_MAX,
            "description": "the request's deadline in microseconds, if below the server's",
        },
        "binary_data_output": {
            "type": "boolean",
            "description": "send outputs that do not say otherwise as binary data",
        },
    },
    "additionalProperties": True,
}
"""V2's ``parameters`` as ``http/v2/schema.py``'s ``InferenceRequestBody`` reads them."""


class ErrorBody(BaseModel):
    """Every error answer: what was wrong and what was expected (``http/errors.py``)."""

    error: str


ERROR_STATUSES: dict[int, str] = {
    400: "Malformed request: not JSON, an unknown field, or (V2) a request that does not "
    "fit the model",
    404: "Unknown model, version or sequence",
    408: "The body did not arrive within LSTM_SERVE_REQUEST_TIMEOUT_S",
    413: "Body over LSTM_SERVE_MAX_BODY_BYTES",
    422: "Well-formed, but does not fit the model (features, lengths, limits)",
    410: "The server-held sequence's model version was unloaded: start the sequence again",
    429: "Too many live sequences (LSTM_SERVE_MAX_SEQUENCES, or the key's "
    "LSTM_SERVE_MAX_SEQUENCES_PER_KEY)",
    401: "No API key, or a wrong one, while keys are on (with WWW-Authenticate)",
    403: "The key lacks the route's scope, the Origin is not allowed, or model control is "
    "off (LSTM_SERVE_MODEL_CONTROL_MODE)",
    409: "A chunk's sequence_offset is not where its sequence stands, or another chunk "
    "advanced the sequence meanwhile (nothing applied); or, model control, the change would "
    "leave the server serving no model",
    415: "A POST body that is neither JSON nor binary tensor data",
    503: "The model is loading or unloading, or its queue is full (with Retry-After)",
}
"""The statuses the core's errors map to (``V1_STATUS``/``V2_STATUS``), as documented."""

# Every status a core error can become on each protocol's inference route: derived from
# the tables that answer them, so the document cannot drift from what is answered.
GUARD_ERRORS = (401, 403, 415)
"""What the security layer (``http/security.py``) can answer before any route runs."""
PREDICT_ERRORS = tuple(sorted(set(V1_STATUS.values()) | set(GUARD_ERRORS)))
INFER_ERRORS = tuple(sorted(set(V2_STATUS.values()) | set(GUARD_ERRORS)))
MODEL_ERRORS = (401, 403, 404, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route that can answer ``statuses``, each with ``ErrorBody``.

    A status added to the tables later (401/403 with authentication, say) is
    documented with its standard phrase until ``ERROR_STATUSES`` says more.
    """
    return {
        s: {"model": ErrorBody, "description": ERROR_STATUSES.get(s, HTTPStatus(s).phrase)}
        for s in statuses
    }


_REQUEST_MODELS: dict[str, type[BaseModel]] = {}
"""Envelopes named by ``request_body``; ``install`` renders them into the components."""


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def request_body(
    model: type[BaseModel], examples: dict[str, Any], binary: str | None = None
) -> dict[str, Any]:
    """``openapi_extra`` for a ``@hot`` route whose endpoint validates its body with ``model``.

    ``examples`` are named request bodies; ``binary``, when given, documents the
    binary tensor data extension as a content type of its own.
    """
    _REQUEST_MODELS[model.__name__] = model
    content: dict[str, Any] = {
        "application/json": {
            "schema": _ref(model),
            "examples": {k: {"summary": k, "value": v} for k, v in examples.items()},
        }
    }
    extra: dict[str, Any] = {"requestBody": {"required": True, "content": content}}
    if binary is not None:
        content[BINARY_TENSORS] = {
            "schema": {"type": "string", "format": "binary", "description": binary}
        }
        extra["parameters"] = [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "description": "with a binary body: the size of its JSON part in bytes (the "
                "JSON part cannot be empty, so at least 1)",
                "schema": {"type": "integer", "minimum": 1},
            }
        ]
    return extra


def binary_answer(model: type[BaseModel], description: str) -> dict[int | str, dict[str, Any]]:
    """The 200 of a route that answers JSON, or with binary outputs the binary extension."""
    return {
        200: {
            "model": model,
            "description": description,
            "content": {
                BINARY_TENSORS: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "the JSON answer, then each binary output's bytes",
                    }
                }
            },
            "headers": {
                HEADER_LENGTH: {
                    "description": "with binary outputs: the size of the JSON part in bytes",
                    "schema": {"type": "string"},
                }
            },
        }
    }


def json_answer(model: Any, description: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entry for a 200 answered with ``model`` (the routes build raw responses)."""
    return {200: {"model": model, "description": description}}


def _bounded_instances(settings: Settings) -> dict[str, Any]:
    """``instances`` as ``decode_instances`` reads it, with the limits in force."""
    number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": settings.max_instances,
        "description": "sequences (lengths may differ), each a list of timesteps, each a list "
        "of the model's features (6 for basic_motions, in raw units); finite float32 numbers",
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": settings.max_timesteps,
            "items": {"type": "array", "minItems": 1, "items": number},
        },
    }


def _drop_validation_errors(document: dict[str, Any]) -> None:
    """FastAPI's default 422 (``HTTPValidationError``) never comes: ``http/errors.py`` answers."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.get("responses", {})
            schema = (responses.get("422", {}).get("content", {}).get("application/json", {})).get(
                "schema", {}
            )
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del responses["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)


def _describe_path_parameters(document: dict[str, Any]) -> None:
    """Examples for ``{name}`` and ``{version}``, and the version's form (``parse_version``)."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "path":
                    continue
                if parameter["name"] == "name":
                    parameter["example"] = DEFAULT_MODEL
                    parameter["description"] = "a model in the repository"
                elif parameter["name"] == "version":
                    parameter["example"] = "1"
                    parameter["description"] = "a version of the model: a positive integer"


BEARER = "bearer"
"""The security scheme's name: an API key sent as ``Authorization: Bearer <key>``."""

SECURITY_SCHEME: dict[str, Any] = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key (LSTM_SERVE_API_KEYS: id:scopes:secret), sent as "
    "Authorization: Bearer <secret>. Scopes: inference for /v1 and V2, admin for "
    "/v2/repository. Needed only when the server checks keys (LSTM_SERVE_AUTH); the probes, "
    "these docs and (unless LSTM_SERVE_METRICS_AUTH) /metrics are open.",
}


def keys_checked(settings: Settings) -> bool:
    """Whether this server checks keys (``http/security.py``'s ``check_exposure``, which
    has already refused every configuration where it would not say so)."""
    return settings.auth != "off" and bool(settings.api_keys or settings.api_keys_file)


def _declare_security(document: dict[str, Any], settings: Settings) -> None:
    """The bearer scheme (Swagger UI's Authorize button), and each operation's need of it.

    With keys checked, an operation that needs a key (``required_scope``) says so and
    every open one says ``security: []``; with keys off no operation needs one, and the
    document says that too (a schema tester then expects no 401).
    """
    document.setdefault("components", {})["securitySchemes"] = {BEARER: SECURITY_SCHEME}
    checked = keys_checked(settings)
    for path, operations in document.get("paths", {}).items():
        scope = required_scope(path, settings.metrics_auth)
        for operation in operations.values():
            if checked and scope is not None:
                operation["security"] = [{BEARER: []}]
                operation["description"] = (
                    operation.get("description", "") + f"\n\nNeeds an API key with the {scope} "
                    "scope."
                ).strip()
            else:
                operation["security"] = []


def build_document(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document, completed with the ``@hot`` bodies and the real error answers."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
        servers=app.servers,
    )
    _drop_validation_errors(document)
    _describe_path_parameters(document)
    _declare_security(document, settings)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    _, rendered = models_json_schema(
        [(model, "validation") for model in _REQUEST_MODELS.values()],
        ref_template="#/components/schemas/{model}",
    )
    schemas.update(rendered.get("$defs", {}))
    predict = schemas.get("PredictRequest")
    if predict is not None:
        predict["properties"]["instances"] = _bounded_instances(settings)
    infer = schemas.get("InferenceRequestBody")
    if infer is not None:
        infer["properties"]["inputs"]["maxItems"] = 2  # x and, optionally, lengths
        infer["properties"]["parameters"] = V2_PARAMETERS_SCHEMA
    return document


def install(app: FastAPI, settings: Settings) -> None:
    """Serve ``build_document`` at ``/openapi.json``, built once on first request."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_document(app, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
