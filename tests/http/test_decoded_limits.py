"""Decoded sizes are bounded before anything is allocated (in-process app, real stack):
a JSON body by max_json_bytes (413), x as float32 by max_input_bytes (422 on both
protocols, FP16 checked before its conversion), the request caps before V2 converts x;
and a large JSON body parsed on a thread gives the same answer as one parsed inline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.loadtest.costly import v2_binary
from tests.conftest import make_client


@pytest.fixture(scope="module")
def tight(tiny_repository: Path) -> Iterator[TestClient]:
    with make_client(
        tiny_repository,
        max_json_bytes=16384,
        json_thread_bytes=1024,
        max_input_bytes=4800,
        max_request_timesteps=300,
        max_call_cells=40,
    ) as client:
        yield client


def v2(x: np.ndarray, datatype: str) -> tuple[str, bytes, dict[str, str]]:
    payload = v2_binary(x, datatype)
    return payload.path.replace("basic_motions", "tiny"), payload.body, payload.header_dict()


def test_json_over_its_limit_is_refused_before_parsing(tight: TestClient) -> None:
    body = orjson.dumps({"instances": [[[0.0] * 3] * 10] * 200})
    answer = tight.post("/v1/models/tiny:predict", content=body)
    assert answer.status_code == 413
    assert answer.json()["error"] == (
        f"the JSON in the request body is {len(body)} bytes; the limit is 16384 (max_json_bytes)"
        ": send large tensors as V2 binary data, or fewer sequences per request"
    )


def test_fp16_is_bounded_as_fp32_before_conversion(tight: TestClient) -> None:
    path, body, headers = v2(np.zeros((2, 201, 3), np.float16), "FP16")  # 2,412 B sent
    answer = tight.post(path, content=body, headers=headers)
    assert answer.status_code == 422
    assert answer.json()["error"] == (
        "input 'x' of shape [2, 201, 3] is 4824 bytes as FP32; the limit is 4800 bytes "
        "(max_input_bytes)"
    )


def test_request_timesteps_are_capped_before_conversion(tight: TestClient) -> None:
    path, body, headers = v2(np.zeros((4, 76, 3), np.float64), "FP64")
    answer = tight.post(path, content=body, headers=headers)
    assert answer.status_code == 422
    assert "the request has 304 timesteps in all" in answer.json()["error"]
    assert "limit is 300 (max_request_timesteps)" in answer.json()["error"]


def test_bidirectional_sequences_longer_than_a_call_are_refused(tight: TestClient) -> None:
    answer = tight.post("/v1/models/tiny_bi:predict", json={"instances": [[[0.0, 0.0]] * 41]})
    assert answer.status_code == 422
    assert answer.json()["error"] == (
        "a sequence has 41 timesteps; this model is bidirectional, so a sequence runs whole "
        "in one call, and a call is limited to 40 padded timesteps (max_call_cells)"
    )


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lengths=st.lists(st.integers(1, 60), min_size=1, max_size=5), seed=st.integers(0, 999))
def test_bounded_answers_equal_unbounded_ones(
    tight,
    tiny_repository: Path,
    lengths: list[int],
    seed: int,  # type: ignore[no-untyped-def]
) -> None:
    """Ragged batches split into buckets, cell-capped calls and time chunks (40 cells a
    call), with the JSON parsed on a thread: the same predictions as an unbounded server."""
    rng = np.random.default_rng(seed)
    instances = [rng.normal(size=(n, 3)).round(3).tolist() for n in lengths]
    body = {"instances": instances, "return_sequences": True}
    bounded = tight.post("/v1/models/tiny:predict", json=body)
    assert bounded.status_code == 200, bounded.text
    with make_client(tiny_repository) as plain:
        unbounded = plain.post("/v1/models/tiny:predict", json=body)
    for got, want in zip(
        bounded.json()["predictions"], unbounded.json()["predictions"], strict=True
    ):
        assert [p["label"] for p in got] == [p["label"] for p in want]
        np.testing.assert_allclose(
            [p["probabilities"] for p in got], [p["probabilities"] for p in want], atol=1e-6
        )
