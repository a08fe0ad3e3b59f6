"""Keras's Conv1D / MaxPooling1D / AveragePooling1D front end, as torch computes it exactly.

A front end sits between the (normalised) input and the first recurrent layer and
reads the whole time axis: every output step is a window of input steps. That
makes three things true that the rest of the project must respect, so they are
computed here, once, from the layers' settings:

- ``out_steps``: how many steps reach the recurrent layers from ``steps`` input
  steps (Keras's own output length, padding and strides included);
- ``min_steps``: the shortest input that hands the recurrent layers one step
  (the receptive field of a ``valid`` chain; 1 when every layer pads);
- ``reshapes_time``: which layer and setting make output steps differ from input
  steps ("" when they match one to one), because per-timestep outputs are only
  meaningful then.

Each layer is a plain dict (``kind``: ``conv1d``, ``max_pool`` or ``avg_pool``;
``name``; ``size``, ``strides``, ``padding``; conv: ``filters``, ``dilation``,
``activation``, ``bias``) so a checkpoint rebuilds it. Padding: ``causal`` (conv
only: zeros on the left), ``valid``, or ``same`` with stride 1 (Keras's split,
the odd step on the right; max pooling ignores the padding, average pooling is
refused by the importer because backends count it differently).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from models.head import activation_module
from service.core import contract

KERAS_KINDS = {"conv1d": "Conv1D", "max_pool": "MaxPooling1D", "avg_pool": "AveragePooling1D"}


def reach(item: dict[str, Any]) -> int:
    """Input steps one output step reads: the dilated kernel (or the pool)."""
    return (int(item["size"]) - 1) * int(item.get("dilation", 1)) + 1


def pads(item: dict[str, Any]) -> tuple[int, int]:
    """(left, right) steps of padding Keras adds for this layer's ``padding``."""
    extra = reach(item) - 1
    if item["padding"] == "causal":
        return extra, 0
    if item["padding"] == "same":
        return extra // 2, extra - extra // 2
    return 0, 0


def out_steps(config: Sequence[dict[str, Any]], steps: int) -> int:
    """Steps the front end hands on from ``steps`` input steps (0: too short for it)."""
    for item in config:
        left, right = pads(item)
        room = steps + left + right - reach(item)
        steps = room // int(item["strides"]) + 1 if room >= 0 else 0
    return steps


def min_steps(config: Sequence[dict[str, Any]]) -> int:
    """The shortest input that hands the recurrent layers at least one step.

    Walks back from one output step: a layer that must hand on ``n`` steps needs
    ``(n - 1) * strides + reach - padding`` of its own input (at least 1).
    """
    need = 1
    for item in reversed(config):
        left, right = pads(item)
        need = max(1, (need - 1) * int(item["strides"]) + reach(item) - left - right)
    return need


def reshapes_time(config: Sequence[dict[str, Any]]) -> str:
    """The first layer whose output steps are not its input steps, and why ("" if none).

    A stride-1 layer that pads (causal, same) or reads one step keeps the time
    axis: output step t belongs to input step t. Anything else shortens it.
    """
    for item in config:
        where = f"layer {item['name']!r} ({KERAS_KINDS[item['kind']]})"
        size = "kernel_size" if item["kind"] == "conv1d" else "pool_size"
        if int(item["strides"]) > 1:
            return f"{where}: strides={item['strides']}"
        if item["padding"] == "valid" and reach(item) > 1:
            return f"{where}: padding='valid' with {size}={item['size']}"
    return ""


class FrontEnd(nn.Module):
    """The layers over [B, T, F], channels last as Keras, in torch's [B, F, T] inside."""

    def __init__(self, width: int, config: Sequence[dict[str, Any]]) -> None:
        super().__init__()
        # Every layer has a name: refusals and metadata name layers as Keras does.
        self.config = [{"name": f"front_end_{i}", **item} for i, item in enumerate(config)]
        self.layers = nn.ModuleList()
        self.activations = nn.ModuleList()
        for item in self.config:
            if item["kind"] == "conv1d":
                filters = int(item["filters"])
                self.layers.append(
                    nn.Conv1d(
                        width,
                        filters,
                        int(item["size"]),
                        stride=int(item["strides"]),
                        dilation=int(item.get("dilation", 1)),
                        bias=bool(item.get("bias", True)),
                    )
                )
                self.activations.append(activation_module(str(item.get("activation", "linear"))))
                width = filters
            elif item["kind"] in ("max_pool", "avg_pool"):
                self.layers.append(nn.Identity())  # keeps layers[i] aligned with config[i]
                self.activations.append(nn.Identity())
            else:
                raise ValueError(f"unknown front-end layer kind {item['kind']!r}")
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        out = x.transpose(1, 2)
        for item, layer, activation in zip(self.config, self.layers, self.activations, strict=True):
            left, right = pads(item)
            size, strides = int(item["size"]), int(item["strides"])
            if item["kind"] == "conv1d":
                if left or right:
                    out = nn.functional.pad(out, (left, right))
                out = activation(layer(out))
            elif item["kind"] == "max_pool":
                if left or right:  # the padding never wins the max
                    out = nn.functional.pad(out, (left, right), value=float("-inf"))
                out = nn.functional.max_pool1d(out, size, strides)
            else:  # the importer lets average pooling through with valid padding only
                out = nn.functional.avg_pool1d(out, size, strides)
        return out.transpose(1, 2)

    def out_steps(self, steps: int) -> int:
        return out_steps(self.config, steps)

    @property
    def min_steps(self) -> int:
        return min_steps(self.config)

    @property
    def reshapes_time(self) -> str:
        return reshapes_time(self.config)


def front_end_metadata(front: FrontEnd | None) -> contract.FrontEnd | None:
    """What the server must know of a front end (``ModelMetadata.front_end``), if any."""
    if front is None:
        return None
    return contract.FrontEnd(
        layers=[
            contract.FrontEndLayer(kind=KERAS_KINDS[item["kind"]], name=str(item["name"]))  # type: ignore[arg-type]
            for item in front.config
        ],
        min_length=front.min_steps,
        reshapes_time=front.reshapes_time,
    )
