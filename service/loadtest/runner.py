"""``run_load`` and ``run_sweep``: synchronous entry points that own their event loop.

Everything slow or fallible happens before the clock starts: the spec is
validated, the feature count is asked of the server when not given, and every
request is encoded to bytes. uvloop is used when importable (it ships with
``uvicorn[standard]``) because its transports cost a fraction of asyncio's per
write and per read, and the client's CPU is taken from the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from service.loadtest.client import encode_request, get_json
from service.loadtest.engine import Engine
from service.loadtest.payloads import build_payloads
from service.loadtest.spec import LoadSpec, SpecError, Target, validate
from service.loadtest.stats import LoadResult, summarise


def _loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop, "asyncio"
    return uvloop.new_event_loop, "uvloop"


async def discover_features(
    target: Target, model: str, timeout: float, headers: tuple[tuple[str, str], ...] = ()
) -> int:
    """The last dimension of input ``x`` in ``GET /v2/models/{model}``."""
    path = f"/v2/models/{model}"
    try:
        status, meta = await get_json(target, path, timeout, headers)
    except (OSError, TimeoutError) as exc:
        raise SpecError(
            f"cannot read GET {path} from {target.authority} to learn the feature count "
            f"({exc.__class__.__name__}: {exc}); is the server up? or pass --features"
        ) from None
    if status != 200 or not isinstance(meta, dict):
        raise SpecError(f"GET {path} answered {status}; check --model, or pass --features")
    for tensor in meta.get("inputs", []):
        if tensor.get("name") == "x" and tensor.get("shape"):
            return int(tensor["shape"][-1])
    raise SpecError(f"GET {path} lists no input 'x' with a shape; pass --features")


async def _run(spec: LoadSpec, target: Target, progress: bool, event_loop: str) -> LoadResult:
    features = spec.features
    if features is None:
        features = await discover_features(target, spec.model, spec.timeout_s, spec.auth_headers())
    payloads = build_payloads(
        spec.protocol,
        spec.model,
        batch=spec.batch,
        timesteps=spec.timesteps,
        features=features,
        return_sequences=spec.return_sequences,
        count=spec.payloads,
        seed=spec.seed,
    )
    auth = spec.auth_headers()
    requests = [
        encode_request(target, "POST", p.path, p.body, (*p.headers, *auth)) for p in payloads
    ]
    engine = Engine(spec, target, requests, progress)
    await engine.run()
    return summarise(
        spec,
        engine.recorder,
        measure_start=engine.measure_start,
        client_cpu_s=max(engine.cpu_end - engine.cpu_start, 0.0),
        features=features,
        event_loop=event_loop,
    )


def run_load(spec: LoadSpec, *, progress: bool = False) -> LoadResult:
    """Run one load test against ``spec.url``; returns when it is over (it always ends).

    Raises ``SpecError`` before sending anything if the spec is invalid, the URL
    is not loopback (and ``allow_remote`` is off), or the feature count cannot be
    learnt from the server.
    """
    target = validate(spec)
    factory, name = _loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_run(spec, target, progress, name))


def sweep_specs(
    spec: LoadSpec,
    *,
    concurrencies: Sequence[int] = (),
    rates: Sequence[float] = (),
) -> list[LoadSpec]:
    """One spec per point: closed loop per concurrency, or open loop per rate (not both)."""
    if bool(concurrencies) == bool(rates):
        raise SpecError("a sweep needs either concurrencies (closed loop) or rates (open loop)")
    if rates:
        return [replace(spec, rate=float(rate)) for rate in rates]
    return [replace(spec, rate=None, concurrency=int(c)) for c in concurrencies]


def run_sweep(
    spec: LoadSpec,
    *,
    concurrencies: Sequence[int] = (),
    rates: Sequence[float] = (),
    progress: bool = False,
    pause_s: float = 0.5,
    on_result: Callable[[LoadResult], None] | None = None,
) -> list[LoadResult]:
    """Run each point in turn; ``pause_s`` between points lets the server drain."""
    results: list[LoadResult] = []
    specs = sweep_specs(spec, concurrencies=concurrencies, rates=rates)
    for i, point in enumerate(specs):
        if i:
            time.sleep(pause_s)
        result = run_load(point, progress=progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results
