"""A Keras model config (JSON) to a typed description of a stacked LSTM, or a refusal.

Both file formats carry the same JSON: Keras 3 writes it as ``config.json`` in
the ``.keras`` zip, Keras 2 / ``tf.keras`` (and Keras 3's legacy writer) as the
``model_config`` attribute of the ``.h5`` root. Sequential models list their
layers; Functional ones (``Model``) are accepted when they are the same chain,
input to output, one layer after another.

Every setting the export cannot reproduce exactly is refused with an
``UnsupportedModel`` naming the layer and the setting: a model that imports is
one whose served answers equal Keras's. The description itself (the dataclasses)
lives in ``layers.py``.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from models.keras import forecast, frontend
from models.keras.graph import MASK_OPS, UnsupportedModel, input_shape, layer_list
from models.keras.layers import (
    DenseSpec,
    KerasModelSpec,
    LSTMSpec,
    NormalizationSpec,
    StackStep,
)

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
    "InputLayer, Masking, Normalization, Conv1D, MaxPooling1D, AveragePooling1D, "
    "LSTM and GRU (go_backwards too), Bidirectional(LSTM or GRU), "
    "RepeatVector between an encoder and a decoder, "
    "then Dense, TimeDistributed(Dense), Activation, LayerNormalization, "
    "BatchNormalization, Dropout and its kin"
)
HIDDEN_ACTIVATIONS = (
    "linear",
    "relu",
    "tanh",
    "sigmoid",
    "elu",
    "selu",
    "gelu",
    "softplus",
    "softsign",
    "swish",
    "silu",
    "leaky_relu",
)
MERGE_MODES = ("concat", "sum", "ave", "mul")
# Layers Keras users reach for next, and what to do instead, in the refusal.
NOT_YET = {
    "SimpleRNN": "SimpleRNN layers are not supported; an LSTM stack imports",
    "Lambda": "a Lambda layer holds Python code, which the importer never runs",
    "Attention": "attention layers are not supported; only a chain of recurrent and dense layers",
    "MultiHeadAttention": (
        "attention layers are not supported; only a chain of recurrent and dense layers"
    ),
}


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
    if cfg.get("go_backwards") and kind in ("LSTM", "GRU") and cfg.get("stateful"):
        raise UnsupportedModel(
            f"{where}: stateful=True with go_backwards=True cannot be served: a backward pass "
            "needs the whole sequence; drop stateful=True"
        )


def _gru_settings(name: str, kind: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """A GRU's own settings for ``LSTMSpec`` (none for an LSTM)."""
    if "GRU" not in kind:
        return {}
    return {"cell": "gru", "reset_after": bool(cfg.get("reset_after", True))}


def _lstm(layer: dict[str, Any]) -> LSTMSpec:
    cfg, name = layer["config"], layer["config"]["name"]
    if layer["class_name"] in ("LSTM", "GRU"):
        kind = layer["class_name"]
        _check_lstm(name, cfg, kind)
        return LSTMSpec(
            name,
            int(cfg["units"]),
            bool(cfg.get("return_sequences")),
            bool(cfg.get("stateful")),
            bool(cfg.get("use_bias", True)),
            go_backwards=bool(cfg.get("go_backwards")),
            **_gru_settings(name, kind, cfg),
        )
    inner = cfg["layer"]
    where = f"layer {name!r} (Bidirectional)"
    if inner["class_name"] not in ("LSTM", "GRU"):
        hint = f"; {NOT_YET[inner['class_name']]}" if inner["class_name"] in NOT_YET else ""
        raise UnsupportedModel(
            f"{where}: wraps {inner['class_name']}; only LSTM and GRU are supported{hint}"
        )
    forward = inner["config"]
    kind = f"Bidirectional({inner['class_name']})"
    _check_lstm(name, forward, "Bidirectional")
    if forward.get("go_backwards"):
        raise UnsupportedModel(
            f"{where}: the wrapped LSTM has go_backwards=True; wrap a forward LSTM "
            "(Bidirectional adds the backward pass itself)"
        )
    backward = (cfg.get("backward_layer") or {}).get("config")
    if backward is not None:
        _check_lstm(name, backward, "Bidirectional")
        for key in ("units", "use_bias", "return_sequences", "reset_after"):
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
        **_gru_settings(name, kind, forward),
    )


def _activation_name(name: str, kind: str, value: Any) -> str:
    activation = value or "linear"
    known = (*HIDDEN_ACTIVATIONS, "softmax")
    if not isinstance(activation, str) or activation not in known:
        raise UnsupportedModel(
            f"layer {name!r} ({kind}): activation={activation!r} is not supported; "
            f"use one of {', '.join(known)}"
        )
    return activation


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
    activation = _activation_name(name, kind, cfg.get("activation"))
    return DenseSpec(
        name, kind, int(cfg["units"]), activation, bool(cfg.get("use_bias", True)), after_sequences
    )


def _norm_step(kind: str, name: str, cfg: dict[str, Any]) -> StackStep:
    axis = cfg.get("axis", -1)
    if axis not in (-1, [-1], (-1,), 2, [2]) and not (kind == "BatchNormalization" and axis == 1):
        raise UnsupportedModel(
            f"layer {name!r} ({kind}): axis={axis!r} is not supported; only the last axis (-1)"
        )
    if kind == "LayerNormalization" and cfg.get("rms_scaling"):
        raise UnsupportedModel(
            f"layer {name!r} (LayerNormalization): rms_scaling=True is not supported"
        )
    return StackStep(
        "layer_norm" if kind == "LayerNormalization" else "batch_norm",
        name,
        epsilon=float(cfg.get("epsilon", 1e-3)),
        center=bool(cfg.get("center", True)),
        scale=bool(cfg.get("scale", True)),
    )


def _split_stack(steps: list[StackStep], last_lstm: str) -> tuple[list[StackStep], DenseSpec]:
    """(the dense stack before the head, the head with its final activation)."""
    dense_at = [i for i, step in enumerate(steps) if step.kind == "dense"]
    if not dense_at:
        raise UnsupportedModel(
            f"the model ends at layer {last_lstm!r} without a Dense head; add Dense(units)"
        )
    last = dense_at[-1]
    head = steps[last].dense
    assert head is not None
    tail = steps[last + 1 :]
    for step in tail:
        if step.kind != "activation":
            kind = "LayerNormalization" if step.kind == "layer_norm" else "BatchNormalization"
            raise UnsupportedModel(
                f"layer {step.name!r} ({kind}) "
                f"follows the last Dense layer {head.name!r}; the model must end with a Dense "
                "layer (and an Activation): move it before that Dense layer"
            )
    finals = [s for s in tail if s.activation != "linear"]
    if len(finals) > 1:
        raise UnsupportedModel(
            f"layer {finals[1].name!r} (Activation) follows another activation after the last "
            f"Dense layer {head.name!r}; one activation may follow the last Dense layer"
        )
    final = finals[0].activation if finals else "linear"
    for step in steps[:last]:
        if step.activation == "softmax":
            raise UnsupportedModel(
                f"layer {step.name!r}: activation='softmax' is supported on the last Dense layer "
                "only"
            )
    if final == "sigmoid" and head.units != 1:
        raise UnsupportedModel(
            f"layer {head.name!r} ({head.kind}): sigmoid over {head.units} units (multi-label) "
            "is not supported; use softmax, or sigmoid over one unit for a binary classifier"
        )
    return steps[:last], replace(head, activation=final)


def parse(model_config: dict[str, Any]) -> KerasModelSpec:
    """The typed description of a Keras stacked LSTM, or ``UnsupportedModel`` saying why not."""
    model_name, layers = layer_list(model_config)
    shape: list[int | None] | None = None
    lstms: list[LSTMSpec] = []
    steps: list[StackStep] = []  # everything after the last LSTM, in order
    mask_value: float | None = None
    norm: NormalizationSpec | None = None
    dropout = 0.0
    front: list[frontend.FrontEndSpec] = []
    repeat = forecast.find_repeat(layers)  # an encoder-decoder forecaster's RepeatVector
    forecast.refuse_front_end(layers, repeat)
    for layer in layers:
        kind, cfg = layer["class_name"], layer.get("config", {})
        name = cfg.get("name", layer.get("name", kind.lower()))
        if shape is None:
            shape = input_shape(cfg) or (layer.get("build_config") or {}).get("input_shape")
        if kind in ("InputLayer", "RepeatVector") or kind in MASK_OPS:
            continue
        if kind in NO_OPS:
            dropout = max(dropout, float(cfg.get("rate", 0.0) or 0.0))
            continue
        frontend.refuse_after_front_end(kind, name, front)  # Masking, Normalization
        if kind == "Masking":
            if lstms:
                raise UnsupportedModel(f"layer {name!r} (Masking) must come before the LSTMs")
            mask_value = float(cfg.get("mask_value", 0.0))
        elif kind in frontend.FRONT_END:
            front.append(frontend.front_end_layer(kind, name, cfg, lstms, mask_value))
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
        elif kind in ("LSTM", "GRU", "Bidirectional"):
            if steps:
                raise UnsupportedModel(
                    f"layer {name!r} ({kind}) follows layer {steps[0].name!r}; recurrent layers "
                    "after Dense (or normalisation) layers are not supported: put the Dense "
                    "layers after the last recurrent layer"
                )
            if lstms and not (lstms[-1].return_sequences or forecast.decodes(repeat, len(lstms))):
                raise UnsupportedModel(
                    f"layer {lstms[-1].name!r} ({lstms[-1].kind}): return_sequences=False before "
                    "another recurrent layer is not supported; set return_sequences=True on it"
                )
            lstms.append(_lstm(layer))
        elif kind in ("Dense", "TimeDistributed"):
            if not lstms:
                raise UnsupportedModel(f"layer {name!r} ({kind}) comes before any LSTM layer")
            dense = _dense(layer, lstms[-1].return_sequences)
            steps.append(StackStep("dense", name, dense=dense))
            if dense.activation != "linear":
                steps.append(StackStep("activation", name, activation=dense.activation))
        elif kind == "Activation":
            if not lstms:
                raise UnsupportedModel(f"layer {name!r} (Activation) comes before any LSTM layer")
            activation = _activation_name(name, kind, cfg.get("activation"))
            steps.append(StackStep("activation", name, activation=activation))
        elif kind in ("LayerNormalization", "BatchNormalization"):
            if not steps:
                raise UnsupportedModel(
                    f"layer {name!r} ({kind}) is supported between Dense layers after the "
                    "recurrent layers only"
                )
            steps.append(_norm_step(kind, name, cfg))
        else:
            hint = NOT_YET.get(kind, f"supported: {SUPPORTED}")
            raise UnsupportedModel(f"layer {name!r} ({kind}) is not supported; {hint}")
    if not lstms:
        raise UnsupportedModel("the model has no LSTM layer")
    hidden, head = _split_stack(steps, lstms[-1].name)
    frontend.check_chain(front, lstms[0], head)
    stateful = {spec.stateful for spec in lstms}
    if len(stateful) > 1:
        raise UnsupportedModel(
            "stateful=True on some LSTM layers only is not supported ("
            + ", ".join(f"layer {s.name!r}: stateful={s.stateful}" for s in lstms)
            + "); set it on every LSTM layer or on none"
        )
    if mask_value is not None:
        for spec in lstms:
            if spec.go_backwards:
                raise UnsupportedModel(
                    f"layer {spec.name!r} ({spec.kind}): go_backwards=True after Masking is not "
                    "supported (Keras moves the padding to the front); remove the Masking "
                    "layer: the server runs each sequence at its own length anyway"
                )
    if shape is None or len(shape) != 3 or shape[2] is None:
        raise UnsupportedModel(
            f"the input shape {shape} is not (batch, timesteps, features) with known features"
        )
    batch, steps_, features = shape[0], shape[1], int(shape[2])
    parsed = KerasModelSpec(
        name=model_name,
        num_features=features,
        timesteps=steps_,
        batch_size=batch,
        lstms=lstms,
        head=head,
        mask_value=mask_value,
        normalization=norm,
        dropout=dropout,
        layers=[_row(layer) for layer in layers if layer["class_name"] not in MASK_OPS],
        hidden=hidden,
        front_end=front,
    )
    return forecast.complete(parsed, repeat)


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
