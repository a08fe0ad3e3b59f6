"""A loaded model version: its metadata, its onnxruntime session and its scheduler."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.contract import METADATA_FILENAME, ModelMetadata
from service.inference import InferenceRequest, Scheduler
from service.runtime import ModelRuntime, RunResult, RuntimeOptions


def read_metadata(version_dir: Path) -> ModelMetadata:
    """Parse and check ``metadata.json``; errors name the file so operators can find it."""
    path = version_dir / METADATA_FILENAME
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not valid model metadata: {exc}") from exc


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SchedulerFactory = Callable[[ModelRuntime], Scheduler]

WARMUP_SHAPES = ((1, 1), (1, 32), (8, 32))
"""(batch, time) of the warm-up runs: onnxruntime allocates and plans on first use."""


@dataclass
class ServedModel:
    """One model version ready to take requests, counting those in flight.

    The count lets an unload wait for the requests that already hold this
    version: a rolling update removes the version from the repository first (no
    new request can pick it), then drains it.
    """

    metadata: ModelMetadata
    runtime: ModelRuntime
    scheduler: Scheduler
    path: Path
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    async def infer(self, request: InferenceRequest) -> RunResult:
        depth = self.runtime.metrics.queue_depth
        self.in_flight += 1
        depth.inc()
        self._idle.clear()
        try:
            return await self.scheduler.submit(request)
        finally:
            self.in_flight -= 1
            depth.dec()
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request holds this version; False if the wait ran out."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        await self.scheduler.close()


def warm_up(runtime: ModelRuntime) -> None:
    """Run the graph a few times so the first real request does not pay for setup."""
    features = runtime.metadata.num_features
    for batch, steps in WARMUP_SHAPES:
        x = np.zeros((batch, steps, features), dtype=np.float32)
        runtime.run(x, np.full(batch, steps, dtype=np.int64), final_states=True)


def load_version(
    version_dir: Path, options: RuntimeOptions, make_scheduler: SchedulerFactory
) -> ServedModel:
    """Load and warm up one ``<name>/<version>/`` folder, refusing anything inconsistent.

    The checks (metadata schema, folder names, file checksum, graph tensor names)
    run here, once, so a corrupt or mismatched model fails at load with a message
    naming the file rather than at the first request. Blocking: call from a thread.
    """
    metadata = read_metadata(version_dir)
    if metadata.name != version_dir.parent.name or str(metadata.version) != version_dir.name:
        raise ValueError(
            f"{version_dir} holds metadata for {metadata.name!r} version {metadata.version}; "
            "the folder must be <name>/<version>/ of the model it holds"
        )
    model_path = version_dir / metadata.onnx.file
    if not model_path.is_file():
        raise ValueError(f"{model_path} is missing")
    digest = sha256_of(model_path)
    if digest != metadata.onnx.sha256:
        raise ValueError(
            f"{model_path} has sha256 {digest[:12]}…, metadata.json expects "
            f"{metadata.onnx.sha256[:12]}…: the file is corrupt or was replaced"
        )
    runtime = ModelRuntime(model_path, metadata, options)
    warm_up(runtime)
    return ServedModel(
        metadata=metadata, runtime=runtime, scheduler=make_scheduler(runtime), path=version_dir
    )
