"""Model control keeps a model serving; poll follows the disk (sequence ownership:
``tests/core/state/test_sequences.py``)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from service.core.errors import Conflict
from service.core.server import Server
from service.settings import Settings


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
