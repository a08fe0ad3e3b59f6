"""Closed and open loops over ``client.Connection``s, bounded in time and count.

Phases: requests issued before ``measure_start`` are warm-up and not recorded;
those issued in ``[measure_start, measure_end)`` are, up to ``max_requests``;
after that nothing new is issued and the run ends when the last request in
flight finishes or times out.

- Closed loop: ``concurrency`` connections, each sending its next request from
  inside the callback that delivered the previous response.
- Open loop: a schedule of one request every ``1/rate`` s. Latency runs from the
  *scheduled* time, so a slow server cannot hide its queueing by slowing the
  client (coordinated omission). A request whose slot comes while
  ``max_in_flight`` are outstanding is ``dropped`` and counted, not delayed.
  The scheduler sleeps at the event loop's timer resolution (about 1 ms) and
  sends every due request when it wakes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

from service.loadtest.client import CONNECTION, TIMEOUT, Connection, Outcome, open_connection
from service.loadtest.progress import Progress
from service.loadtest.spec import LoadSpec, Target
from service.loadtest.stats import Recorder

WARMUP, MEASURE, STOP = 0, 1, 2
TICK_S = 0.1  # timeouts are checked and the bar redrawn this often
RECONNECT_DELAY_S = 0.05  # a refused connection is retried after this, not in a spin


class Engine:
    """One run: create it inside the event loop, then ``await engine.run()``."""

    def __init__(
        self, spec: LoadSpec, target: Target, requests: list[bytes], progress: bool = False
    ) -> None:
        self.spec = spec
        self.target = target
        self.recorder = Recorder()
        self._requests = requests
        self._next = 0
        self._loop = asyncio.get_running_loop()
        self._progress = Progress(spec.warmup_s + spec.duration_s, progress)
        self._connections: set[Connection] = set()
        self._idle: list[Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending = 0  # requests in flight, connecting ones included
        self._issued = 0  # measured requests sent
        self._stopping = False
        self._done = asyncio.Event()
        self.t0 = self.measure_start = self.measure_end = 0.0
        self.cpu_start = self.cpu_end = 0.0

    # -- phases ---------------------------------------------------------------

    def _phase(self, t: float) -> int:
        if self._stopping:
            return STOP
        if t < self.measure_start:
            return WARMUP
        limit = self.spec.max_requests
        if t >= self.measure_end or (limit is not None and self._issued >= limit):
            self._stop()
            return STOP
        return MEASURE

    def _stop(self) -> None:
        self._stopping = True
        if self._pending == 0:
            self._done.set()

    # -- requests ---------------------------------------------------------------

    def _start(self, started: float, phase: int, conn: Connection | None) -> None:
        """Issue one request on ``conn``, or on a new connection when there is none."""
        counted = phase == MEASURE
        if counted:
            self._issued += 1
            if self._issued == 1:
                self.cpu_start = time.process_time()
        self._pending += 1
        if conn is None or conn.closed:
            self._spawn(self._connect_and_send(started, counted))
        else:
            self._send(conn, started, counted)

    def _send(self, conn: Connection, started: float, counted: bool) -> None:
        request = self._requests[self._next]
        self._next = (self._next + 1) % len(self._requests)
        conn.send(request, started, counted)

    async def _connect_and_send(self, started: float, counted: bool) -> None:
        try:
            conn = await asyncio.wait_for(self._open(), self.spec.timeout_s)
        except (OSError, TimeoutError) as exc:
            outcome = TIMEOUT if isinstance(exc, TimeoutError) else CONNECTION
            self._complete(None, outcome, started, counted, time.perf_counter())
            return
        self._send(conn, started, counted)

    async def _open(self) -> Connection:
        conn = await open_connection(self.target, self._on_response)
        self._connections.add(conn)
        return conn

    def _on_response(self, conn: Connection, outcome: Outcome, finished: float) -> None:
        self._complete(conn, outcome, conn.started, conn.counted, finished)

    def _complete(
        self,
        conn: Connection | None,
        outcome: Outcome,
        started: float,
        counted: bool,
        finished: float,
    ) -> None:
        self._pending -= 1
        if counted:
            self.recorder.record(outcome, started, finished)
            if conn is not None and self.spec.rate is not None:
                self.recorder.lag(started, conn.sent_at)
        if conn is not None and conn.closed:
            self._connections.discard(conn)
        if self.spec.rate is None:
            self._closed_next(conn, outcome)
        elif conn is not None and not conn.closed:
            self._idle.append(conn)
        if self._stopping and self._pending == 0:
            self._done.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- closed loop --------------------------------------------------------------

    def _closed_next(self, conn: Connection | None, outcome: Outcome) -> None:
        if outcome == CONNECTION:
            self._pending += 1  # the worker stays in flight while it waits to retry
            self._loop.call_later(RECONNECT_DELAY_S, self._closed_retry)
            return
        self._closed_issue(conn)

    def _closed_retry(self) -> None:
        self._pending -= 1
        self._closed_issue(None)
        if self._stopping and self._pending == 0:
            self._done.set()

    def _closed_issue(self, conn: Connection | None) -> None:
        now = time.perf_counter()
        phase = self._phase(now)
        if phase != STOP:
            self._start(now, phase, conn)

    # -- open loop ----------------------------------------------------------------

    async def _schedule(self, rate: float) -> None:
        interval = 1.0 / rate
        slot = 0
        while True:
            now = time.perf_counter()
            due = self.t0 + slot * interval
            while due <= now:
                phase = self._phase(due)
                if phase == STOP:
                    return
                if self._idle:
                    self._start(due, phase, self._idle.pop())
                elif self._pending < self.spec.max_in_flight:
                    self._start(due, phase, None)
                elif phase == MEASURE:
                    self.recorder.dropped += 1
                slot += 1
                due = self.t0 + slot * interval
            await asyncio.sleep(max(due - now, 0.001))

    # -- the run ------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.perf_counter()
        for conn in list(self._connections):
            if conn.busy and now - conn.sent_at > self.spec.timeout_s:
                conn.expire()
        rec = self.recorder
        self._progress.update(
            now - self.t0, now >= self.measure_start, rec.ok, rec.requests - rec.ok
        )
        if not self._done.is_set():
            self._loop.call_later(TICK_S, self._tick)

    async def _warm_connections(self, count: int) -> None:
        """Open the first connections before the clock starts; refused ones are retried later."""
        opened = await asyncio.gather(
            *(asyncio.wait_for(self._open(), self.spec.timeout_s) for _ in range(count)),
            return_exceptions=True,
        )
        self._idle.extend(conn for conn in opened if isinstance(conn, Connection))

    async def run(self) -> None:
        """Run warm-up and measurement; returns once every request has finished."""
        spec = self.spec
        await self._warm_connections(min(spec.concurrency, spec.max_in_flight))
        self.t0 = time.perf_counter()
        self.measure_start = self.t0 + spec.warmup_s
        self.measure_end = self.measure_start + spec.duration_s
        self._tick()
        if spec.rate is not None:
            self._spawn(self._schedule(spec.rate))
        else:
            idle, self._idle = self._idle, []
            for i in range(spec.concurrency):
                self._closed_issue(idle[i] if i < len(idle) else None)
            # Stop on time even if every worker is waiting on a connect or a slow answer.
            # (The open loop's schedule stops itself: its slots, not a timer, decide.)
            self._loop.call_at(self._loop_time(self.measure_end), self._stop)
        try:
            limit = spec.warmup_s + spec.duration_s + 2 * spec.timeout_s + 5
            await asyncio.wait_for(self._done.wait(), limit)
        except TimeoutError:
            pass  # a bounded run ends even if something never answered
        finally:
            self.cpu_end = time.process_time()
            self._shutdown()

    def _loop_time(self, perf: float) -> float:
        return self._loop.time() + (perf - time.perf_counter())

    def _shutdown(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for conn in self._connections:
            conn.close()
        self._progress.close()
