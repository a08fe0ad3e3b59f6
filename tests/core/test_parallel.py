"""A batch's rows over several threads (core/parallel.py): the parts cover the batch,
each part pays, and the joined result is what one whole call returns."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.cost import CostLimits, execute
from service.core.parallel import CoreBoard, RowSplit, available_cpus
from service.core.request import Outputs
from service.core.runtime import ModelRuntime, RunResult
from tests.core.test_cost import batch_of


@given(rows=st.integers(1, 2048), steps=st.integers(1, 500), threads=st.integers(2, 16))
def test_parts_cover_the_batch_and_each_pays(rows: int, steps: int, threads: int) -> None:
    split = RowSplit(threads)
    parts = split.parts(rows, steps)
    assert parts[0].start == 0 and parts[-1].stop == rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    assert len(parts) <= threads
    if len(parts) > 1:
        sizes = [p.stop - p.start for p in parts]
        assert min(sizes) >= split.min_rows and max(sizes) - min(sizes) <= 1
        assert min(sizes) * steps >= split.min_cells - steps  # near-equal parts of the cells
    # one call when a second part could not have its rows or its cells
    if rows < 2 * split.min_rows or rows * steps < 2 * split.min_cells:
        assert parts == [slice(0, rows)]


def test_the_benchmark_request_splits_in_two_and_a_small_one_not() -> None:
    split = RowSplit(2)
    assert split.parts(32, 50) == [slice(0, 16), slice(16, 32)]
    assert split.parts(31, 50) == [slice(0, 31)]  # a part of 15 rows would cost more per row
    assert split.parts(32, 1) == [slice(0, 32)]  # one step: the hand-off outweighs the part
    assert RowSplit(4).parts(64, 50) == [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)]


def test_one_thread_means_no_split() -> None:
    assert RowSplit.start(1) is None
    started = RowSplit.start(3)
    assert started is not None and started.threads == 3
    started.shutdown()


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("100000 100000\n", 1), ("150000 100000\n", 2), ("garbled", None)],
)
def test_available_cpus_follow_the_cgroup_quota(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    affinity = len(__import__("os").sched_getaffinity(0))
    assert available_cpus(path) == min(affinity, expected or affinity)
    assert available_cpus(tmp_path / "absent") == affinity


class Threads:
    """The runtime, noting which thread ran each call and how many rows it had."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.metadata = runtime.metadata
        self.padding_output = runtime.padding_output
        self.calls: list[tuple[str, int]] = []

    def zero_states(self, batch: int) -> Any:
        return self.runtime.zero_states(batch)

    def run(self, x: np.ndarray, *args: Any) -> RunResult:
        self.calls.append((threading.current_thread().name, int(x.shape[0])))
        return self.runtime.run(x, *args)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(40, 70), min_size=32, max_size=80),
    threads=st.integers(2, 4),
    which=st.sampled_from(["uni", "bi"]),
    with_states=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_split_calls_equal_one_whole_call(
    uni: ModelRuntime,
    bi: ModelRuntime,
    lengths: list[int],
    threads: int,
    which: str,
    with_states: bool,
    seed: int,
) -> None:
    runtime = uni if which == "uni" else bi
    with_states = with_states and which == "uni"
    x, states = batch_of(runtime, lengths, seed)
    states = states if with_states else None
    n = np.array(lengths, dtype=np.int64)
    everything = Outputs(sequence=True, final=True, states=which == "uni")
    whole = runtime.run(x, n, states, everything)
    split = RowSplit.start(threads)
    assert split is not None
    recording = Threads(runtime)
    try:
        parts = execute(recording, x, n, states, everything, CostLimits(), None, split)  # type: ignore[arg-type]
    finally:
        split.shutdown()
    expected_parts = split.parts(len(lengths), max(lengths))
    assert sorted(rows for _, rows in recording.calls) == sorted(
        p.stop - p.start for p in expected_parts
    )
    # the caller ran one part, helper threads the others
    caller = threading.current_thread().name
    assert [name for name, _ in recording.calls].count(caller) == 1
    assert len({name for name, _ in recording.calls}) >= 2
    assert whole.sequence_output is not None and parts.sequence_output is not None
    np.testing.assert_allclose(parts.sequence_output, whole.sequence_output, atol=2e-6)
    np.testing.assert_allclose(parts.final_output, whole.final_output, atol=2e-6)  # type: ignore[arg-type]
    assert len(parts.final_states) == len(whole.final_states)
    for (h, c), (ph, pc) in zip(whole.final_states, parts.final_states, strict=True):
        np.testing.assert_allclose(ph, h, atol=2e-6)
        np.testing.assert_allclose(pc, c, atol=2e-6)


def test_a_terminated_batch_stops_every_part(uni: ModelRuntime) -> None:
    """The batcher's ``terminate`` reaches the helper threads' calls too, and the batch
    fails as a whole (the caller gets onnxruntime's error, nobody gets half a batch)."""
    x, _ = batch_of(uni, [50] * 32, seed=1)
    options = ort.RunOptions()
    options.terminate = True
    split = RowSplit.start(2)
    assert split is not None
    try:
        with pytest.raises(Exception, match=r"(?i)terminat"):
            execute(
                uni, x, np.full(32, 50), None, Outputs(False, True), CostLimits(), options, split
            )
    finally:
        split.shutdown()


def test_the_board_counts_workers_with_requests_in_hand() -> None:
    slots = [0, 0, 0]
    mine, theirs = CoreBoard(slots, 0), CoreBoard(slots, 2)
    mine.enter()
    mine.enter()
    theirs.enter()
    assert slots == [2, 0, 1] and mine.busy_workers() == theirs.busy_workers() == 2
    mine.leave()
    mine.leave()
    assert slots == [0, 0, 1] and mine.busy_workers() == 1


@pytest.mark.parametrize(
    ("slots", "parts"),
    [([1, 0], 2), ([1, 1], 1), ([0, 0], 2), ([3, 0, 0, 0], 4), ([1, 1, 1, 0], 2)],
)
def test_a_batch_spreads_only_to_cores_no_worker_holds(slots: list[int], parts: int) -> None:
    """Worker 0's batch of 64 rows, its siblings' slots as given; one core each."""
    split = RowSplit(len(slots), board=CoreBoard(slots, 0), cpus=len(slots))
    assert len(split.parts(64, 50)) == parts


def test_a_request_holds_its_worker_on_the_board_until_answered(uni: ModelRuntime) -> None:
    """The batcher marks the worker busy from submit to answer, and clears it after,
    failures included."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from service.core.batching import BatchingOptions, DynamicBatcher
    from service.core.request import InferenceRequest

    slots = [0, 1]  # the sibling is busy: no split, whatever the batch
    split = RowSplit(2, ThreadPoolExecutor(1), CoreBoard(slots, 0), cpus=2)
    seen: list[list[int]] = []

    class Watching(Threads):
        def run(self, x: np.ndarray, *args: Any) -> RunResult:
            seen.append(list(slots))
            return super().run(x, *args)

    watching = Watching(uni)
    watching.metrics = uni.metrics  # type: ignore[attr-defined]
    executor = ThreadPoolExecutor(1)
    batcher = DynamicBatcher(watching, executor, BatchingOptions(), split=split, board=split.board)  # type: ignore[arg-type]
    x, _ = batch_of(uni, [50] * 32, seed=2)

    async def go() -> None:
        await batcher.submit(InferenceRequest(x, np.full(32, 50)))
        with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
            await batcher.submit(InferenceRequest(x[:, :, :1].copy(), np.full(32, 50)))

    try:
        asyncio.run(go())
    finally:
        executor.shutdown()
        split.shutdown()
    assert seen[0] == [1, 1] and slots == [0, 1]
    assert [rows for _, rows in watching.calls][:1] == [32]  # one call: no idle core


@pytest.mark.parametrize(
    ("slots", "index", "backlog", "sibling"),
    [
        ([2, 0], 0, 2, 1),  # a backlog here, nothing there: hand over
        ([1, 0], 0, 2, None),  # one in hand is a busy worker's ordinary state
        ([1, 0], 0, 1, 1),
        ([2, 1], 0, 2, None),  # the sibling is busy too
        ([0, 3, 1, 0], 1, 2, 3),  # the next idle one after this worker
        ([0, 0], 1, 1, None),  # nothing in hand here
    ],
)
def test_a_backlog_goes_to_a_sibling_with_nothing_in_hand(
    slots: list[int], index: int, backlog: int, sibling: int | None
) -> None:
    assert CoreBoard(slots, index).idle_sibling(backlog) == sibling


@pytest.mark.parametrize(
    ("connections", "index", "closing", "crowded"),
    [
        ([3, 1], 0, 0, True),
        ([2, 1], 0, 0, False),  # one more is as even as two workers get
        ([3, 1], 0, 1, False),  # one already told to close
        ([1, 3], 0, 0, False),
        ([5, 3, 4], 0, 0, True),
        ([4], 0, 0, False),  # a lone worker has nobody to share with
    ],
)
def test_a_worker_is_crowded_two_connections_past_its_least_loaded_sibling(
    connections: list[int], index: int, closing: int, crowded: bool
) -> None:
    board = CoreBoard([0] * len(connections), index, connections)
    board.closing(closing)
    assert board.crowded() is crowded


def test_shared_slots_split_into_requests_and_connections() -> None:
    from service.core import parallel

    shared = [0, 0, 0, 0]  # as the supervisor's RawArray for two workers
    before = parallel.current_board()
    try:
        parallel.share_board(shared, 1)
        board = parallel.current_board()
        board.enter()
        board.connection_opened()
        board.connection_opened()
        assert shared == [0, 1, 0, 2]
        assert board.busy_workers() == 1
    finally:
        parallel._board = before
