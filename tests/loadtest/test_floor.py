"""The framework floor the benchmark measures: a real uvicorn answering a constant."""

from __future__ import annotations

import httpx

from service.loadtest.floor import ANSWER, floor_server
from service.loadtest.process import free_port


def test_the_floor_reads_the_body_and_answers_its_constant() -> None:
    port = free_port()
    with floor_server(port, workers=1) as process:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/basic_motions:predict",
            json={"instances": [[[0.0] * 6]]},
            timeout=10,
        )
        assert answer.status_code == 200
        assert answer.content == ANSWER
    assert process.poll() is not None  # stopped by its own PID when the block ends
