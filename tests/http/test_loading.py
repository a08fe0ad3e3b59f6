"""While a model version loads, ``/v1`` and V2 agree: 503 with Retry-After, not a 404;
the server itself stays ready (server readiness versus model readiness)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

from tests.conftest import make_client


def test_v1_and_v2_answer_503_with_retry_after_while_a_model_loads(
    tiny_repository: Path, tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(tiny_repository / "tiny_bi", root / "tiny_bi")
    with make_client(root, model_control_mode="explicit") as client:
        app = client.app
        while not hasattr(app, "state"):  # down the ASGI stack to FastAPI
            app = app.app  # type: ignore[attr-defined]
        server = app.state.server  # type: ignore[attr-defined]
        original = server.repository._loader
        release = threading.Event()

        def slow_load(path: Path) -> Any:  # the real load, once the test has looked
            release.wait(30)
            return original(path)

        server.repository._loader = slow_load
        shutil.copytree(tiny_repository / "tiny", root / "tiny")
        loader = threading.Thread(target=client.post, args=("/v2/repository/models/tiny/load",))
        loader.start()
        try:
            for _ in range(200):  # until the load has begun
                if any(s.state == "LOADING" for s in server.repository.index()):
                    break
                threading.Event().wait(0.05)
            body = {"instances": [[[0.1, 0.2, 0.3]]]}
            answers = [
                client.post("/v1/models/tiny:predict", json=body),
                client.get("/v1/models/tiny"),
                client.post("/v2/models/tiny/infer", json={"inputs": []}),
                client.get("/v2/models/tiny"),
            ]
            # Server readiness is not model readiness (KServe, Triton): tiny_bi serves,
            # so the server stays ready while tiny loads; only tiny's own probe says no.
            server_ready = client.get("/v2/health/ready")
            serving_ready = client.get("/v2/models/tiny_bi/ready")
            loading_ready = client.get("/v2/models/tiny/ready")
        finally:
            release.set()
            loader.join(60)
        for answer in answers:
            assert answer.status_code == 503, answer.url
            assert answer.headers["retry-after"] == "1"
            assert answer.json() == {"error": "model 'tiny' version 2 is loading; retry shortly"}
        assert client.post("/v1/models/tiny:predict", json=body).status_code == 200
        assert (server_ready.status_code, server_ready.json()) == (200, {"ready": True})
        assert serving_ready.status_code == 200
        assert loading_ready.status_code == 503
        assert loading_ready.json() == {"error": "model 'tiny' version 2 is loading; retry shortly"}
