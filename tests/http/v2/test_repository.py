"""The V2 repository extension on a real server: a rolling update under load loses nothing."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import httpx

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
