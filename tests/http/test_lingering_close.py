"""Over-limit bodies: the 413 reaches clients that send the whole body before reading
(urllib, requests, tritonclient), on a real server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess

LIMIT = 1 << 20
BODY = b'{"instances": [' + b" " * (4 << 20) + b"]}"
MESSAGE = {"error": f"request body is {len(BODY)} bytes; the limit is {LIMIT}"}


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess], tiny_repository: Path) -> ServerProcess:
    return server_factory(tiny_repository, {"LSTM_SERVE_MAX_BODY_BYTES": str(LIMIT)})


@pytest.mark.parametrize("path", ["/v1/models/tiny:predict", "/v2/models/tiny/infer"])
def test_requests_reads_the_413_of_an_over_limit_body(server: ServerProcess, path: str) -> None:
    with requests.Session() as session:
        answer = session.post(server.url + path, data=BODY, timeout=30)
        assert answer.status_code == 413
        assert answer.json() == MESSAGE
        # The rest of the body was read and dropped: the connection serves the next request.
        assert session.get(server.url + "/v2/health/live", timeout=30).status_code == 200


def test_urllib_reads_the_413_of_an_over_limit_body(server: ServerProcess) -> None:
    request = urllib.request.Request(
        server.url + "/v1/models/tiny:predict",
        data=BODY,
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413
    assert json.loads(caught.value.read()) == MESSAGE


def test_tritonclient_reads_the_413_of_an_over_limit_body(server: ServerProcess) -> None:
    x = np.zeros((1, 100_000, 3), dtype=np.float32)  # 1.2 MB of binary tensor data
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    with triton.InferenceServerClient(server.url.removeprefix("http://")) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("tiny", [tensor])
        assert caught.value.status() == "413"
        assert "the limit is 1048576" in caught.value.message()
        assert client.is_server_live()  # the same client goes on
