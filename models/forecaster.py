"""An encoder-decoder forecaster: Keras's ``RepeatVector`` between two recurrent stacks.

The Keras tutorial's model, ``LSTM(64)`` -> ``RepeatVector(5)`` ->
``LSTM(64, return_sequences=True)`` -> ``TimeDistributed(Dense(1))``, is a
``StackedLSTM`` whose layers split in two:

- the encoder, the first ``encoder_layers`` layers, reads each sequence up to
  its own length (packed in torch; ``sequence_lens`` in the exported graph) and
  hands on its final output, exactly what a ``final`` model's head would read;
- ``RepeatVector(horizon)`` copies that vector once per future step;
- the decoder, the remaining layers, runs over those ``horizon`` steps from zero
  state (every row has all of them, so its ONNX nodes get no ``sequence_lens``),
  and the dense stack and head run at every decoder step.

The answer per sequence is [horizon, outputs] whatever the input's length: the
exported graph's one output, ``forecast`` (``service/core/forecast.py``). It
carries no state between requests (``carries_state`` is False, no state tensors).

A subclass rather than a flag on ``StackedLSTM``, so the stacked model stays as
it was and this concept reads in one module: it reuses the layers, the dense
stack, the head, the standardisation and the checkpoint format, and replaces
only the pass through the layers and what ``forward`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
import torch
from torch import Tensor

from models.architecture import StackedLSTM, merge, reverse_valid
from service.core.contract import TensorNames
from service.core.forecast import FORECAST_OUTPUT, Forecast


class Forecaster(StackedLSTM):
    """Encoder layers, ``RepeatVector(horizon)``, decoder layers, a per-step dense head."""

    def __init__(
        self,
        num_features: int,
        layers: Sequence[int],
        output_size: int,
        *,
        horizon: int,
        encoder_layers: int,
        **options: Any,
    ) -> None:
        if not 1 <= encoder_layers < len(layers):
            raise ValueError(
                f"a forecaster needs at least one encoder and one decoder layer; "
                f"encoder_layers={encoder_layers} of {len(layers)} layers"
            )
        if horizon < 1:
            raise ValueError(f"the horizon must be at least 1 step, got {horizon}")
        if options.get("front_end"):  # this class's _layers builds no front end
            raise ValueError("a forecaster with a Conv1D/pooling front end is not supported")
        super().__init__(num_features, layers, output_size, **options)
        self.horizon = int(horizon)
        self.encoder_layers = int(encoder_layers)

    @property
    def carries_state(self) -> bool:
        """Never: the decoder restarts from zeros on every answer (no state tensors)."""
        return False

    def config(self) -> dict[str, Any]:
        """The stack's arguments plus the horizon and the encoder/decoder split."""
        return {**super().config(), "horizon": self.horizon, "encoder_layers": self.encoder_layers}

    def contract(self) -> Forecast:
        """The metadata's ``forecast`` block for this model."""
        return Forecast(horizon=self.horizon, encoder_layers=self.encoder_layers)

    def _layer(
        self, i: int, x: Tensor, lengths: Tensor | None, pack: bool
    ) -> tuple[Tensor, Tensor]:
        """Layer ``i`` as ``StackedLSTM._layers`` runs it: (its merged output, its final h)."""
        if self.layer_directions[i] == "backward":
            x = reverse_valid(x, lengths)
        out, finals = self._run_layer(i, x, lengths, [], pack)
        if self.layer_directions[i] == "bidirectional":
            out = merge(out, self.layer_sizes[i], self.merge_modes[i])
        return out, finals[0]

    def _layers(
        self,
        x: Tensor,
        lengths: Tensor | None,
        states: Sequence[Tensor] | None,
        pack: bool = True,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(the decoder's output [B, horizon, w], the decoder's final hidden, no states).

        The encoder reads up to ``lengths``; its final output (Keras's, at each
        sequence's last real step) is repeated ``horizon`` times; the decoder reads
        all of those steps. ``Tensor.repeat`` exports as ``Tile`` with constant
        repeats, so the batch stays dynamic.
        """
        out = (x - self.x_mean) / self.x_std
        hn = out  # replaced by the first layer
        for i in range(self.encoder_layers):
            out, hn = self._layer(i, out, lengths, pack)
            if i < self.encoder_layers - 1:
                out = self.dropout(out)
        encoded = self.dropout(self._final_hidden(hn, self.encoder_layers - 1))
        out = encoded.unsqueeze(1).repeat(1, self.horizon, 1)
        for i in range(self.encoder_layers, len(self.lstms)):
            out, hn = self._layer(i, out, None, pack)
            if i < len(self.lstms) - 1:
                out = self.dropout(out)
        return out, self._final_hidden(hn), []

    def logits(
        self,
        x: Tensor,
        lengths: Tensor | None,
        states: Sequence[Tensor] | None = None,
        pack: bool = True,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(forecast, forecast, []) before activation: the forecast [B, horizon, K] is both
        the per-step and the final output (the losses read either), and there are no states."""
        out, _, _ = self._layers(x, lengths, states, pack)
        forecast = self.head(self.hidden(out))
        return forecast, forecast, []

    def forward(self, x: Tensor, lengths: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """What the exported graph computes: ``(forecast,)``, float32 [B, horizon, K]."""
        exporting = torch.onnx.is_in_onnx_export()
        forecast, _, _ = self.logits(x, lengths, pack=not exporting)
        return (self.activate(forecast),)

    def summary(self) -> str:
        """The stack's table with Keras's ``RepeatVector`` row between encoder and decoder."""
        lines = super().summary().splitlines()
        width = self.output_width(self.encoder_layers - 1)
        row = f"{'repeat_vector (RepeatVector)':<30}{f'(None, {self.horizon}, {width})':<22}"
        at = 3 + self.encoder_layers
        lines.insert(at, f"{row}{0:>10,}{0:>10,}")
        for j in range(at - 1, at + 1 + len(self.lstms) - self.encoder_layers):
            steps = "" if j == at - 1 else f"{self.horizon}, "  # the encoder hands on its final
            shape = lines[j][30:52].strip().replace("None, None, ", f"None, {steps}")
            lines[j] = f"{lines[j][:30]}{shape:<22}{lines[j][52:]}"
        lines[-1] = f"(forecast: (None, {self.horizon}, {self.output_size}) per sequence)"
        return "\n".join(lines)


def forecast_tensor_names() -> TensorNames:
    """A forecaster's graph tensors: x and lengths in, ``forecast`` out, nothing else."""
    return TensorNames(
        initial_states=[],
        final_states=[],
        sequence_output=None,
        final_output=FORECAST_OUTPUT,
    )


def unwire_decoder(graph_model: onnx.ModelProto, encoder_layers: int) -> int:
    """Empty ``sequence_lens`` on the recurrent nodes after the encoder's; how many.

    ``export.wire_sequence_lens`` feeds ``lengths`` to every LSTM and GRU node;
    the decoder's steps are the horizon's, all real for every row, so its nodes
    must run in full (an input length past the horizon would be out of range).
    Nodes are in topological order, and the decoder reads the encoder's output,
    so the encoder's nodes come first.
    """
    recurrent = [n for n in graph_model.graph.node if n.op_type in ("LSTM", "GRU")]
    for node in recurrent[encoder_layers:]:
        node.input[4] = ""
    return len(recurrent) - encoder_layers
