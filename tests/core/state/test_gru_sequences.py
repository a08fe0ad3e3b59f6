"""GRU state in the core: a GRU layer's state is (h,), an LSTM layer's (h, c), everywhere.

A GRU stack and an LSTM-into-GRU stack run as server-held sequences on both stores
(in-process and a real Redis): the chunks equal the whole sequence in PyTorch, a resent
chunk is answered again from the stored states before it, and the store's record
round-trips layers of one and two tensors (and reads records written before GRU state).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from models.architecture import StackedLSTM
from models.export import torch_reference
from service.core.model import ServedModel
from service.core.server import Server
from service.core.state.sequences import Sequences
from service.core.state.store import LastChunk, Record, SequenceStore, decode, encode
from service.core.types import stack_states
from service.settings import Settings
from tests.core.state.test_sequences import OPTIONS, ask, chunk, make_store, outputs

__all__ = ["make_store"]  # the store fixture, both kinds

X = np.random.default_rng(3).normal(size=(13, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def server(gru_repository: Path) -> Iterator[Server]:
    server = Server(Settings(model_repository=gru_repository))
    asyncio.run(server.repository.load_all())
    yield server


def torch_whole(repository: Path, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The whole sequence through the PyTorch model the version was exported from."""
    model = StackedLSTM.load_checkpoint(repository / name / "1" / "checkpoint.pt")
    return torch_reference(model, x[None], np.array([len(x)]))


@pytest.mark.parametrize("name", ["gru", "mixed"])
def test_server_held_chunks_equal_the_whole_and_a_resend_is_answered_again(
    server: Server,
    gru_repository: Path,
    make_store: Callable[[], SequenceStore],
    name: str,
) -> None:
    model: ServedModel = server.repository.get(name, 1)
    want = torch_whole(gru_repository, name, X)

    async def scenario() -> None:
        seqs = Sequences(make_store(), server.repository.get, OPTIONS)
        try:
            got, offset = [], 0
            pieces = np.split(X, [4, 5, 9])
            for i, piece in enumerate(pieces):
                result, steps = await seqs.run(
                    model, chunk(piece), ask(f"{name}-s", sequence_start=i == 0,
                                             sequence_offset=offset)
                )  # fmt: skip
                offset = steps
                got.append(outputs(result))
            np.testing.assert_allclose(np.concatenate(got), want["sequence_output"][0], atol=1e-5)
            again, steps = await seqs.run(
                model, chunk(pieces[-1]), ask(f"{name}-s", sequence_offset=9)
            )
            assert steps == len(X)
            np.testing.assert_array_equal(outputs(again), got[-1])
            store = seqs._store()
            record = await store.get(("", name, f"s:{name}-s"))
            assert record is not None
            cells = [layer.cell for layer in model.metadata.layers]
            assert [len(layer) for layer in record.states] == [
                1 if cell == "gru" else 2 for cell in cells
            ]
            for i, layer in enumerate(record.states):
                np.testing.assert_allclose(layer[0], want[f"hn_{i}"], atol=1e-5)
                if len(layer) == 2:
                    np.testing.assert_allclose(layer[1], want[f"cn_{i}"], atol=1e-5)
        finally:
            with contextlib.suppress(RuntimeError):
                await seqs.close()

    asyncio.run(scenario())


def _state(*shapes: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=s).astype(np.float32) for s in shapes)


def test_a_record_round_trips_layers_of_one_and_two_tensors() -> None:
    lstm, gru = _state((1, 1, 8), (1, 1, 8)), _state((1, 1, 4), seed=1)
    before = [_state((1, 1, 8), (1, 1, 8), seed=2), _state((1, 1, 4), seed=3)]
    record = Record(
        version=1, steps=5, states=[lstm, gru], rev=7, last=LastChunk(2, b"\x01" * 16, before)
    )
    back = decode(encode(record))
    assert [len(layer) for layer in back.states] == [2, 1]
    assert back.last is not None and [len(layer) for layer in back.last.states_before] == [2, 1]
    for got, want in zip(back.states + back.last.states_before, [lstm, gru, *before], strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    assert back.nbytes == record.nbytes == 4 * (8 + 8 + 4) * 2


def test_a_record_written_before_gru_state_reads_as_pairs() -> None:
    """A rolling upgrade: records an older server wrote name no per-layer count."""
    import orjson

    from service.core.state import store

    record = Record(version=1, steps=3, states=[_state((1, 1, 2), (1, 1, 2))])
    blob = encode(record)
    (size,) = store._LENGTH.unpack_from(blob)
    header = orjson.loads(blob[store._LENGTH.size : store._LENGTH.size + size])
    del header["tensors"]
    head = orjson.dumps(header)
    old = store._LENGTH.pack(len(head)) + head + blob[store._LENGTH.size + size :]
    back = decode(old)
    assert [len(layer) for layer in back.states] == [2]
    np.testing.assert_array_equal(back.states[0][1], record.states[0][1])


def test_stacking_keeps_each_layers_tensor_count() -> None:
    one = [_state((1, 1, 8), (1, 1, 8)), _state((1, 1, 4), seed=1)]
    two = [_state((1, 1, 8), (1, 1, 8), seed=2), _state((1, 1, 4), seed=3)]
    stacked = stack_states([one, two])
    assert [tuple(a.shape for a in layer) for layer in stacked] == [
        ((1, 2, 8), (1, 2, 8)),
        ((1, 2, 4),),
    ]
    np.testing.assert_array_equal(stacked[1][0][:, 1], two[1][0][:, 0])
