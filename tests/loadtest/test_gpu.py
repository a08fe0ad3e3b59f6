"""The GPU check's CPU fallback: where onnxruntime offers no CUDA, it says so and measures CPU."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest

from service.core.runtime import CUDA
from service.loadtest import gpu


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="a GPU machine runs it for real")
def test_without_cuda_the_check_reports_cpu_only(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    gpu.main(["--seconds", "0.02", "--timesteps", "8", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["cuda"] is False
    assert "CUDAExecutionProvider" in report["note"]
    assert list(report["cpu_sequences_per_s"]) == [str(b) for b in gpu.BATCHES]
    assert all(v > 0 for v in report["cpu_sequences_per_s"].values())
    assert report["http_cpu"]["instance_kind"] == "KIND_CPU"
    assert report["http_cpu"]["errors"] == {} and report["http_cpu"]["sequences_per_s"] > 0
    assert "cuda_sequences_per_s" not in report and "http_cuda" not in report
