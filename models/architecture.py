"""The stacked LSTM: layers of their own widths, each feeding its whole sequence on.

Two ways through the same weights (``_layers``):
- packed: right-padded batches are packed so every layer stops at each
  sequence's true length. Training, eager ``forward`` calls and the torch
  reference for the parity check go this way.
- unpacked: what the TorchScript exporter traces (it cannot trace packing into
  plain ONNX ops). ``export.py`` then wires the ``lengths`` input into every
  ONNX ``LSTM`` node's ``sequence_lens``, which makes the graph do what packing
  does here. Normalisation and the output activation are baked in either way.

Final outputs follow Keras: the forward direction's state at the last valid step
and, for bidirectional layers, the backward direction's state at step 0 — which
is exactly each layer's final ``h`` concatenated over directions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class StackedLSTM(nn.Module):
    """LSTM layers (e.g. 64 then 32 units), dropout between them, a dense head."""

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def __init__(
        self,
        num_features: int,
        layers: Sequence[int],
        output_size: int,
        *,
        task: str = "classification",
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("a stacked LSTM needs at least one layer")
        self.task = task
        self.num_features = num_features
        self.layer_sizes = list(layers)
        self.output_size = output_size
        self.bidirectional = bidirectional
        self.directions = 2 if bidirectional else 1
        widths = [num_features] + [units * self.directions for units in layers]
        self.lstms = nn.ModuleList(
            nn.LSTM(widths[i], units, batch_first=True, bidirectional=bidirectional)
            for i, units in enumerate(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], output_size)
        # Standardisation of inputs and (regression) targets, fitted on training data.
        self.register_buffer("x_mean", torch.zeros(num_features))
        self.register_buffer("x_std", torch.ones(num_features))
        self.register_buffer("y_mean", torch.zeros(output_size))
        self.register_buffer("y_std", torch.ones(output_size))

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved with the weights so a checkpoint rebuilds itself."""
        return {
            "num_features": self.num_features,
            "layers": self.layer_sizes,
            "output_size": self.output_size,
            "task": self.task,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout.p,
        }

    def save_checkpoint(self, path: Path) -> None:
        torch.save({"config": self.config(), "state_dict": self.state_dict()}, path)

    @classmethod
    def load_checkpoint(cls, path: Path) -> StackedLSTM:
        saved = torch.load(path, weights_only=True)
        config = dict(saved["config"])
        model = cls(
            config.pop("num_features"), config.pop("layers"), config.pop("output_size"), **config
        )
        model.load_state_dict(saved["state_dict"])
        return model.eval()

    def set_normalization(
        self,
        x_mean: Tensor,
        x_std: Tensor,
        y_mean: Tensor | None = None,
        y_std: Tensor | None = None,
    ) -> None:
        self.x_mean.copy_(x_mean)
        self.x_std.copy_(x_std)
        if y_mean is not None and y_std is not None:
            self.y_mean.copy_(y_mean)
            self.y_std.copy_(y_std)

    def zero_states(self, batch: int) -> list[Tensor]:
        """h0, c0 for every layer, flattened: [h0_0, c0_0, h0_1, c0_1, ...]."""
        return [
            torch.zeros(self.directions, batch, units)
            for units in self.layer_sizes
            for _ in ("h", "c")
        ]

    def _final_hidden(self, hn: Tensor) -> Tensor:
        """[directions, B, H] -> [B, directions * H], forward first as in the outputs."""
        return hn.transpose(0, 1).reshape(hn.shape[1], -1)

    def _layers(
        self, x: Tensor, lengths: Tensor | None, states: Sequence[Tensor] | None
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Normalise, run every layer; (last layer's sequence, final hidden, all states).

        With ``lengths`` each layer runs packed and stops at each sequence's true
        length (bidirectional layers start their backward pass there). Without,
        the layers run over the padding too: that is the traceable form, which
        ``export.py`` makes length-aware again through ``sequence_lens``.
        """
        states = list(states) if states else self.zero_states(x.shape[0])
        steps = x.shape[1]
        out = (x - self.x_mean) / self.x_std
        finals: list[Tensor] = []
        for i, lstm in enumerate(self.lstms):
            hx = (states[2 * i], states[2 * i + 1])
            if lengths is None:
                out, (hn, cn) = lstm(out, hx)
            else:
                lengths_cpu = lengths.to("cpu", torch.int64)
                packed = pack_padded_sequence(
                    out, lengths_cpu, batch_first=True, enforce_sorted=False
                )
                packed_out, (hn, cn) = lstm(packed, hx)
                out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=steps)
            finals += [hn, cn]
            if i < len(self.lstms) - 1:
                out = self.dropout(out)
        return out, self._final_hidden(finals[-2]), finals

    def logits(
        self, x: Tensor, lengths: Tensor | None, states: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(per-step, final, final states) before activation, from raw inputs.

        Pre-activation outputs (logits, or standardised regression values) are
        what the losses want. Padded steps hold head(0), as in the exported graph.
        ``lengths=None`` is the unpacked, traceable pass (see ``_layers``).
        """
        out, final, finals = self._layers(x, lengths, states)
        return self.head(out), self.head(final), finals

    def activate(self, values: Tensor) -> Tensor:
        """Head values to served outputs: probabilities, or regression in target units."""
        if self.task == "classification":
            return torch.softmax(values, dim=-1)
        return values * self.y_std + self.y_mean

    def forward(self, x: Tensor, lengths: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """What the exported graph computes: (sequence_output, final_output, hn_0, cn_0, ...).

        Eager calls honour ``lengths`` by packing. While exporting, packing cannot
        be traced into plain ONNX ops, so the layers run unpacked and ``lengths``
        goes unused here; ``export.wire_sequence_lens`` feeds it to every ONNX
        ``LSTM`` node instead, whose ``Y``/``Y_h``/``Y_c`` then equal the packed
        results (the parity check proves it on every export).
        """
        exporting = torch.onnx.is_in_onnx_export()
        sequence, final, finals = self.logits(x, None if exporting else lengths, states)
        return (self.activate(sequence), self.activate(final), *finals)

    def summary(self) -> str:
        """A Keras-style table: layer, output shape, parameters, and the total.

        Beside PyTorch's count, Keras's for the same layer: Keras keeps one bias
        vector per gate where ``nn.LSTM`` keeps two (``bias_ih`` and ``bias_hh``),
        so LSTM(2 -> 64) is 17,152 in ``model.summary()`` and 17,408 here. A user
        coming from a Keras tutorial can check the architecture against the
        numbers they know.
        """
        rows: list[tuple[str, str, int, int]] = [
            ("input", f"(None, None, {self.num_features})", 0, 0)
        ]
        for i, lstm in enumerate(self.lstms):
            kind = "Bidirectional(LSTM)" if self.bidirectional else "LSTM"
            width = self.layer_sizes[i] * self.directions
            count = sum(p.numel() for p in lstm.parameters())
            keras = count - 4 * self.layer_sizes[i] * self.directions  # one bias, not two
            rows.append((f"lstm_{i} ({kind})", f"(None, None, {width})", count, keras))
        head = sum(p.numel() for p in self.head.parameters())
        rows.append(("dense (Dense)", f"(None, {self.output_size})", head, head))
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
            "PyTorch two)",
            f"Total params: {total:,}",
            f"(per-timestep head: (None, None, {self.output_size}) with the same dense weights)",
        ]
        return "\n".join(lines)
