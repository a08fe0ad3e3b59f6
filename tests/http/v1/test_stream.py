"""The WebSocket stream: random chunkings equal the whole sequence; errors are messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_client, reference
from tests.scaleout.cluster import RedisServer

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
            "error": 'a message is {"timesteps": [[...], ...]} (with "offset" on a stream '
            'opened with ?sequence_id=), {"reset": true} or {"end": true}'
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


def test_a_stream_resumes_on_another_server_through_the_store(
    tiny_repository: Path, redis_server: RedisServer
) -> None:
    """``?sequence_id=``: the stream's state is in Redis, so after a dropped connection
    the client reconnects to another server (a second app: another worker or replica),
    resends its last message unchanged (answered again, no second step) and goes on;
    ``/v1`` chunks continue the same sequence; ``end`` ends it everywhere."""
    x = np.random.default_rng(5).normal(size=(12, 3)).astype(np.float32)
    want = reference(tiny_repository / "tiny" / "2", x[None], np.array([12]))["sequence_output"][0]
    url = f"{WS}/v1/models/tiny/stream?sequence_id=resumable"
    state = {"state_url": redis_server.url}
    with make_client(tiny_repository, **state) as one, make_client(tiny_repository, **state) as two:
        with one.websocket_connect(url + "&sequence_start=true") as ws:
            ws.send_json({"timesteps": x[:4].tolist(), "offset": 0})
            first = ws.receive_json()
            assert first["steps"] == 4
        with two.websocket_connect(url) as ws:
            ws.send_json({"timesteps": x[:4].tolist(), "offset": 0})  # its answer was lost
            assert ws.receive_json() == first
            ws.send_json({"timesteps": x[4:8].tolist(), "offset": 2})
            assert ws.receive_json() == {
                "error": "sequence 'resumable' has consumed 4 timesteps; this chunk says it "
                "starts at timestep 2 (sequence_offset), so it was not applied. Send the chunk "
                "that starts at 4, or resend the last chunk unchanged to have it answered again"
            }
            ws.send_json({"timesteps": x[4:8].tolist(), "offset": 4})
            second = ws.receive_json()
            assert second["steps"] == 8
        third = one.post(
            "/v1/models/tiny:predict",
            json={
                "instances": [x[8:].tolist()],
                "return_sequences": True,
                "sequence_id": "resumable",
                "sequence_offset": 8,
            },
        ).json()
        assert third["sequence_steps"] == 12
        got = [p["probabilities"] for p in first["predictions"] + second["predictions"]]
        got += [p["probabilities"] for p in third["predictions"][0]]
        np.testing.assert_allclose(np.array(got), want, atol=1e-5)
        with one.websocket_connect(url) as ws:
            ws.send_json({"end": True})
            assert ws.receive_json() == {"ended": True, "steps": 0}
        with two.websocket_connect(url) as ws:
            ws.send_json({"timesteps": x[:1].tolist()})
            assert ws.receive_json()["error"].startswith("sequence 'resumable' is not live")


def test_offset_needs_a_stored_stream(client: TestClient) -> None:
    with client.websocket_connect(f"{WS}/v1/models/tiny/stream") as ws:
        ws.send_json({"timesteps": [[0.0, 0.0, 0.0]], "offset": 0})
        assert ws.receive_json() == {
            "error": '"offset" applies to a stream opened with ?sequence_id='
        }
