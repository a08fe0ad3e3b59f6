"""Tiny exported models for test suites: random seeded weights, real export, < 1 s.

No training: the server's tests need a real graph with the real contract, not a
good model. The export still runs its parity check, so every tiny model is a
faithful graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from models.architecture import StackedLSTM
from models.export import export_model


def make_tiny_model(
    repository: Path,
    name: str = "tiny",
    version: int = 1,
    *,
    features: int = 3,
    layers: Sequence[int] = (8, 4),
    bidirectional: bool = False,
    task: str = "classification",
    classes: int = 3,
    output_size: int | None = None,
    seed: int = 0,
    cells: Sequence[str] | None = None,
) -> Path:
    """Export a randomly initialised StackedLSTM to ``repository/name/version``; ``cells``
    per layer (``lstm`` or ``gru``, all LSTM when None)."""
    torch.manual_seed(seed)
    size = classes if task == "classification" else (output_size or 1)
    model = StackedLSTM(features, layers, size, task=task, bidirectional=bidirectional, cells=cells)
    generator = torch.Generator().manual_seed(seed)
    # Non-trivial normalisation, so a server that forgot it would be caught.
    mean = torch.randn(features, generator=generator)
    std = torch.rand(features, generator=generator) + 0.5
    model.set_normalization(mean, std)
    labels = [f"class_{i}" for i in range(classes)] if task == "classification" else None
    return export_model(model, repository, name, version, classes=labels)


class _StatelessGRU(StackedLSTM):
    """A GRU stack as exported before GRU state was carried: no state tensors."""

    @property
    def carries_state(self) -> bool:
        return False


def make_stateless_gru(repository: Path, name: str, version: int = 1, seed: int = 0) -> Path:
    """A GRU model in the format GRU models were exported in before their state was carried
    (no ``h0_i``/``hn_i``), which servers must still load and serve whole."""
    torch.manual_seed(seed)
    model = _StatelessGRU(3, (8, 4), 2, task="regression", cells=("gru", "gru"))
    return export_model(model, repository, name, version)
