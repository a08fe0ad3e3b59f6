"""A Keras model config (JSON) to a typed description of a stacked LSTM, or a refusal.

Both file formats carry the same JSON: Keras 3 writes it as ``config.json`` in
the ``.keras`` zip, Keras 2 / ``tf.keras`` (and Keras 3's legacy writer) as the
``model_config`` attribute of the ``.h5`` root. Sequential models list their
layers; Functional ones (``Model``) are accepted when they are the same chain,
input to output, one layer after another.

Every setting the export cannot reproduce exactly is refused with an
``UnsupportedModel`` naming the layer and the setting: a model that imports is
one whose served answers equal Keras's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from models.keras.graph import MASK_OPS, UnsupportedModel, input_shape, layer_list

# Layers that do nothing at inference (Keras runs them with training=False).
NO_OPS = frozenset(
    {
        "Dropout",
        "SpatialDropout1D",
        "GaussianDropout",
        "GaussianNoise",
        "AlphaDropout",
        "ActivityRegularization",
    }
)
# Functional graphs record a Masking layer's mask as these op layers; the mask
# itself becomes ``lengths``.
SUPPORTED = (
    "InputLayer, Masking, Normalization, LSTM, Bidirectional(LSTM), Dense, "
    "TimeDistributed(Dense), Activation, Dropout and its kin"
)
HEAD_ACTIVATIONS = ("softmax", "sigmoid", "linear")
MERGE_MODES = ("concat", "sum", "ave")


@dataclass(frozen=True)
class LSTMSpec:
    """One LSTM layer (both directions when ``bidirectional``)."""

    name: str
    units: int
    return_sequences: bool
    stateful: bool
    use_bias: bool
    bidirectional: bool = False
    merge_mode: str = "concat"

    def keras_params(self, inputs: int) -> int:
        """Keras's count: one bias vector per gate, so 4u(i + u) + 4u per direction."""
        per_direction = 4 * self.units * (inputs + self.units) + (
            4 * self.units if self.use_bias else 0
        )
        return per_direction * (2 if self.bidirectional else 1)

    @property
    def output_width(self) -> int:
        """What the next layer reads: both directions side by side only for concat."""
        return self.units * (2 if self.bidirectional and self.merge_mode == "concat" else 1)


@dataclass(frozen=True)
class DenseSpec:
    """The dense head, its activation, and whether it runs at every timestep."""

    name: str
    kind: str  # "Dense" or "TimeDistributed(Dense)"
    units: int
    activation: str
    use_bias: bool
    per_timestep: bool


@dataclass(frozen=True)
class NormalizationSpec:
    """A Keras ``Normalization``: mean and variance from the config, or else the weights."""

    name: str
    mean: list[float] | None
    variance: list[float] | None
    before_masking: bool


@dataclass(frozen=True)
class KerasModelSpec:
    """What ``convert.py`` needs: the layers in order, the input, the head."""

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

    @property
    def stateful(self) -> bool:
        return self.lstms[0].stateful

    @property
    def bidirectional(self) -> bool:
        return self.lstms[0].bidirectional


def _check_lstm(name: str, cfg: dict[str, Any], kind: str = "LSTM") -> None:
    """Refuse the settings the ONNX LSTM op, as exported, does not compute."""
    where = f"layer {name!r} ({kind})"
    if cfg.get("activation", "tanh") != "tanh":
        raise UnsupportedModel(
            f"{where}: activation={cfg['activation']!r} is not supported; "
            "only 'tanh' exports exactly"
        )
    if cfg.get("recurrent_activation", "sigmoid") != "sigmoid":
        raise UnsupportedModel(
            f"{where}: recurrent_activation={cfg['recurrent_activation']!r} is not supported; "
            "only 'sigmoid' exports exactly"
        )
    for flag in ("return_state", "time_major"):
        if cfg.get(flag):
            raise UnsupportedModel(f"{where}: {flag}=True is not supported")
    if cfg.get("go_backwards") and kind == "LSTM":
        raise UnsupportedModel(
            f"{where}: go_backwards=True is not supported; use Bidirectional for a backward pass"
        )


def _lstm(layer: dict[str, Any]) -> LSTMSpec:
    cfg, name = layer["config"], layer["config"]["name"]
    if layer["class_name"] == "LSTM":
        _check_lstm(name, cfg)
        return LSTMSpec(
            name,
            int(cfg["units"]),
            bool(cfg.get("return_sequences")),
            bool(cfg.get("stateful")),
            bool(cfg.get("use_bias", True)),
        )
    inner = cfg["layer"]
    where = f"layer {name!r} (Bidirectional)"
    if inner["class_name"] != "LSTM":
        raise UnsupportedModel(f"{where}: wraps {inner['class_name']}; only LSTM is supported")
    forward = inner["config"]
    _check_lstm(name, forward, "Bidirectional")
    backward = (cfg.get("backward_layer") or {}).get("config")
    if backward is not None:
        _check_lstm(name, backward, "Bidirectional")
        for key in ("units", "use_bias", "return_sequences"):
            if backward.get(key) != forward.get(key):
                raise UnsupportedModel(f"{where}: backward_layer differs from the forward in {key}")
    merge = cfg.get("merge_mode", "concat")
    if merge not in MERGE_MODES:
        raise UnsupportedModel(
            f"{where}: merge_mode={merge!r} is not supported; use one of {', '.join(MERGE_MODES)}"
        )
    if forward.get("stateful"):
        raise UnsupportedModel(
            f"{where}: stateful=True cannot be served: the backward pass needs the whole sequence"
        )
    return LSTMSpec(
        name,
        int(forward["units"]),
        bool(forward.get("return_sequences")),
        False,
        bool(forward.get("use_bias", True)),
        True,
        merge,
    )


def _dense(layer: dict[str, Any], after_sequences: bool) -> DenseSpec:
    cfg, name = layer["config"], layer["config"]["name"]
    kind = "Dense"
    if layer["class_name"] == "TimeDistributed":
        inner = cfg["layer"]
        if inner["class_name"] != "Dense":
            raise UnsupportedModel(
                f"layer {name!r} (TimeDistributed): wraps {inner['class_name']}; "
                "only Dense is supported"
            )
        cfg, kind = inner["config"], "TimeDistributed(Dense)"
        if not after_sequences:
            raise UnsupportedModel(
                f"layer {name!r} (TimeDistributed): needs the LSTM before it to return_sequences"
            )
    activation = cfg.get("activation") or "linear"
    if not isinstance(activation, str) or activation not in HEAD_ACTIVATIONS:
        raise UnsupportedModel(
            f"layer {name!r} ({kind}): activation={activation!r} is not supported; "
            f"the head's activation must be one of {', '.join(HEAD_ACTIVATIONS)}"
        )
    units = int(cfg["units"])
    if activation == "sigmoid" and units != 1:
        raise UnsupportedModel(
            f"layer {name!r} ({kind}): sigmoid over {units} units (multi-label) is not supported; "
            "use softmax, or sigmoid over one unit for a binary classifier"
        )
    return DenseSpec(
        name, kind, units, activation, bool(cfg.get("use_bias", True)), after_sequences
    )


def parse(model_config: dict[str, Any]) -> KerasModelSpec:
    """The typed description of a Keras stacked LSTM, or ``UnsupportedModel`` saying why not."""
    model_name, layers = layer_list(model_config)
    shape: list[int | None] | None = None
    lstms: list[LSTMSpec] = []
    head: DenseSpec | None = None
    mask_value: float | None = None
    norm: NormalizationSpec | None = None
    dropout = 0.0
    for layer in layers:
        kind, cfg = layer["class_name"], layer.get("config", {})
        name = cfg.get("name", layer.get("name", kind.lower()))
        if shape is None:
            shape = input_shape(cfg) or (layer.get("build_config") or {}).get("input_shape")
        if kind == "InputLayer" or kind in MASK_OPS:
            continue
        if kind in NO_OPS:
            dropout = max(dropout, float(cfg.get("rate", 0.0) or 0.0))
            continue
        if head is not None:
            if kind == "Activation" and head.activation == "linear":
                # Dense(linear) then Activation is the same head as Dense(activation).
                folded = {
                    "name": head.name,
                    "units": head.units,
                    "use_bias": head.use_bias,
                    "activation": cfg.get("activation"),
                }
                head = replace(
                    _dense({"class_name": "Dense", "config": folded}, head.per_timestep),
                    kind=head.kind,
                )
                continue
            raise UnsupportedModel(
                f"layer {name!r} ({kind}) follows the dense head {head.name!r}; "
                "only one Dense layer (and an Activation) may follow the LSTMs"
            )
        if kind == "Masking":
            if lstms:
                raise UnsupportedModel(f"layer {name!r} (Masking) must come before the LSTMs")
            mask_value = float(cfg.get("mask_value", 0.0))
        elif kind == "Normalization":
            if lstms:
                raise UnsupportedModel(f"layer {name!r} (Normalization) must come before the LSTMs")
            axis = cfg.get("axis", -1)
            if axis not in (-1, [-1], (-1,), 2, [2]):
                raise UnsupportedModel(
                    f"layer {name!r} (Normalization): axis={axis!r} is not supported; "
                    "only per-feature statistics (axis=-1) are"
                )
            if cfg.get("invert"):
                raise UnsupportedModel(
                    f"layer {name!r} (Normalization): invert=True is not supported"
                )
            norm = NormalizationSpec(
                name, _floats(cfg.get("mean")), _floats(cfg.get("variance")), mask_value is None
            )
        elif kind in ("LSTM", "Bidirectional"):
            if lstms and not lstms[-1].return_sequences:
                raise UnsupportedModel(
                    f"layer {lstms[-1].name!r} (LSTM): return_sequences=False before another "
                    "LSTM layer is not supported"
                )
            lstms.append(_lstm(layer))
        elif kind in ("Dense", "TimeDistributed"):
            if not lstms:
                raise UnsupportedModel(f"layer {name!r} ({kind}) comes before any LSTM layer")
            head = _dense(layer, lstms[-1].return_sequences)
        else:
            raise UnsupportedModel(
                f"layer {name!r} ({kind}) is not supported; supported: {SUPPORTED}"
            )
    if not lstms:
        raise UnsupportedModel("the model has no LSTM layer")
    if head is None:
        raise UnsupportedModel(
            f"the model ends at layer {lstms[-1].name!r} without a Dense head; add Dense(units)"
        )
    for attribute in ("bidirectional", "stateful"):
        values = {getattr(spec, attribute) for spec in lstms}
        if len(values) > 1:
            raise UnsupportedModel(
                f"{attribute}=True on some LSTM layers only is not supported: "
                + ", ".join(f"{s.name}={getattr(s, attribute)}" for s in lstms)
            )
    if shape is None or len(shape) != 3 or shape[2] is None:
        raise UnsupportedModel(
            f"the input shape {shape} is not (batch, timesteps, features) with known features"
        )
    batch, steps, features = shape[0], shape[1], int(shape[2])
    return KerasModelSpec(
        name=model_name,
        num_features=features,
        timesteps=steps,
        batch_size=batch,
        lstms=lstms,
        head=head,
        mask_value=mask_value,
        normalization=norm,
        dropout=dropout,
        layers=[_row(layer) for layer in layers if layer["class_name"] not in MASK_OPS],
    )


def _floats(value: Any) -> list[float] | None:
    """A config mean/variance (scalar, nested list or None) as a flat list."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return [float(value)]
    flat: list[float] = []
    for item in value:
        flat += _floats(item) or []
    if any(math.isnan(v) for v in flat):
        raise UnsupportedModel("Normalization mean/variance holds NaN")
    return flat


def _row(layer: dict[str, Any]) -> tuple[str, str]:
    """(name, type) as Keras's summary writes them, wrappers with what they wrap."""
    cfg = layer.get("config", {})
    kind = layer["class_name"]
    if kind in ("Bidirectional", "TimeDistributed"):
        kind = f"{kind}({cfg['layer']['class_name']})"
    return str(cfg.get("name", layer.get("name", ""))), kind
