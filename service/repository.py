"""The model repository on disk, and the model versions loaded from it.

Layout, as in Triton: ``<root>/<name>/<version>/{model.onnx,metadata.json}``
with integer versions. At startup the latest version of every model is loaded.
A version that fails to load is recorded with its error and served by nobody;
the others load regardless, so one bad folder cannot take the service down.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.contract import METADATA_FILENAME
from service.errors import ModelNotFound
from service.model import ServedModel, load_version
from service.runtime import RuntimeOptions

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

VersionState = Literal["AVAILABLE", "UNAVAILABLE"]


@dataclass(frozen=True)
class VersionStatus:
    """TF-Serving's model_version_status entry, for one version found on disk."""

    name: str
    version: int
    state: VersionState
    error: str = ""


def scan(root: Path) -> dict[str, list[int]]:
    """Model names and their integer versions (ascending) that have a metadata file."""
    found: dict[str, list[int]] = {}
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)):
        versions = sorted(
            int(v.name)
            for v in model_dir.iterdir()
            if v.is_dir() and v.name.isdigit() and (v / METADATA_FILENAME).is_file()
        )
        if versions:
            found[model_dir.name] = versions
    return found


class ModelRepository:
    """Loaded versions by model name, and what happened to every version tried."""

    def __init__(
        self, root: Path, options: RuntimeOptions, executor: Executor, max_queue: int
    ) -> None:
        self.root = root
        self._options = options
        self._executor = executor
        self._max_queue = max_queue
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._status: dict[tuple[str, int], VersionStatus] = {}

    def load_latest(self) -> None:
        """Load the newest version of every model on disk (blocking: call from a thread)."""
        for name, versions in scan(self.root).items():
            self.load(name, versions[-1])

    def load(self, name: str, version: int) -> ServedModel | None:
        version_dir = self.root / name / str(version)
        try:
            served = load_version(version_dir, self._options, self._executor, self._max_queue)
        except Exception as exc:  # any failure to load is reported, never fatal
            log.error("failed to load %s version %d: %s", name, version, exc)
            self._status[(name, version)] = VersionStatus(name, version, "UNAVAILABLE", str(exc))
            return None
        self._models.setdefault(name, {})[version] = served
        self._status[(name, version)] = VersionStatus(name, version, "AVAILABLE")
        return served

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ServedModel]:
        return [self._models[name][v] for v in sorted(self._models.get(name, {}))]

    def statuses(self, name: str) -> list[VersionStatus]:
        return [s for (n, _), s in sorted(self._status.items()) if n == name]

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The requested version, or the newest loaded one; ModelNotFound names what exists."""
        loaded = self._models.get(name)
        if not loaded:
            known = ", ".join(repr(n) for n in self.names()) or "none"
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {known}")
        if version is None:
            return loaded[max(loaded)]
        if version not in loaded:
            have = ", ".join(str(v) for v in sorted(loaded))
            raise ModelNotFound(
                f"model {name!r} has no loaded version {version}; loaded versions: {have}"
            )
        return loaded[version]

    def all(self) -> list[ServedModel]:
        return [m for name in self.names() for m in self.versions(name)]

    async def close(self) -> None:
        for served in self.all():
            await served.close()
