"""Errors the core raises. They carry meaning, not HTTP: ``http/errors.py`` maps them.

Every message says what was wrong and what was expected, because it reaches the
client verbatim.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error the service turns into a client-facing answer."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(ServingError):
    """No such model, or no such version of it, is loaded."""


class InvalidInput(ServingError):
    """The request is well-formed but does not fit the model (shape, values, limits)."""


class CostLimit(InvalidInput):
    """The request fits the model but would cost more than a configured bound allows
    (real timesteps, padded cells of a call, decoded size): 422 on both protocols."""


class BadRequest(ServingError):
    """The request cannot be parsed at all (body not JSON, malformed binary framing)."""


class PayloadTooLarge(ServingError):
    """The body is over the configured size."""


class BodyTimeout(ServingError):
    """The client did not send the whole body in time (a stalled or very slow upload)."""


class Overloaded(ServingError):
    """The queue is full or the request waited past its deadline: try again later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Overloaded):
    """The request's deadline passed before it was answered; its queued work was dropped."""


class SequenceNotFound(ServingError):
    """A continuing chunk named a sequence that is not live (never started, ended, evicted)."""


class SequenceGone(ServingError):
    """A chunk continued a sequence whose model version was retired (unloaded, or replaced
    by a rollout): its state went with the version, so retrying cannot help (410)."""


class SequenceLimit(ServingError):
    """Every sequence slot (in total, or the caller's key's share) is taken (429)."""


class SequenceConflict(ServingError):
    """A chunk's ``sequence_offset`` does not match the timesteps its sequence has
    consumed, or another chunk advanced the sequence while this one ran (409): applying
    it could step the state twice, so it changes nothing."""


class StoreUnavailable(Overloaded):
    """The shared sequence store (Redis) did not answer in time: server-held sequences
    wait for it (503 with Retry-After); stateless requests are unaffected."""


class NotReady(ServingError):
    """The model exists but is not ready to serve (loading, unloading, warming up)."""


class Forbidden(ServingError):
    """The server is configured not to do this (model control off), whoever asks."""


class Conflict(ServingError):
    """The request would leave the server in a state it must not reach (no model serving)."""
