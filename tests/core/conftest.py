"""Real onnxruntime sessions of the tiny models, shared by the core's tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.core.model import load_version
from service.core.runtime import ModelRuntime, RuntimeOptions


def runtime_of(repository: Path, name: str) -> ModelRuntime:
    served = load_version(repository / name / "1", RuntimeOptions(), lambda _: None)  # type: ignore[arg-type,return-value]
    return served.runtime


@pytest.fixture(scope="module")
def uni(tiny_repository: Path) -> ModelRuntime:
    return runtime_of(tiny_repository, "tiny")


@pytest.fixture(scope="module")
def bi(tiny_repository: Path) -> ModelRuntime:
    return runtime_of(tiny_repository, "tiny_bi")
