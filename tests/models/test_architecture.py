"""The module itself: parameter counts, the Keras-style summary, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.architecture import StackedLSTM


def lstm_params(inputs: int, units: int) -> int:
    """PyTorch keeps two bias vectors per gate: 4h(i + h) + 8h."""
    return 4 * units * (inputs + units) + 8 * units


def test_summary_counts_every_parameter() -> None:
    model = StackedLSTM(6, [64, 32], 4)
    summary = model.summary()
    assert f"{lstm_params(6, 64):>10,}" in summary  # 18,432
    assert f"{lstm_params(64, 32):>10,}" in summary  # 12,544
    total = lstm_params(6, 64) + lstm_params(64, 32) + 32 * 4 + 4
    assert total == sum(p.numel() for p in model.parameters())
    assert summary.splitlines()[-2] == f"Total params: {total:,}"
    assert "(None, None, 64)" in summary and "(None, 4)" in summary


def test_bidirectional_layers_double_their_outputs() -> None:
    model = StackedLSTM(3, [8, 4], 2, bidirectional=True, task="regression")
    assert "lstm_1 (Bidirectional(LSTM))  (None, None, 8)" in model.summary()
    assert model.head.in_features == 8


@pytest.mark.parametrize("bidirectional", [False, True])
def test_ragged_batch_rows_equal_each_sequence_alone(bidirectional: bool) -> None:
    """Eager forward packs: padding changes nothing, in either direction."""
    torch.manual_seed(0)
    model = StackedLSTM(3, [8, 4], 3, bidirectional=bidirectional).eval()
    lengths = torch.tensor([9, 2, 5, 1])
    x = torch.randn(4, 9, 3)
    with torch.no_grad():
        batch = model(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = model(x[i : i + 1, :n], torch.tensor([n]))
            torch.testing.assert_close(batch[0][i, :n], alone[0][0])
            for got, want in zip(batch[1:], alone[1:], strict=True):
                torch.testing.assert_close(got[..., i, :], want[..., 0, :])
        # padded steps hold the head applied to zeros, as the ONNX LSTM's Y does
        padding = torch.softmax(model.head.bias, dim=-1)
        torch.testing.assert_close(batch[0][1, 2:], padding.expand(7, 3))


def test_bidirectional_final_is_keras_style() -> None:
    """Forward state at the last real step, backward state at step 0."""
    torch.manual_seed(1)
    model = StackedLSTM(2, [5], 2, bidirectional=True).eval()
    lengths = torch.tensor([6, 3])
    with torch.no_grad():
        out, final, _ = model._layers(torch.randn(2, 6, 2), lengths, None)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(final[i, :5], out[i, n - 1, :5])
        torch.testing.assert_close(final[i, 5:], out[i, 0, 5:])


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = StackedLSTM(2, [5], 1, task="regression", dropout=0.3)
    model.set_normalization(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    model.save_checkpoint(tmp_path / "c.pt")
    loaded = StackedLSTM.load_checkpoint(tmp_path / "c.pt")
    assert loaded.config() == model.config()
    for (name, a), (_, b) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
