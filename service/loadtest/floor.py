"""The framework floor: FastAPI returning a constant, under the same uvicorn and workers.

What no endpoint on this stack can beat: uvicorn (httptools, uvloop) parsing the
request, FastAPI routing it, and a constant JSON answer, with the service's worker
count. The benchmark measures it in the same run as the service, on the same body
(``:predict`` with the same payload, read and dropped), so that the service's
figures read as fractions of it and its CPU per request as a floor the service's
own path adds to (issue 27).

    python -m service.loadtest.floor --port 8998 --workers 2   (loopback only)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

ANSWER = b'{"model":"floor","version":"1","predictions":[{"label":"x","probabilities":[1.0]}]}'

app = FastAPI()


@app.post("/v1/models/{name}:predict")
async def predict(request: Request, name: str) -> Response:
    """Reads the body (as any endpoint must), answers a constant."""
    await request.body()
    return Response(ANSWER, media_type="application/json")


@app.get("/v2/health/ready")
async def ready() -> Response:
    return Response(b'{"ready":true}', media_type="application/json")


@contextmanager
def floor_server(port: int, workers: int) -> Iterator[subprocess.Popen[bytes]]:
    """uvicorn with this app on 127.0.0.1:``port``, ``workers`` processes; stopped after."""
    command = [
        sys.executable, "-m", "uvicorn", "service.loadtest.floor:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--http", "httptools", "--loop", "uvloop", "--log-level", "warning",
        "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the floor server did not start") from None
                time.sleep(0.2)
        yield process
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    with floor_server(args.port, args.workers) as process:
        process.wait()


if __name__ == "__main__":
    main()
