"""The same requests as ``lstm-bench``, for people who prefer locust.

    LSTM_BENCH_PROTOCOL=v2-binary LSTM_BENCH_BATCH=4 \\
        locust -f service/loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 16 -r 16 -t 30s

Environment: ``LSTM_BENCH_PROTOCOL`` (v1, v2-json, v2-binary; default v1),
``LSTM_BENCH_MODEL`` (basic_motions), ``LSTM_BENCH_BATCH`` (1),
``LSTM_BENCH_TIMESTEPS`` (50), ``LSTM_BENCH_FEATURES`` (default: read from
``GET /v2/models/{model}``), ``LSTM_BENCH_RETURN_SEQUENCES`` (0/1),
``LSTM_BENCH_SEED`` (0), ``LSTM_BENCH_ALLOW_REMOTE`` (0/1: a non-loopback
``--host`` is refused without it). Bodies come from ``payloads.py``, so locust
and lstm-bench send byte-identical requests. Locust's own per-request cost is
far higher than lstm-bench's; on a machine shared with the server, prefer
lstm-bench for figures and use this for locust's UI and ramp-up shapes.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from typing import Any

from locust import FastHttpUser, events, task

from service.loadtest.payloads import Payload, build_payloads
from service.loadtest.spec import PROTOCOLS, Protocol, SpecError, parse_target

log = logging.getLogger(__name__)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes")


def _protocol() -> Protocol:
    value = os.environ.get("LSTM_BENCH_PROTOCOL", "v1")
    for protocol in PROTOCOLS:
        if value == protocol:
            return protocol
    raise SpecError(f"LSTM_BENCH_PROTOCOL={value!r} is not one of {', '.join(PROTOCOLS)}")


MODEL = os.environ.get("LSTM_BENCH_MODEL", "basic_motions")
PROTOCOL = _protocol()
BATCH = int(os.environ.get("LSTM_BENCH_BATCH", "1"))
TIMESTEPS = int(os.environ.get("LSTM_BENCH_TIMESTEPS", "50"))
SEED = int(os.environ.get("LSTM_BENCH_SEED", "0"))
RETURN_SEQUENCES = _env_flag("LSTM_BENCH_RETURN_SEQUENCES")

_payloads: list[Payload] = []


def _refuse_remote(environment: Any, **_: Any) -> None:
    """Load goes to loopback only, as with lstm-bench, unless explicitly allowed."""
    try:
        parse_target(environment.host or "", _env_flag("LSTM_BENCH_ALLOW_REMOTE"))
    except SpecError as exc:
        log.error("%s (set LSTM_BENCH_ALLOW_REMOTE=1 to allow it)", exc)
        environment.process_exit_code = 2
        if environment.runner is not None:
            environment.runner.quit()


events.test_start.add_listener(_refuse_remote)  # type: ignore[no-untyped-call]


class LstmUser(FastHttpUser):
    """Posts the pre-built bodies round-robin, back to back (no wait time)."""

    def on_start(self) -> None:
        if not _payloads:
            built = build_payloads(
                PROTOCOL,
                MODEL,
                batch=BATCH,
                timesteps=TIMESTEPS,
                features=self._features(),
                return_sequences=RETURN_SEQUENCES,
                seed=SEED,
            )
            if not _payloads:  # another user may have built them while this one waited
                _payloads.extend(built)
        self._cycle: Iterator[Payload] = itertools.cycle(_payloads)

    def _features(self) -> int:
        given = os.environ.get("LSTM_BENCH_FEATURES")
        if given:
            return int(given)
        meta = self.client.get(f"/v2/models/{MODEL}", name="model metadata").json()
        shapes = [t["shape"] for t in meta.get("inputs", []) if t.get("name") == "x"]
        if not shapes:
            raise SpecError(f"GET /v2/models/{MODEL} lists no input 'x'; set LSTM_BENCH_FEATURES")
        return int(shapes[0][-1])

    @task
    def infer(self) -> None:
        payload = next(self._cycle)
        self.client.post(
            payload.path,
            data=payload.body,  # type: ignore[arg-type]  # bytes work; the stub says str
            headers=payload.header_dict(),
            name=f"{PROTOCOL} {MODEL}",
        )
