"""Stateful /v1: random chunkings of a sequence give the outputs of the whole sequence."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import reference

_ids = itertools.count()
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def cuts(length: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, length - 1), max_size=5, unique=True).map(sorted)


def chunks_of(x: np.ndarray, points: list[int]) -> list[np.ndarray]:
    return np.split(x, points)


def whole(tiny_repository: Path, x: np.ndarray) -> np.ndarray:
    return reference(tiny_repository / "tiny" / "2", x[None], np.array([len(x)]))


def post(client: TestClient, body: dict, status: int = 200) -> dict:
    response = client.post("/v1/models/tiny:predict", json=body)
    assert response.status_code == status, response.text
    return response.json()


def probabilities(steps: list[dict]) -> np.ndarray:
    return np.array([s["probabilities"] for s in steps])


@SETTINGS
@given(length=st.integers(2, 40), data=st.data(), seed=st.integers(0, 999))
def test_server_held_chunks_equal_the_whole(
    client: TestClient, tiny_repository: Path, length: int, data: st.DataObject, seed: int
) -> None:
    x = np.random.default_rng(seed).normal(size=(length, 3)).astype(np.float32)
    pieces = chunks_of(x, data.draw(cuts(length)))
    sequence_id = f"s-{next(_ids)}"
    outputs, final = [], None
    for i, piece in enumerate(pieces):
        answer = post(
            client,
            {
                "instances": [piece.tolist()],
                "return_sequences": True,
                "sequence_id": sequence_id,
                "sequence_start": i == 0,
                "sequence_end": i == len(pieces) - 1,
            },
        )
        assert answer["sequence_id"] == sequence_id
        outputs.append(probabilities(answer["predictions"][0]))
        final = answer["predictions"][0][-1]["probabilities"]
    want = whole(tiny_repository, x)
    np.testing.assert_allclose(np.concatenate(outputs), want["sequence_output"][0], atol=1e-5)
    np.testing.assert_allclose(final, want["final_output"][0], atol=1e-5)
    # ended: the id is gone
    gone = post(client, {"instances": [x[:1].tolist()], "sequence_id": sequence_id}, 404)
    assert gone["error"].startswith(f"sequence '{sequence_id}' is not live")


@SETTINGS
@given(length=st.integers(2, 40), data=st.data(), seed=st.integers(0, 999))
def test_client_carried_state_equals_the_whole_and_round_trips_exactly(
    client: TestClient, tiny_repository: Path, length: int, data: st.DataObject, seed: int
) -> None:
    x = np.random.default_rng(seed).normal(size=(length, 3)).astype(np.float32)
    state = None
    outputs = []
    for piece in chunks_of(x, data.draw(cuts(length))):
        answer = post(
            client,
            {
                "instances": [piece.tolist()],
                "return_sequences": True,
                "initial_states": [state],
                "return_states": True,
            },
        )
        outputs.append(probabilities(answer["predictions"][0]))
        (state,) = answer["states"]
    want = whole(tiny_repository, x)
    np.testing.assert_allclose(np.concatenate(outputs), want["sequence_output"][0], atol=1e-5)
    carried = np.frombuffer(base64.b64decode(state["data"]), "<f4")
    exact = np.concatenate([want[f"{k}n_{i}"].ravel() for i in range(2) for k in "hc"])
    np.testing.assert_allclose(carried, exact, atol=1e-5)
    assert (state["model"], state["version"], state["layers"]) == ("tiny", "2", [8, 4])


def test_a_ragged_batch_carries_one_state_per_sequence(client: TestClient) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 3)), rng.normal(size=(4, 3))
    first = post(client, {"instances": [a[:5].tolist(), b[:2].tolist()], "return_states": True})
    second = post(
        client,
        {
            "instances": [a[5:].tolist(), b[2:].tolist()],
            "initial_states": first["states"],
            "return_states": True,
        },
    )
    alone = [post(client, {"instances": [s.tolist()], "return_states": True}) for s in (a, b)]
    for i in range(2):
        np.testing.assert_allclose(
            second["predictions"][i]["probabilities"],
            alone[i]["predictions"][0]["probabilities"],
            atol=1e-5,
        )
        got = np.frombuffer(base64.b64decode(second["states"][i]["data"]), "<f4")
        want = np.frombuffer(base64.b64decode(alone[i]["states"][0]["data"]), "<f4")
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_sequences_are_isolated_and_restart_resets(client: TestClient) -> None:
    step = [[0.3, -0.1, 0.2]]
    for sid in ("iso-a", "iso-b"):
        post(client, {"instances": [step * 3], "sequence_id": sid, "sequence_start": True})
    post(client, {"instances": [step * 5], "sequence_id": "iso-a"})
    b = post(client, {"instances": [step], "sequence_id": "iso-b"})
    fresh = post(client, {"instances": [step * 4]})
    assert b["predictions"] == fresh["predictions"]  # iso-a's chunks did not touch iso-b
    restarted = post(client, {"instances": [step], "sequence_id": "iso-a", "sequence_start": True})
    assert restarted["predictions"] == post(client, {"instances": [step]})["predictions"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {"sequence_id": "never-started"},
            404,
            "sequence 'never-started' is not live (never started, already ended, or evicted after "
            "300 s idle); send its first chunk with sequence_start set to begin it",
        ),
        (
            {"sequence_start": True},
            422,
            "sequence_start, sequence_end and sequence_offset need a sequence_id",
        ),
        (
            {"sequence_id": 7, "sequence_start": True, "initial_states": [None]},
            422,
            "use either sequence_id (state held by the server) or initial_states (state carried by "
            "the client), not both",
        ),
        (
            {"initial_states": [None, None]},
            422,
            "initial_states has 2 entries; the request has 1 sequences (use null for a sequence "
            "that starts from zero state)",
        ),
        (
            {"initial_states": [{"model": "tiny", "version": "1", "data": ""}]},
            422,
            "initial_states[0] belongs to model 'tiny' version '1'; this request goes to 'tiny' "
            "version 2",
        ),
        (
            {"initial_states": [{"model": "tiny", "version": "2", "data": "!!"}]},
            422,
            "initial_states[0].data must be a base64 string",
        ),
        (
            {"initial_states": [{"model": "tiny", "version": "2", "data": "AAAA"}]},
            422,
            "initial_states[0].data holds 3 bytes; model 'tiny' expects 96 (h and c of layers "
            "with 8, 4 units, float32)",
        ),
        (
            {"sequence_id": ""},
            422,
            "sequence_id '' must be an unsigned 64-bit integer or a string of 1 to 128 characters",
        ),
        (
            {"sequence_id": True},
            422,
            "sequence_id True must be an unsigned 64-bit integer or a string of 1 to 128 "
            "characters",
        ),
    ],
)
def test_stateful_misuse(client: TestClient, body: dict, status: int, message: str) -> None:
    answer = post(client, {"instances": [[[0.1, 0.2, 0.3]]], **body}, status)
    assert answer == {"error": message}


def test_several_sequences_under_one_id_are_refused(client: TestClient) -> None:
    answer = post(
        client,
        {"instances": [[[0.1, 0.2, 0.3]]] * 2, "sequence_id": "x", "sequence_start": True},
        422,
    )
    assert answer == {"error": "a request with a sequence_id carries exactly one sequence; got 2"}


def test_bidirectional_models_cannot_be_stateful(client: TestClient) -> None:
    response = client.post(
        "/v1/models/tiny_bi:predict",
        json={"instances": [[[0.1, 0.2]]], "sequence_id": "b", "sequence_start": True},
    )
    assert response.status_code == 422
    assert response.json() == {
        "error": (
            "model 'tiny_bi' has bidirectional layers: its backward direction needs the whole "
            "sequence at once, so it cannot carry state across requests"
        )
    }
