"""The text log format on a real server: a hostile path cannot forge lines or drive a terminal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import ServerProcess


def test_text_logs_escape_control_characters_from_the_request(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    server = server_factory(tiny_repository, {"LSTM_SERVE_LOG_FORMAT": "text"})
    path = "/v1/models/x%0A2026-01-01 00:00:00,000 INFO service.access GET /forged 200%1B[31m"
    assert httpx.get(server.url + path, timeout=10).status_code == 404
    server.stop()
    lines = [line for line in server.log().splitlines() if "service.access" in line]
    forged = [line for line in lines if "/models/x" in line]
    assert len(forged) == 1  # one request, one line
    assert "x\\n2026-01-01 00:00:00,000 INFO service.access GET /forged 200\\x1b[31m" in forged[0]
    assert not [line for line in lines if line.startswith("2026-01-01")]
    assert "\x1b" not in server.log()
