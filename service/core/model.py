"""A loaded model version: its metadata, its onnxruntime session and its batcher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.core.batching import DynamicBatcher
from service.core.contract import METADATA_FILENAME, ModelMetadata, file_sha256
from service.core.holds import Holds
from service.core.runtime import ModelRuntime, RuntimeOptions
from service.core.types import Outputs


def shown(version_dir: Path, name: str = "") -> str:
    """A file as messages name it: ``<model>/<version>/<file>``, relative to the repository,
    so that answers (load errors reach clients) never reveal the server's absolute paths."""
    relative = f"{version_dir.parent.name}/{version_dir.name}"
    return f"{relative}/{name}" if name else relative


def contained(version_dir: Path, name: str) -> Path:
    """``version_dir / name``, refused unless it resolves inside the version folder.

    A metadata file must not point the server at files elsewhere (``..``, an
    absolute path, a symlink out), and the version folder itself must lie in its
    repository (a symlinked folder pointing outside is refused too).
    """
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ValueError(
            f"{shown(version_dir, METADATA_FILENAME)} names the file {name!r}; a model file "
            "must be a plain name inside its version folder (no absolute path, no '..')"
        )
    folder = version_dir.resolve()
    repository = version_dir.parent.parent.resolve()
    if not folder.is_relative_to(repository):
        raise ValueError(
            f"{shown(version_dir)} resolves outside the model repository (a symlink): "
            "version folders must be inside it"
        )
    target = (version_dir / relative).resolve()
    if not target.is_relative_to(folder):
        raise ValueError(
            f"{shown(version_dir, name)} resolves outside its version folder (a symlink): "
            "model files must be inside <name>/<version>/"
        )
    return target


def read_metadata(version_dir: Path) -> ModelMetadata:
    """Parse and check ``metadata.json``; errors name the file so operators can find it."""
    label = shown(version_dir, METADATA_FILENAME)
    path = contained(version_dir, METADATA_FILENAME)
    try:
        return ModelMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"{label} is missing") from None
    except ValueError as exc:
        raise ValueError(f"{label} is not valid model metadata: {exc}") from exc


BatcherFactory = Callable[[ModelRuntime], DynamicBatcher]

WARMUP_SHAPES = ((1, 1), (1, 32), (8, 32))
"""(batch, time) of the warm-up runs: onnxruntime allocates and plans on first use."""
_WARMUP_OUTPUTS = Outputs(sequence=True, final=True, states=True)


@dataclass
class ServedModel:
    """One model version ready to take requests: what it is, how it runs, who schedules it.

    Requests go to ``batcher.submit``; ``holds`` counts the requests that hold this
    version (``core/holds.py``), so that an unload can first hide the version from new
    requests (the repository), then ``drain`` those already holding it, then close.
    """

    metadata: ModelMetadata
    runtime: ModelRuntime
    batcher: DynamicBatcher
    path: Path

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def holds(self) -> Holds:
        return self.batcher.holds

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no request holds this version; False if the wait ran out."""
        return await self.holds.drain(timeout_s)

    async def close(self) -> None:
        await self.batcher.close()


def warm_up(runtime: ModelRuntime) -> None:
    """Run the graph a few times so the first real request does not pay for setup.

    Every run is one a client could send: at least a front end's minimum length (a
    shorter input has no step for the recurrent layers, and the graph fails on it).
    """
    features = runtime.metadata.num_features
    front = runtime.metadata.front_end
    least = front.min_length if front is not None else 1
    for batch, shape_steps in WARMUP_SHAPES:
        steps = max(shape_steps, least)
        x = np.zeros((batch, steps, features), dtype=np.float32)
        runtime.run(x, np.full(batch, steps, dtype=np.int64), None, _WARMUP_OUTPUTS)


def load_version(
    version_dir: Path, options: RuntimeOptions, make_batcher: BatcherFactory
) -> ServedModel:
    """Load and warm up one ``<name>/<version>/`` folder, refusing anything inconsistent.

    The checks (metadata schema, folder names, containment, file checksum, graph
    tensor names)
    run here, once, so a corrupt or mismatched model fails at load with a message
    naming the file rather than at the first request. Blocking: call from a thread.
    """
    metadata = read_metadata(version_dir)
    if metadata.name != version_dir.parent.name or str(metadata.version) != version_dir.name:
        raise ValueError(
            f"{shown(version_dir)} holds metadata for {metadata.name!r} version "
            f"{metadata.version}; the folder must be <name>/<version>/ of the model it holds"
        )
    model_path = contained(version_dir, metadata.onnx.file)
    label = shown(version_dir, metadata.onnx.file)
    if not model_path.is_file():
        raise ValueError(f"{label} is missing")
    digest = file_sha256(model_path)
    if digest != metadata.onnx.sha256:
        raise ValueError(
            f"{label} does not match the sha256 that metadata.json records: the file is "
            "corrupt or was replaced"
        )
    runtime = ModelRuntime(model_path, metadata, options)
    warm_up(runtime)
    return ServedModel(
        metadata=metadata, runtime=runtime, batcher=make_batcher(runtime), path=version_dir
    )
