"""A parsed Keras stacked LSTM to the project's ``StackedLSTM``, weight for weight.

The conversions, each exact:
- LSTM: Keras's kernel (inputs, 4u) and recurrent kernel (u, 4u) are torch's
  ``weight_ih`` (4u, inputs) and ``weight_hh`` (4u, u) transposed; both order
  the gates i, f, c(g), o. Keras keeps one bias per gate where torch adds two:
  ``bias_ih`` takes Keras's, ``bias_hh`` is zero (x + 0 is exact in floats).
- Bidirectional ``merge_mode="sum"``/``"ave"``: ``StackedLSTM`` always hands
  the next layer both directions side by side, so the next layer's input
  weights (or the head's) are Keras's repeated for both halves (halved for ave,
  a power of two, so exact): ``W(f + b) = [W W](f; b)``.
- Dense(softmax) is the classification head as is; Dense(linear) the
  regression head with identity target scaling; Dense(1, sigmoid) becomes a
  two-class softmax over (0, z), since softmax(0, z)[1] = sigmoid(z): the
  served probabilities are (1 - p, p).
- Normalization: its mean, and max(sqrt(variance), 1e-7) as the std, exactly
  as Keras divides, become the model's stored standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from models.architecture import StackedLSTM
from models.keras.graph import UnsupportedModel
from models.keras.spec import KerasModelSpec, LSTMSpec
from models.keras.weights import KerasFile

KERAS_EPSILON = 1e-7  # keras.config.epsilon(), Normalization's floor on the std


@dataclass(frozen=True)
class Converted:
    """The rebuilt model, and what the metadata needs to describe it."""

    model: StackedLSTM
    target: str  # "final" or "sequence"
    classes: list[str] | None
    binary_sigmoid: bool


def _arrays(file: KerasFile, name: str, count: int) -> list[np.ndarray]:
    arrays = file.arrays.get(name, [])
    if len(arrays) != count:
        raise UnsupportedModel(
            f"layer {name!r}: the weights file holds {len(arrays)} arrays, {count} expected"
        )
    return [a.astype(np.float32) for a in arrays]


def _fold(weight: Tensor, merge: str | None) -> Tensor:
    """Weights reading a merged (sum/ave) bidirectional output, widened to read both halves."""
    if merge in ("sum", "ave"):
        doubled = torch.cat([weight, weight], dim=1)
        return doubled * 0.5 if merge == "ave" else doubled
    return weight


def _set_lstm(lstm: torch.nn.Module, spec: LSTMSpec, file: KerasFile, merge: str | None) -> None:
    per_direction = 3 if spec.use_bias else 2
    directions = 2 if spec.bidirectional else 1
    arrays = _arrays(file, spec.name, per_direction * directions)
    for d, suffix in enumerate(["", "_reverse"][:directions]):
        kernel, recurrent, *bias = arrays[d * per_direction : (d + 1) * per_direction]
        w_ih = _fold(torch.from_numpy(kernel.T.copy()), merge)
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


def convert(spec: KerasModelSpec, file: KerasFile, classes: list[str] | None) -> Converted:
    """Build the ``StackedLSTM`` that computes what the Keras model computes."""
    head = spec.head
    binary = head.activation == "sigmoid"
    task = "regression" if head.activation == "linear" else "classification"
    output_size = 2 if binary else head.units
    if task == "classification":
        classes = classes or [str(k) for k in range(output_size)]
        if len(classes) != output_size:
            raise ValueError(
                f"--classes names {len(classes)} classes; the model has {output_size} "
                + ("(a one-unit sigmoid is two classes: negative, positive)" if binary else "")
            )
    elif classes:
        raise ValueError("--classes is for classifiers; this model's head is linear (regression)")
    model = StackedLSTM(
        spec.num_features,
        [layer.units for layer in spec.lstms],
        output_size,
        task=task,
        bidirectional=spec.bidirectional,
    )
    with torch.no_grad():
        merge: str | None = None
        for layer, lstm in zip(spec.lstms, model.lstms, strict=True):
            _set_lstm(lstm, layer, file, merge)
            merge = layer.merge_mode if layer.bidirectional else None
        kernel, *bias = _arrays(file, head.name, 2 if head.use_bias else 1)
        weight = _fold(torch.from_numpy(kernel.T.copy()), merge)
        b = torch.from_numpy(bias[0]) if bias else torch.zeros(head.units)
        if binary:
            weight = torch.cat([torch.zeros_like(weight), weight])
            b = torch.cat([torch.zeros(1), b])
        if weight.shape != model.head.weight.shape:
            raise UnsupportedModel(
                f"layer {head.name!r} ({head.kind}): kernel {kernel.shape} does not fit its input"
            )
        model.head.weight.copy_(weight)
        model.head.bias.copy_(b)
        if spec.normalization is not None:
            mean, std = normalization(spec, file)
            model.set_normalization(torch.from_numpy(mean), torch.from_numpy(std))
    return Converted(model.eval(), "sequence" if head.per_timestep else "final", classes, binary)


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
    width, sequence = spec.num_features, True
    rows: list[tuple[str, str, int]] = []
    for name, kind in spec.layers:
        if kind == "InputLayer":
            continue
        if name in lstms:
            width, sequence = lstms[name].output_width, lstms[name].return_sequences
        elif name == spec.head.name:
            width = spec.head.units
        shape = f"({batch}, {steps}, {width})" if sequence else f"({batch}, {width})"
        count = int(sum(a.size for a in file.arrays.get(name, [])))
        rows.append((f"{name} ({kind})", shape, count))
    total = sum(r[2] for r in rows)
    lines = [f"Model: {spec.name!r} (Keras {file.keras_version}, {file.format})"]
    lines += [f"{'Layer (type)':<40}{'Output Shape':<22}{'Param #':>10}", "=" * 72]
    lines += [f"{name:<40}{shape:<22}{count:>10,}" for name, shape, count in rows]
    lines += ["=" * 72, f"Total params: {total:,}"]
    return "\n".join(lines)
