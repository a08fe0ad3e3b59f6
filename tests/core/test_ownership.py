"""Server-held sequences belong to their caller and their model (issue 14)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.testing import make_tiny_model
from service.core.errors import Conflict, SequenceNotFound
from service.core.server import Server
from service.core.state import SequenceStore
from service.settings import Settings
from tests.core.test_state import chunk, loaded_model


def test_another_owner_can_neither_continue_nor_end_a_sequence(tiny_repository: Path) -> None:
    async def scenario() -> None:
        _, model = await loaded_model(tiny_repository)
        store = SequenceStore(max_sequences=10, idle_timeout_s=60)
        await store.run_chunk(
            "victim-1", model, chunk(2, 0.5), start=True, end=False, owner="alice"
        )
        for end in (False, True):
            with pytest.raises(SequenceNotFound, match="sequence 'victim-1' is not live"):
                await store.run_chunk(
                    "victim-1", model, chunk(2, 0.1), start=False, end=end, owner="bob"
                )
        # bob starting the same id gets his own sequence; alice's goes on untouched
        await store.run_chunk("victim-1", model, chunk(2, 0.9), start=True, end=False, owner="bob")
        assert store.live == 2
        mine = await store.run_chunk(
            "victim-1", model, chunk(2, 0.5), start=False, end=True, owner="alice"
        )
        whole = await model.batcher.submit(chunk(4, 0.5))
        assert mine.final_output is not None and whole.final_output is not None
        np.testing.assert_allclose(mine.final_output, whole.final_output, atol=1e-6)
        assert store.live == 1

    asyncio.run(scenario())


def test_the_same_id_on_two_models_is_two_sequences(tiny_repository: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        root = tmp_path / "repo"
        shutil.copytree(tiny_repository / "tiny", root / "tiny")
        make_tiny_model(root, "other", 1, features=3, layers=(8, 4), classes=3, seed=4)
        server = Server(Settings(model_repository=root))
        await server.repository.load_all()
        tiny, other = server.repository.get("tiny"), server.repository.get("other")
        store = SequenceStore(max_sequences=10, idle_timeout_s=60)
        await store.run_chunk("s", tiny, chunk(), start=True, end=False)
        await store.run_chunk("s", other, chunk(), start=True, end=False)
        assert store.live == 2
        await store.run_chunk("s", tiny, chunk(), start=False, end=True)
        await store.run_chunk("s", other, chunk(), start=False, end=True)
        assert store.live == 0
        await server.repository.close()

    asyncio.run(scenario())


def test_the_last_model_is_never_unloaded(tiny_repository: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        root = tmp_path / "repo"
        shutil.copytree(tiny_repository, root)
        server = Server(Settings(model_repository=root))
        await server.start()
        await server.repository.unload_model("tiny_bi")
        with pytest.raises(Conflict) as caught:
            await server.repository.unload_model("tiny")
        assert caught.value.message == (
            "model 'tiny' is the last model serving: unloading it would leave the server "
            "unready; load another model first"
        )
        assert server.ready
        await server.stop()

    asyncio.run(scenario())


def test_poll_follows_the_disk(tiny_repository: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        root = tmp_path / "repo"
        shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
        shutil.copytree(tiny_repository / "tiny_bi", root / "tiny_bi")
        server = Server(Settings(model_repository=root))
        await server.start()
        assert [m.version for m in server.repository.versions("tiny")] == [1]
        shutil.copytree(tiny_repository / "tiny" / "2", root / "tiny" / "2")
        await server.repository.poll()
        assert [m.version for m in server.repository.versions("tiny")] == [2]
        shutil.rmtree(root / "tiny_bi")
        await server.repository.poll()
        assert server.repository.names() == ["tiny"]
        shutil.rmtree(root / "tiny")
        await server.repository.poll()  # the last model keeps serving, and the log says why
        assert server.repository.names() == ["tiny"] and server.ready
        await server.stop()

    asyncio.run(scenario())
