"""A version's files stay in its folder, whatever its metadata.json names (issue 14)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core.model import ServedModel
from service.core.server import Server
from service.core.types import FINAL
from service.settings import Settings
from tests.conftest import reference


def version_with(tmp_path: Path, tiny_repository: Path, file: str) -> Path:
    """A copy of tiny version 2 whose metadata names ``file`` as its model."""
    version = tmp_path / "repo" / "tiny" / "2"
    shutil.copytree(tiny_repository / "tiny" / "2", version)
    meta = json.loads((version / "metadata.json").read_text())
    meta["onnx"]["file"] = file
    (version / "metadata.json").write_text(json.dumps(meta))
    return version


def load(version: Path) -> ServedModel:
    server = Server(Settings(model_repository=version.parent.parent))
    return server.load(version)


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("../../../outside/evil.onnx", "must be a plain name inside its version folder"),
        ("/etc/passwd", "must be a plain name inside its version folder"),
        ("sub/../../1/model.onnx", "must be a plain name inside its version folder"),
    ],
)
def test_paths_out_of_the_version_folder_are_refused(
    tiny_repository: Path, tmp_path: Path, file: str, message: str
) -> None:
    version = version_with(tmp_path, tiny_repository, file)
    with pytest.raises(ValueError, match=message) as caught:
        load(version)
    assert str(tmp_path) not in str(caught.value)  # no absolute path in what clients see
    assert f"tiny/2/metadata.json names the file {file!r}" in str(caught.value)


def test_a_symlinked_model_file_pointing_out_is_refused(
    tiny_repository: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(tiny_repository / "tiny" / "2" / "model.onnx", outside / "evil.onnx")
    version = version_with(tmp_path, tiny_repository, "linked.onnx")
    os.symlink(outside / "evil.onnx", version / "linked.onnx")
    with pytest.raises(ValueError) as caught:
        load(version)
    assert str(caught.value) == (
        "tiny/2/linked.onnx resolves outside its version folder (a symlink): model files "
        "must be inside <name>/<version>/"
    )


def test_a_symlinked_version_folder_outside_the_repository_is_refused(
    tiny_repository: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside" / "2"
    shutil.copytree(tiny_repository / "tiny" / "2", outside)
    (tmp_path / "repo" / "tiny").mkdir(parents=True)
    os.symlink(outside, tmp_path / "repo" / "tiny" / "2")
    with pytest.raises(ValueError) as caught:
        load(tmp_path / "repo" / "tiny" / "2")
    assert str(caught.value) == (
        "tiny/2 resolves outside the model repository (a symlink): version folders must be "
        "inside it"
    )


def test_a_replaced_file_reveals_nothing_of_it(tiny_repository: Path, tmp_path: Path) -> None:
    version = version_with(tmp_path, tiny_repository, "model.onnx")
    (version / "model.onnx").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(ValueError) as caught:
        load(version)
    assert str(caught.value) == (
        "tiny/2/model.onnx does not match the sha256 that metadata.json records: the file is "
        "corrupt or was replaced"
    )


def test_a_file_inside_the_folder_loads(tiny_repository: Path, tmp_path: Path) -> None:
    """``./model.onnx`` is the version's own file: it loads, and it is that model."""
    version = version_with(tmp_path, tiny_repository, "./model.onnx")
    model = load(version)
    assert (model.name, model.version) == ("tiny", 2)
    x = np.random.default_rng(0).normal(size=(1, 5, 3)).astype(np.float32)
    lengths = np.array([5])
    got = model.runtime.run(x, lengths, None, FINAL).final_output
    want = reference(tiny_repository / "tiny" / "2", x, lengths)["final_output"]
    np.testing.assert_allclose(got, want, atol=1e-6)
