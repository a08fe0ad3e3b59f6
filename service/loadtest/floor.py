"""The framework floor: FastAPI returning a constant, under the same uvicorn and workers.

What no endpoint on this stack can beat: uvicorn (httptools, uvloop) parsing the
request, FastAPI routing it, and a constant JSON answer, with the service's worker
count. The benchmark measures it in the same run as the service, on the same body
(``:predict`` with the same payload, read and dropped), so that the service's
figures read as fractions of it and its CPU per request as a floor the service's
own path adds to (issue 27).

    python -m service.loadtest.floor --port 8998 --workers 2   (loopback only; one
    process per worker, each with its own SO_REUSEPORT socket, children of this one)
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
    """This app on 127.0.0.1:``port`` in ``workers`` processes, stopped after; yields their parent.

    Each process binds its own ``SO_REUSEPORT`` socket, as the service's workers do
    (``service/workers.py``), so the kernel spreads connections over the floor's
    workers exactly as over the service's. (``uvicorn --workers`` shares one socket
    instead: whichever process wakes first accepts, and 16 connections opened at once
    could land mostly on one worker, a floor lower than the stack's.)
    """
    command = [sys.executable, "-m", "service.loadtest.floor", "--port", str(port)]
    process = subprocess.Popen([*command, "--workers", str(workers)], start_new_session=True)
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
        time.sleep(1.0)  # the other workers bind within the same second; none is left out
        yield process  # the workers are its children: its process tree's CPU is theirs
    finally:
        os.killpg(process.pid, 15)  # the group: the workers too
        process.wait(30)


def serve(port: int) -> None:
    """One floor worker: uvicorn (httptools, uvloop, no access log) on its own socket."""
    import uvicorn

    from service.workers import listening_socket

    config = uvicorn.Config(
        app, http="httptools", loop="uvloop", log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[listening_socket("127.0.0.1", port)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8998)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help="be one worker (internal)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.port)
        return
    one = [sys.executable, "-m", "service.loadtest.floor", "--serve", "--port", str(args.port)]
    workers = [subprocess.Popen(one) for _ in range(args.workers)]
    for worker in workers:
        worker.wait()


if __name__ == "__main__":
    main()
