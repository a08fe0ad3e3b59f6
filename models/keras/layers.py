"""The typed description of a parsed Keras model: its recurrent layers, dense stack and head.

Apart from ``spec.py``, which builds these from a config and refuses what cannot
be served, because everything downstream (``bounds.py``'s expected shapes,
``convert.py``, ``parity.py``) reads only these dataclasses, never the config
or its parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LSTMSpec:
    """One recurrent layer (both directions when ``bidirectional``; backward when
    ``go_backwards``): an LSTM, or a GRU (``cell="gru"``, with Keras's ``reset_after``)."""

    name: str
    units: int
    return_sequences: bool
    stateful: bool
    use_bias: bool
    bidirectional: bool = False
    merge_mode: str = "concat"
    go_backwards: bool = False
    cell: str = "lstm"
    reset_after: bool = True

    @property
    def kind(self) -> str:
        """Keras's class name: ``LSTM``, ``GRU``, ``Bidirectional(GRU)``..."""
        cell = self.cell.upper()
        return f"Bidirectional({cell})" if self.bidirectional else cell

    @property
    def direction(self) -> str:
        if self.bidirectional:
            return "bidirectional"
        return "backward" if self.go_backwards else "forward"

    def keras_params(self, inputs: int) -> int:
        """Keras's count: LSTM 4u(i + u) + 4u per direction (one bias vector per gate);
        GRU 3u(i + u) + 6u with reset_after=True (input and recurrent biases), + 3u without."""
        gates = 4 if self.cell == "lstm" else 3
        biases = 2 if self.cell == "gru" and self.reset_after else 1
        per_direction = gates * self.units * (inputs + self.units) + (
            biases * gates * self.units if self.use_bias else 0
        )
        return per_direction * (2 if self.bidirectional else 1)

    @property
    def output_width(self) -> int:
        """What the next layer reads: both directions side by side only for concat."""
        return self.units * (2 if self.bidirectional and self.merge_mode == "concat" else 1)


@dataclass(frozen=True)
class FrontEndSpec:
    """A Conv1D or pooling layer before the recurrent ones (``kind``: ``conv1d``,
    ``max_pool`` or ``avg_pool``; ``padding``: ``causal``, ``valid`` or ``same``),
    parsed by ``frontend.py``."""

    name: str
    kind: str
    size: int  # kernel_size or pool_size
    strides: int
    padding: str
    filters: int = 0
    dilation: int = 1
    activation: str = "linear"
    use_bias: bool = True

    def config(self) -> dict[str, Any]:
        """The layer as ``models/frontend.py`` builds it (and a checkpoint stores it)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "size": self.size,
            "strides": self.strides,
            "padding": self.padding,
            "filters": self.filters,
            "dilation": self.dilation,
            "activation": self.activation,
            "bias": self.use_bias,
        }


@dataclass(frozen=True)
class DenseSpec:
    """A Dense layer after the recurrent ones, its activation, and whether it runs at
    every timestep. The last one is the head."""

    name: str
    kind: str  # "Dense" or "TimeDistributed(Dense)"
    units: int
    activation: str
    use_bias: bool
    per_timestep: bool


@dataclass(frozen=True)
class StackStep:
    """One step of the dense stack between the recurrent layers and the head.

    ``kind``: ``dense`` (``dense`` set), ``activation`` (``activation`` set),
    ``layer_norm`` or ``batch_norm`` (``epsilon``, ``center``, ``scale``).
    """

    kind: str
    name: str
    dense: DenseSpec | None = None
    activation: str = "linear"
    epsilon: float = 1e-3
    center: bool = True
    scale: bool = True


@dataclass(frozen=True)
class NormalizationSpec:
    """A Keras ``Normalization``: mean and variance from the config, or else the weights."""

    name: str
    mean: list[float] | None
    variance: list[float] | None
    before_masking: bool


@dataclass(frozen=True)
class KerasModelSpec:
    """What ``convert.py`` needs: the layers in order, the input, the dense stack, the head."""

    name: str
    num_features: int
    timesteps: int | None
    batch_size: int | None
    lstms: list[LSTMSpec]
    head: DenseSpec
    mask_value: float | None = None
    normalization: NormalizationSpec | None = None
    dropout: float = 0.0
    # (name, type) of every layer in order, for the Keras-style summary
    layers: list[tuple[str, str]] = field(default_factory=list)
    # Dense layers, activations and normalisations between the last LSTM and the head
    hidden: list[StackStep] = field(default_factory=list)
    # Conv1D and pooling layers before the recurrent ones
    front_end: list[FrontEndSpec] = field(default_factory=list)
    # An encoder-decoder forecaster (RepeatVector, ``forecast.py``): the future steps, and
    # how many of ``lstms`` are the encoder (the rest are the decoder)
    horizon: int | None = None
    encoder_layers: int = 0

    @property
    def stateful(self) -> bool:
        return self.lstms[0].stateful

    @property
    def bidirectional(self) -> bool:
        """Whether any layer is bidirectional."""
        return any(layer.bidirectional for layer in self.lstms)

    @property
    def directions(self) -> list[str]:
        return [layer.direction for layer in self.lstms]
