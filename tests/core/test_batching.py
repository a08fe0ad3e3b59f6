"""The dynamic batcher on real onnxruntime sessions: merged answers equal lone ones, bounds hold."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.batching import BatchingOptions, DynamicBatcher, length_bucket
from service.core.errors import DeadlineExceeded, Overloaded
from service.core.runtime import ModelRuntime
from service.core.types import InferenceRequest, Outputs, RunResult, State


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def make_request(
    rng: np.random.Generator,
    runtime: ModelRuntime,
    lengths: list[int],
    *,
    want_sequence: bool = True,
    want_final: bool = True,
    want_states: bool = False,
    with_states: bool = False,
    deadline_s: float = 30.0,
) -> InferenceRequest:
    meta = runtime.metadata
    steps = max(lengths)
    x = rng.normal(size=(len(lengths), steps, meta.num_features)).astype(np.float32)
    for i, n in enumerate(lengths):
        x[i, n:] = 0.0  # padding: whatever is there must not matter, zeros are what clients send
    states: list[State] | None = None
    if with_states:
        states = [
            (
                rng.normal(size=meta.state_shape(i, len(lengths))).astype(np.float32),
                rng.normal(size=meta.state_shape(i, len(lengths))).astype(np.float32),
            )
            for i in range(len(meta.layers))
        ]
    return InferenceRequest(
        x=x,
        lengths=np.array(lengths, dtype=np.int64),
        states=states,
        outputs=Outputs(want_sequence, want_final, want_states),
        deadline=time.monotonic() + deadline_s,
    )


def alone(runtime: ModelRuntime, r: InferenceRequest) -> RunResult:
    return runtime.run(r.x, r.lengths, r.states, r.outputs)


def assert_same(got: RunResult, want: RunResult, r: InferenceRequest) -> None:
    """Equal where the request asked, and shaped exactly as a lone run would be."""
    if r.outputs.sequence:
        assert got.sequence_output is not None and want.sequence_output is not None
        assert got.sequence_output.shape == want.sequence_output.shape
        np.testing.assert_allclose(got.sequence_output, want.sequence_output, atol=1e-5, rtol=0)
    if r.outputs.final:
        assert got.final_output is not None and want.final_output is not None
        assert got.final_output.shape == want.final_output.shape
        np.testing.assert_allclose(got.final_output, want.final_output, atol=1e-5, rtol=0)
    if r.outputs.states:
        assert len(got.final_states) == len(want.final_states)
        for (gh, gc), (wh, wc) in zip(got.final_states, want.final_states, strict=True):
            assert gh.shape == wh.shape and gc.shape == wc.shape
            np.testing.assert_allclose(gh, wh, atol=1e-5, rtol=0)
            np.testing.assert_allclose(gc, wc, atol=1e-5, rtol=0)


async def submit_all(
    batcher: DynamicBatcher, requests: list[InferenceRequest]
) -> list[RunResult | BaseException]:
    try:
        return await asyncio.gather(*(batcher.submit(r) for r in requests), return_exceptions=True)
    finally:
        await batcher.close()


request_shape = st.tuples(
    st.lists(st.integers(1, 24), min_size=1, max_size=4),  # per-sequence lengths
    st.booleans(),  # want_sequence (else final)
    st.booleans(),  # want_states
    st.booleans(),  # carries initial states
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shapes=st.lists(request_shape, min_size=1, max_size=12),
    bidirectional=st.booleans(),
    ratio=st.sampled_from([1.5, 2.0, 1e9]),
    seed=st.integers(0, 2**16),
)
def test_batched_answers_equal_lone_answers(
    uni: ModelRuntime,
    bi: ModelRuntime,
    executor: ThreadPoolExecutor,
    shapes: list[tuple[list[int], bool, bool, bool]],
    bidirectional: bool,
    ratio: float,
    seed: int,
) -> None:
    runtime = bi if bidirectional else uni
    rng = np.random.default_rng(seed)
    requests = [
        make_request(
            rng,
            runtime,
            lengths,
            want_sequence=seq,
            want_final=not seq,
            want_states=states,
            with_states=carry and not bidirectional,
        )
        for lengths, seq, states, carry in shapes
    ]
    options = BatchingOptions(max_batch_size=8, bucket_ratio=ratio, slots=1)
    batcher = DynamicBatcher(runtime, executor, options)
    results = asyncio.run(submit_all(batcher, requests))
    for r, got in zip(requests, results, strict=True):
        assert isinstance(got, RunResult), got
        assert_same(got, alone(runtime, r), r)
    assert batcher.stats.requests == len(requests)
    assert batcher.stats.sequences == sum(r.batch_size for r in requests)
    assert batcher.stats.dropped == 0


def test_concurrent_requests_share_calls(uni: ModelRuntime, executor: ThreadPoolExecutor) -> None:
    """Sixteen single-sequence requests submitted together run as two full batches of eight."""
    rng = np.random.default_rng(0)
    requests = [make_request(rng, uni, [10]) for _ in range(16)]
    batcher = DynamicBatcher(uni, executor, BatchingOptions(max_batch_size=8, slots=1))
    results = asyncio.run(submit_all(batcher, requests))
    assert all(isinstance(r, RunResult) for r in results)
    assert (batcher.stats.calls, batcher.stats.requests, batcher.stats.sequences) == (2, 16, 16)


def test_length_buckets_keep_short_sequences_apart_from_long_ones(
    uni: ModelRuntime, executor: ThreadPoolExecutor
) -> None:
    rng = np.random.default_rng(1)
    requests = [make_request(rng, uni, [n]) for n in (3, 200, 3, 200, 2)]
    batcher = DynamicBatcher(uni, executor, BatchingOptions(max_batch_size=32, slots=1))
    results = asyncio.run(submit_all(batcher, requests))
    for r, got in zip(requests, results, strict=True):
        assert isinstance(got, RunResult)
        assert_same(got, alone(uni, r), r)
    assert batcher.stats.calls == 2  # {3, 3, 2} and {200, 200}


def test_length_bucket_bounds_padding() -> None:
    assert [length_bucket(n, 2.0) for n in (1, 2, 3, 4, 7, 8, 100, 127, 128)] == [
        0, 1, 1, 2, 2, 3, 6, 6, 7,
    ]  # fmt: skip
    for n in range(1, 2000):
        same = [m for m in range(1, 2000) if length_bucket(m, 2.0) == length_bucket(n, 2.0)]
        assert max(same) < 2 * min(same)


def test_a_single_request_larger_than_a_batch_still_runs(
    uni: ModelRuntime, executor: ThreadPoolExecutor
) -> None:
    rng = np.random.default_rng(2)
    big = make_request(rng, uni, [5] * 20)
    batcher = DynamicBatcher(uni, executor, BatchingOptions(max_batch_size=4, slots=1))
    [got] = asyncio.run(submit_all(batcher, [big]))
    assert isinstance(got, RunResult)
    assert_same(got, alone(uni, big), big)


class Gate:
    """A one-thread executor held shut, so the batcher's only slot stays busy on demand.

    The first request submitted takes the slot and waits behind the gate; later
    ones queue in the batcher, which is the state these tests need to inspect.
    """

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1)
        self._open = threading.Event()
        self.executor.submit(self._open.wait, 30)

    def open(self) -> None:
        self._open.set()


@pytest.fixture
def gate() -> Iterator[Gate]:
    shut = Gate()
    yield shut
    shut.open()
    shut.executor.shutdown(wait=True)


def test_a_full_queue_refuses_at_once(uni: ModelRuntime, gate: Gate) -> None:
    rng = np.random.default_rng(3)
    options = BatchingOptions(max_batch_size=1, max_queue_size=2, slots=1)
    batcher = DynamicBatcher(uni, gate.executor, options)

    async def scenario() -> list[RunResult | BaseException]:
        busy = asyncio.ensure_future(batcher.submit(make_request(rng, uni, [4])))
        await asyncio.sleep(0.05)  # it holds the slot, behind the gate
        queued = [
            asyncio.ensure_future(batcher.submit(make_request(rng, uni, [4]))) for _ in range(2)
        ]
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 2
        # The gauge counts the two queued and the one in its call, set per batch event.
        assert uni.metrics.queue_depth._value.get() == 3
        refused = await asyncio.gather(
            *(batcher.submit(make_request(rng, uni, [4])) for _ in range(3)),
            return_exceptions=True,
        )
        gate.open()
        done = await asyncio.gather(busy, *queued, return_exceptions=True)
        assert uni.metrics.queue_depth._value.get() == 0
        await batcher.close()
        return list(refused) + list(done)

    results = asyncio.run(scenario())
    for exc in results[:3]:
        assert isinstance(exc, Overloaded)
        assert exc.message == "the model's queue is full (2 requests waiting); retry later"
    assert [type(r).__name__ for r in results[3:]] == ["RunResult"] * 3


def test_without_dynamic_batching_every_request_is_its_own_call_and_all_count(
    uni: ModelRuntime, gate: Gate
) -> None:
    """Batching off: accepted requests go straight to the threads, at most max_queue_size."""
    rng = np.random.default_rng(5)
    options = BatchingOptions(dynamic=False, max_batch_size=1, max_queue_size=3, slots=3)
    batcher = DynamicBatcher(uni, gate.executor, options)

    async def scenario() -> list[RunResult | BaseException]:
        accepted = [
            asyncio.ensure_future(batcher.submit(make_request(rng, uni, [4]))) for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        assert batcher.queue_depth == 0 and batcher.in_flight == 3  # all handed to threads
        refused = await asyncio.gather(
            *(batcher.submit(make_request(rng, uni, [4])) for _ in range(2)),
            return_exceptions=True,
        )
        gate.open()
        done = await asyncio.gather(*accepted, return_exceptions=True)
        await batcher.close()
        return list(refused) + list(done)

    results = asyncio.run(scenario())
    for exc in results[:2]:
        assert isinstance(exc, Overloaded)
        assert exc.message == "the model's queue is full (3 requests waiting); retry later"
    assert [type(r).__name__ for r in results[2:]] == ["RunResult"] * 3
    assert (batcher.stats.calls, batcher.stats.requests) == (3, 3)


def test_a_request_past_its_deadline_fails_and_its_work_is_dropped(
    uni: ModelRuntime, gate: Gate
) -> None:
    rng = np.random.default_rng(4)
    batcher = DynamicBatcher(uni, gate.executor, BatchingOptions(max_batch_size=1, slots=1))

    async def scenario() -> tuple[RunResult | BaseException, RunResult | BaseException]:
        busy = asyncio.ensure_future(batcher.submit(make_request(rng, uni, [4])))
        await asyncio.sleep(0.05)
        late = make_request(rng, uni, [4], deadline_s=0.05)
        [lost] = await asyncio.gather(batcher.submit(late), return_exceptions=True)
        gate.open()
        [first] = await asyncio.gather(busy, return_exceptions=True)
        await batcher.close()
        return lost, first

    lost, first = asyncio.run(scenario())
    assert isinstance(lost, DeadlineExceeded)
    assert lost.message == "the request did not finish before its deadline"
    assert isinstance(first, RunResult)
    assert batcher.stats.dropped == 1
    assert (batcher.stats.calls, batcher.stats.requests) == (1, 1)  # the late one never ran


def test_a_request_that_expires_behind_a_busy_slot_is_skipped_not_run(
    uni: ModelRuntime, gate: Gate
) -> None:
    """Dequeued into a batch, then its deadline passes before a thread picks the batch up."""
    rng = np.random.default_rng(5)
    batcher = DynamicBatcher(uni, gate.executor, BatchingOptions(max_batch_size=4, slots=1))

    async def scenario() -> RunResult | BaseException:
        late = make_request(rng, uni, [4], deadline_s=0.05)
        task = asyncio.ensure_future(batcher.submit(late))
        await asyncio.sleep(0.2)  # in the executor's queue behind the gate, now expired
        gate.open()
        [lost] = await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.05)  # let the batch come back
        await batcher.close()
        return lost

    assert isinstance(asyncio.run(scenario()), DeadlineExceeded)
    assert batcher.stats.dropped == 1
    assert batcher.stats.calls == 0


def test_a_cancelled_caller_drops_its_queued_work(uni: ModelRuntime, gate: Gate) -> None:
    rng = np.random.default_rng(6)
    batcher = DynamicBatcher(uni, gate.executor, BatchingOptions(max_batch_size=1, slots=1))

    async def scenario() -> None:
        busy = asyncio.ensure_future(batcher.submit(make_request(rng, uni, [4])))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit(make_request(rng, uni, [4])))
        await asyncio.sleep(0.01)
        assert batcher.queue_depth == 1
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert batcher.queue_depth == 0
        gate.open()
        await busy
        await batcher.close()

    asyncio.run(scenario())
    assert batcher.stats.dropped == 1
    assert batcher.stats.calls == 1


def test_max_queue_delay_gathers_company(uni: ModelRuntime, executor: ThreadPoolExecutor) -> None:
    """With a delay, requests arriving a moment apart still share one call."""
    rng = np.random.default_rng(6)
    options = BatchingOptions(max_batch_size=4, max_queue_delay_s=0.5, slots=1)
    batcher = DynamicBatcher(uni, executor, options)

    async def scenario() -> list[RunResult]:
        first = asyncio.ensure_future(batcher.submit(make_request(rng, uni, [6])))
        await asyncio.sleep(0.05)
        rest = [
            asyncio.ensure_future(batcher.submit(make_request(rng, uni, [6]))) for _ in range(3)
        ]
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return list(results)

    assert len(asyncio.run(scenario())) == 4
    assert batcher.stats.calls == 1  # the fourth filled the batch; no need to wait out the delay
