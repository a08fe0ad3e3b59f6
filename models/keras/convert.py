"""A parsed Keras stacked LSTM to the project's ``StackedLSTM``, weight for weight.

The conversions, each exact:
- LSTM: Keras's kernel (inputs, 4u) and recurrent kernel (u, 4u) are torch's
  ``weight_ih`` (4u, inputs) and ``weight_hh`` (4u, u) transposed; both order
  the gates i, f, c(g), o. Keras keeps one bias per gate where torch adds two:
  ``bias_ih`` takes Keras's, ``bias_hh`` is zero (x + 0 is exact in floats).
- GRU: kernel (inputs, 3u) and recurrent kernel (u, 3u) transposed, their gate
  blocks reordered from Keras's z, r, h to torch's r, z, n. ``reset_after=True``
  keeps two biases (2, 3u): input to ``bias_ih``, recurrent to ``bias_hh``;
  ``reset_after=False`` keeps one (3u,): ``bias_ih``, with ``bias_hh`` zero (the
  export then sets the node's ``linear_before_reset`` to 0).
- Directions per layer: ``go_backwards=True`` is ``StackedLSTM``'s ``backward``
  direction; Bidirectional's ``merge_mode`` (concat, sum, ave, mul) is merged
  in the module as Keras merges.
- The dense stack between the LSTMs and the head (Dense, activations,
  LayerNormalization, BatchNormalization at inference) is rebuilt as is;
  BatchNormalization becomes ``x * scale + shift`` with
  ``scale = gamma / sqrt(moving_variance + epsilon)``.
- Dense(softmax) is the classification head as is; Dense(linear) the
  regression head with identity target scaling (any other final activation is
  applied after it, ``out_activation``); Dense(1, sigmoid) becomes a
  two-class softmax over (0, z), since softmax(0, z)[1] = sigmoid(z): the
  served probabilities are (1 - p, p).
- Normalization: its mean, and max(sqrt(variance), 1e-7) as the std, exactly
  as Keras divides, become the model's stored standardisation.
- RepeatVector between an encoder and a decoder (``forecast.py``): the same
  layers and head, rebuilt as a ``models.forecaster.Forecaster``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.architecture import StackedLSTM
from models.forecaster import Forecaster
from models.frontend import out_steps
from models.head import Affine
from models.keras.files import KerasFile
from models.keras.graph import UnsupportedModel
from models.keras.layers import FrontEndSpec, KerasModelSpec, LSTMSpec, StackStep

KERAS_EPSILON = 1e-7  # keras.config.epsilon(), Normalization's floor on the std


@dataclass(frozen=True)
class Converted:
    """The rebuilt model, and what the metadata needs to describe it."""

    model: StackedLSTM
    target: str  # "final", "sequence" or "forecast"
    classes: list[str] | None
    binary_sigmoid: bool


def _arrays(file: KerasFile, name: str, count: int) -> list[np.ndarray]:
    arrays = file.arrays.get(name, [])
    if len(arrays) != count:
        raise UnsupportedModel(
            f"layer {name!r}: the weights file holds {len(arrays)} arrays, {count} expected"
        )
    return [a.astype(np.float32) for a in arrays]


def _set_lstm(lstm: torch.nn.Module, spec: LSTMSpec, file: KerasFile) -> None:
    per_direction = 3 if spec.use_bias else 2
    directions = 2 if spec.bidirectional else 1
    arrays = _arrays(file, spec.name, per_direction * directions)
    for d, suffix in enumerate(["", "_reverse"][:directions]):
        kernel, recurrent, *bias = arrays[d * per_direction : (d + 1) * per_direction]
        w_ih = torch.from_numpy(kernel.T.copy())
        target_ih = getattr(lstm, f"weight_ih_l0{suffix}")
        if w_ih.shape != target_ih.shape or recurrent.shape != (spec.units, 4 * spec.units):
            raise UnsupportedModel(
                f"layer {spec.name!r} (LSTM): kernel {kernel.shape} does not fit its input"
            )
        target_ih.copy_(w_ih)
        getattr(lstm, f"weight_hh_l0{suffix}").copy_(torch.from_numpy(recurrent.T.copy()))
        getattr(lstm, f"bias_ih_l0{suffix}").copy_(
            torch.from_numpy(bias[0]) if bias else torch.zeros(4 * spec.units)
        )
        getattr(lstm, f"bias_hh_l0{suffix}").zero_()


def _gates_zrh_to_rzn(array: np.ndarray, units: int) -> np.ndarray:
    """Keras's GRU gate blocks (z, r, h) along the last axis, in torch's order (r, z, n)."""
    z, r, h = (array[..., k * units : (k + 1) * units] for k in range(3))
    return np.concatenate([r, z, h], axis=-1)


def _set_gru(gru: torch.nn.Module, spec: LSTMSpec, file: KerasFile) -> None:
    per_direction = 3 if spec.use_bias else 2
    directions = 2 if spec.bidirectional else 1
    u = spec.units
    arrays = _arrays(file, spec.name, per_direction * directions)
    for d, suffix in enumerate(["", "_reverse"][:directions]):
        kernel, recurrent, *bias = arrays[d * per_direction : (d + 1) * per_direction]
        target_ih = getattr(gru, f"weight_ih_l0{suffix}")
        if kernel.shape != (target_ih.shape[1], 3 * u) or recurrent.shape != (u, 3 * u):
            raise UnsupportedModel(
                f"layer {spec.name!r} ({spec.kind}): kernel {kernel.shape} / recurrent kernel "
                f"{recurrent.shape} do not fit its input"
            )
        target_ih.copy_(torch.from_numpy(_gates_zrh_to_rzn(kernel, u).T.copy()))
        getattr(gru, f"weight_hh_l0{suffix}").copy_(
            torch.from_numpy(_gates_zrh_to_rzn(recurrent, u).T.copy())
        )
        b_ih, b_hh = np.zeros(3 * u, np.float32), np.zeros(3 * u, np.float32)
        if bias:
            want = (2, 3 * u) if spec.reset_after else (3 * u,)
            if bias[0].shape != want:
                raise UnsupportedModel(
                    f"layer {spec.name!r} ({spec.kind}): bias {bias[0].shape}, {want} expected "
                    f"with reset_after={spec.reset_after}"
                )
            if spec.reset_after:
                b_ih, b_hh = bias[0][0], bias[0][1]
            else:
                b_ih = bias[0]
        getattr(gru, f"bias_ih_l0{suffix}").copy_(torch.from_numpy(_gates_zrh_to_rzn(b_ih, u)))
        getattr(gru, f"bias_hh_l0{suffix}").copy_(torch.from_numpy(_gates_zrh_to_rzn(b_hh, u)))


def _set_conv(conv: torch.nn.Conv1d, spec: FrontEndSpec, file: KerasFile) -> None:
    """Keras's Conv1D kernel (kernel_size, in, out) is torch's weight (out, in, kernel_size)."""
    kernel, *bias = _arrays(file, spec.name, 2 if spec.use_bias else 1)
    weight = torch.from_numpy(kernel.transpose(2, 1, 0).copy())
    if weight.shape != conv.weight.shape:
        raise UnsupportedModel(
            f"layer {spec.name!r} (Conv1D): kernel {kernel.shape} does not fit its input"
        )
    conv.weight.copy_(weight)
    if conv.bias is not None:
        conv.bias.copy_(torch.from_numpy(bias[0]))


def _hidden_config(steps: list[StackStep]) -> list[dict[str, Any]]:
    config: list[dict[str, Any]] = []
    for step in steps:
        if step.kind == "dense":
            assert step.dense is not None
            config.append({"kind": "dense", "units": step.dense.units, "bias": step.dense.use_bias})
        elif step.kind == "activation":
            if step.activation != "linear":
                config.append({"kind": "activation", "name": step.activation})
        else:
            config.append({"kind": step.kind, "epsilon": step.epsilon})
    return config


def _set_linear(
    linear: torch.nn.Linear, name: str, kind: str, units: int, use_bias: bool, file: KerasFile
) -> None:
    kernel, *bias = _arrays(file, name, 2 if use_bias else 1)
    weight = torch.from_numpy(kernel.T.copy())
    if weight.shape != linear.weight.shape:
        raise UnsupportedModel(
            f"layer {name!r} ({kind}): kernel {kernel.shape} does not fit its input"
        )
    linear.weight.copy_(weight)
    if linear.bias is not None:
        linear.bias.copy_(torch.from_numpy(bias[0]) if bias else torch.zeros(units))


def _set_norm(module: torch.nn.Module, step: StackStep, file: KerasFile) -> None:
    """LayerNormalization's gamma/beta, or BatchNormalization folded to scale and shift."""
    kind = "LayerNormalization" if step.kind == "layer_norm" else "BatchNormalization"
    count = int(step.scale) + int(step.center) + (2 if step.kind == "batch_norm" else 0)
    arrays = _arrays(file, step.name, count)
    gamma = arrays.pop(0) if step.scale else None
    beta = arrays.pop(0) if step.center else None
    if isinstance(module, torch.nn.LayerNorm):
        width = module.normalized_shape[0]
        module.weight.copy_(torch.from_numpy(gamma) if gamma is not None else torch.ones(width))
        module.bias.copy_(torch.from_numpy(beta) if beta is not None else torch.zeros(width))
        return
    assert isinstance(module, Affine)
    mean, variance = arrays
    width = module.scale.numel()
    if mean.shape != (width,):
        raise UnsupportedModel(f"layer {step.name!r} ({kind}): {mean.shape} does not fit {width}")
    scale = torch.ones(width) if gamma is None else torch.from_numpy(gamma)
    shift = torch.zeros(width) if beta is None else torch.from_numpy(beta)
    # Keras: (x - mean) / sqrt(var + eps) * gamma + beta, computed here in float64 once.
    inv = 1.0 / np.sqrt(variance.astype(np.float64) + step.epsilon)
    factor = scale.double() * torch.from_numpy(inv)
    module.scale.copy_(factor.float())
    module.shift.copy_(
        (shift.double() - torch.from_numpy(mean.astype(np.float64)) * factor).float()
    )


def convert(spec: KerasModelSpec, file: KerasFile, classes: list[str] | None) -> Converted:
    """Build the ``StackedLSTM`` that computes what the Keras model computes."""
    head = spec.head
    binary = head.activation == "sigmoid"
    task = "classification" if head.activation in ("softmax", "sigmoid") else "regression"
    output_size = 2 if binary else head.units
    if task == "classification":
        classes = classes or [str(k) for k in range(output_size)]
        if len(classes) != output_size:
            raise ValueError(
                f"--classes names {len(classes)} classes; the model has {output_size} "
                + ("(a one-unit sigmoid is two classes: negative, positive)" if binary else "")
            )
    elif classes:
        raise ValueError(
            f"--classes is for classifiers; this model's head ({head.name!r}, "
            f"activation={head.activation!r}) is a regression"
        )
    units = [layer.units for layer in spec.lstms]
    options: dict[str, Any] = {
        "task": task,
        "directions": spec.directions,
        "merge_modes": [layer.merge_mode for layer in spec.lstms],
        "hidden": _hidden_config(spec.hidden),
        "out_activation": "linear" if task == "classification" else head.activation,
        "cells": [layer.cell for layer in spec.lstms],
        "reset_after": [layer.reset_after for layer in spec.lstms],
        "front_end": [layer.config() for layer in spec.front_end] or None,
    }
    if spec.horizon is None:
        model = StackedLSTM(spec.num_features, units, output_size, **options)
    else:
        model = Forecaster(
            spec.num_features,
            units,
            output_size,
            horizon=spec.horizon,
            encoder_layers=spec.encoder_layers,
            **options,
        )
    with torch.no_grad():
        if model.front_end is not None:
            for conv, module in zip(spec.front_end, model.front_end.layers, strict=True):
                if conv.kind == "conv1d":
                    assert isinstance(module, torch.nn.Conv1d)
                    _set_conv(module, conv, file)
        for layer, lstm in zip(spec.lstms, model.lstms, strict=True):
            (_set_gru if layer.cell == "gru" else _set_lstm)(lstm, layer, file)
        modules = iter(model.hidden)
        for step in spec.hidden:
            if step.kind == "activation" and step.activation == "linear":
                continue
            module = next(modules)
            if step.kind == "dense":
                assert step.dense is not None and isinstance(module, torch.nn.Linear)
                dense = step.dense
                _set_linear(module, dense.name, dense.kind, dense.units, dense.use_bias, file)
            elif step.kind in ("layer_norm", "batch_norm"):
                _set_norm(module, step, file)
        if binary:  # one sigmoid unit z: a softmax over (0, z)
            single = torch.nn.Linear(model.head.in_features, 1)
            _set_linear(single, head.name, head.kind, 1, head.use_bias, file)
            model.head.weight.copy_(torch.cat([torch.zeros_like(single.weight), single.weight]))
            model.head.bias.copy_(torch.cat([torch.zeros(1), single.bias]))
        else:
            _set_linear(model.head, head.name, head.kind, head.units, head.use_bias, file)
        if spec.normalization is not None:
            mean, std = normalization(spec, file)
            model.set_normalization(torch.from_numpy(mean), torch.from_numpy(std))
    target = "sequence" if head.per_timestep else "final"
    return Converted(model.eval(), "forecast" if spec.horizon else target, classes, binary)


def normalization(spec: KerasModelSpec, file: KerasFile) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) per feature, float32, as Keras's Normalization applies them."""
    norm = spec.normalization
    assert norm is not None
    if norm.mean is not None and norm.variance is not None:
        mean_values, variance_values = np.array(norm.mean), np.array(norm.variance)
    else:
        arrays = file.arrays.get(norm.name, [])
        if len(arrays) < 2:
            raise UnsupportedModel(
                f"layer {norm.name!r} (Normalization): no mean and variance; adapt() it first"
            )
        mean_values, variance_values = arrays[0], arrays[1]
    features = spec.num_features
    mean = np.broadcast_to(mean_values.astype(np.float32).reshape(-1), (features,)).copy()
    variance = np.broadcast_to(variance_values.astype(np.float32).reshape(-1), (features,))
    std = np.maximum(np.sqrt(variance), np.float32(KERAS_EPSILON)).astype(np.float32)
    return mean, std


def keras_summary(spec: KerasModelSpec, file: KerasFile) -> str:
    """Keras's ``model.summary()`` table, with Keras's own parameter counts.

    The counts are the sizes of the arrays Keras saved, so they are Keras's by
    construction (one bias vector per gate: LSTM(2 -> 64) is 17,152, where the
    PyTorch rebuild holds 17,408).
    """
    batch = "None" if spec.batch_size is None else str(spec.batch_size)
    steps = "None" if spec.timesteps is None else str(spec.timesteps)
    lstms = {layer.name: layer for layer in spec.lstms}
    dense = {step.dense.name: step.dense.units for step in spec.hidden if step.dense is not None}
    dense[spec.head.name] = spec.head.units
    width, sequence = spec.num_features, True
    front = {layer.name: i for i, layer in enumerate(spec.front_end)}
    configs = [layer.config() for layer in spec.front_end]
    rows: list[tuple[str, str, int]] = []
    for name, kind in spec.layers:
        if kind == "InputLayer":
            continue
        if name in front:  # a Conv1D sets the width; any of them may shorten the steps
            width = spec.front_end[front[name]].filters or width
            if spec.timesteps is not None:
                steps = str(out_steps(configs[: front[name] + 1], spec.timesteps))
        if name in lstms:
            width, sequence = lstms[name].output_width, lstms[name].return_sequences
        elif kind == "RepeatVector":  # the steps from here on are the horizon's
            sequence, steps = True, str(spec.horizon)
        elif name in dense:
            width = dense[name]
        shape = f"({batch}, {steps}, {width})" if sequence else f"({batch}, {width})"
        count = int(sum(a.size for a in file.arrays.get(name, [])))
        rows.append((f"{name} ({kind})", shape, count))
    total = sum(r[2] for r in rows)
    lines = [f"Model: {spec.name!r} (Keras {file.keras_version}, {file.format})"]
    w = max([40] + [len(r[0]) + 2 for r in rows])
    lines += [f"{'Layer (type)':<{w}}{'Output Shape':<22}{'Param #':>10}", "=" * (w + 32)]
    lines += [f"{name:<{w}}{shape:<22}{count:>10,}" for name, shape, count in rows]
    lines += ["=" * (w + 32), f"Total params: {total:,}"]
    return "\n".join(lines)
