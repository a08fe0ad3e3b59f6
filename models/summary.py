"""The Keras-style summary of a stacked LSTM: ``lstm-train`` prints it before training.

Split from ``architecture.py``: counting parameters the way Keras counts them
and laying out the table is reporting, not the model. ``StackedLSTM.summary``
calls ``keras_style_summary``; this module needs the model class only for its
type, so it imports ``architecture`` only while type checking (no cycle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from models.head import Affine

if TYPE_CHECKING:
    from models.architecture import StackedLSTM


def keras_style_summary(model: StackedLSTM) -> str:
    """A Keras-style table: layer, output shape, parameters, and the total.

    Beside PyTorch's count, Keras's for the same layer: Keras keeps one bias
    vector per gate where ``nn.LSTM`` keeps two (``bias_ih`` and ``bias_hh``),
    so LSTM(2 -> 64) is 17,152 in ``model.summary()`` and 17,408 here. A user
    coming from a Keras tutorial can check the architecture against the
    numbers they know.
    """
    rows: list[tuple[str, str, int, int]] = [("input", f"(None, None, {model.num_features})", 0, 0)]
    for i, lstm in enumerate(model.lstms):
        cell = model.cells[i].upper()
        kind = f"Bidirectional({cell})" if model.directions_of(i) == 2 else cell
        width = model.output_width(i)
        count = sum(p.numel() for p in lstm.parameters())
        keras = count  # GRU with reset_after=True: Keras keeps both biases too
        if model.cells[i] == "lstm":
            keras -= 4 * model.layer_sizes[i] * model.directions_of(i)  # one bias, not two
        elif not model.reset_after[i]:
            keras -= 3 * model.layer_sizes[i] * model.directions_of(i)
        rows.append((f"{model.cells[i]}_{i} ({kind})", f"(None, None, {width})", count, keras))
    for j, module in enumerate(model.hidden):
        count = sum(p.numel() for p in module.parameters())
        if isinstance(module, Affine):  # folded into buffers; Keras keeps 4 arrays
            rows.append((f"batch_norm_{j} (BatchNormalization)", "", 0, 4 * module.scale.numel()))
        elif isinstance(module, nn.Linear):
            rows.append((f"dense_{j} (Dense)", f"(None, {module.out_features})", count, count))
        elif count:
            rows.append((f"norm_{j} ({type(module).__name__})", "", count, count))
    head = sum(p.numel() for p in model.head.parameters())
    rows.append(("dense (Dense)", f"(None, {model.output_size})", head, head))
    total = sum(r[2] for r in rows)
    keras_total = sum(r[3] for r in rows)
    lines = [f"{'Layer (type)':<30}{'Output Shape':<22}{'Param #':>10}{'Keras #':>10}"]
    lines += ["=" * 72]
    lines += [
        f"{name:<30}{shape:<22}{count:>10,}{keras:>10,}" for name, shape, count, keras in rows
    ]
    lines += [
        "=" * 72,
        f"Keras-equivalent params: {keras_total:,} (Keras keeps one LSTM bias vector, "
        "PyTorch two; a GRU with reset_after=True keeps two in both)",
        f"Total params: {total:,}",
        f"(per-timestep head: (None, None, {model.output_size}) with the same dense weights)",
    ]
    return "\n".join(lines)
