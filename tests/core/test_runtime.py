"""Provider choice and the graph-vs-metadata check, on the real onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from service.core.contract import ModelMetadata
from service.core.runtime import CPU, CUDA, ModelRuntime, RuntimeOptions, choose_providers
from service.core.types import Outputs
from tests.conftest import reference


def test_cpu_only_wheel_runs_on_cpu_whatever_is_asked(caplog: pytest.LogCaptureFixture) -> None:
    assert choose_providers("auto", [CPU]) == [CPU]
    assert choose_providers("cpu", [CUDA, CPU]) == [CPU]
    assert choose_providers("cuda", [CPU]) == [CPU]
    assert "CUDA was asked for but this onnxruntime offers only" in caplog.text


def test_cuda_is_preferred_when_offered() -> None:
    assert choose_providers("auto", [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers("cuda", [CUDA, CPU]) == [CUDA, CPU]


def load(version_dir: Path, device: str = "auto") -> ModelRuntime:
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())
    return ModelRuntime(version_dir / "model.onnx", meta, RuntimeOptions(device=device))


def test_session_reports_the_providers_really_used(tiny_repository: Path) -> None:
    assert load(tiny_repository / "tiny" / "1", device="cuda").providers == [CPU]


def test_run_equals_a_plain_session(tiny_repository: Path) -> None:
    version_dir = tiny_repository / "tiny" / "1"
    runtime = load(version_dir)
    x = np.random.default_rng(0).normal(size=(3, 9, 3)).astype(np.float32)
    lengths = np.array([9, 4, 1], dtype=np.int64)
    got = runtime.run(x, lengths, None, Outputs(states=True))
    want = reference(version_dir, x, lengths)
    np.testing.assert_array_equal(got.final_output, want["final_output"])
    np.testing.assert_array_equal(got.sequence_output, want["sequence_output"])
    np.testing.assert_array_equal(got.final_states[1][0], want["hn_1"])


def test_only_requested_outputs_are_returned(tiny_repository: Path) -> None:
    runtime = load(tiny_repository / "tiny" / "1")
    x = np.ones((1, 2, 3), np.float32)
    result = runtime.run(x, np.array([2]), None, Outputs(sequence=False))
    assert result.sequence_output is None and result.final_output is not None
    assert result.final_states == []


def test_graph_that_does_not_match_metadata_is_refused(
    tiny_repository: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "tiny" / "1"
    shutil.copytree(tiny_repository / "tiny" / "1", bad)
    meta = ModelMetadata.model_validate_json((bad / "metadata.json").read_bytes())
    renamed = meta.model_copy(update={"tensors": meta.tensors.model_copy(update={"x": "input"})})
    with pytest.raises(ValueError, match=r"model\.onnx does not match metadata\.json"):
        ModelRuntime(bad / "model.onnx", renamed, RuntimeOptions())
