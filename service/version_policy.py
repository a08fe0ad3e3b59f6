"""Which versions of a model to serve, as Triton's version_policy says it.

``latest:N`` serves the N highest versions on disk, ``all`` every one, and
``specific:1,3`` exactly those. A policy is a short string so that it fits in
an environment variable; ``LSTM_SERVE_VERSION_POLICY`` sets the default and
``LSTM_SERVE_MODEL_VERSION_POLICIES`` (JSON, ``{"name": "policy"}``) per model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VersionPolicy:
    kind: str  # "latest" | "all" | "specific"
    count: int = 1
    versions: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> VersionPolicy:
        kind, _, rest = text.strip().partition(":")
        try:
            if kind == "all" and not rest:
                return cls("all")
            if kind == "latest":
                count = int(rest or "1")
                if count >= 1:
                    return cls("latest", count=count)
            if kind == "specific":
                versions = tuple(sorted({int(v) for v in rest.split(",")}))
                if versions and versions[0] >= 1:
                    return cls("specific", versions=versions)
        except ValueError:
            pass
        raise ValueError(
            f"version policy {text!r} is not one of 'latest:N', 'all', 'specific:V1,V2,...'"
        )

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those on disk, ascending."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "latest":
            return ordered[-self.count :]
        return [v for v in ordered if v in self.versions]

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(map(str, self.versions))
        return "all"
