"""Scanning the repository, loading latest versions, and refusing corrupt folders."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service.errors import ModelNotFound
from service.repository import ModelRepository, scan
from service.runtime import RuntimeOptions


@pytest.fixture
def executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1)


def copy_repository(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_scan_lists_versions_in_order(tiny_repository: Path, tmp_path: Path) -> None:
    root = copy_repository(tiny_repository, tmp_path / "repo")
    (root / "tiny" / "notes").mkdir()  # not a version: ignored
    (root / "tiny" / "7").mkdir()  # no metadata: ignored
    (root / ".hidden").mkdir()
    assert scan(root) == {"tiny": [1, 2], "tiny_bi": [1]}
    assert scan(tmp_path / "missing") == {}


def test_latest_versions_are_loaded(tiny_repository: Path, executor: ThreadPoolExecutor) -> None:
    repo = ModelRepository(tiny_repository, RuntimeOptions(), executor, max_queue=4)
    repo.load_latest()
    assert [(m.name, m.version) for m in repo.all()] == [("tiny", 2), ("tiny_bi", 1)]
    assert repo.get("tiny").version == 2
    with pytest.raises(ModelNotFound, match="model 'tiny' has no loaded version 1"):
        repo.get("tiny", 1)


def test_corrupt_model_file_is_refused_and_others_still_load(
    tiny_repository: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    root = copy_repository(tiny_repository, tmp_path / "repo")
    model = root / "tiny" / "2" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    repo = ModelRepository(root, RuntimeOptions(), executor, max_queue=4)
    repo.load_latest()
    assert [(m.name, m.version) for m in repo.all()] == [("tiny_bi", 1)]
    (status,) = repo.statuses("tiny")
    assert status.state == "UNAVAILABLE"
    assert "model.onnx has sha256" in status.error
    assert "the file is corrupt or was replaced" in status.error


def test_metadata_in_the_wrong_folder_is_refused(
    tiny_repository: Path, tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(tiny_repository / "tiny" / "1", root / "other" / "1")
    repo = ModelRepository(root, RuntimeOptions(), executor, max_queue=4)
    repo.load_latest()
    (status,) = repo.statuses("other")
    assert "holds metadata for 'tiny' version 1" in status.error


def test_unreadable_metadata_is_refused(tmp_path: Path, executor: ThreadPoolExecutor) -> None:
    version = tmp_path / "broken" / "1"
    version.mkdir(parents=True)
    (version / "metadata.json").write_text('{"name": "broken"}')
    repo = ModelRepository(tmp_path, RuntimeOptions(), executor, max_queue=4)
    repo.load_latest()
    (status,) = repo.statuses("broken")
    assert status.state == "UNAVAILABLE"
    assert "metadata.json is not valid model metadata" in status.error
