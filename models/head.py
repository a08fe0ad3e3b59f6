"""The dense part of a stacked LSTM: the optional stack before the head, and activations.

Split from ``architecture.py``, which holds the recurrent layers: this module
is what sits between the last recurrent layer and the output — ``Linear``
layers, Keras's activations and inference-time layer or batch normalisation
(``hidden``), each described by a small dict so a checkpoint rebuilds it —
and the activation modules the head's output goes through.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


def activation_module(name: str) -> nn.Module:
    """Keras's activation of that name as a torch module, the same function exactly."""
    modules: dict[str, type[nn.Module]] = {
        "linear": nn.Identity,
        "relu": nn.ReLU,
        "tanh": nn.Tanh,
        "sigmoid": nn.Sigmoid,
        "elu": nn.ELU,  # alpha 1.0 in both
        "selu": nn.SELU,
        "gelu": nn.GELU,  # Keras's default is the exact (erf) form, as torch's
        "softplus": nn.Softplus,
        "softsign": nn.Softsign,
        "swish": nn.SiLU,
        "silu": nn.SiLU,
    }
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)  # Keras's default negative_slope
    if name not in modules:
        raise ValueError(f"activation {name!r} is not one of {', '.join([*modules, 'leaky_relu'])}")
    return modules[name]()


class Affine(nn.Module):
    """``x * scale + shift`` per feature: an inference-time batch normalisation."""

    scale: Tensor
    shift: Tensor

    def __init__(self, size: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(size))
        self.register_buffer("shift", torch.zeros(size))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


def hidden_stack(width: int, hidden: Sequence[dict[str, Any]]) -> tuple[nn.Sequential, int]:
    """The dense stack's modules and the width it hands the head."""
    modules: list[nn.Module] = []
    for item in hidden:
        kind = item["kind"]
        if kind == "dense":
            modules.append(nn.Linear(width, int(item["units"]), bias=bool(item.get("bias", True))))
            width = int(item["units"])
        elif kind == "activation":
            modules.append(activation_module(str(item["name"])))
        elif kind == "layer_norm":
            modules.append(nn.LayerNorm(width, eps=float(item["epsilon"])))
        elif kind == "batch_norm":
            modules.append(Affine(width))
        else:
            raise ValueError(f"unknown dense-stack item {kind!r}")
    return nn.Sequential(*modules), width
