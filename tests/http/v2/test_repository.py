"""The V2 repository extension on a real server: a rolling update under load loses nothing."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

BODY = {"instances": [[[0.1, 0.2, 0.3]] * 20, [[0.3, 0.2, 0.1]] * 7]}


def test_rolling_update_while_clients_send(
    tiny_repository: Path, tmp_path: Path, server_factory
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    server = server_factory(root, {"LSTM_SERVE_MODEL_CONTROL_MODE": "explicit"})
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline and len(results) < 5000:
                response = http.post("/v1/models/tiny:predict", json=BODY)
                results.append((response.status_code, response.json().get("version", "")))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    shutil.copytree(tiny_repository / "tiny" / "2", root / "tiny" / "2")
    loaded = httpx.post(f"{server.url}/v2/repository/models/tiny/load", timeout=30)
    assert loaded.status_code == 200, loaded.text
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()

    assert {code for code, _ in results} == {200}
    versions = [v for _, v in results]
    assert versions[0] == "1" and versions[-1] == "2"
    index = httpx.post(f"{server.url}/v2/repository/index", timeout=5).json()
    assert index == [
        {
            "name": "tiny",
            "version": "1",
            "state": "UNAVAILABLE",
            "reason": "retired by version policy",
        },
        {"name": "tiny", "version": "2", "state": "READY", "reason": ""},
    ]
    metrics = httpx.get(f"{server.url}/metrics", timeout=5).text
    assert 'lstm_model_versions_loaded{model="tiny"} 1.0' in metrics
    for version in ("1", "2"):
        assert (
            f'code="200",endpoint="/v1/models/{{name}}:predict",model="tiny",version="{version}"'
            in metrics
        )


def test_load_errors_and_unload(tiny_repository: Path, tmp_path: Path, server_factory) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository, root)
    server = server_factory(root, {"LSTM_SERVE_MODEL_CONTROL_MODE": "explicit"})
    missing = httpx.post(f"{server.url}/v2/repository/models/nope/load", timeout=10)
    assert missing.status_code == 404
    assert missing.json() == {"error": "model 'nope' has no version in the model repository"}

    shutil.copytree(root / "tiny" / "2", root / "tiny" / "3")
    (root / "tiny" / "3" / "model.onnx").write_bytes(b"garbage")
    broken = httpx.post(f"{server.url}/v2/repository/models/tiny/load", timeout=10)
    assert broken.status_code == 400
    assert broken.json()["error"].startswith("failed to load 'tiny' version 3: ")
    assert broken.json()["error"].endswith("versions serving: 2")
    assert httpx.post(f"{server.url}/v1/models/tiny:predict", json=BODY).json()["version"] == "2"

    assert httpx.post(f"{server.url}/v2/repository/models/tiny_bi/unload").status_code == 200
    gone = httpx.post(f"{server.url}/v1/models/tiny_bi:predict", json={"instances": [[[1, 2]]]})
    assert gone.status_code == 404
    again = httpx.post(f"{server.url}/v2/repository/models/tiny_bi/unload")
    assert again.status_code == 404 and again.json() == {"error": "model 'tiny_bi' is not loaded"}


STEP = [[0.1, 0.2, 0.3]]


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


def test_a_rollout_waits_for_uploads_and_ends_sequences_and_streams(
    tiny_repository: Path, tmp_path: Path, server_factory
) -> None:
    """A request still uploading its body when the rollout starts is answered by the old
    version; a server-held sequence on it gets one 410, a stream on it closes with 1012."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    server = server_factory(root, {"LSTM_SERVE_MODEL_CONTROL_MODE": "explicit"})
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
        upload.close()
        assert reply.startswith("HTTP/1.1 200 "), reply
        assert json.loads(reply.split("\r\n\r\n", 1)[1])["version"] == "1"
        assert (rollout[0].status_code, rollout[0].json()) == (200, {})

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
