"""V2 over gRPC beside V2 over HTTP, as fractions of the machine limit:
``python -m service.loadtest.grpc_bench``.

One server (``python -m service``, ``--workers`` processes, gRPC on its own port)
and, in the same run, the machine's limit (``limit.machine_limit``: plain
onnxruntime on every core, batches of 32). Each point is a closed loop of
``clients`` connections, each sending the next request when the last is answered:

- 32 sequences per request at 1, 2 and 4 clients, and 1 sequence per request at 16;
- over gRPC ``ModelInfer`` with ``raw_input_contents`` (the generated stubs over
  ``grpc.aio``, one channel and TCP connection per client), and over HTTP with V2's binary tensors
  (``run_load``'s client, one keep-alive connection per client);
- the same ``final_output`` asked for, the same random ``x``.

Each row: requests/s, sequences/s, ``x mach`` (sequences/s over the machine's
limit), p50/p99, and the server's CPU per request (``tree_cpu_s`` of its process
tree over the point, divided by the requests answered) with the cores it kept busy.
The clients share the machine's cores with the server, for both protocols alike.
Keep runs short on a shared machine: ``--seconds`` is per point (8 points).

    python -m service.loadtest.grpc_bench --seconds 3 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from service.grpc.generated import grpc_service_pb2 as pb
from service.grpc.generated import grpc_service_pb2_grpc as rpc
from service.loadtest import LoadSpec, run_load
from service.loadtest.limit import machine_limit
from service.loadtest.process import ServerProcess, free_port, start_server, tree_cpu_s
from service.settings import DEFAULT_REPOSITORY

MODEL = "basic_motions"
FEATURES = 6
POINTS: tuple[tuple[int, int], ...] = ((32, 1), (32, 2), (32, 4), (1, 16))
"""(sequences per request, clients)."""
PROTOCOLS = ("grpc-raw", "http-binary")


@dataclass(frozen=True)
class GrpcRow:
    """One point of one protocol."""

    protocol: str
    batch: int
    clients: int
    requests: int
    requests_per_s: float
    sequences_per_s: float
    x_machine: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_request: float
    server_cores: float


def infer_request(batch: int, steps: int, seed: int = 0) -> pb.ModelInferRequest:
    """``ModelInfer`` of ``batch`` random sequences as raw FP32, asking for ``final_output``."""
    x = np.random.default_rng(seed).normal(size=(batch, steps, FEATURES)).astype("<f4")
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(x.tobytes())
    request.outputs.add(name="final_output")
    return request


async def grpc_closed_loop(
    address: str, request: pb.ModelInferRequest, clients: int, seconds: float
) -> tuple[int, list[float], float]:
    """``clients`` channels, each sending ``request`` back to back for ``seconds``:
    requests answered, their latencies (s) and the elapsed time."""
    # A subchannel pool of its own per channel: else grpc shares one TCP connection
    # among every channel to the same address, and one worker would get every call.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(clients)]
    latencies: list[float] = []
    try:
        stubs = [rpc.GRPCInferenceServiceStub(channel) for channel in channels]  # type: ignore[no-untyped-call]
        for stub in stubs:  # connect before the clock starts
            await stub.ModelInfer(request, timeout=30)
        started = time.perf_counter()
        end = started + seconds

        async def client(stub: rpc.GRPCInferenceServiceStub) -> None:
            while (sent := time.perf_counter()) < end:
                await stub.ModelInfer(request, timeout=30)
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client(stub) for stub in stubs))
        return len(latencies), latencies, time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()


def _percentile_ms(latencies: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(latencies) * 1000, q)) if latencies else float("nan")


def measure_grpc(
    server: ServerProcess, port: int, batch: int, clients: int, steps: int, seconds: float
) -> tuple[int, float, float, float, float]:
    """(requests, elapsed s, p50 ms, p99 ms, server CPU s) of one gRPC point."""
    request = infer_request(batch, steps)
    address = f"127.0.0.1:{port}"
    asyncio.run(grpc_closed_loop(address, request, clients, min(1.0, seconds)))  # warm up
    cpu_before = tree_cpu_s(server.process.pid)
    count, latencies, elapsed = asyncio.run(grpc_closed_loop(address, request, clients, seconds))
    cpu_s = tree_cpu_s(server.process.pid) - cpu_before
    return count, elapsed, _percentile_ms(latencies, 50), _percentile_ms(latencies, 99), cpu_s


def measure_http(
    server: ServerProcess, batch: int, clients: int, steps: int, seconds: float
) -> tuple[int, float, float, float, float]:
    """The same for V2 binary over HTTP (``run_load``)."""
    spec = LoadSpec(
        url=server.url,
        model=MODEL,
        protocol="v2-binary",
        batch=batch,
        timesteps=steps,
        concurrency=clients,
        features=FEATURES,
        duration_s=seconds,
        warmup_s=0.0,
        payloads=1,
    )
    run_load(LoadSpec(**{**asdict(spec), "duration_s": min(1.0, seconds)}))  # warm up
    cpu_before = tree_cpu_s(server.process.pid)
    result = run_load(spec)
    cpu_s = tree_cpu_s(server.process.pid) - cpu_before
    answered = sum((result.ok, *result.errors.values()))
    return (
        answered,
        result.elapsed_s,
        result.latency_ms["p50"],
        result.latency_ms["p99"],
        cpu_s,
    )


def compare(
    workers: int = 2, steps: int = 50, seconds: float = 3.0, limit_seconds: float = 2.0
) -> tuple[dict[str, float], list[GrpcRow]]:
    """The machine's limit and every (protocol, point) row, measured in one run."""
    version_dir = max((DEFAULT_REPOSITORY / MODEL).iterdir(), key=lambda p: int(p.name))
    limit = machine_limit(version_dir, 32, steps, limit_seconds, workers)
    port = free_port()
    env = {
        "LSTM_SERVE_WORKERS": str(workers),
        "LSTM_SERVE_LOG_LEVEL": "warning",
        "LSTM_SERVE_GRPC_PORT": str(port),
    }
    rows: list[GrpcRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(DEFAULT_REPOSITORY, Path(tmp) / "server.log", env)
        try:
            for batch, clients in POINTS:
                for protocol in PROTOCOLS:
                    if protocol == "grpc-raw":
                        figures = measure_grpc(server, port, batch, clients, steps, seconds)
                    else:
                        figures = measure_http(server, batch, clients, steps, seconds)
                    count, elapsed, p50, p99, cpu_s = figures
                    sequences_per_s = count * batch / elapsed
                    rows.append(
                        GrpcRow(
                            protocol,
                            batch,
                            clients,
                            count,
                            count / elapsed,
                            sequences_per_s,
                            sequences_per_s / limit["sequences_per_s"],
                            p50,
                            p99,
                            cpu_s / max(count, 1) * 1e6,
                            cpu_s / elapsed,
                        )
                    )
                    print(
                        f"  {protocol} {batch}x{clients}: {count / elapsed:.0f} req/s",
                        file=sys.stderr,
                    )
        finally:
            server.stop()
    return limit, rows


def table(limit: dict[str, float], rows: Sequence[GrpcRow]) -> str:
    lines = [
        f"machine limit: {limit['sequences_per_s']:.0f} sequences/s "
        f"(batches of 32, {limit['processes']:.0f} one-thread processes or default threads)",
        "",
        "| point | protocol | req/s | seq/s | x mach | p50 ms | p99 ms | server CPU µs/req "
        "| cores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.batch} seq/request, {r.clients} client{'s' if r.clients > 1 else ''} | "
            f"{r.protocol} | {r.requests_per_s:.0f} | {r.sequences_per_s:.0f} | "
            f"{r.x_machine:.2f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.server_cpu_us_per_request:.0f} | {r.server_cores:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--steps", type=int, default=50, help="timesteps per sequence")
    parser.add_argument("--seconds", type=float, default=3.0, help="per point and protocol")
    args = parser.parse_args(argv)
    limit, rows = compare(args.workers, args.steps, args.seconds)
    print(table(limit, rows))


if __name__ == "__main__":
    main()
