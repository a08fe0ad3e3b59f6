"""The repository extension's rules, the same for every protocol: who may change the
model set (``check_mode``), what a load answers when versions fail (``load_model``), and
the audit line every repository call leaves (``audit``).

``http/v2/repository.py`` and ``grpc/servicer.py`` translate their requests into these.
A load or unload applies to the process that answers it: with ``workers > 1`` each
worker process keeps its own repository, and nothing is sent to the others.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.core.errors import BadRequest, Forbidden, ServingError
from service.core.repository import ModelRepository
from service.settings import Settings

audit_log = logging.getLogger("service.audit")


@asynccontextmanager
async def audit(action: str, name: str, key_id: str, client: str) -> AsyncIterator[None]:
    """The audit line of one repository call, from any protocol (gRPC's too)."""
    outcome = "error"
    try:
        yield
        outcome = "ok"
    except ServingError as exc:
        outcome = f"refused: {exc.message}"
        raise
    finally:
        audit_log.info(
            "%s %s by key %s from %s: %s",
            action,
            name or "-",
            key_id or "-",
            client,
            outcome,
            extra={
                "action": action,
                "model": name or None,
                "key_id": key_id or None,
                "client": client,
                "outcome": outcome,
            },
        )


def check_mode(settings: Settings, action: str) -> None:
    """Load and unload only in explicit model control mode."""
    mode = settings.model_control_mode
    if mode != "explicit":
        raise Forbidden(
            f"model {action} is disabled: the server runs with model_control_mode={mode} "
            "(start it with LSTM_SERVE_MODEL_CONTROL_MODE=explicit and call with a key that "
            "has the admin scope)"
        )


async def load_model(repository: ModelRepository, name: str) -> None:
    """Load ``name``'s versions; a BadRequest naming each version that failed and what serves."""
    failed = await repository.load_model(name)
    if failed:
        reasons = "; ".join(f"version {s.version}: {s.reason}" for s in failed)
        serving = ", ".join(str(m.version) for m in repository.versions(name)) or "none"
        raise BadRequest(f"failed to load {name!r} {reasons}; versions serving: {serving}")
