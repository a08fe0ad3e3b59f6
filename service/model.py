"""A loaded model version: its metadata, its onnxruntime session and its scheduler."""

from __future__ import annotations

import hashlib
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from service.contract import METADATA_FILENAME, ModelMetadata
from service.inference import DirectScheduler, InferenceRequest, Scheduler
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


@dataclass
class ServedModel:
    """One model version ready to take requests."""

    metadata: ModelMetadata
    runtime: ModelRuntime
    scheduler: Scheduler
    path: Path

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    async def infer(self, request: InferenceRequest) -> RunResult:
        return await self.scheduler.submit(request)

    async def close(self) -> None:
        await self.scheduler.close()


def load_version(
    version_dir: Path,
    options: RuntimeOptions,
    executor: Executor,
    max_queue: int,
) -> ServedModel:
    """Load one ``<name>/<version>/`` folder, refusing anything inconsistent.

    The checks (metadata schema, folder names, file checksum, graph tensor names)
    run here, once, so a corrupt or mismatched model fails at load with a message
    naming the file rather than at the first request.
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
    scheduler = DirectScheduler(runtime, executor, max_queue)
    return ServedModel(metadata=metadata, runtime=runtime, scheduler=scheduler, path=version_dir)
