"""Server-held sequences' rules, on both stores: the in-process one and a real Redis.

Every rule is checked against the whole sequence run at once: chunks give its
outputs, a retried chunk is answered again without stepping twice, a wrong offset
or a concurrent chunk changes nothing, limits hold in total and per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from service.core.errors import (
    InvalidInput,
    SequenceConflict,
    SequenceGone,
    SequenceLimit,
    SequenceNotFound,
    StoreUnavailable,
)
from service.core.model import ServedModel
from service.core.server import Server
from service.core.state import StateOptions
from service.core.state.memory import MemoryStore
from service.core.state.redis_store import RedisStore
from service.core.state.sequences import Sequences, SequencesOptions
from service.core.state.store import SequenceStore
from service.core.types import SEQUENCE, InferenceRequest
from service.settings import Settings
from tests.scaleout.cluster import RedisServer

OPTIONS = SequencesOptions(idle_timeout_s=60, max_sequences=50, max_per_key=3)


@pytest.fixture(scope="module")
def served(tiny_repository: Path) -> Iterator[tuple[Server, ServedModel]]:
    server = Server(Settings(model_repository=tiny_repository))
    asyncio.run(server.repository.load_all())
    yield server, server.repository.get("tiny", 2)


@pytest.fixture(params=["memory", "redis"])
def make_store(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Callable[[], SequenceStore]:
    if request.param == "memory":
        return MemoryStore
    redis.Redis.from_url(redis_server.url).flushdb()
    return lambda: RedisStore(redis_server.url, timeout_s=1.0)


def chunk(x: np.ndarray, deadline_s: float = 10.0) -> InferenceRequest:
    return InferenceRequest(
        x=x[None].astype(np.float32),
        lengths=np.array([len(x)]),
        outputs=SEQUENCE,
        deadline=time.monotonic() + deadline_s,
    )


def ask(sid: str = "s", owner: str = "", **flags: object) -> StateOptions:
    return StateOptions(sequence_id=sid, owner=owner, **flags)  # type: ignore[arg-type]


async def whole(model: ServedModel, x: np.ndarray) -> np.ndarray:
    result = await model.batcher.submit(chunk(x))
    assert result.sequence_output is not None
    return result.sequence_output[0, : len(x)]


def outputs(result: object) -> np.ndarray:
    out = result.sequence_output  # type: ignore[attr-defined]
    assert out is not None
    return np.asarray(out[0])


@pytest.fixture
def sequences(
    served: tuple[Server, ServedModel], make_store: Callable[[], SequenceStore]
) -> Iterator[Callable[..., Sequences]]:
    server, _ = served
    made: list[Sequences] = []

    def build(options: SequencesOptions = OPTIONS) -> Sequences:
        made.append(Sequences(make_store(), server.repository.get, options))
        return made[-1]

    yield build
    for s in made:
        with contextlib.suppress(RuntimeError):  # a loop that has ended: nothing to release
            asyncio.run(s.close())


X = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)


def test_chunks_with_offsets_equal_the_whole_and_count_steps(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    _, model = served

    async def scenario() -> None:
        seqs = sequences()
        got, offset = [], 0
        for i, piece in enumerate(np.split(X, [3, 7])):
            result, steps = await seqs.run(
                model,
                chunk(piece),
                ask(sequence_start=i == 0, sequence_offset=offset, sequence_end=i == 2),
            )
            offset += len(piece)
            assert steps == offset
            got.append(outputs(result))
        np.testing.assert_allclose(np.concatenate(got), await whole(model, X), atol=1e-6)

    asyncio.run(scenario())


def test_a_resent_chunk_is_answered_again_without_a_second_step(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    """The retry recipe: the answer of chunk 2 is lost; resending it unchanged gives the
    same outputs, and chunk 3 then continues from one application of chunk 2."""
    _, model = served

    async def scenario() -> None:
        seqs = sequences()
        a, b, c = np.split(X, [3, 7])
        await seqs.run(model, chunk(a), ask(sequence_start=True))
        first, steps = await seqs.run(model, chunk(b), ask(sequence_offset=3))
        again, steps_again = await seqs.run(model, chunk(b), ask(sequence_offset=3))
        assert steps == steps_again == 7
        np.testing.assert_allclose(outputs(again), outputs(first), atol=1e-6)
        third, steps = await seqs.run(model, chunk(c), ask(sequence_offset=7, sequence_end=True))
        assert steps == 12
        np.testing.assert_allclose(outputs(third), (await whole(model, X))[7:], atol=1e-6)
        # the final chunk, resent after the end, is answered again; anything else is not live
        ended, _ = await seqs.run(model, chunk(c), ask(sequence_offset=7, sequence_end=True))
        np.testing.assert_allclose(outputs(ended), outputs(third), atol=1e-6)
        with pytest.raises(SequenceNotFound, match="sequence 's' is not live: it has ended"):
            await seqs.run(model, chunk(c), ask(sequence_offset=12))

    asyncio.run(scenario())


def test_a_chunk_at_the_wrong_offset_is_refused_and_changes_nothing(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    _, model = served

    async def scenario() -> None:
        seqs = sequences()
        a, b, c = np.split(X, [3, 7])
        await seqs.run(model, chunk(a), ask(sequence_start=True))
        await seqs.run(model, chunk(b), ask(sequence_offset=3))
        for offset in (0, 5, 9, 100):
            with pytest.raises(SequenceConflict) as refused:
                await seqs.run(model, chunk(c), ask(sequence_offset=offset))
            assert refused.value.message.startswith(
                f"sequence 's' has consumed 7 timesteps; this chunk says it starts at timestep "
                f"{offset} (sequence_offset), so it was not applied"
            )
        # the same offset as the last chunk with other timesteps is not a retry
        with pytest.raises(SequenceConflict, match="has consumed 7 timesteps"):
            await seqs.run(model, chunk(c[:4]), ask(sequence_offset=3))
        result, steps = await seqs.run(model, chunk(c), ask(sequence_offset=7))
        assert steps == 12
        np.testing.assert_allclose(outputs(result), (await whole(model, X))[7:], atol=1e-6)

    asyncio.run(scenario())


def test_concurrent_chunks_of_one_sequence_apply_once(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    """Ten different chunks at once, all saying they start at timestep 2: exactly one
    applies, the others get 409 (the store's compare-and-set, or the offset, whichever
    catches them first), and the state is that of the start plus the one that applied."""
    _, model = served

    async def scenario() -> None:
        seqs = sequences()
        await seqs.run(model, chunk(X[:2]), ask(sequence_start=True))
        pieces = [X[2:5] + 0.1 * i for i in range(10)]
        results = await asyncio.gather(
            *(seqs.run(model, chunk(p), ask(sequence_offset=2)) for p in pieces),
            return_exceptions=True,
        )
        applied = [i for i, r in enumerate(results) if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, SequenceConflict)]
        assert len(applied) == 1 and len(refused) == 9
        winner = pieces[applied[0]]
        last, steps = await seqs.run(model, chunk(X[5:8]), ask(sequence_offset=5))
        assert steps == 8
        want = await whole(model, np.concatenate([X[:2], winner, X[5:8]]))
        np.testing.assert_allclose(outputs(last), want[5:], atol=1e-6)

    asyncio.run(scenario())


def test_limits_in_total_and_per_key(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    _, model = served

    async def scenario() -> None:
        seqs = sequences(SequencesOptions(idle_timeout_s=60, max_sequences=5, max_per_key=2))
        for sid in ("a", "b"):
            await seqs.run(model, chunk(X[:2]), ask(sid, owner="alice", sequence_start=True))
        with pytest.raises(SequenceLimit) as limit:
            await seqs.run(model, chunk(X[:2]), ask("c", owner="alice", sequence_start=True))
        assert limit.value.message.startswith(
            "this API key has 2 sequences live, its maximum (LSTM_SERVE_MAX_SEQUENCES_PER_KEY)"
        )
        # a restart of a live one is not a new one; another key has its own share
        await seqs.run(model, chunk(X[:2]), ask("a", owner="alice", sequence_start=True))
        for sid in ("a", "b"):
            await seqs.run(model, chunk(X[:2]), ask(sid, owner="bob", sequence_start=True))
        # keys off (owner ""): only the total applies; 4 live + 1 = 5
        await seqs.run(model, chunk(X[:2]), ask("x", sequence_start=True))
        with pytest.raises(SequenceLimit, match="5 sequences are live, the configured maximum"):
            await seqs.run(model, chunk(X[:2]), ask("y", sequence_start=True))

    asyncio.run(scenario())


def test_a_sequence_is_its_owners_and_its_models(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    _, model = served

    async def scenario() -> None:
        seqs = sequences()
        await seqs.run(model, chunk(X[:3]), ask("v", owner="alice", sequence_start=True))
        with pytest.raises(SequenceNotFound, match="sequence 'v' is not live"):
            await seqs.run(model, chunk(X[3:5]), ask("v", owner="bob"))
        # the integer 7 and the string "7" are two sequences, as in Triton
        await seqs.run(model, chunk(X[:3]), StateOptions(sequence_id=7, sequence_start=True))
        with pytest.raises(SequenceNotFound):
            await seqs.run(model, chunk(X[3:5]), StateOptions(sequence_id="7"))
        result, steps = await seqs.run(model, chunk(X[3:6]), ask("v", owner="alice"))
        assert steps == 6
        np.testing.assert_allclose(outputs(result), (await whole(model, X[:6]))[3:], atol=1e-6)

    asyncio.run(scenario())


def test_idle_sequences_expire(
    served: tuple[Server, ServedModel], sequences: Callable[..., Sequences]
) -> None:
    _, model = served

    async def scenario() -> None:
        seqs = sequences(SequencesOptions(idle_timeout_s=0.3, max_sequences=1, max_per_key=1))
        await seqs.run(model, chunk(X[:2]), ask("old", sequence_start=True))
        with pytest.raises(SequenceLimit):
            await seqs.run(model, chunk(X[:2]), ask("new", sequence_start=True))
        await asyncio.sleep(0.45)
        with pytest.raises(SequenceNotFound, match=r"evicted after 0\.3 s idle"):
            await seqs.run(model, chunk(X[2:4]), ask("old"))
        await seqs.run(model, chunk(X[:2]), ask("new", sequence_start=True))  # a slot again

    asyncio.run(scenario())


def test_a_retired_version_gets_410_once_then_404(
    tiny_repository: Path, make_store: Callable[[], SequenceStore]
) -> None:
    async def scenario() -> None:
        server = Server(Settings(model_repository=tiny_repository))
        await server.repository.load_all()
        model = server.repository.get("tiny")
        seqs = Sequences(make_store(), server.repository.get, OPTIONS)
        await seqs.run(model, chunk(X[:2]), ask("old", sequence_start=True))
        await model.close()  # what the repository does once the retired version drained
        with pytest.raises(SequenceGone) as gone:
            await seqs.run(model, chunk(X[2:4]), ask("old"))
        assert gone.value.message == (
            "sequence 'old' ran on model 'tiny' version 2, which was unloaded; its state went "
            "with it: start the sequence again (sequence_start) on the version now serving"
        )
        with pytest.raises(SequenceNotFound, match="sequence 'old' is not live"):
            await seqs.run(model, chunk(X[2:4]), ask("old"))
        await seqs.close()
        await server.repository.close()

    asyncio.run(scenario())


def test_without_a_store_sequences_are_refused_saying_what_to_set(
    served: tuple[Server, ServedModel],
) -> None:
    server, model = served
    why = "set LSTM_SERVE_STATE_URL=redis://HOST:6379/0"
    seqs = Sequences(None, server.repository.get, SequencesOptions(60, 10, 10, why))
    with pytest.raises(InvalidInput, match=why):
        asyncio.run(seqs.run(model, chunk(X[:2]), ask(sequence_start=True)))


def test_two_workers_without_a_state_url_refuse_server_held_sequences(
    tiny_repository: Path,
) -> None:
    seqs = Server(Settings(model_repository=tiny_repository, workers=2)).sequences
    assert seqs.store is None
    assert "set LSTM_SERVE_STATE_URL=redis://HOST:6379/0" in seqs.options.unavailable


def test_redis_down_is_a_503_within_the_deadline_and_recovers(
    served: tuple[Server, ServedModel], tmp_path: Path
) -> None:
    """A stopped Redis: the chunk fails fast with ``StoreUnavailable`` (503, Retry-After)
    and changes nothing; restarted (append-only file kept), the sequence goes on."""
    server, model = served
    store_server = RedisServer(tmp_path / "redis")
    store_server.start()

    async def scenario() -> None:
        seqs = Sequences(
            RedisStore(store_server.url, timeout_s=0.5), server.repository.get, OPTIONS
        )
        await seqs.run(model, chunk(X[:4]), ask(sequence_start=True))
        store_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as down:
            await seqs.run(model, chunk(X[4:8]), ask(sequence_offset=4))
        assert time.monotonic() - started < 2.0
        assert down.value.retry_after_s >= 1
        assert "did not answer within 0.5 s" in down.value.message
        assert "redis://127.0.0.1" in down.value.message
        store_server.start()
        result, steps = await seqs.run(model, chunk(X[4:8]), ask(sequence_offset=4))
        assert steps == 8
        np.testing.assert_allclose(outputs(result), (await whole(model, X[:8]))[4:], atol=1e-6)
        await seqs.close()

    try:
        asyncio.run(scenario())
    finally:
        store_server.stop()


def test_a_password_never_reaches_messages(redis_server: RedisServer) -> None:
    store = RedisStore(f"redis://:hunter2-secret@127.0.0.1:{redis_server.port}/0")
    assert "hunter2" not in store.url and store.url == f"redis://127.0.0.1:{redis_server.port}/0"
