"""Who may call what, on a real server (issue 14): keys and scopes on every route, the
cross-site checks, sequences that belong to their caller, audit lines, TLS."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from service.http.openapi import DOCS_ASSETS
from service.http.security import DOCS_ASSETS_PREFIX, required_scope
from service.loadtest.process import ROOT, ServerProcess

ALICE = "alice-" + "a" * 32
BOB = "bob-" + "b" * 32
OPS = "ops-" + "c" * 32
AUDITOR = "auditor-" + "d" * 32  # admin only: may list the repository, not infer
KEYS = [
    f"alice:inference:{ALICE}",
    f"bob:inference:{BOB}",
    f"ops:inference,admin:{OPS}",
    f"auditor:admin:{AUDITOR}",
]
BODY = {"instances": [[[0.1, 0.2, 0.3]] * 4]}
V2_BODY = {"inputs": [{"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [0.1] * 6}]}

# (method, path, body, scope needed, status with the right key)
ROUTES = [
    ("GET", "/v2", None, "inference", 200),
    ("GET", "/v2/models/tiny", None, "inference", 200),
    ("GET", "/v2/models/tiny/versions/2", None, "inference", 200),
    ("GET", "/v2/models/tiny/ready", None, "inference", 200),
    ("GET", "/v2/models/tiny/config", None, "inference", 200),
    ("POST", "/v2/models/tiny/infer", V2_BODY, "inference", 200),
    ("POST", "/v2/models/tiny/versions/2/infer", V2_BODY, "inference", 200),
    ("GET", "/v1/models", None, "inference", 200),
    ("GET", "/v1/models/tiny", None, "inference", 200),
    ("GET", "/v1/models/tiny/versions/2", None, "inference", 200),
    ("POST", "/v1/models/tiny:predict", BODY, "inference", 200),
    ("POST", "/v1/models/tiny/versions/2:predict", BODY, "inference", 200),
    ("GET", "/ui/models/tiny/versions/2/examples", None, "inference", 404),
    ("POST", "/v2/repository/index", None, "admin", 200),
    ("POST", "/v2/repository/models/tiny/load", None, "admin", 200),
    ("POST", "/v2/repository/models/nope/unload", None, "admin", 404),
]


@pytest.fixture(scope="module")
def keyed(tiny_repository: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("keyed") / "repo"
    shutil.copytree(tiny_repository, root)
    env = {"LSTM_SERVE_API_KEYS": json.dumps(KEYS), "LSTM_SERVE_MODEL_CONTROL_MODE": "explicit"}
    server = ServerProcess(root, env, tmp_path_factory.mktemp("log") / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def call(server: ServerProcess, method: str, path: str, body: object, key: str | None, **kw):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(
        method,
        server.url + path,
        json=body,
        headers=headers | kw.pop("headers", {}),
        timeout=30,
        **kw,
    )


@pytest.mark.parametrize(("method", "path", "body", "scope", "status"), ROUTES)
def test_every_route_needs_its_key_and_scope(
    keyed: ServerProcess, method: str, path: str, body: object, scope: str, status: int
) -> None:
    missing = call(keyed, method, path, body, None)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="lstm-serving"'
    assert missing.json() == {
        "error": "this API needs a key: send Authorization: Bearer <key> (WebSockets may offer "
        "the subprotocol bearer.<key>)"
    }
    wrong = call(keyed, method, path, body, "x" * 40)
    assert wrong.status_code == 401 and wrong.json() == {"error": "the API key is not valid"}
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    if scope == "admin":
        short = call(keyed, method, path, body, ALICE)
        assert short.status_code == 403
        assert short.json() == {
            "error": f"key 'alice' has scopes inference; {path} needs the admin scope"
        }
    else:
        short = call(keyed, method, path, body, AUDITOR)
        assert short.status_code == 403
        assert short.json() == {
            "error": f"key 'auditor' has scopes admin; {path} needs the inference scope"
        }
    right = call(keyed, method, path, body, OPS if scope == "admin" else ALICE)
    assert right.status_code == status, right.text


def test_probes_and_metrics_stay_open_and_refusals_are_logged(keyed: ServerProcess) -> None:
    assert httpx.get(keyed.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(keyed.url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(keyed.url + "/ui/").status_code == 200
    metrics = httpx.get(keyed.url + "/metrics").text
    assert 'lstm_requests_refused_total{reason="missing_key"}' in metrics
    call(keyed, "POST", "/v2/repository/models/tiny_bi/unload", None, "y" * 40)
    time.sleep(0.3)
    log = keyed.log()
    assert "refused POST /v2/repository/models/tiny_bi/unload: 401 the API key is not valid" in log
    assert '"client":"127.0.0.1:' in log
    assert "y" * 40 not in log and ALICE not in log and OPS not in log  # keys are never logged


DOCS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect", "/docs/assets/swagger-ui.css")


@pytest.mark.parametrize("path", DOCS)
def test_the_docs_are_open_and_their_calls_are_not(keyed: ServerProcess, path: str) -> None:
    """A browser cannot send a bearer token on a page load: the docs (no secrets in them)
    answer without a key, while what Swagger UI sends from them still needs one."""
    assert httpx.get(keyed.url + path, timeout=10).status_code == 200
    document = httpx.get(keyed.url + "/openapi.json", timeout=10).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    predict = document["paths"]["/v1/models/{name}:predict"]["post"]
    assert predict["security"] == [{"bearer": []}]
    assert document["paths"]["/v2/health/ready"]["get"]["security"] == []
    assert call(keyed, "POST", "/v1/models/tiny:predict", BODY, None).status_code == 401


def test_only_the_docs_files_are_opened() -> None:
    assert DOCS_ASSETS + "/" == DOCS_ASSETS_PREFIX
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
        assert required_scope(path, metrics_auth=False) is None
    for path in ("/docs/x", "/docs/assets/../v1/models", "/openapi.json/x", "/redoc/v1"):
        assert required_scope(path, metrics_auth=False) == "inference"


def test_control_calls_leave_an_audit_line(keyed: ServerProcess) -> None:
    assert call(keyed, "POST", "/v2/repository/models/tiny/load", None, OPS).status_code == 200
    time.sleep(0.3)
    lines = [json.loads(line) for line in keyed.log().splitlines() if '"service.audit"' in line]
    load = [e for e in lines if e["action"] == "load"][-1]
    assert load["message"].startswith("load tiny by key ops from 127.0.0.1:")
    assert (load["key_id"], load["outcome"], load["model"]) == ("ops", "ok", "tiny")


def test_sequences_belong_to_their_caller(keyed: ServerProcess) -> None:
    def chunk(key: str, **params: object) -> httpx.Response:
        body = {**BODY, "sequence_id": "victim-1", "return_states": True, **params}
        return call(keyed, "POST", "/v1/models/tiny:predict", body, key)

    assert chunk(ALICE, sequence_start=True).status_code == 200
    for attempt in ({}, {"sequence_end": True}):  # bob reads or ends alice's sequence
        stolen = chunk(BOB, **attempt)
        assert stolen.status_code == 404
        assert stolen.json()["error"].startswith("sequence 'victim-1' is not live")
    assert chunk(BOB, sequence_start=True).status_code == 200  # bob's own, beside alice's
    mine = chunk(ALICE, sequence_end=True)
    assert mine.status_code == 200 and "states" in mine.json()
    assert chunk(ALICE).status_code == 404  # ended by its owner


def test_websockets_need_a_key_and_a_same_origin_page(keyed: ServerProcess) -> None:
    url = keyed.url.replace("http", "ws") + "/v1/models/tiny/stream"
    with pytest.raises(InvalidStatus) as caught:
        connect(url, open_timeout=10).close()
    assert caught.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as caught:
        connect(
            url,
            additional_headers={
                "Authorization": f"Bearer {ALICE}",
                "Origin": "http://evil.example",
            },
        ).close()
    assert caught.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as caught:
        connect(url, subprotocols=["lstm-serving", f"bearer.{AUDITOR}"]).close()  # type: ignore[list-item]
    assert caught.value.response.status_code == 403  # a key without the inference scope
    with connect(url, subprotocols=["lstm-serving", f"bearer.{ALICE}"]) as socket:  # type: ignore[list-item]
        assert socket.subprotocol == "lstm-serving"
        socket.send(json.dumps({"timesteps": [[0.1, 0.2, 0.3]]}))
        assert json.loads(socket.recv(timeout=10))["steps"] == 1
        socket.send(json.dumps({"end": True}))
        socket.recv(timeout=10)
    time.sleep(0.3)
    sessions = [
        json.loads(line) for line in keyed.log().splitlines() if '"method":"WEBSOCKET"' in line
    ]
    closed = [s for s in sessions if s["accepted"]][-1]
    assert (closed["key_id"], closed["received"], closed["sent"], closed["close_code"]) == (
        "alice",
        2,
        2,
        1000,
    )
    assert [s["close_code"] for s in sessions if not s["accepted"]][:3] == [0, 0, 0]
    metrics = httpx.get(keyed.url + "/metrics").text
    assert (
        'lstm_websocket_sessions_total{code="1000",endpoint="/v1/models/{name}/stream"} 1.0'
        in metrics
    )
    assert (
        'lstm_websocket_messages_total{direction="received",endpoint="/v1/models/{name}/stream"}'
        in metrics
    )


def test_cross_site_requests_are_refused_with_keys_off(
    tiny_repository: Path, tmp_path: Path, server_factory
) -> None:
    """The attacks of the issue against a loopback server without keys (the default)."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository, root)
    server = server_factory(root)
    url = f"{server.url}/v2/repository/models/tiny_bi/unload"
    form = httpx.post(
        url, content=b"x", headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}
    )
    assert form.status_code == 403
    assert form.json() == {
        "error": "Origin 'http://evil.example' may not call this API: cross-site requests are "
        "refused unless the origin is in the setting cors_allow_origins"
    }
    plain = httpx.post(url, content=b"x", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    assert plain.json() == {
        "error": "Content-Type 'text/plain' is not accepted: send application/json, or "
        "application/octet-stream for binary tensors"
    }
    rebound = httpx.post(url, headers={"Host": "evil.example"})
    assert rebound.status_code == 400
    assert rebound.json() == {
        "error": "Host 'evil.example' is not served here (DNS rebinding is refused); allowed "
        "hosts: 127.0.0.1, ::1, localhost (setting allowed_hosts)"
    }
    none_mode = httpx.post(url)
    assert none_mode.status_code == 403
    assert none_mode.json()["error"].startswith(
        "model unload is disabled: the server runs with model_control_mode=none"
    )
    ws = server.url.replace("http", "ws") + "/v1/models/tiny/stream"
    with pytest.raises(InvalidStatus) as caught:
        connect(ws, additional_headers={"Origin": "http://evil.example"}).close()
    assert caught.value.response.status_code == 403
    same = httpx.post(
        f"{server.url}/v1/models/tiny:predict", json=BODY, headers={"Origin": server.url}
    )
    assert same.status_code == 200  # the page at /ui/ is same-origin
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
    time.sleep(0.3)
    assert "refused POST /v2/repository/models/tiny_bi/unload: 403 Origin" in server.log()


def test_a_public_bind_without_keys_refuses_to_start(tiny_repository: Path, tmp_path: Path) -> None:
    server = ServerProcess(tiny_repository, {"LSTM_SERVE_HOST": "0.0.0.0"}, tmp_path / "log")
    assert server.process.wait(timeout=60) != 0
    assert "no API key is configured and the server binds 0.0.0.0" in server.log()


def test_tls_with_a_self_made_certificate(tiny_repository: Path, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    env = {"LSTM_SERVE_SSL_CERTFILE": str(cert), "LSTM_SERVE_SSL_KEYFILE": str(key)}
    server = ServerProcess(tiny_repository, env, tmp_path / "log")
    try:
        https = server.url.replace("http://", "https://")
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.post(
                    f"{https}/v1/models/tiny:predict",
                    json=BODY,
                    verify=ssl.create_default_context(cafile=str(cert)),
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.process.poll() is None, server.log()
                time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["version"] == "2"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/v2/health/live")  # plain HTTP is not served
        # The image's HEALTHCHECK speaks HTTPS when TLS is on.
        check = subprocess.run(
            [sys.executable, str(ROOT / "deploy" / "docker" / "healthcheck.py")],
            env={**os.environ, **env, "LSTM_SERVE_PORT": str(server.port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
    finally:
        server.stop()


def test_answers_reveal_no_absolute_path_nor_library_version(
    tiny_repository: Path, tmp_path: Path, server_factory
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository, root)
    server = server_factory(root, {"LSTM_SERVE_MODEL_CONTROL_MODE": "explicit"})
    broken = root / "tiny" / "3"
    shutil.copytree(root / "tiny" / "2", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    meta = json.loads((broken / "metadata.json").read_text())
    meta["version"] = 3
    meta["onnx"]["sha256"] = hashlib.sha256(b"not an onnx graph").hexdigest()
    (broken / "metadata.json").write_text(json.dumps(meta))
    answers = [
        httpx.post(f"{server.url}/v2/repository/models/tiny/load", timeout=30),
        httpx.post(f"{server.url}/v2/repository/index"),
        httpx.get(f"{server.url}/v1/models/tiny"),
        httpx.get(f"{server.url}/v2/models/tiny"),
        httpx.get(f"{server.url}/v2"),
        httpx.post(f"{server.url}/v2/repository/models/nope/load"),
        httpx.get(f"{server.url}/v2/health/ready"),
    ]
    assert [a.status_code for a in answers] == [400, 200, 200, 200, 200, 404, 200]
    reason = {(s["version"], s["reason"]) for s in answers[1].json()}
    assert any(v == "3" and r for v, r in reason), reason  # the failure is reported...
    for answer in answers:  # ...without the server's paths or its libraries' versions
        assert str(tmp_path) not in answer.text and str(root.resolve()) not in answer.text
        for library in ("onnxruntime", "numpy", "torch", "python"):
            assert f'"{library}"' not in answer.text.lower()
    assert str(root) in server.log()  # the operator's log keeps the whole message

    # Unloading every model would leave a live server that is never ready: the last stays.
    assert httpx.post(f"{server.url}/v2/repository/models/tiny_bi/unload").status_code == 200
    last = httpx.post(f"{server.url}/v2/repository/models/tiny/unload")
    assert last.status_code == 409
    assert last.json() == {
        "error": "model 'tiny' is the last model serving: unloading it would leave the server "
        "unready; load another model first"
    }
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}


def test_poll_mode_follows_the_repository(
    tiny_repository: Path, tmp_path: Path, server_factory
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
    shutil.copytree(tiny_repository / "tiny_bi", root / "tiny_bi")
    env = {"LSTM_SERVE_MODEL_CONTROL_MODE": "poll", "LSTM_SERVE_MODEL_CONTROL_POLL_S": "1"}
    server = server_factory(root, env)
    refused = httpx.post(f"{server.url}/v2/repository/models/tiny/load")
    assert refused.status_code == 403
    assert "model_control_mode=poll" in refused.json()["error"]
    shutil.copytree(tiny_repository / "tiny" / "2", root / "tiny" / "2")
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.url}/v1/models/tiny").json()["version"] != "2":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert "poll: tiny versions on disk are now [1, 2]" in server.log()
