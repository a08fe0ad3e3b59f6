"""Settings from the environment: per-model batching overrides parse, and bad ones are refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.core.batching import BatchingOptions
from service.core.server import Server
from service.settings import Settings


def test_model_batching_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LSTM_SERVE_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv(
        "LSTM_SERVE_MODEL_BATCHING",
        '{"sunspots": {"max_batch_size": 4, "max_queue_delay_ms": 2}, '
        '"raw": {"dynamic_batching": false}}',
    )
    server = Server(Settings())
    assert server.batching_options("sunspots") == BatchingOptions(
        max_batch_size=4, max_queue_delay_s=0.002, max_queue_size=256, bucket_ratio=2.0, slots=1
    )
    assert server.batching_options("raw") is None
    assert server.batching_options("other") == BatchingOptions(
        max_batch_size=16, max_queue_delay_s=0.0, max_queue_size=256, bucket_ratio=2.0, slots=1
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"m": {"max_batch_size": 0}}', "greater than or equal to 1"),
        ('{"m": {"batch_bucket_ratio": 1}}', "greater than 1"),
        ('{"m": {"max_batch": 4}}', "Extra inputs are not permitted"),
    ],
)
def test_bad_model_batching_is_refused_at_startup(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("LSTM_SERVE_MODEL_BATCHING", value)
    with pytest.raises(ValidationError, match=message):
        Settings()
