"""The page with a forecaster, in a real browser: its horizon plotted right after the input.

Same harness as ``test_page.py`` (headless Chromium, a real server), over a
repository holding one encoder-decoder forecaster with shipped examples. The
numbers are read back from the chart's ``data-series`` and compared with the
API's own answer.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from models.data import Dataset
from models.examples import write_examples
from models.export import export_model
from models.forecaster import Forecaster
from tests.http.ui import test_page as harness

browser = harness.browser  # the module's Chromium and the recorded page, as test_page's
watched = harness.watched
HORIZON = 5


def forecaster_repository(root: Path) -> Path:
    """``sunspots_like/1``: LSTM 8 -> RepeatVector(5) -> LSTM 6 -> Dense 1, with examples."""
    torch.manual_seed(0)
    model = Forecaster(1, [8, 6], 1, task="regression", horizon=HORIZON, encoder_layers=1)
    model.set_normalization(
        torch.tensor([50.0]), torch.tensor([40.0]), torch.tensor([50.0]), torch.tensor([40.0])
    )
    version = export_model(model, root, "sunspots_like", 1, feature_names=["value"])
    rng = np.random.default_rng(0)
    x = (rng.random((3, 11, 1)) * 100).astype(np.float32)
    write_examples(version, Dataset(x, np.zeros((3, HORIZON, 1)), np.full(3, 11)), None)
    return root


def test_a_forecasters_horizon_is_plotted_after_its_input(
    server_factory: Callable[..., Any], watched: harness.Watched, tmp_path: Path
) -> None:
    served = server_factory(forecaster_repository(tmp_path / "repo"))
    page = harness.open_page(watched, served.url)
    info = page.inner_text("#model-info")
    for expected in ("forecast of the next 5 steps", "LSTM 8 → repeat \u00d75 → LSTM 6 → dense 1"):
        assert expected in info
    assert "no (a forecaster)" in info
    assert page.is_disabled("#mode-sequence") and page.is_disabled("#mode-final")

    example = httpx.get(
        f"{served.url}/ui/models/sunspots_like/versions/1/examples", timeout=10
    ).json()["examples"][1]
    page.click("#examples button[data-example='1']")
    drawn = harness.wait_for_plot(page, "output-chart", "lines")
    answer = httpx.post(
        f"{served.url}/v1/models/sunspots_like/versions/1:predict",
        json={"instances": [example["timesteps"]]},
        timeout=30,
    ).json()["predictions"][0]
    assert len(answer) == HORIZON
    steps = len(example["timesteps"])
    assert [s["name"] for s in drawn["series"]] == ["forecast", "input: value"]
    forecast, given = drawn["series"]
    # The forecast starts where the input ends: T gaps (NaN, written as null), then 5 steps.
    assert forecast["values"][:steps] == [None] * steps
    harness.assert_close(forecast["values"][steps:], [step[0] for step in answer])
    assert given["values"] == [step[0] for step in example["timesteps"]]
    assert page.inner_text("#final-label").startswith("next 5 steps: ")

    # What the page sent, and the Python snippet, ask for the forecast as the API serves it.
    assert '"return_sequences": false' in harness.curl_body(page)
    snippet = page.inner_text("#python-snippet")
    assert 'InferRequestedOutput("forecast")' in snippet
    run = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    printed = [float(v) for v in re.findall(r"[-+]?\d+\.\d+(?:e[-+]?\d+)?", run.stdout)]
    harness.assert_close(printed, [step[0] for step in answer], tolerance=1e-3)

    assert watched.errors == []
    assert watched.outside_requests() == []
