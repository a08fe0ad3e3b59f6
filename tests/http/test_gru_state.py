"""GRU state across requests, on a real ``python -m service``: every way to carry it.

A GRU stack (``gru``, classification) and an LSTM into a GRU (``mixed``, regression)
are streamed in chunks through ``/v1`` server-held state (``sequence_id``), ``/v1``
carried state (``return_states``/``initial_states``), V2 with Triton's sequence
parameters, V2 over gRPC (``ModelStreamInfer``) and the WebSocket stream (on the
connection and in the store); each is compared with the whole sequence run at once in
PyTorch (the checkpoint the version was exported from), at 1e-5. The server-held
paths run on the in-process store and on a real Redis. Refusals are checked word for
word: a ``c`` for a GRU layer, state data of the wrong size, a GRU model exported
before its state was carried.
"""

from __future__ import annotations

import base64
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as tg
from websockets.sync.client import connect

from models.architecture import StackedLSTM
from models.export import torch_reference
from service.loadtest.process import free_port
from tests.conftest import ServerProcess, start_server
from tests.scaleout.cluster import RedisServer

MODELS = ("gru", "mixed")
TOLERANCE = 1e-5
CUTS = [4, 5, 11]  # a 17-step sequence in chunks of 4, 1, 6 and 6 steps
X = np.random.default_rng(11).normal(size=(17, 3)).astype(np.float32)
TENSORS = {"gru": [["h"], ["h"]], "mixed": [["h", "c"], ["h"]]}


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(
    request: pytest.FixtureRequest,
    gru_repository: Path,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, int]]:
    """A real server with gRPC; its sequences in process memory or in Redis."""
    port = free_port()
    env = {"LSTM_SERVE_GRPC_PORT": str(port)}
    if request.param == "redis":
        env["LSTM_SERVE_STATE_URL"] = redis_server.url
    log = tmp_path_factory.mktemp(f"gru-{request.param}") / "server.log"
    process = start_server(gru_repository, log, env=env)
    yield process, port
    process.stop()


@pytest.fixture(scope="module")
def client(server: tuple[ServerProcess, int]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, timeout=30) as c:
        yield c


def torch_whole(repository: Path, name: str, x: np.ndarray = X) -> dict[str, np.ndarray]:
    """The whole sequence through the PyTorch model the version was exported from."""
    model = StackedLSTM.load_checkpoint(repository / name / "1" / "checkpoint.pt")
    return torch_reference(model, x[None], np.array([len(x)]))


def values(prediction: Any) -> np.ndarray:
    """A /v1 per-timestep prediction (labelled probabilities or values) as [T, K]."""
    if prediction and isinstance(prediction[0], dict):
        return np.array([p["probabilities"] for p in prediction])
    return np.array(prediction)


def post(client: httpx.Client, name: str, body: dict[str, Any], status: int = 200) -> Any:
    answer = client.post(f"/v1/models/{name}:predict", json=body)
    assert answer.status_code == status, answer.text
    return answer.json()


@pytest.mark.parametrize("name", MODELS)
def test_v1_server_held_chunks_equal_the_whole(
    client: httpx.Client, gru_repository: Path, name: str
) -> None:
    pieces = np.split(X, CUTS)
    got, offset = [], 0
    for i, piece in enumerate(pieces):
        answer = post(
            client,
            name,
            {
                "instances": [piece.tolist()],
                "return_sequences": True,
                "sequence_id": f"v1-{name}",
                "sequence_start": i == 0,
                "sequence_end": i == len(pieces) - 1,
                "sequence_offset": offset,
            },
        )
        offset = answer["sequence_steps"]
        got.append(values(answer["predictions"][0]))
    assert offset == len(X)
    want = torch_whole(gru_repository, name)["sequence_output"][0]
    np.testing.assert_allclose(np.concatenate(got), want, atol=TOLERANCE)


@pytest.mark.parametrize("name", MODELS)
def test_v1_carried_state_equals_the_whole_and_holds_only_h_for_gru_layers(
    client: httpx.Client, gru_repository: Path, name: str
) -> None:
    state, got = None, []
    for piece in np.split(X, CUTS):
        answer = post(
            client,
            name,
            {
                "instances": [piece.tolist()],
                "return_sequences": True,
                "return_states": True,
                "initial_states": [state],
            },
        )
        (state,) = answer["states"]
        got.append(values(answer["predictions"][0]))
    want = torch_whole(gru_repository, name)
    np.testing.assert_allclose(np.concatenate(got), want["sequence_output"][0], atol=TOLERANCE)
    assert state["tensors"] == TENSORS[name] and state["layers"] == [8, 4]
    described = client.get(f"/v1/models/{name}").json()
    assert described["stateful"] is True and described["state_tensors"] == TENSORS[name]
    carried = np.frombuffer(base64.b64decode(state["data"]), "<f4")
    names = [f"{k}n_{i}" for i, layer in enumerate(TENSORS[name]) for k in layer]
    exact = np.concatenate([want[n].ravel() for n in names])
    np.testing.assert_allclose(carried, exact, atol=TOLERANCE)


def v2_body(x: np.ndarray, outputs: list[str], **parameters: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "x", "shape": [1, *x.shape], "datatype": "FP32", "data": x.ravel().tolist()}
        ],
        "outputs": [{"name": n} for n in outputs],
        "parameters": parameters,
    }


def v2_array(answer: dict[str, Any], name: str) -> np.ndarray:
    (out,) = [o for o in answer["outputs"] if o["name"] == name]
    return np.array(out["data"], np.float32).reshape(out["shape"])


@pytest.mark.parametrize("name", MODELS)
def test_v2_names_only_the_states_a_layer_holds_and_sequences_equal_the_whole(
    client: httpx.Client, gru_repository: Path, name: str
) -> None:
    states = [f"{k}n_{i}" for i, layer in enumerate(TENSORS[name]) for k in layer]
    meta = client.get(f"/v2/models/{name}").json()
    assert [o["name"] for o in meta["outputs"]] == ["sequence_output", "final_output", *states]
    config = client.get(f"/v2/models/{name}/config").json()
    assert [o["name"] for o in config["output"]] == ["sequence_output", "final_output", *states]
    pieces = np.split(X, CUTS)
    got, last = [], {}
    for i, piece in enumerate(pieces):
        answer = client.post(
            f"/v2/models/{name}/infer",
            json=v2_body(
                piece,
                ["sequence_output", *states],
                sequence_id=f"v2-{name}",
                sequence_start=i == 0,
                sequence_end=i == len(pieces) - 1,
            ),
        )
        assert answer.status_code == 200, answer.text
        got.append(v2_array(answer.json(), "sequence_output")[0])
        last = answer.json()
    want = torch_whole(gru_repository, name)
    np.testing.assert_allclose(np.concatenate(got), want["sequence_output"][0], atol=TOLERANCE)
    for state in states:  # V2 states are batch-first: [B, directions, units]
        got_state = v2_array(last, state).transpose(1, 0, 2)
        np.testing.assert_allclose(got_state, want[state], atol=TOLERANCE)
    missing = client.post(f"/v2/models/{name}/infer", json=v2_body(X[:2], ["cn_1"]))
    assert missing.status_code == 400
    assert missing.json()["error"].startswith(f"unknown output 'cn_1'; model {name!r} has outputs")


@pytest.mark.parametrize("name", MODELS)
def test_grpc_stream_sequence_equals_the_whole(
    server: tuple[ServerProcess, int], gru_repository: Path, name: str
) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    pieces = np.split(X, CUTS)
    with tg.InferenceServerClient(f"127.0.0.1:{server[1]}") as grpc_client:
        grpc_client.start_stream(lambda result, error: answers.put((result, error)))
        try:
            for i, piece in enumerate(pieces):
                x = tg.InferInput("x", [1, *piece.shape], "FP32")
                x.set_data_from_numpy(piece[None])
                grpc_client.async_stream_infer(
                    name,
                    [x],
                    sequence_id=f"grpc-{name}",
                    sequence_start=i == 0,
                    sequence_end=i == len(pieces) - 1,
                )
            got = [answers.get(timeout=30) for _ in pieces]
        finally:
            grpc_client.stop_stream()
    assert [error for _, error in got] == [None] * len(pieces)
    whole = np.concatenate([r.as_numpy("sequence_output")[0] for r, _ in got])
    want = torch_whole(gru_repository, name)
    np.testing.assert_allclose(whole, want["sequence_output"][0], atol=TOLERANCE)
    np.testing.assert_allclose(got[-1][0].as_numpy("hn_1")[:, 0], want["hn_1"][0], atol=TOLERANCE)
    assert got[-1][0].as_numpy("cn_1") is None  # a GRU layer has no c


@pytest.mark.parametrize("stored", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_websocket_stream_equals_the_whole(
    server: tuple[ServerProcess, int], gru_repository: Path, name: str, stored: bool
) -> None:
    url = server[0].url.replace("http://", "ws://") + f"/v1/models/{name}/stream"
    if stored:
        url += f"?sequence_id=ws-{name}&sequence_start=true"
    got = []
    with connect(url) as ws:
        for piece in np.split(X, CUTS):
            ws.send(orjson.dumps({"timesteps": piece.tolist()}).decode())
            answer = orjson.loads(ws.recv())
            got.append(values(answer["predictions"]))
        assert answer["steps"] == len(X)
        ws.send(orjson.dumps({"end": True}).decode())
        assert orjson.loads(ws.recv()) == {"ended": True, "steps": len(X)}
    want = torch_whole(gru_repository, name)["sequence_output"][0]
    np.testing.assert_allclose(np.concatenate(got), want, atol=TOLERANCE)


def _state_of(client: httpx.Client, name: str) -> dict[str, Any]:
    answer = post(client, name, {"instances": [X[:2].tolist()], "return_states": True})
    state: dict[str, Any] = answer["states"][0]
    return state


def test_a_c_for_a_gru_layer_is_refused_naming_the_layer(client: httpx.Client) -> None:
    state = _state_of(client, "mixed")
    wrong = {**state, "tensors": [["h", "c"], ["h", "c"]]}
    answer = post(client, "mixed", {"instances": [X[:2].tolist()], "initial_states": [wrong]}, 422)
    assert answer == {
        "error": "initial_states[0].tensors[1] is ['h', 'c']; layer 1 of model 'mixed' is a "
        "GRU layer, whose state is ['h']"
    }
    short = {**state, "tensors": [["h"]]}
    answer = post(client, "mixed", {"instances": [X[:2].tolist()], "initial_states": [short]}, 422)
    assert answer == {
        "error": "initial_states[0].tensors must list the state tensors of each of model "
        "'mixed''s 2 layers: [['h', 'c'], ['h']]"
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mixed", "expects 80 (h and c of LSTM layer 0 (8 units), h of GRU layer 1 (4 units), "),
        ("gru", "expects 48 (h of layers with 8, 4 units, "),
    ],
)
def test_state_data_of_the_wrong_size_says_what_each_layer_holds(
    client: httpx.Client, name: str, expected: str
) -> None:
    state = _state_of(client, name)
    data = base64.b64decode(state["data"])
    padded = {**state, "data": base64.b64encode(data + bytes(16)).decode()}
    answer = post(client, name, {"instances": [X[:2].tolist()], "initial_states": [padded]}, 422)
    assert answer == {
        "error": f"initial_states[0].data holds {len(data) + 16} bytes; model {name!r} "
        f"{expected}float32)"
    }


STATELESS = (
    "model 'gru_stateless' version 1 has GRU layers but was exported before GRU state was "
    "carried: its graph has no state tensors, so it cannot carry state across requests; "
    "export or import it again, or send each sequence whole (without sequence_id, "
    "initial_states or return_states)"
)


def test_a_gru_exported_before_state_was_carried_is_served_whole_and_refuses_state(
    client: httpx.Client, server: tuple[ServerProcess, int]
) -> None:
    whole = post(client, "gru_stateless", {"instances": [X.tolist()]})
    assert len(whole["predictions"]) == 1
    for body in (
        {"return_states": True},
        {"sequence_id": "old", "sequence_start": True},
        {"initial_states": [None]},
    ):
        answer = post(client, "gru_stateless", {"instances": [X[:2].tolist()], **body}, 422)
        assert answer == {"error": STATELESS}
    v2 = client.post(
        "/v2/models/gru_stateless/infer",
        json=v2_body(X[:2], ["final_output"], sequence_id=3, sequence_start=True),
    )
    assert v2.status_code == 400 and v2.json() == {"error": STATELESS}
    ws_url = server[0].url.replace("http://", "ws://") + "/v1/models/gru_stateless/stream"
    with connect(ws_url) as ws:
        assert orjson.loads(ws.recv()) == {"error": STATELESS}
    outputs = [o["name"] for o in client.get("/v2/models/gru_stateless").json()["outputs"]]
    assert outputs == ["sequence_output", "final_output"]
    described = client.get("/v1/models/gru_stateless").json()
    assert described["stateful"] is False and described["state_tensors"] == []
