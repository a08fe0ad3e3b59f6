"""The module itself: parameter counts, the Keras-style summary, checkpoints."""

from __future__ import annotations

from pathlib import Path

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


def test_export_path_equals_packed_path_on_full_length_batches() -> None:
    torch.manual_seed(0)
    model = StackedLSTM(3, [8, 4], 3, bidirectional=True).eval()
    x = torch.randn(4, 9, 3)
    with torch.no_grad():
        sequence, final, *states = model(x, *model.zero_states(4))
        seq_logits, final_logits, packed_states = model.logits(x, torch.full((4,), 9))
    torch.testing.assert_close(final, torch.softmax(final_logits, -1))
    torch.testing.assert_close(sequence, torch.softmax(seq_logits, -1))
    for got, want in zip(states, packed_states, strict=True):
        torch.testing.assert_close(got, want)


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
