"""The CPU budget: a worker's CPU charged, nanosecond by nanosecond, to the step of the
request path that spent it, measured on the thread where the step runs.

Why in the server, not beside it: a request's cost is spread over many small steps on
two kinds of thread (the event loop; the inference threads) and the hand-offs
between them. Timing a step's code alone in a loop (``loadtest/budget.py``) misses
the hand-offs, the callbacks and the loop itself; a sampling profiler cannot tell a
thread waiting for the GIL from one working. So each step charges
``time.thread_time_ns()`` deltas (this thread's CPU, not wall time: another task or
process running meanwhile is not charged) to its name, and the flush compares their
sum with each thread's and the process's own CPU clock. What no step claims is
reported as unattributed, per thread, never folded into a step.

How a step is marked:

- **a request's task** (``timed``: the ASGI app's coroutine driven step by step):
  every slice of the task between two suspensions is charged to the step current
  at the time; ``step(name)`` switches the current step mid-slice. Nothing another
  task or callback runs between the slices is charged to this request's steps.
- **a callback or a section on another thread**: ``section(name)`` ...
  ``step(name)`` ... ``end()``, the same meter held for the section's duration.

Off unless ``LSTM_SERVE_CPU_BUDGET`` is set: then every call here is one global
check. On, the clock reads (a ``clock_gettime`` syscall each, ~0.25 µs), the
context variable and the coroutine driver cost 3-14 % of a request's CPU (measured
by the benchmark, which prints the same point with the budget off beside it), so
read the steps as shares of the total rather than as exact microseconds. Totals go to the
``lstm_cpu_budget_seconds_total`` counter (summed over workers, like every metric)
at most every ``FLUSH_S``; the benchmark reads them around a load point.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Generator
from contextvars import ContextVar
from dataclasses import dataclass, field
from time import thread_time_ns
from typing import Any, TypeVar

from prometheus_client import Counter

T = TypeVar("T")

FLUSH_S = 0.25
"""How often a worker adds its counts to the Prometheus counter."""

CPU_BUDGET = Counter(
    "lstm_cpu_budget_seconds",
    "CPU charged to each step of the request path, by thread kind (LSTM_SERVE_CPU_BUDGET). "
    "step='thread total' is the thread kind's own CPU clock; 'process' the whole process's.",
    ["thread", "step"],
)

LOOP = "event loop"
INFERENCE = "inference"
"""The two kinds of thread a request's CPU is spent on."""

_enabled = False


@dataclass
class _Meter:
    """The step being charged in one task or section, and when its charge began."""

    step: str
    mark: int
    counts: defaultdict[str, int]


@dataclass
class _Thread:
    """One thread's charges, only ever written by that thread (no lock on the hot path)."""

    kind: str
    counts: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    cpu_ns: int = 0
    """The thread's own CPU clock, as it last read it (inference threads, per batch)."""


_meter: ContextVar[_Meter | None] = ContextVar("lstm_cpu_budget_meter", default=None)
_local = threading.local()
_threads: list[_Thread] = []
_threads_lock = threading.Lock()


def enable() -> None:
    """Turn the budget on for this process (a worker, at startup)."""
    global _enabled
    _enabled = True
    gc.callbacks.append(_collecting)


_gc_started = threading.local()


def _collecting(phase: str, info: dict[str, int]) -> None:
    """Charge a garbage collection to its own step, not to the step it interrupted.

    A collection runs when allocations cross a threshold, inside whatever step made
    the last one; without this, its cost would land on an arbitrary step.
    """
    if phase == "start":
        _gc_started.ns = thread_time_ns()
        return
    spent = thread_time_ns() - getattr(_gc_started, "ns", thread_time_ns())
    meter = _meter.get()
    if meter is not None:
        meter.mark += spent  # the interrupted step resumes its charge after the collection
    kind = LOOP if threading.current_thread() is threading.main_thread() else INFERENCE
    _this_thread(kind).counts[f"garbage collection (generation {info['generation']})"] += spent


def enabled() -> bool:
    return _enabled


def _this_thread(kind: str) -> _Thread:
    found: _Thread | None = getattr(_local, "budget", None)
    if found is None:
        found = _local.budget = _Thread(kind)
        with _threads_lock:
            _threads.append(found)
    return found


def step(name: str) -> None:
    """From here on, charge the current task's or section's CPU to ``name``."""
    if not _enabled:
        return
    meter = _meter.get()
    if meter is None:
        return
    now = thread_time_ns()
    meter.counts[meter.step] += now - meter.mark
    meter.step, meter.mark = name, now


def section(name: str, kind: str = INFERENCE) -> object:
    """Start charging this thread's CPU to ``name`` (a callback, or an inference call);
    pass what it returns to ``end``."""
    if not _enabled:
        return None
    meter = _Meter(name, thread_time_ns(), _this_thread(kind).counts)
    return _meter.set(meter)


def end(token: object) -> None:
    """Close a ``section``: charge its last step, and note the thread's own CPU clock."""
    if token is None:
        return
    meter = _meter.get()
    now = thread_time_ns()
    if meter is not None:
        meter.counts[meter.step] += now - meter.mark
    _this_thread(INFERENCE).cpu_ns = now
    _meter.reset(token)  # type: ignore[arg-type]


class _Timed:
    """Drive a coroutine slice by slice, charging each slice to the meter's current step."""

    __slots__ = ("_awaitable", "_meter")

    def __init__(self, awaitable: Awaitable[Any], meter: _Meter) -> None:
        self._awaitable, self._meter = awaitable, meter

    def __await__(self) -> Generator[Any, Any, Any]:
        coro: Generator[Any, Any, Any] = self._awaitable.__await__()
        meter = self._meter
        token = _meter.set(meter)
        try:
            sent: Any = None
            thrown: BaseException | None = None
            while True:
                meter.mark = thread_time_ns()
                try:
                    yielded = coro.send(sent) if thrown is None else coro.throw(thrown)
                except StopIteration as done:
                    return done.value
                finally:
                    meter.counts[meter.step] += thread_time_ns() - meter.mark
                try:
                    sent, thrown = (yield yielded), None
                except BaseException as exc:  # cancellation and the like reach the coroutine
                    sent, thrown = None, exc
        finally:
            _meter.reset(token)


async def timed(coro: Awaitable[T], first: str) -> T:
    """Run ``coro`` (a request's handling, on the event loop) with its CPU budgeted,
    starting at step ``first``."""
    if not _enabled:
        return await coro
    meter = _Meter(first, 0, _this_thread(LOOP).counts)
    result: T = await _Timed(coro, meter)
    return result


def _flush(loop_thread: _Thread, last: dict[tuple[str, str], int]) -> None:
    """Add what was charged since the last flush to the counter."""
    loop_thread.cpu_ns = thread_time_ns()
    now: dict[tuple[str, str], int] = defaultdict(int)
    with _threads_lock:
        threads = list(_threads)
    for thread in threads:
        for name, ns in list(thread.counts.items()):
            now[(thread.kind, name)] += ns
        now[(thread.kind, "thread total")] += thread.cpu_ns
    now[("process", "process")] = time.process_time_ns()
    for key, ns in now.items():
        delta = ns - last.get(key, 0)
        if delta > 0:
            CPU_BUDGET.labels(*key).inc(delta / 1e9)
        last[key] = ns


async def flush_forever() -> None:
    """The worker's flusher (started by the server when the budget is on)."""
    loop_thread = _this_thread(LOOP)
    last: dict[tuple[str, str], int] = {}
    try:
        while True:
            _flush(loop_thread, last)
            await asyncio.sleep(FLUSH_S)
    finally:
        _flush(loop_thread, last)
