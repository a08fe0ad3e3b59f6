"""A real server under several times its capacity: fast 503s, bounded memory, instant recovery.

And under ordinary concurrency, answers merged by the batcher equal the lone
in-process answers. The load comes from the project's own client (``run_load``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from service.loadtest import LoadSpec, run_load
from service.loadtest.process import PeakRss, tree_rss_mib
from tests.conftest import ROOT, ServerProcess, reference

DEFAULT_REPOSITORY = ROOT / "models" / "repository"


def test_overload_sheds_fast_keeps_memory_bounded_and_recovers(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        DEFAULT_REPOSITORY,
        {
            "LSTM_SERVE_LOG_LEVEL": "warning",
            "LSTM_SERVE_MAX_QUEUE_SIZE": "4",
            "LSTM_SERVE_INFERENCE_THREADS": "1",
            "LSTM_SERVE_MAX_BATCH_SIZE": "32",
            "LSTM_SERVE_REQUEST_TIMEOUT_S": "2",
        },
    )
    # 32 sequences of 400 steps: ~10 ms of compute each, so 48 clients sending
    # back to back ask for several times what one inference thread can do.
    spec = LoadSpec(
        url=server.url,
        model="basic_motions",
        protocol="v2-binary",
        batch=32,
        timesteps=400,
        concurrency=48,
        duration_s=3.0,
        warmup_s=0.5,
        timeout_s=10.0,
    )
    baseline = tree_rss_mib(server.process.pid)
    shed: list[httpx.Response] = []

    def probe() -> None:  # one 503 seen by a plain client, to read its headers
        time.sleep(1.0)
        body = {"instances": np.zeros((32, 400, 6)).tolist()}
        with httpx.Client(timeout=10) as client:
            for _ in range(200):
                answer = client.post(f"{server.url}/v1/models/basic_motions:predict", json=body)
                if answer.status_code == 503:
                    shed.append(answer)
                    return

    prober = threading.Thread(target=probe)
    with PeakRss(server.process.pid) as memory:
        prober.start()
        result = run_load(spec)
        prober.join()

    assert result.ok > 0
    assert set(result.errors) == {"503"}, result.errors  # shed, never a 500 or a timeout
    assert result.errors["503"] > result.ok  # it really was overloaded
    # Accepted requests finish within the request deadline (plus transfer), never hang.
    assert result.latency_ms["max"] < 2000 + 1000
    assert memory.peak - baseline < 150, (baseline, memory.peak)

    assert shed, "no 503 reached the plain client"
    assert shed[0].headers["retry-after"] == "1"
    assert shed[0].json()["error"] in (
        "the model's queue is full (4 requests waiting); retry later",
        "the request did not finish before its deadline",
    )

    # Load gone: the very next request is served.
    start = time.monotonic()
    one = httpx.post(
        f"{server.url}/v1/models/basic_motions:predict",
        json={"instances": np.zeros((1, 50, 6)).tolist()},
        timeout=10,
    )
    assert one.status_code == 200
    assert time.monotonic() - start < 5.0  # a hang check, not a speed claim
    assert server.process.poll() is None


def test_concurrent_requests_over_http_equal_lone_answers(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path
) -> None:
    """Many clients at once, ragged lengths: each answer is what the model gives it alone."""
    server = server_factory(
        tiny_repository,
        {"LSTM_SERVE_LOG_LEVEL": "warning", "LSTM_SERVE_INFERENCE_THREADS": "1"},
    )
    rng = np.random.default_rng(7)
    cases = []
    for _ in range(48):
        lengths = rng.integers(1, 40, size=int(rng.integers(1, 4)))
        x = np.zeros((len(lengths), int(lengths.max()), 3), dtype=np.float32)
        for i, n in enumerate(lengths):
            x[i, :n] = rng.normal(size=(n, 3))
        cases.append((x, lengths.astype(np.int64)))
    answers: list[dict[str, object] | None] = [None] * len(cases)

    def send(i: int) -> None:
        x, lengths = cases[i]
        with httpx.Client(timeout=30) as client:
            answer = client.post(
                f"{server.url}/v2/models/tiny/versions/2/infer",
                json={
                    "inputs": [
                        {"name": "x", "shape": list(x.shape), "datatype": "FP32",
                         "data": x.ravel().tolist()},
                        {"name": "lengths", "shape": [len(lengths)], "datatype": "INT64",
                         "data": lengths.tolist()},
                    ],
                    "outputs": [{"name": "final_output"}, {"name": "sequence_output"}],
                },
            )  # fmt: skip
            answers[i] = answer.json()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    version_dir = tiny_repository / "tiny" / "2"
    for (x, lengths), answer in zip(cases, answers, strict=True):
        assert answer is not None and "outputs" in answer, answer
        outputs = {o["name"]: o for o in answer["outputs"]}  # type: ignore[attr-defined]
        want = reference(version_dir, x, lengths)
        for name in ("final_output", "sequence_output"):
            got = outputs[name]
            assert isinstance(got, dict)
            assert got["shape"] == list(want[name].shape)
            np.testing.assert_allclose(
                np.asarray(got["data"], dtype=np.float32).reshape(want[name].shape),
                want[name],
                atol=1e-5,
                rtol=0,
            )
