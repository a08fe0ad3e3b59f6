"""Two workers act as one server (``http/peers.py``), each request on a new connection.

Every ``httpx.get``/``httpx.post`` below opens a connection of its own, as load
balancers and most clients do, so the kernel spreads them over both workers.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from service.http.peers import PeerAnswer, Peers, summary
from tests.conftest import ServerProcess, reference
from tests.test_workers import workers_of

BOTH_OK = {"workers": [{"worker": 0, "status": 200}, {"worker": 1, "status": 200}]}
STEP = [[0.1, 0.2, 0.3]]


def two_workers(
    server_factory: Callable[..., ServerProcess],
    root: Path,
    tmp_path: Path,
    env: dict[str, str] | None = None,
) -> ServerProcess:
    """A server with 2 workers and model control on, once both workers' sockets exist."""
    # A short folder: socket paths are limited to 107 bytes, and past that the server
    # puts its sockets under /tmp instead (pytest's tmp_path can be that long).
    temporary = Path(tempfile.mkdtemp(prefix="peers-", dir="/tmp"))
    server = server_factory(
        root,
        {
            "LSTM_SERVE_WORKERS": "2",
            "LSTM_SERVE_MODEL_CONTROL_MODE": "explicit",
            "TMPDIR": str(temporary),
            **(env or {}),
        },
    )
    deadline = time.monotonic() + 60
    while len(list(temporary.glob("lstm-serve-peers-*/worker-*.sock"))) < 2:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    for _ in range(10):  # both workers finished startup: 10 new connections ready
        while httpx.get(f"{server.url}/v2/health/ready").status_code != 200:
            time.sleep(0.1)
    return server


@contextmanager
def clients(url: str, body: dict, count: int = 2) -> Iterator[list[int]]:
    """Threads sending predicts, each on a new connection, while the block runs."""
    statuses: list[int] = []
    stop = threading.Event()

    def send() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline and len(statuses) < 2000:
            statuses.append(httpx.post(url, json=body, timeout=30).status_code)

    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def compact(value: object) -> str:
    """JSON as the server writes it (orjson: no spaces)."""
    return json.dumps(value, separators=(",", ":"))


def read_reply(sock: socket.socket) -> str:
    """One whole HTTP response from a raw socket (its head and body may arrive apart)."""
    data = b""
    while True:
        head, separator, body = data.partition(b"\r\n\r\n")
        if separator:
            lengths = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if len(body) >= (lengths[0] if lengths else 0):
                return data.decode()
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk


def answers(method: str, url: str, times: int = 20, **kwargs: object) -> list[tuple[int, str]]:
    return [
        (r.status_code, r.text)
        for r in (httpx.request(method, url, timeout=30, **kwargs) for _ in range(times))  # type: ignore[arg-type]
    ]


def test_load_and_unload_reach_every_worker_before_the_call_answers(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    shutil.copytree(tiny_repository / "tiny_bi", root / "tiny_bi")
    server = two_workers(server_factory, root, tmp_path)
    url = server.url
    with clients(f"{url}/v1/models/tiny:predict", {"instances": [STEP]}) as statuses:
        time.sleep(0.3)
        unloaded = httpx.post(f"{url}/v2/repository/models/tiny_bi/unload", timeout=60)
        assert (unloaded.status_code, unloaded.json()) == (200, BOTH_OK)
        gone = answers("POST", f"{url}/v1/models/tiny_bi:predict", json={"instances": [[[1, 2]]]})
        assert set(gone) == {
            (404, compact({"error": "model 'tiny_bi' is not loaded; loaded models: 'tiny'"}))
        }

        shutil.copytree(tiny_repository / "tiny" / "2", root / "tiny" / "2")
        loaded = httpx.post(f"{url}/v2/repository/models/tiny/load", timeout=60)
        assert (loaded.status_code, loaded.json()) == (200, BOTH_OK)
        versions = answers("POST", f"{url}/v1/models/tiny:predict", json={"instances": [STEP]})
        assert {(code, json.loads(text)["version"]) for code, text in versions} == {(200, "2")}
        for method, path in [
            ("POST", "/v2/repository/index"),
            ("GET", "/v1/models"),
            ("GET", "/v2/models/tiny"),
            ("GET", "/v2/models/tiny_bi"),
        ]:
            assert len(set(answers(method, f"{url}{path}", times=10))) == 1, path
        time.sleep(0.3)
    assert set(statuses) == {200} and len(statuses) > 10

    # A version that fails to load fails on each worker, says so, and the server stays ready.
    shutil.copytree(root / "tiny" / "2", root / "tiny" / "3")
    (root / "tiny" / "3" / "model.onnx").write_bytes(b"garbage")
    broken = httpx.post(f"{url}/v2/repository/models/tiny/load", timeout=60)
    assert broken.status_code == 400
    error = broken.json()["error"]
    assert error.startswith("worker 0: failed to load 'tiny' version 3: ")
    assert "; worker 1: failed to load 'tiny' version 3: " in error
    assert [w["status"] for w in broken.json()["workers"]] == [400, 400]
    ready = answers("GET", f"{url}/v2/health/ready", times=10)
    assert set(ready) == {(200, compact({"ready": True}))}
    index = {text for _, text in answers("POST", f"{url}/v2/repository/index", times=10)}
    assert len(index) == 1

    # A worker the supervisor replaces (once the broken version is gone) replays the
    # unload: it serves what its sibling does.
    shutil.rmtree(root / "tiny" / "3")
    victim = min(workers_of(server.process.pid))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while victim in (now := workers_of(server.process.pid)) or len(now) < 2:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    for _ in range(10):  # the replacement finished startup
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            time.sleep(0.1)
    replayed = answers("POST", f"{url}/v1/models/tiny_bi:predict", json={"instances": [[[1, 2]]]})
    assert {code for code, _ in replayed} == {404}, replayed
    versions = answers("POST", f"{url}/v1/models/tiny:predict", json={"instances": [STEP]})
    assert {(code, json.loads(text)["version"]) for code, text in versions} == {(200, "2")}
    server.stop()
    assert not list((tmp_path / "tmp").glob("lstm-serve-peers-*"))  # removed with the server


def test_a_sequence_continued_over_50_new_connections_equals_the_whole(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    server = two_workers(server_factory, tiny_repository, tmp_path)
    x = np.random.default_rng(7).normal(size=(100, 3)).astype(np.float32)
    outputs = []
    for i in range(50):
        answer = httpx.post(
            f"{server.url}/v1/models/tiny:predict",
            json={
                "instances": [x[2 * i : 2 * i + 2].tolist()],
                "return_sequences": True,
                "sequence_id": "long-one",
                "sequence_start": i == 0,
                "sequence_end": i == 49,
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        outputs += [step["probabilities"] for step in answer.json()["predictions"][0]]
    want = reference(tiny_repository / "tiny" / "2", x[None], np.array([100]))
    np.testing.assert_allclose(np.array(outputs), want["sequence_output"][0], atol=1e-5)
    ended = httpx.post(
        f"{server.url}/v1/models/tiny:predict",
        json={"instances": [STEP], "sequence_id": "long-one"},
        timeout=30,
    )
    assert ended.status_code == 404 and "'long-one' is not live" in ended.json()["error"]


def test_a_rollout_under_load_loses_no_request_and_ends_sequences_and_streams(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    server = two_workers(server_factory, root, tmp_path)
    url = server.url
    predict = f"{url}/v1/models/tiny:predict"
    held = {"instances": [STEP], "sequence_id": 42}
    assert httpx.post(predict, json={**held, "sequence_start": True}).status_code == 200
    assert httpx.post(predict, json=held).status_code == 200
    with connect(f"ws://{url.removeprefix('http://')}/v1/models/tiny/stream") as stream:
        stream.send(json.dumps({"timesteps": STEP}))
        assert json.loads(stream.recv(timeout=30))["steps"] == 1

        # A request that is still uploading its body when the rollout starts.
        body = json.dumps({"instances": [STEP * 4]}).encode()
        host, port = url.removeprefix("http://").split(":")
        upload = socket.create_connection((host, int(port)))
        upload.sendall(
            f"POST /v1/models/tiny:predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.5)  # the request resolved version 1 and waits for the rest of its body

        with clients(predict, {"instances": [STEP]}) as statuses:
            shutil.copytree(tiny_repository / "tiny" / "2", root / "tiny" / "2")
            rollout: list[httpx.Response] = []
            loader = threading.Thread(
                target=lambda: rollout.append(
                    httpx.post(f"{url}/v2/repository/models/tiny/load", timeout=60)
                )
            )
            loader.start()
            time.sleep(1.0)
            upload.sendall(body[10:])
            reply = read_reply(upload)
            loader.join(60)
            time.sleep(0.3)
        upload.close()
        assert reply.startswith("HTTP/1.1 200 "), reply
        assert json.loads(reply.split("\r\n\r\n", 1)[1])["version"] == "1"
        assert (rollout[0].status_code, rollout[0].json()) == (200, BOTH_OK)
        assert set(statuses) == {200} and len(statuses) > 10

        gone = httpx.post(predict, json=held)
        assert gone.status_code == 410
        assert gone.json() == {
            "error": "sequence 42 ran on model 'tiny' version 1, which was unloaded; its state "
            "went with it: start the sequence again (sequence_start) on the version now serving"
        }
        assert httpx.post(predict, json=held).status_code == 404  # ended: one definitive answer

        reason = (
            "model 'tiny' version 1 was unloaded; reconnect to stream on the version now serving"
        )
        assert json.loads(stream.recv(timeout=30)) == {"error": reason}
        with pytest.raises(ConnectionClosed) as closed:
            stream.recv(timeout=30)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, reason)


@given(
    owner=st.text(max_size=8),
    model=st.text(min_size=1, max_size=8),
    sequence=st.one_of(st.integers(0, 2**64 - 1), st.text(min_size=1, max_size=16)),
    count=st.integers(1, 8),
)
def test_a_sequence_has_one_holder(owner: str, model: str, sequence: int | str, count: int) -> None:
    holder = Peers(0, count, Path("/nonexistent")).owner_of(owner, model, sequence)
    assert 0 <= holder < count
    assert Peers(count - 1, count, Path("/elsewhere")).owner_of(owner, model, sequence) == holder


def test_the_holder_is_the_same_in_every_process() -> None:
    """``hash()`` is salted per process; the holder must not be."""
    code = "from pathlib import Path; from service.http.peers import Peers; " + (
        "print([Peers(0, 7, Path('.')).owner_of('k', 'tiny', i) for i in ('a', 1, 'b', 99)])"
    )
    seen = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(seen) == 1


def test_a_broadcast_says_what_each_worker_did() -> None:
    ok = PeerAnswer(0, 200, [], b"{}")
    refused = PeerAnswer(1, 503, [], b'{"error": "worker 1 of this server did not answer"}')
    assert summary([ok, ok]) == (200, {"workers": [{"worker": 0, "status": 200}] * 2})
    assert summary([ok, refused]) == (
        503,
        {
            "error": "worker 1: worker 1 of this server did not answer (the other workers "
            "applied the change)",
            "workers": [
                {"worker": 0, "status": 200},
                {"worker": 1, "status": 503, "error": "worker 1 of this server did not answer"},
            ],
        },
    )


def test_a_v2_sequence_in_binary_and_gzip_continues_on_any_worker(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    """The forwarded chunk is the decoded body; the relayed answer keeps its binary framing."""
    server = two_workers(server_factory, tiny_repository, tmp_path)
    x = np.random.default_rng(11).normal(size=(1, 60, 3)).astype(np.float32)
    outputs = []
    for i in range(20):
        piece = x[:, 3 * i : 3 * i + 3]
        head = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1, 3, 3],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": piece.nbytes},
                    }
                ],
                "outputs": [{"name": "sequence_output", "parameters": {"binary_data": True}}],
                "parameters": {"sequence_id": 7, "sequence_start": i == 0, "sequence_end": i == 19},
            }
        ).encode()
        answer = httpx.post(
            f"{server.url}/v2/models/tiny/infer",
            content=gzip.compress(head + piece.tobytes()),
            headers={
                "Inference-Header-Content-Length": str(len(head)),
                "Content-Encoding": "gzip",
                "Content-Type": "application/octet-stream",
            },
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        size = int(answer.headers["inference-header-content-length"])
        header = json.loads(answer.content[:size])
        assert header["outputs"][0]["shape"][:2] == [1, 3]
        outputs.append(np.frombuffer(answer.content[size:], np.float32).reshape(3, -1))
    want = reference(tiny_repository / "tiny" / "2", x, np.array([60]))
    np.testing.assert_allclose(np.concatenate(outputs), want["sequence_output"][0], atol=1e-5)


@pytest.mark.parametrize("split_threads", ["0", "1"])  # with rows split or not
def test_a_worker_with_a_backlog_hands_large_requests_to_an_idle_sibling(
    server_factory: Callable[..., ServerProcess],
    tiny_repository: Path,
    tmp_path: Path,
    split_threads: str,
) -> None:
    """While one worker computes a long request, large requests that reach it go to its
    idle sibling, and every answer is the model's own (``peers.idle_sibling``)."""
    server = two_workers(
        server_factory,
        tiny_repository,
        tmp_path,
        {
            "LSTM_SERVE_HANDOFF_BACKLOG": "1",
            "LSTM_SERVE_MAX_REQUEST_TIMESTEPS": "1200000",
            "LSTM_SERVE_SPLIT_THREADS": split_threads,
        },
    )
    rng = np.random.default_rng(5)
    long_x = rng.normal(size=(120, 10_000, 3)).astype(np.float32)  # V2 binary: 14 MB
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": list(long_x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": long_x.nbytes},
                }
            ]
        }
    ).encode()
    slow_status: list[int] = []
    slow = threading.Thread(
        target=lambda: slow_status.append(
            httpx.post(
                f"{server.url}/v2/models/tiny/infer",
                content=head + long_x.tobytes(),
                headers={
                    "Inference-Header-Content-Length": str(len(head)),
                    "Content-Type": "application/octet-stream",
                },
                timeout=60,
            ).status_code
        )
    )
    slow.start()
    time.sleep(0.3)  # its body on its way, then its compute running
    x = rng.normal(size=(32, 40, 3)).round(3)  # ~40 KB of JSON: over HANDOFF_BYTES
    served = httpx.get(f"{server.url}/v1/models/tiny").json()["model_version_status"][0]
    want = reference(tiny_repository / "tiny" / served["version"], x, np.full(32, 40))
    sent = 0
    while slow.is_alive() or sent < 4:  # a new connection each: about half reach the busy one
        sent += 1
        answer = httpx.post(
            f"{server.url}/v1/models/tiny:predict", json={"instances": x.tolist()}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        got = [p["probabilities"] for p in answer.json()["predictions"]]
        np.testing.assert_allclose(got, want["final_output"], atol=1e-5)
    slow.join(60)
    assert slow_status == [200]
    metrics = httpx.get(f"{server.url}/metrics").text
    handed = [line for line in metrics.splitlines() if line.startswith("lstm_peer_handoffs_total")]
    assert handed and float(handed[0].split()[-1]) >= 1, metrics[:2000]


def test_keep_alive_connections_even_out_over_the_workers(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    """Eight keep-alive clients: whatever the kernel's hash did at first, a worker with
    two connections more than its sibling answers one request with ``Connection: close``
    until they are even, and then no more (``CoreBoard.crowded``)."""
    server = two_workers(server_factory, tiny_repository, tmp_path)
    url = f"{server.url}/v1/models/tiny:predict"
    body = {"instances": [STEP]}
    ws_url = server.url.replace("http://", "ws://") + "/v1/models/tiny/stream"
    streams = [connect(ws_url) for _ in range(6)]  # upgrades are neither moved nor broken
    # Sockets that never send a request (counted only from a first request on) do not
    # keep the real clients from settling.
    host, port = server.url.removeprefix("http://").split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(40)]
    clients = [httpx.Client(timeout=30) for _ in range(8)]
    try:
        closes = []
        for _ in range(30):  # rounds: each client one request
            answers = [c.post(url, json=body) for c in clients]
            assert {a.status_code for a in answers} == {200}
            closes.append(sum(a.headers.get("connection") == "close" for a in answers))
            for stream in streams[:2]:  # streams opened while connections move
                stream.send(json.dumps({"timesteps": STEP}))
                assert "predictions" in json.loads(stream.recv(timeout=30))
            streams.append(connect(ws_url))
        assert sum(closes[-10:]) == 0, closes  # settled: even, nothing more to move
        for stream in streams:
            stream.send(json.dumps({"timesteps": STEP}))
            assert "predictions" in json.loads(stream.recv(timeout=30))
    finally:
        for c in clients:
            c.close()
        for stream in streams:
            stream.close()
        for sock in idle:
            sock.close()


ALICE, BOB, ADMIN = ("alice-" + "a" * 32, "bob-" + "b" * 32, "root-" + "r" * 32)


def test_keys_travel_with_forwarded_chunks_and_broadcasts(
    server_factory: Callable[..., ServerProcess], tiny_repository: Path, tmp_path: Path
) -> None:
    """A forwarded request is checked again by its holder: a sequence stays its key's own."""
    keys = [f"alice:inference:{ALICE}", f"bob:inference:{BOB}", f"root:admin:{ADMIN}"]
    server = two_workers(
        server_factory, tiny_repository, tmp_path, {"LSTM_SERVE_API_KEYS": json.dumps(keys)}
    )
    predict = f"{server.url}/v1/models/tiny:predict"

    def as_key(key: str, **fields: object) -> httpx.Response:
        body = {"instances": [STEP], "sequence_id": "mine", **fields}
        return httpx.post(predict, json=body, headers={"Authorization": f"Bearer {key}"})

    assert as_key(ALICE, sequence_start=True).status_code == 200
    for _ in range(10):  # new connections: either worker, the holder decides
        assert as_key(ALICE).status_code == 200
        stranger = as_key(BOB)
        assert stranger.status_code == 404
        assert "sequence 'mine' is not live" in stranger.json()["error"]
    assert httpx.post(predict, json={"instances": [STEP], "sequence_id": "mine"}).status_code == 401

    control = f"{server.url}/v2/repository/models/tiny/load"
    refused = httpx.post(control, headers={"Authorization": f"Bearer {ALICE}"})
    assert refused.status_code == 403  # refused at the door, before any broadcast
    loaded = httpx.post(control, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert (loaded.status_code, loaded.json()) == (200, BOTH_OK)
