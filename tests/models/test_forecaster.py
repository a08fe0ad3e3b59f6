"""The encoder-decoder forecaster without Keras: torch, its ONNX export, the contract, the core.

``models/forecaster.py`` against a step-by-step reference written here (encode
each sequence alone at its own length, repeat the final output, decode), the
exported graph against torch on ragged batches it never saw, the metadata's
``forecast`` block and its checks, and the core's bounded calls returning
[B, horizon, K] exactly as one whole call does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.architecture import StackedLSTM
from models.export import export_model
from models.forecaster import Forecaster
from service.core.calls import CostLimits, execute
from service.core.contract import ModelMetadata
from service.core.model import read_metadata
from service.core.runtime import ModelRuntime, RuntimeOptions
from service.core.types import FINAL

HORIZON = 4


def forecaster(seed: int = 0, **options: object) -> Forecaster:
    """Encoder 8 -> 6, RepeatVector(4), decoder 5, dense 3 relu, head 2, non-trivial scaling."""
    torch.manual_seed(seed)
    model = Forecaster(
        3,
        [8, 6, 5],
        2,
        task="regression",
        horizon=HORIZON,
        encoder_layers=2,
        hidden=[{"kind": "dense", "units": 3}, {"kind": "activation", "name": "tanh"}],
        **options,  # type: ignore[arg-type]
    )
    model.set_normalization(
        torch.tensor([1.0, -2.0, 0.5]),
        torch.tensor([2.0, 0.5, 1.0]),
        torch.tensor([10.0, -1.0]),
        torch.tensor([3.0, 0.2]),
    )
    return model.eval()


def by_hand(model: Forecaster, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each sequence alone, trimmed to its length: encoder, repeat, decoder, head."""
    out = []
    with torch.no_grad():
        for row, n in zip(x, lengths, strict=True):
            h = (torch.from_numpy(row[None, :n]) - model.x_mean) / model.x_std
            for lstm in model.lstms[: model.encoder_layers]:
                h, _ = lstm(h)
            h = h[:, -1:].repeat(1, model.horizon, 1)  # the final output, once per step
            for lstm in model.lstms[model.encoder_layers :]:
                h, _ = lstm(h)
            out.append(model.activate(model.head(model.hidden(h)))[0].numpy())
    return np.stack(out)


def ragged(seed: int, batch: int = 5, steps: int = 13) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, steps, 3)).astype(np.float32)
    lengths = rng.integers(1, steps + 1, size=batch).astype(np.int64)
    lengths[0] = steps
    return x, lengths


def test_the_forecast_is_the_decoded_repeat_of_each_sequences_final_output() -> None:
    model = forecaster()
    x, lengths = ragged(1)
    with torch.no_grad():
        (got,) = model(torch.from_numpy(x), torch.from_numpy(lengths))
    assert got.shape == (5, HORIZON, 2)
    np.testing.assert_allclose(got.numpy(), by_hand(model, x, lengths), atol=1e-5)
    # padding after a sequence's end changes nothing: it is encoded up to its length only
    x[1, lengths[1] :] = 99.0
    with torch.no_grad():
        (again,) = model(torch.from_numpy(x), torch.from_numpy(lengths))
    np.testing.assert_allclose(again.numpy(), got.numpy(), atol=1e-6)


def test_the_export_has_one_forecast_output_equal_to_torch(tmp_path: Path) -> None:
    model = forecaster(2, cells=["lstm", "gru", "lstm"])
    version = export_model(model, tmp_path, "f", 1)
    meta = read_metadata(version)
    assert meta.target == "forecast" and meta.horizon == HORIZON
    assert meta.forecast is not None and meta.forecast.encoder_layers == 2
    assert meta.tensors.sequence_output is None and meta.tensors.final_output == "forecast"
    assert meta.tensors.initial_states == [] and not meta.carries_state
    assert meta.parity.max_abs_diff <= 1e-5
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["forecast"]
    assert [i.name for i in session.get_inputs()] == ["x", "lengths"]
    x, lengths = ragged(3, batch=7, steps=40)  # a batch and a length the export never saw
    (got,) = session.run(["forecast"], {"x": x, "lengths": lengths})
    np.testing.assert_allclose(got, by_hand(model, x, lengths), atol=1e-5)
    # the checkpoint rebuilds the forecaster
    again = Forecaster.load_checkpoint(version / "checkpoint.pt")
    assert (again.horizon, again.encoder_layers) == (HORIZON, 2)
    np.testing.assert_allclose(by_hand(again, x, lengths), got, atol=1e-5)


def test_the_summary_shows_the_repeat_between_encoder_and_decoder() -> None:
    rows = forecaster().summary().splitlines()
    assert rows[4].startswith("lstm_1 (LSTM)") and "(None, 6)" in rows[4]
    assert rows[5].split() == ["repeat_vector", "(RepeatVector)", "(None,", "4,", "6)", "0", "0"]
    assert rows[6].startswith("lstm_2 (LSTM)") and "(None, 4, 5)" in rows[6]
    assert rows[-1] == "(forecast: (None, 4, 2) per sequence)"


def test_a_forecaster_needs_an_encoder_and_a_decoder() -> None:
    with pytest.raises(ValueError, match="at least one encoder and one decoder layer"):
        Forecaster(3, [8], 1, horizon=2, encoder_layers=1)
    with pytest.raises(ValueError, match="the horizon must be at least 1 step"):
        Forecaster(3, [8, 4], 1, horizon=0, encoder_layers=1)


def test_the_contract_keeps_the_forecast_block_and_the_rest_consistent(tmp_path: Path) -> None:
    version = export_model(forecaster(), tmp_path, "f", 1)
    data = json.loads((version / "metadata.json").read_text())
    assert data["forecast"] == {"horizon": HORIZON, "encoder_layers": 2}
    broken = [
        ({"forecast": None}, "target 'forecast' and the forecast block go together"),
        ({"target": "final"}, "target 'forecast' and the forecast block go together"),
        (
            {"forecast": {"horizon": 4, "encoder_layers": 3}},
            "forecast.encoder_layers is 3 of 3 layers: a forecaster needs at least one decoder",
        ),
        (
            {"tensors": {**data["tensors"], "sequence_output": "sequence_output"}},
            "a forecaster has no per-timestep output",
        ),
    ]
    for change, message in broken:
        with pytest.raises(ValueError, match=message):
            ModelMetadata.model_validate({**data, **change})
    # other models' metadata has no forecast key at all (servers before forecasters read it)
    torch.manual_seed(0)
    plain = export_model(StackedLSTM(3, [4], 2, task="regression"), tmp_path, "p", 1)
    assert "forecast" not in json.loads((plain / "metadata.json").read_text())
    assert read_metadata(plain).horizon is None


def test_bounded_calls_return_the_whole_calls_forecast(tmp_path: Path) -> None:
    """Length buckets and row groups (a forecaster is never chunked in time)."""
    version = export_model(forecaster(4), tmp_path, "f", 1)
    runtime = ModelRuntime(version / "model.onnx", read_metadata(version), RuntimeOptions())
    assert runtime.padding_output.shape == (2,)
    rng = np.random.default_rng(5)
    lengths = np.array([1, 30, 2, 17, 3, 30, 9, 4, 25, 1, 6, 12], np.int64)
    x = rng.normal(size=(len(lengths), 30, 3)).astype(np.float32)
    whole = runtime.run(x, lengths, None, FINAL).final_output
    parts = execute(runtime, x, lengths, None, FINAL, CostLimits(max_call_cells=40))
    assert whole is not None and whole.shape == (12, HORIZON, 2)
    np.testing.assert_allclose(parts.final_output, whole, atol=1e-6)  # type: ignore[arg-type]
    model = Forecaster.load_checkpoint(version / "checkpoint.pt")
    np.testing.assert_allclose(whole, by_hand(model, x, lengths), atol=1e-5)
