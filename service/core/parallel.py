"""One batch on several cores: its rows as concurrent onnxruntime calls.

Why: a worker process runs a batch on one onnxruntime thread (``intra_op_threads=1``
scales best across processes). When fewer connections are busy than there are
cores (one client sending 32-sequence requests, or two whose connections the
kernel put on the same worker) the other cores idle. onnxruntime's own intra-op
threads barely help an LSTM, whose recurrence is sequential in time (measured on
the default model, batch 32: 22.7k sequences/s with default threads against 20.0k
with one). Rows are independent, so running a batch's rows as separate calls at
once is exact and scales: two threads of 16 rows each ran 38.0k sequences/s
against 20.7k for one thread of 32, and four threads of 16 rows on two cores
(every worker splitting at once) 37.2k, so splitting when the cores are already
busy costs ~4%.

A batch is split only when a core would otherwise idle: ``CoreBoard`` says which
worker processes of the server have requests in hand (shared memory, one slot per
worker), and a batch gets one part more for each core that no worker holds
(measured on two cores with two workers: splitting whatever the other worker did
added ~200 µs of CPU to a 32-sequence request, GIL hand-offs between three
threads, and lost 7% at four connections while gaining 7-27% at one). And only
when every part keeps ``min_rows`` rows (an LSTM call of 16 rows is as efficient
per row as one of 32; of 8, ~5% less) and ``min_cells`` padded cells (below that
the hand-off costs more than the part's compute).

Splitting changes neither the cells a batch computes nor its memory (the parts
together hold what the one call would have held), so the cost bounds of
``cost.py`` stand. The calling thread runs the first part itself; the rest go to
a pool shared by the process, whose threads never wait on the pool, so nothing
can deadlock.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import MutableSequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def available_cpus(cgroup_cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota.

    A container limited to 2 CPUs on a 64-core host sees 64 in ``os.cpu_count()``;
    ``cpu.max`` (``"200000 100000"``: quota and period) says 2.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


class CoreBoard:
    """Which worker processes of the server are serving requests now.

    ``slots`` is one integer per worker in memory the supervisor shares with them
    (``workers.py``; a plain list in a lone process): the requests the worker has
    inside its batchers (queued, running, being answered). Only the worker's event
    loop writes its slot, so no lock; the others read it without one, since an
    estimate a moment old is all a split decision needs. A worker with a request in
    hand keeps a core busy (its event loop, then its inference thread), so the cores
    that no worker holds are the ones a batch may spread to.
    """

    def __init__(
        self,
        slots: MutableSequence[int] | None = None,
        index: int = 0,
        connections: MutableSequence[int] | None = None,
    ) -> None:
        self._slots: MutableSequence[int] = [0] if slots is None else slots
        self._index = index
        # Open client connections per worker, beside the requests in hand.
        self._connections: MutableSequence[int] = (
            [0] * len(self._slots) if connections is None else connections
        )
        self._closing = 0  # this worker's connections told to close, not yet gone

    def connection_opened(self) -> None:
        self._connections[self._index] += 1

    def connection_closed(self) -> None:
        self._connections[self._index] -= 1

    def crowded(self) -> bool:
        """This worker holds two or more connections more than its least loaded sibling
        (not counting those already told to close). The kernel's hash, not load, put
        them here; ``http/connections.py`` then answers one request with
        ``Connection: close`` so that its client reconnects, and the hash draws again."""
        if len(self._connections) < 2:
            return False
        mine = self._connections[self._index] - self._closing
        fewest = min(n for i, n in enumerate(self._connections) if i != self._index)
        return mine >= fewest + 2

    def closing(self, change: int) -> None:
        self._closing += change

    def enter(self) -> None:
        self._slots[self._index] += 1

    def leave(self) -> None:
        self._slots[self._index] -= 1

    def busy_workers(self) -> int:
        return sum(1 for n in self._slots if n > 0)

    def idle_sibling(self, backlog: int = 2) -> int | None:
        """A sibling with no request in hand while this worker has ``backlog``: where a
        large request runs at once instead of waiting here (``http/peers.py`` hands it
        over). One in hand is the ordinary state of a busy worker (and a sibling between
        two requests has none for a moment), so it takes two to hand over."""
        if self._slots[self._index] < backlog:
            return None
        count = len(self._slots)
        for step in range(1, count):
            sibling = (self._index + step) % count
            if self._slots[sibling] == 0:
                return sibling
        return None


class _View(MutableSequence[int]):
    """A window on shared memory (slicing a ctypes array would copy it)."""

    def __init__(self, shared: MutableSequence[int], start: int, length: int) -> None:
        self._shared, self._start, self._length = shared, start, length

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> int:  # type: ignore[override]
        if not 0 <= i < self._length:
            raise IndexError(i)
        return self._shared[self._start + i]

    def __setitem__(self, i: int, value: int) -> None:  # type: ignore[override]
        if not 0 <= i < self._length:
            raise IndexError(i)
        self._shared[self._start + i] = value

    def __delitem__(self, i: int) -> None:  # type: ignore[override]
        raise TypeError("shared slots are fixed")

    def insert(self, index: int, value: int) -> None:
        raise TypeError("shared slots are fixed")


_board = CoreBoard()


def current_board() -> CoreBoard:
    return _board


def share_board(slots: MutableSequence[int], index: int) -> None:
    """Worker ``index`` of a server whose workers share ``slots`` (before the app starts):
    one integer per worker for its requests in hand, then one for its connections."""
    global _board
    count = len(slots) // 2
    _board = CoreBoard(_View(slots, 0, count), index, _View(slots, count, count))


@dataclass(frozen=True)
class RowSplit:
    """How a batch's rows may be spread over threads, and the threads that help."""

    threads: int
    """Calls of one batch at once (the caller's thread included); 1: never split."""
    executor: Executor | None = None
    """``threads - 1`` helper threads, shared by every model version of the process."""
    board: CoreBoard = field(default_factory=CoreBoard)
    cpus: int = 0
    """The cores the server's processes share (0: as many as ``threads``)."""
    min_rows: int = 16
    min_cells: int = 512

    @classmethod
    def start(cls, threads: int) -> RowSplit | None:
        """``threads`` calls per batch at most (0: one per available CPU); None if 1."""
        cpus = available_cpus()
        threads = threads or cpus
        if threads <= 1:
            return None
        pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="split")
        return cls(threads, pool, _board, cpus)

    def parts(self, rows: int, steps: int) -> list[slice]:
        """Contiguous row ranges of near-equal size; one range when splitting does not pay.

        Called while the batch's requests are in hand: the board counts this worker busy.
        """
        by_rows = rows // self.min_rows
        by_cells = rows * steps // self.min_cells
        idle = (self.cpus or self.threads) - max(1, self.board.busy_workers())
        count = min(self.threads, by_rows, by_cells, 1 + idle)
        if count <= 1:
            return [slice(0, rows)]
        bounds = [round(i * rows / count) for i in range(count + 1)]
        return [slice(a, b) for a, b in itertools.pairwise(bounds)]

    def shutdown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False)
