"""A version's holders: a rollout's drain waits for every request that resolved it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from service.core.server import Server
from service.core.types import InferenceRequest
from service.settings import Settings


def test_a_held_version_drains_only_once_its_holders_answered(tiny_repository: Path) -> None:
    """A request that resolved a version (still reading its body) keeps the drain waiting;
    so does a submission in flight; once both are done the drain returns at once."""

    async def scenario() -> None:
        server = Server(Settings(model_repository=tiny_repository))
        await server.repository.load_all()
        model = server.repository.get("tiny")
        request = InferenceRequest(x=np.zeros((1, 2, 3), np.float32), lengths=np.array([2]))
        with model.holds:
            assert model.holds.count == 1
            assert await model.drain(0.05) is False
            running = asyncio.ensure_future(model.batcher.submit(request))
            await asyncio.sleep(0)
            assert model.holds.count == 2  # the submission holds it too
            await running
            assert await model.drain(0.05) is False  # answered, but still held
        assert model.holds.count == 0
        assert await model.drain(0.05) is True
        await server.repository.close()

    asyncio.run(scenario())
