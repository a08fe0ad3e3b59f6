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

Each layer has its own direction (``directions``): ``forward``; ``bidirectional``,
its two halves merged as Keras's ``merge_mode`` says (``concat``, ``sum``,
``ave``, ``mul``); or ``backward``, Keras's ``go_backwards=True``: the layer
reads each sequence from its last valid step to its first and returns its
outputs in that order, as Keras does. That is a forward ``nn.LSTM`` over the
sequence reversed within its length (``reverse_valid``: a gather by
``lengths``, which the exported graph keeps as ``GatherElements``), so padding
stays at the end and ``sequence_lens`` stays exact.

Each layer has its own cell (``cells``): ``lstm`` or ``gru``. A GRU layer is an
``nn.GRU`` (Keras's ``reset_after=True``, ONNX ``linear_before_reset=1``); with
``reset_after=False`` (older tf.keras models) the eager pass computes the
reset-before form step by step (``gru_reset_before``) from the same weights,
and ``export.py`` sets the exported GRU node's ``linear_before_reset`` to 0
(``bias_hh`` is zero for such layers, so nothing else changes). A GRU layer's
state is h alone: ``forward`` takes and returns (h, c) for an LSTM layer and h for
a GRU layer, in layer order (``zero_states``), so a mixed stack carries its state
as an all-LSTM one does.

Between the last recurrent layer and the head, an optional dense stack
(``hidden``, built by ``head.py``); the Keras-style table of layers and
parameter counts is ``summary.py``'s. Before the first recurrent layer, an
optional Conv1D/pooling front end (``front_end``, ``frontend.py``): it reads
the whole time axis, so such a model runs equal-length sequences only and
carries no state (no state tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.frontend import FrontEnd
from models.head import activation_module, hidden_stack
from models.summary import keras_style_summary

DIRECTIONS = ("forward", "backward", "bidirectional")
CELLS = ("lstm", "gru")
MERGE_MODES = ("concat", "sum", "ave", "mul")


def reverse_valid(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Each sequence's valid steps in reverse order, its padding left at the end."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    last = (lengths.to(x.device, torch.int64) - 1).unsqueeze(1)
    index = torch.where(steps <= last, last - steps, steps)
    return torch.gather(x, 1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


def gru_reset_before(
    gru: nn.GRU, x: Tensor, lengths: Tensor | None, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``gru``'s weights run as Keras's ``reset_after=False`` (ONNX ``linear_before_reset=0``).

    The candidate reads ``(r * h) @ W_hn^T`` instead of ``r * (h @ W_hn^T + b_hn)``.
    Steps past each sequence's length leave h as it is and output zeros, as packing
    does; a bidirectional layer's backward half reads each sequence from its end.
    Returns ``nn.GRU``'s (output [B, T, D*u], h_n [D, B, u]) from ``h0`` [D, B, u]
    (zeros when None), as ``nn.GRU`` takes it.
    """
    batch, steps = x.shape[0], x.shape[1]
    units = gru.hidden_size
    valid = (
        torch.ones(batch, steps, dtype=torch.bool, device=x.device)
        if lengths is None
        else torch.arange(steps, device=x.device)[None, :] < lengths.to(x.device)[:, None]
    )
    outs, finals = [], []
    for direction, suffix in enumerate(["", "_reverse"][: 2 if gru.bidirectional else 1]):
        w_ih, w_hh = getattr(gru, f"weight_ih_l0{suffix}"), getattr(gru, f"weight_hh_l0{suffix}")
        b_ih, b_hh = getattr(gru, f"bias_ih_l0{suffix}"), getattr(gru, f"bias_hh_l0{suffix}")
        seq = reverse_valid(x, lengths) if suffix else x
        gates_x = seq @ w_ih.T + b_ih
        h = x.new_zeros(batch, units) if h0 is None else h0[direction]
        steps_out = []
        for t in range(steps):
            gx = gates_x[:, t]
            gh = h @ w_hh[: 2 * units].T + b_hh[: 2 * units]
            r = torch.sigmoid(gx[:, :units] + gh[:, :units])
            z = torch.sigmoid(gx[:, units : 2 * units] + gh[:, units:])
            n = torch.tanh(gx[:, 2 * units :] + (r * h) @ w_hh[2 * units :].T + b_hh[2 * units :])
            new = (1 - z) * n + z * h
            keep = valid[:, t : t + 1]
            h = torch.where(keep, new, h)
            steps_out.append(torch.where(keep, new, torch.zeros_like(new)))
        out = torch.stack(steps_out, 1)
        outs.append(reverse_valid(out, lengths) if suffix else out)
        finals.append(h)
    return torch.cat(outs, -1), torch.stack(finals)


def merge(values: Tensor, units: int, mode: str) -> Tensor:
    """A bidirectional layer's [forward, backward] halves merged as Keras's merge_mode."""
    if mode == "concat":
        return values
    forward, backward = values[..., :units], values[..., units:]
    if mode == "sum":
        return forward + backward
    if mode == "ave":
        return (forward + backward) / 2
    return forward * backward


class StackedLSTM(nn.Module):
    """Recurrent layers (LSTM or GRU, e.g. 64 then 32 units), dropout between them,
    a dense head."""

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
        directions: Sequence[str] | None = None,
        merge_modes: Sequence[str] | None = None,
        hidden: Sequence[dict[str, Any]] | None = None,
        out_activation: str = "linear",
        cells: Sequence[str] | None = None,
        reset_after: Sequence[bool] | None = None,
        front_end: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("a stacked LSTM needs at least one layer")
        self.task = task
        self.num_features = num_features
        self.layer_sizes = list(layers)
        self.output_size = output_size
        default = "bidirectional" if bidirectional else "forward"
        self.layer_directions = list(directions or [default] * len(layers))
        self.merge_modes = list(merge_modes or ["concat"] * len(layers))
        if len(self.layer_directions) != len(layers) or len(self.merge_modes) != len(layers):
            raise ValueError("directions and merge_modes need one entry per layer")
        for direction, mode in zip(self.layer_directions, self.merge_modes, strict=True):
            if direction not in DIRECTIONS or mode not in MERGE_MODES:
                raise ValueError(f"direction {direction!r} / merge mode {mode!r} is not known")
        self.cells = list(cells or ["lstm"] * len(layers))
        self.reset_after = [bool(r) for r in (reset_after or [True] * len(layers))]
        if len(self.cells) != len(layers) or len(self.reset_after) != len(layers):
            raise ValueError("cells and reset_after need one entry per layer")
        for cell, after in zip(self.cells, self.reset_after, strict=True):
            if cell not in CELLS or (cell == "lstm" and not after):
                raise ValueError(f"cell {cell!r} (reset_after={after}) is not known")
        self.bidirectional = any(d == "bidirectional" for d in self.layer_directions)
        self.hidden_config = [dict(item) for item in hidden or []]
        self.out_activation = out_activation
        self.front_end = FrontEnd(num_features, front_end or []) if front_end else None
        first = self.front_end.width if self.front_end is not None else num_features
        widths = [first] + [self.output_width(i) for i in range(len(layers))]
        self.lstms = nn.ModuleList(
            (nn.GRU if self.cells[i] == "gru" else nn.LSTM)(
                widths[i],
                units,
                batch_first=True,
                bidirectional=self.layer_directions[i] == "bidirectional",
            )
            for i, units in enumerate(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.hidden, head_width = hidden_stack(widths[-1], self.hidden_config)
        self.head = nn.Linear(head_width, output_size)
        self.final_activation = activation_module(out_activation)
        # Standardisation of inputs and (regression) targets, fitted on training data.
        self.register_buffer("x_mean", torch.zeros(num_features))
        self.register_buffer("x_std", torch.ones(num_features))
        self.register_buffer("y_mean", torch.zeros(output_size))
        self.register_buffer("y_std", torch.ones(output_size))

    @property
    def carries_state(self) -> bool:
        """Whether the graph takes and returns state tensors: not with a front end (its
        windows cannot be resumed from a recurrent state). LSTM and GRU layers alike."""
        return self.front_end is None

    def state_count(self, layer: int) -> int:
        """State tensors of one layer: 2 for an LSTM (h, c), 1 for a GRU (h)."""
        return 1 if self.cells[layer] == "gru" else 2

    def _state_slice(self, layer: int) -> slice:
        """Where one layer's tensors sit in the flat state list (``zero_states``)."""
        start = sum(self.state_count(i) for i in range(layer))
        return slice(start, start + self.state_count(layer))

    def directions_of(self, layer: int) -> int:
        """State directions of one layer: 2 for bidirectional, else 1."""
        return 2 if self.layer_directions[layer] == "bidirectional" else 1

    def output_width(self, layer: int) -> int:
        """What the layer hands on: both directions side by side only for concat."""
        units = self.layer_sizes[layer]
        if self.layer_directions[layer] == "bidirectional" and self.merge_modes[layer] == "concat":
            return 2 * units
        return units

    def config(self) -> dict[str, Any]:
        """Constructor arguments, saved with the weights so a checkpoint rebuilds itself."""
        config: dict[str, Any] = {
            "num_features": self.num_features,
            "layers": self.layer_sizes,
            "output_size": self.output_size,
            "task": self.task,
            "bidirectional": self.bidirectional,
            "dropout": self.dropout.p,
        }
        uniform = ["bidirectional" if self.bidirectional else "forward"] * len(self.layer_sizes)
        if self.layer_directions != uniform or set(self.merge_modes) != {"concat"}:
            config["directions"] = self.layer_directions
            config["merge_modes"] = self.merge_modes
        if "gru" in self.cells:
            config["cells"] = self.cells
            config["reset_after"] = self.reset_after
        if self.front_end is not None:
            config["front_end"] = self.front_end.config
        if self.hidden_config or self.out_activation != "linear":
            config["hidden"] = self.hidden_config
            config["out_activation"] = self.out_activation
        return config

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
        """Every layer's initial state, flattened in layer order: h0 and c0 for an LSTM
        layer, h0 alone for a GRU (``[h0_0, c0_0, h0_1]`` for LSTM then GRU); none with
        a front end."""
        if not self.carries_state:
            return []
        return [
            torch.zeros(self.directions_of(i), batch, units)
            for i, units in enumerate(self.layer_sizes)
            for _ in range(self.state_count(i))
        ]

    def _run_layer(
        self, i: int, x: Tensor, lengths: Tensor | None, states: list[Tensor], pack: bool
    ) -> tuple[Tensor, list[Tensor]]:
        """One layer over ``x`` from its initial state in ``states`` (zeros when there are
        none): (its output sequence, its final [h] or [h, c])."""
        rnn = self.lstms[i]
        gru = self.cells[i] == "gru"
        mine = states[self._state_slice(i)] if states else []
        if gru and not self.reset_after[i] and not torch.onnx.is_in_onnx_export():
            assert isinstance(rnn, nn.GRU)
            out, hn = gru_reset_before(rnn, x, lengths if pack else None, *mine)
            return out, [hn]
        hx = (mine[0] if gru else tuple(mine)) if mine else None
        if lengths is None or not pack:
            out, final = rnn(x, hx)
        else:
            lengths_cpu = lengths.to("cpu", torch.int64)
            packed = pack_padded_sequence(x, lengths_cpu, batch_first=True, enforce_sorted=False)
            packed_out, final = rnn(packed, hx)
            out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        return out, [final] if gru else list(final)

    def _final_hidden(self, hn: Tensor, layer: int = -1) -> Tensor:
        """[directions, B, H] -> [B, directions * H], forward first, merged as Keras merges."""
        flat = hn.transpose(0, 1).reshape(hn.shape[1], -1)
        return merge(flat, self.layer_sizes[layer], self.merge_modes[layer])

    @property
    def reads_backwards(self) -> bool:
        """Whether any layer is ``go_backwards`` (the graph then reads ``lengths`` itself)."""
        return "backward" in self.layer_directions

    def _layers(
        self,
        x: Tensor,
        lengths: Tensor | None,
        states: Sequence[Tensor] | None,
        pack: bool = True,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Normalise, run every layer; (last layer's sequence, final hidden, all states).

        With ``lengths`` (and ``pack``) each layer runs packed and stops at each
        sequence's true length (bidirectional layers start their backward pass
        there). Unpacked, the layers run over the padding too: that is the
        traceable form, which ``export.py`` makes length-aware again through
        ``sequence_lens``; ``lengths`` then only reverses ``go_backwards`` layers.
        """
        states = list(states) if states else self.zero_states(x.shape[0])
        out = (x - self.x_mean) / self.x_std
        if self.front_end is not None:
            # The front end reads the whole time axis: every sequence is as long as the
            # batch (the server sends such a model equal-length sequences only), and
            # its steps are the front end's, so the input's lengths no longer apply.
            out = self.front_end(out)
            lengths = None
        finals: list[Tensor] = []
        hn = out  # replaced by the first layer
        for i in range(len(self.lstms)):
            if self.layer_directions[i] == "backward":
                out = reverse_valid(out, lengths)
            out, layer_finals = self._run_layer(i, out, lengths, states, pack)
            hn = layer_finals[0]
            if self.carries_state:
                finals += layer_finals
            if self.layer_directions[i] == "bidirectional":
                out = merge(out, self.layer_sizes[i], self.merge_modes[i])
            if i < len(self.lstms) - 1:
                out = self.dropout(out)
        return out, self._final_hidden(hn), finals

    def logits(
        self,
        x: Tensor,
        lengths: Tensor | None,
        states: Sequence[Tensor] | None = None,
        pack: bool = True,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """(per-step, final, final states) before activation, from raw inputs.

        Pre-activation outputs (logits, or standardised regression values) are
        what the losses want. Padded steps hold head(0), as in the exported graph.
        ``lengths=None`` is the unpacked, traceable pass (see ``_layers``).
        """
        out, final, finals = self._layers(x, lengths, states, pack)
        return self.head(self.hidden(out)), self.head(self.hidden(final)), finals

    def activate(self, values: Tensor) -> Tensor:
        """Head values to served outputs: probabilities, or regression in target units."""
        if self.task == "classification":
            return torch.softmax(values, dim=-1)
        activated: Tensor = self.final_activation(values)
        return activated * self.y_std + self.y_mean

    def forward(self, x: Tensor, lengths: Tensor, *states: Tensor) -> tuple[Tensor, ...]:
        """What the exported graph computes: (sequence_output, final_output, hn_0, cn_0, ...).

        Eager calls honour ``lengths`` by packing. While exporting, packing cannot
        be traced into plain ONNX ops, so the layers run unpacked and ``lengths``
        goes unused here; ``export.wire_sequence_lens`` feeds it to every ONNX
        ``LSTM`` node instead, whose ``Y``/``Y_h``/``Y_c`` then equal the packed
        results (the parity check proves it on every export).
        """
        exporting = torch.onnx.is_in_onnx_export()
        sequence, final, finals = self.logits(x, lengths, states, pack=not exporting)
        return (self.activate(sequence), self.activate(final), *finals)

    def summary(self) -> str:
        """A Keras-style table: layer, output shape, parameters, and the total
        (``models.summary``)."""
        return keras_style_summary(self)
