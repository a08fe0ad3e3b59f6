"""lstm-train --horizon n: a forecaster trained on the shipped series in seconds, and served.

The sunspots series (``models/data/sunspots.npz``) is cut into windows by
``models/series.py`` (chronologically split), trained, and exported with one
``forecast`` output that onnxruntime computes as the PyTorch model does; the
forecast must beat persistence (the last value held for every step) on the
test period. Sequences with their own n target steps train too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import quantize, train
from models.data import load
from models.forecaster import Forecaster
from models.presets import DATA
from models.series import forecast_windows
from service.core.contract import ModelMetadata

SUNSPOTS = DATA / "sunspots.npz"


def read_metadata(version_dir: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((version_dir / "metadata.json").read_bytes())


def test_windows_split_by_time_so_no_test_target_is_trained_on() -> None:
    arrays = {"value": np.arange(100, dtype=np.float32)}
    windows = forecast_windows(arrays, lookback=6, horizon=3, test_split=0.2)
    x, y = windows["X_train"], windows["y_train"]
    assert x.shape == (72, 6, 1) and y.shape == (72, 3, 1)
    np.testing.assert_array_equal(x[0, :, 0], np.arange(6))
    np.testing.assert_array_equal(y[0, :, 0], [6, 7, 8])  # the steps right after the input
    assert y.max() < 80  # the test period (the last 20 values) is never a training target
    test_y = windows["y_test"]
    assert test_y.min() >= 80 and test_y.shape == (18, 3, 1) and test_y.max() == 99
    assert windows["feature_names"].tolist() == ["value"]


def test_the_sunspots_preset_trains_a_forecaster_that_beats_persistence(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repo"
    path = train.run(
        ["--preset", "sunspots", "--horizon", "5", "--repository", str(repository), "--quiet"]
    )
    assert path == repository / "sunspots_forecast_5" / "1"  # not a version of the 1-step model
    out = capsys.readouterr().out
    assert "repeat_vector (RepeatVector)  (None, 5, 32)" in out
    assert "(forecast: (None, 5, 1) per sequence)" in out
    meta = read_metadata(path)
    assert meta.target == "forecast" and meta.horizon == 5 and meta.output_size == 1
    assert meta.forecast is not None and meta.forecast.encoder_layers == 1
    assert meta.feature_names == ["value"] and meta.training is not None
    hyper = meta.training.hyperparameters
    assert (hyper["horizon"], hyper["lookback"], hyper["decoder_layers"]) == (5, 11, 1)

    # The test period's windows, as lstm-train drew them: the forecast beats persistence.
    test = load(SUNSPOTS, 0.15, 0.2, 0, None, horizon=5, lookback=11).test
    persistence = float(((test.x[:, -1:, :] - test.y) ** 2).mean())
    mse = meta.training.metrics["test_mse"]
    assert isinstance(mse, float) and mse < 0.7 * persistence, (mse, persistence)

    # onnxruntime's forecast is the PyTorch model's, for a ragged batch of the test inputs.
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    lengths = np.array([11, 6, 1, 11], np.int64)
    x = test.x[:4].copy()
    (got,) = session.run(["forecast"], {"x": x, "lengths": lengths})
    model = Forecaster.load_checkpoint(path / "checkpoint.pt")
    with torch.no_grad():
        (want,) = model(torch.from_numpy(x), torch.from_numpy(lengths))
    assert got.shape == (4, 5, 1)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-3)  # sunspot units


def test_sequences_with_their_own_future_steps_train(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 2)).astype(np.float32)
    y = np.stack([x[:, -1, 0] * k for k in (1.0, 0.5, 0.25)], axis=1)  # (n, 3)
    np.savez(tmp_path / "seq.npz", X=x, y=y)
    args = ["--data", str(tmp_path / "seq.npz"), "--name", "f", "--horizon", "3"]
    args += ["--layers", "8,6,4", "--decoder-layers", "2", "--epochs", "3", "--quiet"]
    path = train.run([*args, "--repository", str(tmp_path / "repo")])
    meta = read_metadata(path)
    assert meta.horizon == 3 and meta.forecast is not None
    assert meta.forecast.encoder_layers == 1 and len(meta.layers) == 3
    with pytest.raises(ValueError, match=r"--horizon 4, but the targets hold 3 steps"):
        load(tmp_path / "seq.npz", horizon=4)
    with pytest.raises(ValueError) as refused:
        quantize.quantize_version(tmp_path / "repo", "f", 1, data=tmp_path / "seq.npz")
    assert str(refused.value) == (
        "f/1 is a forecaster (horizon 3): int8 versions of forecasters are not supported yet; "
        "serve the fp32 version"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--horizon", "5", "--target", "final"],
            "--target final and --horizon: a forecaster's target is its horizon; give one of them",
        ),
        (
            ["--horizon", "5", "--layers", "32", "--decoder-layers", "1"],
            "--decoder-layers 1 of 1 layers (--layers): a forecaster needs at least one encoder "
            "and one decoder layer, e.g. --layers 64,64",
        ),
        (["--lookback", "8"], "--lookback needs --horizon (it sizes a forecaster's windows)"),
        (["--horizon", "0"], "--horizon 0: a forecaster needs at least 1 future step"),
    ],
)
def test_forecaster_flags_that_cannot_work_stop_with_one_line(
    capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        train.run(["--preset", "sunspots", *flags])
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"lstm-train: {message}\n"
