"""Request ids, metrics and access logs, observed through the real ASGI stack."""

from __future__ import annotations

import json
import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.logs import JsonFormatter

BODY = {"instances": [[[0.5, 0.1, -0.2]]]}


def sample(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_request_id_is_returned_or_generated(client: TestClient) -> None:
    given = client.post("/v1/models/tiny:predict", json=BODY, headers={"X-Request-ID": "req-42"})
    assert given.headers["x-request-id"] == "req-42"
    fresh = client.post("/v1/models/tiny:predict", json=BODY)
    assert len(fresh.headers["x-request-id"]) == 32
    unsafe = client.get("/v2/health/live", headers={"X-Request-ID": "bad id\twith spaces"})
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics_count_requests_by_model_version_and_code(client: TestClient) -> None:
    labels = {"model": "tiny", "version": "2", "endpoint": "/v1/models/{name}:predict"}
    ok_before = sample(client, "lstm_requests_total", code="200", **labels)
    bad_before = sample(client, "lstm_requests_total", code="422", **labels)
    for _ in range(3):
        assert client.post("/v1/models/tiny:predict", json=BODY).status_code == 200
    assert client.post("/v1/models/tiny:predict", json={"instances": []}).status_code == 422
    assert sample(client, "lstm_requests_total", code="200", **labels) == ok_before + 3
    assert sample(client, "lstm_requests_total", code="422", **labels) == bad_before + 1


def test_unknown_models_do_not_become_label_values(client: TestClient) -> None:
    client.post("/v1/models/made-up-name-123:predict", json=BODY)
    assert "made-up-name-123" not in client.get("/metrics").text


def test_one_json_access_line_per_request_without_payload(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.post("/v1/models/tiny:predict", json=BODY, headers={"X-Request-ID": "log-1"})
    (record,) = [r for r in caplog.records if r.name == "service.access"]
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "log-1"
    assert (line["method"], line["path"], line["status"]) == (
        "POST",
        "/v1/models/tiny:predict",
        200,
    )
    assert (line["model"], line["version"]) == ("tiny", "2")
    assert line["duration_ms"] > 0
    # The payload never reaches the log (the timestamp may contain "0.5" by chance).
    assert "0.5" not in json.dumps({k: v for k, v in line.items() if k != "time"})


def test_inference_metrics_follow_the_calls(client: TestClient) -> None:
    labels = {"model": "tiny", "version": "2"}
    computed = sample(client, "lstm_compute_duration_seconds_count", **labels)
    sequences = sample(client, "lstm_batch_sequences_sum", **labels)
    body = {"instances": [[[0.5, 0.1, -0.2]]] * 3}
    assert client.post("/v1/models/tiny:predict", json=body).status_code == 200
    assert sample(client, "lstm_compute_duration_seconds_count", **labels) == computed + 1
    assert sample(client, "lstm_batch_sequences_sum", **labels) == sequences + 3
    assert sample(client, "lstm_queue_depth_requests", **labels) == 0
    assert sample(client, "lstm_model_versions_loaded", model="tiny") == 1
