"""Bounded cost per request (issue 12), on real servers over the shipped models.

Each of the issue's costly requests, and cases of the same kind at the edge of
the limits, gets its documented answer; the server's peak RSS (sampled over the
process tree) stays under the documented per-request bound and the memory is
given back afterwards. A deadline stops the onnxruntime work it no longer
needs, and a slow call on one model does not hold another model's requests.
RSS bounds and orderings, never timing thresholds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from service.core.contract import ModelMetadata
from service.loadtest.costly import MODEL, Case, cases, request_bound_mib, v2_binary
from service.loadtest.process import PeakRss, ServerProcess, start_server, tree_rss_mib
from service.settings import DEFAULT_REPOSITORY, Settings

GIVEN_BACK_MIB = 48
"""What a worker may still hold after a large request, over its idle RSS (allocator slack)."""


def bound_mib() -> float:
    meta = ModelMetadata.model_validate_json(
        (DEFAULT_REPOSITORY / MODEL / "1" / "metadata.json").read_bytes()
    )
    units = [layer.units * layer.directions for layer in meta.layers]
    return request_bound_mib(Settings(), units, meta.num_features, 4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("cost") / "server.log"
    started = start_server(DEFAULT_REPOSITORY, log)
    yield started
    started.stop()


def idle_rss(server: ServerProcess) -> float:
    return tree_rss_mib(server.process.pid)


@pytest.mark.parametrize("case", cases(), ids=lambda c: c.label.split(":")[0])
def test_costly_requests_stay_within_the_bound(server: ServerProcess, case: Case) -> None:
    idle = idle_rss(server)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        with PeakRss(server.process.pid, every_s=0.01) as peak:
            answer = client.post(
                case.payload.path, content=case.payload.body, headers=case.payload.header_dict()
            )
        assert answer.status_code == case.status, answer.text
        if case.message:
            assert case.message in answer.json()["error"]
        else:
            assert answer.json() if "v1" in case.payload.path else answer.content
        assert peak.peak - idle < bound_mib()
        # the memory is given back: a small request later, the worker is back near idle
        small = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [[[0.0] * 6] * 10]})
        assert small.status_code == 200
    time.sleep(0.5)
    assert tree_rss_mib(server.process.pid) < idle + GIVEN_BACK_MIB


def test_a_long_per_step_answer_stays_within_the_bound(server: ServerProcess) -> None:
    """26 x 10,000 steps with return_sequences: 260k labelled predictions in one answer."""
    idle = idle_rss(server)
    body = orjson.dumps({"instances": [[[0] * 6] * 10_000] * 26, "return_sequences": True})
    with (
        httpx.Client(base_url=server.url, timeout=120) as client,
        PeakRss(server.process.pid, every_s=0.01) as peak,
    ):
        answer = client.post(f"/v1/models/{MODEL}:predict", content=body)
    assert answer.status_code == 200
    assert [len(p) for p in answer.json()["predictions"]] == [10_000] * 26
    assert peak.peak - idle < bound_mib()
    time.sleep(0.5)
    assert tree_rss_mib(server.process.pid) < idle + GIVEN_BACK_MIB


def test_concurrent_large_requests_take_turns_within_one_bound(server: ServerProcess) -> None:
    """Four 6.3 MB requests at once, each at max_request_timesteps: max_large_requests (1)
    serves them one after another, so together they stay within one request's bound."""
    payload = v2_binary(np.zeros((1024, 256, 6), np.float32), "FP32")
    idle = idle_rss(server)
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            answer = client.post(payload.path, content=payload.body, headers=payload.header_dict())
            statuses.append(answer.status_code)

    with PeakRss(server.process.pid, every_s=0.01) as peak:
        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 4
    assert peak.peak - idle < bound_mib()


def test_the_ragged_request_is_answered_exactly(server: ServerProcess) -> None:
    """Split into buckets, each sequence's prediction is what it gets alone."""
    rng = np.random.default_rng(0)
    long = rng.normal(size=(2500, 6)).astype(np.float32).tolist()
    short = rng.normal(size=(1, 6)).astype(np.float32).tolist()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        url = f"/v1/models/{MODEL}:predict"
        both = client.post(url, json={"instances": [long] + [short] * 3}).json()["predictions"]
        alone_long = client.post(url, json={"instances": [long]}).json()["predictions"]
        alone_short = client.post(url, json={"instances": [short]}).json()["predictions"]
    for got, want in ((both[0], alone_long[0]), (both[3], alone_short[0])):
        assert got["label"] == want["label"]
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], atol=1e-6)


def sequence_output(client: httpx.Client, x: np.ndarray) -> np.ndarray:
    payload = v2_binary(x, "FP32", output="sequence_output")
    answer = client.post(payload.path, content=payload.body, headers=payload.header_dict())
    assert answer.status_code == 200, answer.text
    head = int(answer.headers["inference-header-content-length"])
    shape = orjson.loads(answer.content[:head])["outputs"][0]["shape"]
    return np.frombuffer(answer.content[head:], dtype="<f4").reshape(shape)


def test_over_the_call_cells_a_long_batch_is_chunked_exactly(server: ServerProcess) -> None:
    """8 x 10,000 steps is 80k cells, over max_call_cells: it runs in time chunks of 8,192
    steps that carry (h, c) on; each row equals that sequence run alone, in one call of
    10,000 cells, across the chunk boundary."""
    x = np.random.default_rng(1).normal(size=(8, 10_000, 6)).astype(np.float32)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        whole = sequence_output(client, x)
        alone = sequence_output(client, np.ascontiguousarray(x[5:6]))
    assert whole.shape == (8, 10_000, 4)
    np.testing.assert_allclose(whole[5:6], alone, atol=1e-5)


def test_the_limits_name_themselves(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        too_many = client.post(
            f"/v1/models/{MODEL}:predict",
            content=orjson.dumps({"instances": [[[0] * 6] * 10_000] * 27}),
        )
        wide = client.post(
            f"/v1/models/{MODEL}:predict",
            content=orjson.dumps({"instances": [[[0] * 6] * 5000] + [[[0] * 6]] * 1000}),
        )
    assert too_many.status_code == 422
    assert too_many.json()["error"] == (
        "the request has 270000 timesteps in all (the sum of its sequences' lengths); the limit "
        "is 262144 (max_request_timesteps): send fewer or shorter sequences per request"
    )
    assert wide.status_code == 422
    assert wide.json()["error"] == (
        "instances pad to 1001 x 5000 x 6 float32 values (120120000 bytes); the limit is "
        "67108864 bytes (max_input_bytes)"
    )


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """Limits raised so one basic_motions request runs for seconds; a 1 s deadline."""
    env = {
        "LSTM_SERVE_MAX_REQUEST_TIMESTEPS": "4000000",
        "LSTM_SERVE_MAX_INPUT_BYTES": str(128 * 1024 * 1024),
        "LSTM_SERVE_REQUEST_TIMEOUT_S": "1",
        "LSTM_SERVE_LOG_LEVEL": "info",
    }
    started = start_server(DEFAULT_REPOSITORY, tmp_path / "slow.log", env)
    yield started
    started.stop()


def test_a_deadline_stops_the_work_and_other_models_are_not_held(
    slow_server: ServerProcess,
) -> None:
    # 2.8M timesteps (~4 s of a core) in a 33 KB body: far past the 1 s deadline
    big = v2_binary(np.zeros((1024, 2730, 6), np.float16), "FP16", gzipped=True)
    finished: list[str] = []
    statuses: dict[str, int] = {}

    def send(name: str, path: str, **kwargs: object) -> None:
        with httpx.Client(base_url=slow_server.url, timeout=60) as client:
            statuses[name] = client.post(path, **kwargs).status_code  # type: ignore[arg-type]
        finished.append(name)

    slow = threading.Thread(
        target=send,
        args=("big", big.path),
        kwargs={"content": big.body, "headers": big.header_dict()},
    )
    slow.start()
    time.sleep(0.3)  # the big call is running: its body is read and decoded by now
    send("sunspots", "/v1/models/sunspots:predict", json={"instances": [[[0.0]] * 11]})
    slow.join()
    assert statuses == {"big": 503, "sunspots": 200}
    assert finished[0] == "sunspots"  # another model's request is not held behind the call
    # The deadline stopped the call: onnxruntime was told to terminate, and the model answers
    send("after", f"/v1/models/{MODEL}:predict", json={"instances": [[[0.0] * 6] * 10]})
    assert statuses["after"] == 200
    assert "stopped a call of 1024 sequences: nobody waits for it" in slow_server.log()
