"""SequenceStore on its own: eviction, the cap, ordering of chunks of one sequence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.core.errors import SequenceGone, SequenceLimit, SequenceNotFound
from service.core.model import ServedModel
from service.core.request import InferenceRequest
from service.core.server import Server
from service.core.state import SequenceStore
from service.settings import Settings


async def loaded_model(root: Path) -> tuple[Server, ServedModel]:
    server = Server(Settings(model_repository=root))
    await server.repository.load_all()
    return server, server.repository.get("tiny")


def chunk(steps: int = 2, value: float = 0.5) -> InferenceRequest:
    x = np.full((1, steps, 3), value, np.float32)
    return InferenceRequest(x=x, lengths=np.array([steps]))


def test_cap_idle_eviction_and_memory_accounting(tiny_repository: Path) -> None:
    async def scenario() -> None:
        _, model = await loaded_model(tiny_repository)
        store = SequenceStore(max_sequences=2, idle_timeout_s=60)
        await store.run_chunk("a", model, chunk(), start=True, end=False)
        await store.run_chunk("b", model, chunk(), start=True, end=False)
        assert store.live == 2 and store.state_bytes == 2 * 2 * (8 + 4) * 4
        with pytest.raises(SequenceLimit, match="2 sequences are live, the configured maximum"):
            await store.run_chunk("c", model, chunk(), start=True, end=False)
        assert store.evict_idle(now=time.monotonic() + 61) == 2
        await store.run_chunk("c", model, chunk(), start=True, end=False)
        with pytest.raises(SequenceNotFound, match="sequence 'a' is not live"):
            await store.run_chunk("a", model, chunk(), start=False, end=False)
        await store.run_chunk("c", model, chunk(), start=False, end=True)
        assert store.live == 0 and store.state_bytes == 0

    asyncio.run(scenario())


def test_concurrent_chunks_of_one_sequence_run_in_arrival_order(tiny_repository: Path) -> None:
    """Ten chunks fired at once give exactly what ten chunks sent one by one give."""

    async def scenario() -> None:
        _, model = await loaded_model(tiny_repository)
        values = [0.1 * i for i in range(10)]
        store = SequenceStore(max_sequences=4, idle_timeout_s=60)
        await store.run_chunk("seq", model, chunk(1, 0.0), start=True, end=False)
        together = await asyncio.gather(
            *(store.run_chunk("seq", model, chunk(3, v), start=False, end=False) for v in values)
        )
        await store.run_chunk("one", model, chunk(1, 0.0), start=True, end=False)
        for v, got in zip(values, together, strict=True):
            alone = await store.run_chunk("one", model, chunk(3, v), start=False, end=False)
            np.testing.assert_array_equal(got.final_output, alone.final_output)

    asyncio.run(scenario())


def test_held_bytes_are_a_running_total_whatever_the_live_count(tiny_repository: Path) -> None:
    """Starts, restarts, continues, ends and evictions keep ``state_bytes`` equal to the sum
    over live sequences, and a request never walks the live sequences to get it."""

    async def scenario() -> None:
        _, model = await loaded_model(tiny_repository)
        store = SequenceStore(max_sequences=3000, idle_timeout_s=60)
        for i in range(2000):
            await store.run_chunk(i, model, chunk(1), start=True, end=False)
        await store.run_chunk(7, model, chunk(2), start=True, end=False)  # a restart
        await store.run_chunk(8, model, chunk(2), start=False, end=False)
        await store.run_chunk(9, model, chunk(2), start=False, end=True)
        store.end(("", model.name, 10))  # keys are (owner, model, id)
        live = list(store._live.values())
        assert store.live == 1998
        assert store.state_bytes == sum(h.nbytes for h in live) == 1998 * 2 * (8 + 4) * 4
        walked: list[int] = []
        real = type(live[0]).nbytes

        def counting(self: object) -> int:
            walked.append(1)
            return real.fget(self)  # type: ignore[attr-defined,no-any-return]

        type(live[0]).nbytes = property(counting)  # type: ignore[assignment,method-assign]
        try:
            await store.run_chunk(11, model, chunk(2), start=False, end=False)
        finally:
            type(live[0]).nbytes = real  # type: ignore[method-assign]
        assert len(walked) <= 2  # the chunk's own sequence, never the other 1,997
        assert store.evict_idle(now=time.monotonic() + 61) == 1998
        assert store.state_bytes == 0

    asyncio.run(scenario())


def test_a_sequence_on_a_retired_version_gets_410_once_then_404(tiny_repository: Path) -> None:
    """A rollout retires the version a sequence runs on: one definitive answer, no "retry"."""

    async def scenario() -> None:
        _, model = await loaded_model(tiny_repository)
        store = SequenceStore(max_sequences=4, idle_timeout_s=60)
        await store.run_chunk("old", model, chunk(), start=True, end=False)
        await model.close()  # what the repository does once the retired version drained
        with pytest.raises(SequenceGone) as gone:
            await store.run_chunk("old", model, chunk(), start=False, end=False)
        assert gone.value.message == (
            "sequence 'old' ran on model 'tiny' version 2, which was unloaded; its state went "
            "with it: start the sequence again (sequence_start) on the version now serving"
        )
        assert store.live == 0 and store.state_bytes == 0  # ended: its memory is free
        with pytest.raises(SequenceNotFound, match="sequence 'old' is not live"):
            await store.run_chunk("old", model, chunk(), start=False, end=False)

    asyncio.run(scenario())


def test_a_held_version_drains_only_once_its_holders_answered(tiny_repository: Path) -> None:
    """A request that resolved a version (still reading its body) keeps the drain waiting."""

    async def scenario() -> None:
        _, model = await loaded_model(tiny_repository)
        with model.batcher.held():
            assert await model.drain(0.05) is False
            await model.batcher.submit(chunk())
            assert await model.drain(0.05) is False  # answered, but still held
        assert await model.drain(0.05) is True
        await model.close()

    asyncio.run(scenario())
