"""Poll mode converges: a version that failed while it was being copied is tried again
once its files change, and a half-copied folder never replaces the version serving."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from service.core.server import Server
from service.settings import Settings


def test_a_version_copied_metadata_first_loads_once_complete(
    tiny_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        root = tmp_path / "repo"
        shutil.copytree(tiny_repository / "tiny" / "1", root / "tiny" / "1")
        server = Server(Settings(model_repository=root, model_control_mode="poll"))
        await server.start()
        source, target = tiny_repository / "tiny" / "2", root / "tiny" / "2"
        target.mkdir()

        def versions() -> list[int]:
            return [m.version for m in server.repository.versions("tiny")]

        def failures() -> int:
            return sum("failed to load tiny version 2" in r.getMessage() for r in caplog.records)

        # `cp -r` wrote the metadata first: the load fails, version 1 keeps serving
        shutil.copy2(source / "metadata.json", target / "metadata.json")
        await server.repository.poll()
        assert versions() == [1] and failures() == 1
        await server.repository.poll()  # nothing changed: not tried again every period
        assert failures() == 1

        # half of model.onnx: fails again (its size changed, so it was tried), 1 serves on
        model = (source / "model.onnx").read_bytes()
        (target / "model.onnx").write_bytes(model[: len(model) // 2])
        await server.repository.poll()
        assert versions() == [1] and failures() == 2
        assert server.ready

        # the copy completes: the next poll loads it and retires version 1
        (target / "model.onnx").write_bytes(model)
        os.utime(target / "model.onnx", ns=(1, 2))  # whatever the clock's granularity
        await server.repository.poll()
        assert versions() == [2]
        statuses = {s.version: s.state for s in server.repository.statuses("tiny")}
        assert statuses == {1: "UNAVAILABLE", 2: "READY"}
        await server.stop()

    with caplog.at_level(logging.INFO, logger="service.core.repository"):
        asyncio.run(scenario())
