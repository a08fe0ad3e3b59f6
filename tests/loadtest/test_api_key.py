"""lstm-bench against a server with API keys: the key opens it, no key is counted as 401."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from service.loadtest import LoadSpec, run_load
from service.loadtest.process import ServerProcess

SECRET = "bench-" + "k" * 32


def test_the_key_is_sent_and_without_it_every_request_is_a_401(
    tiny_repository: Path, server_factory: Callable[..., ServerProcess]
) -> None:
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_API_KEYS": json.dumps([f"bench:inference:{SECRET}"])},
    )
    spec = LoadSpec(
        url=server.url, model="tiny", concurrency=2, duration_s=0.3, warmup_s=0.0,
        max_requests=20, api_key=SECRET,
    )  # fmt: skip
    keyed = run_load(spec)
    assert keyed.ok == keyed.requests == 20 and keyed.errors == {}
    refused = run_load(LoadSpec(**{**spec.__dict__, "api_key": None, "features": 3}))
    assert refused.ok == 0 and set(refused.errors) == {"401"}
