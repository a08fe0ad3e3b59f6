"""Core errors to gRPC status codes: gRPC's table beside HTTP's (``http/errors.py``).

The message is the core's, word for word as REST sends it in ``{"error": ...}``.
A client's mistake is never ``UNKNOWN`` or ``INTERNAL``:

==========================  ======  ===================  ====================================
core error                  REST    gRPC                 why
==========================  ======  ===================  ====================================
BadRequest, InvalidInput    400     INVALID_ARGUMENT     the request itself is wrong
CostLimit                   422     RESOURCE_EXHAUSTED   a configured bound, named in the text
PayloadTooLarge             413     RESOURCE_EXHAUSTED   (grpc's own message size check too)
SequenceLimit               429     RESOURCE_EXHAUSTED   every sequence slot is taken
ModelNotFound               404     NOT_FOUND
SequenceNotFound            404     NOT_FOUND
SequenceConflict            409     ABORTED              a concurrency conflict (gRPC's own
                                                         guidance for a failed sequencer
                                                         check): re-read the offset, retry
SequenceGone                410     FAILED_PRECONDITION  the version went: start over
Conflict                    409     FAILED_PRECONDITION  e.g. the last serving model
Forbidden                   403     FAILED_PRECONDITION  the server's mode forbids it (model
                                                         control), whoever asks
DeadlineExceeded            503     DEADLINE_EXCEEDED    the request's deadline passed
Overloaded, NotReady,       503     UNAVAILABLE          retry later (``retry-after`` in the
StoreUnavailable                                         trailing metadata, seconds)
BodyTimeout                 408     DEADLINE_EXCEEDED    (HTTP only in practice)
==========================  ======  ===================  ====================================

Keys: UNAUTHENTICATED (no key, or not a valid one), PERMISSION_DENIED (the key lacks
the call's scope), as REST's 401 and 403.
"""

from __future__ import annotations

from typing import TypeAlias

import grpc

from service.core.errors import (
    BadRequest,
    BodyTimeout,
    Conflict,
    CostLimit,
    DeadlineExceeded,
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

Code: TypeAlias = grpc.StatusCode

GRPC_STATUS: dict[type[ServingError], Code] = {
    BadRequest: Code.INVALID_ARGUMENT,
    InvalidInput: Code.INVALID_ARGUMENT,
    CostLimit: Code.RESOURCE_EXHAUSTED,
    PayloadTooLarge: Code.RESOURCE_EXHAUSTED,
    SequenceLimit: Code.RESOURCE_EXHAUSTED,
    ModelNotFound: Code.NOT_FOUND,
    SequenceNotFound: Code.NOT_FOUND,
    SequenceConflict: Code.ABORTED,
    SequenceGone: Code.FAILED_PRECONDITION,
    Conflict: Code.FAILED_PRECONDITION,
    Forbidden: Code.FAILED_PRECONDITION,
    DeadlineExceeded: Code.DEADLINE_EXCEEDED,
    BodyTimeout: Code.DEADLINE_EXCEEDED,
    Overloaded: Code.UNAVAILABLE,
    NotReady: Code.UNAVAILABLE,
}

RETRY_AFTER = "retry-after"
NOT_READY_RETRY_S = 1


def code_of(exc: ServingError) -> Code:
    """The status of a core error: its own class's, else its nearest base class's."""
    for kind in type(exc).__mro__:
        if kind in GRPC_STATUS:
            code: Code = GRPC_STATUS[kind]
            return code
    return Code.INTERNAL


def trailers_of(exc: ServingError) -> tuple[tuple[str, str], ...]:
    """``retry-after`` for what passes (overload, loading), as REST's header."""
    if isinstance(exc, Overloaded | NotReady) and not isinstance(exc, DeadlineExceeded):
        return ((RETRY_AFTER, str(getattr(exc, "retry_after_s", NOT_READY_RETRY_S))),)
    return ()
