"""The WebSocket stream: random chunkings equal the whole sequence; errors are messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import reference

WS = "ws://127.0.0.1"  # the Host a loopback server serves (TestClient would say testserver)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(length=st.integers(2, 50), data=st.data(), seed=st.integers(0, 999))
def test_streamed_chunks_equal_the_whole(
    client: TestClient, tiny_repository: Path, length: int, data: st.DataObject, seed: int
) -> None:
    x = np.random.default_rng(seed).normal(size=(length, 3)).astype(np.float32)
    points = data.draw(st.lists(st.integers(1, length - 1), max_size=6, unique=True).map(sorted))
    outputs = []
    with client.websocket_connect(f"{WS}/v1/models/tiny/stream") as ws:
        for piece in np.split(x, points):
            ws.send_json({"timesteps": piece.tolist()})
            answer = ws.receive_json()
            outputs += [p["probabilities"] for p in answer["predictions"]]
        assert answer["steps"] == length
        ws.send_json({"end": True})
        assert ws.receive_json() == {"ended": True, "steps": length}
    want = reference(tiny_repository / "tiny" / "2", x[None], np.array([length]))
    np.testing.assert_allclose(np.array(outputs), want["sequence_output"][0], atol=1e-5)


def test_errors_are_messages_and_the_stream_goes_on(client: TestClient) -> None:
    with client.websocket_connect(f"{WS}/v1/models/tiny/stream") as ws:
        ws.send_json({"timesteps": [[0.1, 0.2]]})
        assert ws.receive_json() == {"error": "timesteps[0] has 2 features; model 'tiny' expects 3"}
        ws.send_text("not json")
        assert ws.receive_json()["error"].startswith("message is not valid JSON")
        ws.send_json({"steps": 1})
        assert ws.receive_json() == {
            "error": ('a message is {"timesteps": [[...], ...]}, {"reset": true} or {"end": true}')
        }
        ws.send_json({"timesteps": [[0.1, 0.2, 0.3]]})
        first = ws.receive_json()
        assert first["steps"] == 1
        ws.send_json({"reset": True})
        assert ws.receive_json() == {"reset": True, "steps": 0}
        ws.send_json({"timesteps": [[0.1, 0.2, 0.3]]})
        assert ws.receive_json() == first  # zero state again


def test_unknown_and_bidirectional_models_close_with_a_reason(client: TestClient) -> None:
    with client.websocket_connect(f"{WS}/v1/models/nope/stream") as ws:
        assert ws.receive_json() == {
            "error": "model 'nope' is not loaded; loaded models: 'tiny', 'tiny_bi'"
        }
    with client.websocket_connect(f"{WS}/v1/models/tiny_bi/stream") as ws:
        assert "cannot carry state across requests" in ws.receive_json()["error"]
    with client.websocket_connect(f"{WS}/v1/models/tiny/versions/x/stream") as ws:
        assert ws.receive_json() == {
            "error": "version 'x' does not exist; versions are positive integers"
        }
