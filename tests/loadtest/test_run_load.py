"""``run_load`` against a real server over real HTTP: counts and statuses, never speed."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from service.loadtest import LoadSpec, SpecError, run_load
from service.loadtest.payloads import build_payloads
from tests.conftest import ServerProcess

FAST = LoadSpec(model="tiny", duration_s=1.0, warmup_s=0.2, concurrency=2, timeout_s=5.0)


def _spec(server: ServerProcess, **changes: object) -> LoadSpec:
    return replace(FAST, url=server.url, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["v1", "v2-json", "v2-binary"])
def test_payloads_are_accepted_as_sent(bench_server: ServerProcess, protocol: str) -> None:
    (payload,) = build_payloads(
        protocol,  # type: ignore[arg-type]
        "tiny",
        batch=3,
        timesteps=4,
        features=3,
        return_sequences=True,
        count=1,
    )
    response = httpx.post(
        bench_server.url + payload.path,
        content=payload.body,
        headers=payload.header_dict(),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    if protocol == "v1":
        predictions = response.json()["predictions"]
        assert len(predictions) == 3 and all(len(p) == 4 for p in predictions)
        return
    if protocol == "v2-json":
        (output,) = response.json()["outputs"]
    else:  # the answer comes back in the binary framing that was asked for
        size = int(response.headers["Inference-Header-Content-Length"])
        (output,) = json.loads(response.content[:size])["outputs"]
        assert output["parameters"]["binary_data_size"] == len(response.content) - size
    assert output["name"] == "sequence_output" and output["shape"] == [3, 4, 3]


@pytest.mark.parametrize(
    ("protocol", "return_sequences"),
    [("v1", False), ("v2-json", True), ("v2-binary", False), ("v2-binary", True)],
)
def test_each_protocol_gets_only_200s(
    bench_server: ServerProcess, protocol: str, return_sequences: bool
) -> None:
    spec = _spec(bench_server, protocol=protocol, batch=2, return_sequences=return_sequences)
    result = run_load(spec)
    assert result.features == 3  # learnt from GET /v2/models/tiny
    assert result.errors == {} and result.dropped == 0
    assert result.requests == result.ok > 0
    assert result.sequences == 2 * result.ok
    lat = result.latency_ms
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert 0 < lat["mean"] <= lat["max"]
    assert result.elapsed_s > 0 and result.requests_per_s > 0
    assert result.sequences_per_s == pytest.approx(2 * result.requests_per_s)
    data = result.to_dict()
    assert data["spec"]["protocol"] == protocol and data["ok"] == result.ok


def test_unknown_model_is_counted_as_404(bench_server: ServerProcess) -> None:
    result = run_load(_spec(bench_server, model="nope", features=3, duration_s=0.5))
    assert result.ok == 0 and result.requests > 0
    assert result.errors == {"404": result.requests}
    assert result.to_dict()["latency_ms"]["p50"] is None


def test_unknown_model_without_features_says_why(bench_server: ServerProcess) -> None:
    with pytest.raises(SpecError, match="answered 404"):
        run_load(_spec(bench_server, model="nope"))


def test_open_loop_sends_its_schedule(bench_server: ServerProcess) -> None:
    result = run_load(_spec(bench_server, rate=50.0, duration_s=2.0, warmup_s=0.0))
    # 2 s at 50/s is 100 slots; a slot finding max_in_flight busy would be dropped.
    assert result.requests + result.dropped == 100
    assert result.errors == {}
    assert result.send_lag_ms["max"] >= result.send_lag_ms["mean"] >= 0


@pytest.mark.parametrize("rate", [None, 300.0])
def test_request_bound_is_exact(bench_server: ServerProcess, rate: float | None) -> None:
    spec = _spec(bench_server, concurrency=4, rate=rate, max_requests=37, duration_s=3.0)
    result = run_load(spec)
    assert result.requests == 37 and result.ok == 37


def test_remote_url_is_refused_before_any_traffic() -> None:
    # 0.0.0.0 is not loopback by the rule, yet would stay on this machine were the check broken.
    with pytest.raises(SpecError, match=r"not a loopback address.*--allow-remote"):
        run_load(LoadSpec(url="http://0.0.0.0:9", features=3, duration_s=0.1))


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that never accepts: connects succeed, answers never come."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


def test_unanswered_requests_time_out(silent_port: int) -> None:
    spec = LoadSpec(
        url=f"http://127.0.0.1:{silent_port}",
        features=3,
        concurrency=2,
        duration_s=0.5,
        warmup_s=0.0,
        timeout_s=0.3,
    )
    result = run_load(spec)
    assert result.ok == 0 and set(result.errors) == {"timeout"}


def test_refused_connections_are_counted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    spec = LoadSpec(url=f"http://127.0.0.1:{port}", features=3, duration_s=0.3, warmup_s=0.0)
    result = run_load(spec)
    assert result.ok == 0 and set(result.errors) == {"connection"}
