"""The model repository on disk, and the model versions served from it.

Layout, as in Triton: ``<root>/<name>/<version>/{model.onnx,metadata.json}``
with integer versions. Each model's version policy picks the versions to serve.

Changes are rolling and safe under traffic:
- a version is loaded and warmed up completely before it becomes visible, so
  "latest" switches atomically from one complete version to the next;
- a version that fails to load is recorded with its error and the versions
  already serving stay untouched;
- a version leaving service is first hidden from new requests, then drained of
  the requests that already hold it, then closed. Each request resolves its
  version once, so no request mixes two versions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.core.contract import METADATA_FILENAME
from service.core.errors import Conflict, ModelNotFound, NotReady
from service.core.metrics import (
    MODEL_LOAD_DURATION,
    MODEL_LOAD_FAILURES,
    MODEL_VERSIONS_LOADED,
    QUEUE_DEPTH,
)
from service.core.model import ServedModel
from service.version_policy import VersionPolicy

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

VersionState = Literal["READY", "LOADING", "UNLOADING", "UNAVAILABLE"]
Loader = Callable[[Path], ServedModel]


@dataclass(frozen=True)
class VersionStatus:
    """What happened to one version (Triton's repository index states)."""

    name: str
    version: int
    state: VersionState
    reason: str = ""


def parse_version(version: str) -> int:
    """Versions are positive integers in ASCII digits; anything else names a version that
    cannot exist (``str.isdigit`` alone also takes "²", which ``int`` refuses, and
    fullwidth or Arabic-Indic digits, which ``int`` reads)."""
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise ModelNotFound(f"version {version!r} does not exist; versions are positive integers")
    return int(version)


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


Fingerprint = tuple[tuple[str, int, int], ...]

_MAX_FINGERPRINT_FILES = 256


def fingerprint(version_dir: Path) -> Fingerprint:
    """A version folder's files as (name, size, mtime): what changes while it is copied."""
    files: list[tuple[str, int, int]] = []
    try:
        with os.scandir(version_dir) as entries:
            for entry in entries:
                if len(files) >= _MAX_FINGERPRINT_FILES:
                    break
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                files.append((entry.name, stat.st_size, stat.st_mtime_ns))
    except OSError:
        return ()
    return tuple(sorted(files))


class ModelRepository:
    """Served versions by model name, and the status of every version tried."""

    def __init__(
        self,
        root: Path,
        loader: Loader,
        default_policy: VersionPolicy | None = None,
        policies: dict[str, VersionPolicy] | None = None,
        drain_s: float = 30.0,
    ) -> None:
        self.root = root
        self._loader = loader
        self._default_policy = default_policy or VersionPolicy("latest")
        self._policies = policies or {}
        self._drain_s = drain_s
        self._models: dict[str, dict[int, ServedModel]] = {}
        self._status: dict[tuple[str, int], VersionStatus] = {}
        self._lock = asyncio.Lock()  # one load or unload at a time
        self._polled: dict[str, list[int]] = {}  # what poll() last saw on disk
        # Versions whose load failed, with their files as they were when read: poll
        # tries one again once its files change (a folder still being copied).
        self._failed: dict[tuple[str, int], Fingerprint | None] = {}

    def policy(self, name: str) -> VersionPolicy:
        return self._policies.get(name, self._default_policy)

    # -- changes -------------------------------------------------------------

    async def load_all(self) -> None:
        self._polled = scan(self.root)
        for name in self._polled:
            await self.load_model(name)

    async def poll(self) -> None:
        """Triton's ``poll`` control mode: follow the disk, touching only what changed.

        A model whose versions on disk changed is brought in line (new versions
        load, the policy retires old ones); a model gone from disk is unloaded,
        unless it is the last one serving, which keeps serving (logged) so the
        server never turns unready behind an operator's back.
        """
        on_disk = scan(self.root)
        for name, versions in on_disk.items():
            if self._polled.get(name) != versions:
                log.info("poll: %s versions on disk are now %s", name, versions)
                await self.load_model(name)
            elif changed := self._changed_failures(name, versions):
                log.info("poll: %s version %s changed on disk since it failed", name, changed)
                await self.load_model(name)
        for name in [n for n in self.names() if n not in on_disk]:
            try:
                await self.unload_model(name)
            except Conflict as exc:
                log.error("poll: %s left the repository but keeps serving: %s", name, exc.message)
        self._polled = on_disk
        self._failed = {k: f for k, f in self._failed.items() if k[1] in on_disk.get(k[0], [])}

    def _changed_failures(self, name: str, versions: list[int]) -> list[int]:
        """Failed versions of ``name`` still on disk whose files changed since they failed."""
        return [
            version
            for version in versions
            if (name, version) in self._failed
            and self._failed[(name, version)] != fingerprint(self.root / name / str(version))
        ]

    async def load_model(self, name: str) -> list[VersionStatus]:
        """Bring ``name`` in line with its policy and the disk: load new, retire old.

        Returns the versions that failed to load in this call (also in the log
        and the index). Raises ModelNotFound when the disk has no version of it.
        """
        async with self._lock:
            on_disk = scan(self.root).get(name)
            if not on_disk:
                raise ModelNotFound(f"model {name!r} has no version in the model repository")
            wanted = self.policy(name).select(on_disk)
            serving = dict(self._models.get(name, {}))
            failed = [
                status
                for version in wanted
                if version not in serving
                and (status := await self._load_version(name, version)) is not None
            ]
            # Retire only once every wanted version had its chance: if the new
            # version failed, the old one keeps serving.
            loaded_wanted = [v for v in wanted if v in self._models.get(name, {})]
            if loaded_wanted:
                for version in [v for v in serving if v not in wanted]:
                    await self._retire(name, version, "retired by version policy")
            return failed

    async def unload_model(self, name: str) -> None:
        """Retire every version of ``name``; refused for the last model serving (Conflict),
        which would leave a live server that is never ready again."""
        async with self._lock:
            if name not in self._models:
                raise ModelNotFound(f"model {name!r} is not loaded")
            if set(self._models) == {name}:
                raise Conflict(
                    f"model {name!r} is the last model serving: unloading it would leave the "
                    "server unready; load another model first"
                )
            for version in list(self._models[name]):
                await self._retire(name, version, "unloaded")

    async def close(self) -> None:
        async with self._lock:
            for name in list(self._models):
                for version in list(self._models[name]):
                    await self._retire(name, version, "server stopped")

    async def _load_version(self, name: str, version: int) -> VersionStatus | None:
        """Load one version; its failure status if it failed, else None."""
        self._set(name, version, "LOADING")
        start = time.perf_counter()
        folder = self.root / name / str(version)
        before: Fingerprint | None = fingerprint(folder)
        try:
            served = await asyncio.to_thread(self._loader, folder)
            if fingerprint(folder) != before:  # still being written: what was read is not it
                await served.close()
                before = None  # so the next poll tries it again whatever it finds
                raise RuntimeError(
                    "its files changed while it was loading (still being copied?); "
                    "it is tried again once they have settled"
                )
        except Exception as exc:  # any failure to load is reported, never fatal
            log.error("failed to load %s version %d: %s", name, version, exc)
            MODEL_LOAD_FAILURES.labels(name).inc()
            self._failed[(name, version)] = before
            self._set(name, version, "UNAVAILABLE", self._public(str(exc)))
            return self._status[(name, version)]
        self._failed.pop((name, version), None)
        MODEL_LOAD_DURATION.labels(name).observe(time.perf_counter() - start)
        self._models.setdefault(name, {})[version] = served
        MODEL_VERSIONS_LOADED.labels(name).set(len(self._models[name]))
        self._set(name, version, "READY")
        log.info("serving %s version %d", name, version)
        return None

    async def _retire(self, name: str, version: int, reason: str) -> None:
        served = self._models[name].pop(version)
        if not self._models[name]:
            del self._models[name]
        MODEL_VERSIONS_LOADED.labels(name).set(len(self._models.get(name, {})))
        self._set(name, version, "UNLOADING", reason)
        if not await served.drain(self._drain_s):
            log.warning(
                "%s version %d still had requests after %.0fs", name, version, self._drain_s
            )
        await served.close()
        self._set(name, version, "UNAVAILABLE", reason)
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:  # files keep every label set there
            QUEUE_DEPTH.remove(name, str(version))
        log.info("%s version %d %s", name, version, reason)

    def _public(self, message: str) -> str:
        """A load error as clients may see it: the repository's absolute path removed (the
        log keeps it whole), e.g. from onnxruntime's own messages."""
        for root in {str(self.root.resolve()), str(self.root)}:
            message = message.replace(root + os.sep, "").replace(root, "<repository>")
        return message

    def _set(self, name: str, version: int, state: VersionState, reason: str = "") -> None:
        self._status[(name, version)] = VersionStatus(name, version, state, reason)

    # -- reads ---------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[ServedModel]:
        return [self._models[name][v] for v in sorted(self._models.get(name, {}))]

    def statuses(self, name: str) -> list[VersionStatus]:
        return [s for (n, _), s in sorted(self._status.items()) if n == name]

    def index(self) -> list[VersionStatus]:
        """Every version on disk or ever tried, with its state (the V2 repository index)."""
        seen = dict(self._status)
        for name, versions in scan(self.root).items():
            for version in versions:
                seen.setdefault(
                    (name, version), VersionStatus(name, version, "UNAVAILABLE", "not loaded")
                )
        return [seen[key] for key in sorted(seen)]

    def get(self, name: str, version: int | None = None) -> ServedModel:
        """The requested version, or the newest served one; ModelNotFound names what exists."""
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

    def resolve(self, name: str, version: int | None = None) -> ServedModel:
        """Like ``get``, but ``NotReady`` rather than ``ModelNotFound`` while the version
        asked for (or, without one, any version of the model) is loading or draining."""
        try:
            return self.get(name, version)
        except ModelNotFound:
            for status in self.statuses(name):
                if status.state in ("LOADING", "UNLOADING") and version in (None, status.version):
                    raise NotReady(
                        f"model {name!r} version {status.version} is {status.state.lower()}; "
                        "retry shortly"
                    ) from None
            raise

    def all(self) -> list[ServedModel]:
        return [m for name in self.names() for m in self.versions(name)]
