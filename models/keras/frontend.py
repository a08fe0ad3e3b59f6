"""Conv1D / MaxPooling1D / AveragePooling1D before the recurrent layers: parsed, or refused.

``spec.py`` hands every such layer here (``front_end_layer``) and, once the
whole chain is known, the chain itself (``check_chain``). What is accepted is
what ``models/frontend.py`` computes exactly as Keras does for every input
length; everything else is refused naming the layer, the setting and what would
work instead:

- ``padding='same'`` with ``strides`` > 1 pads by an amount that depends on each
  sequence's length modulo the stride, which the exported graph (one graph for
  every length) does not reproduce; ``causal``/``valid``, or stride 1, do;
- ``AveragePooling1D(padding='same')`` divides its edge windows by a count that
  backends disagree on;
- a per-timestep head (``return_sequences=True`` to the end) after a layer that
  shortens the time axis has no step-for-step meaning; after stride-1
  ``causal``/``same`` layers it has, and is accepted;
- ``stateful=True``: a front end's windows cannot resume from an LSTM's state;
- Masking before or after a front end, and Normalization after it: Keras's
  convolutions do not carry the mask, and the importer keeps normalisation at
  the input.
"""

from __future__ import annotations

from typing import Any

from models.frontend import KERAS_KINDS, reshapes_time
from models.head import activation_module
from models.keras.graph import UnsupportedModel
from models.keras.layers import DenseSpec, FrontEndSpec, LSTMSpec

__all__ = ["FRONT_END", "FrontEndSpec", "check_chain", "front_end_layer", "refuse_after_front_end"]

FRONT_END = ("Conv1D", "MaxPooling1D", "AveragePooling1D")
PADDINGS = {"Conv1D": ("causal", "valid", "same"), "MaxPooling1D": ("valid", "same")}


def _one(where: str, cfg: dict[str, Any], key: str, default: Any = 1) -> int:
    """A 1-D layer's size setting: Keras stores it as ``3``, ``[3]`` or ``(3,)``."""
    value = cfg.get(key, default)
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise UnsupportedModel(f"{where}: {key}={value!r} is not one number")
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UnsupportedModel(f"{where}: {key}={value!r} is not a positive whole number")
    return value


def _activation(where: str, value: Any) -> str:
    """A Conv1D activation that ``models/head.py`` computes exactly, or a refusal."""
    name = value or "linear"
    try:
        if not isinstance(name, str) or name == "softmax":
            raise ValueError(name)
        activation_module(name)
    except ValueError:
        raise UnsupportedModel(
            f"{where}: activation={name!r} is not supported here; use relu, tanh, sigmoid, "
            "elu, selu, gelu, softplus, softsign, swish, leaky_relu or linear"
        ) from None
    return name


def front_end_layer(
    kind: str, name: str, cfg: dict[str, Any], lstms: list[LSTMSpec], mask_value: float | None
) -> FrontEndSpec:
    """One Conv1D or pooling layer, or ``UnsupportedModel`` naming the setting; ``lstms``
    and ``mask_value``: the recurrent layers and the Masking seen before it."""
    where = f"layer {name!r} ({kind})"
    if lstms:
        raise UnsupportedModel(
            f"{where} follows a recurrent layer; Conv1D and pooling layers are supported "
            "before the recurrent layers only"
        )
    if mask_value is not None:
        raise UnsupportedModel(
            f"{where} follows Masking; a Conv1D/pooling front end reads each sequence whole "
            "(the server takes equal-length sequences per request): remove the Masking layer"
        )
    if cfg.get("data_format", "channels_last") not in ("channels_last", None):
        raise UnsupportedModel(
            f"{where}: data_format={cfg['data_format']!r} is not supported; use channels_last"
        )
    padding = str(cfg.get("padding", "valid")).lower()
    allowed = PADDINGS.get(kind, ("valid",))
    if padding not in allowed:
        raise UnsupportedModel(
            f"{where}: padding={padding!r} is not supported; use "
            + " or ".join(repr(p) for p in allowed)
        )
    if kind == "Conv1D":
        size = _one(where, cfg, "kernel_size")
        strides = _one(where, cfg, "strides")
        dilation = _one(where, cfg, "dilation_rate")
        if cfg.get("groups", 1) not in (1, None):
            raise UnsupportedModel(f"{where}: groups={cfg['groups']!r} is not supported; use 1")
        if strides > 1 and dilation > 1:
            raise UnsupportedModel(
                f"{where}: strides={strides} with dilation_rate={dilation} is not supported; "
                "use one of them"
            )
        if padding == "same" and strides > 1:
            raise UnsupportedModel(
                f"{where}: padding='same' with strides={strides} is not supported (its padding "
                "depends on each sequence's length); use padding='valid' or 'causal', or strides=1"
            )
        return FrontEndSpec(
            name,
            "conv1d",
            size,
            strides,
            padding,
            filters=_one(where, cfg, "filters", None),
            dilation=dilation,
            activation=_activation(where, cfg.get("activation")),
            use_bias=bool(cfg.get("use_bias", True)),
        )
    size = _one(where, cfg, "pool_size", 2)
    strides = size if cfg.get("strides") is None else _one(where, cfg, "strides")
    if padding == "same" and strides > 1:
        raise UnsupportedModel(
            f"{where}: padding='same' with strides={strides} is not supported (its padding "
            "depends on each sequence's length); use padding='valid', or strides=1"
        )
    return FrontEndSpec(
        name, "max_pool" if kind == "MaxPooling1D" else "avg_pool", size, strides, padding
    )


def refuse_after_front_end(kind: str, name: str, front: list[FrontEndSpec]) -> None:
    """Masking or Normalization after a Conv1D/pooling layer: refused (they go first).
    Other kinds pass: ``spec.py`` calls this for every layer."""
    if front and kind in ("Masking", "Normalization"):
        raise UnsupportedModel(
            f"layer {name!r} ({kind}) follows layer {front[-1].name!r} "
            f"({KERAS_KINDS[front[-1].kind]}); put {kind} before the Conv1D/pooling layers"
            + (" or drop it" if kind == "Masking" else "")
        )


def check_chain(front: list[FrontEndSpec], first: LSTMSpec, head: DenseSpec) -> None:
    """The whole model's rules for a front end: no server-held state, and per-timestep
    outputs only where the front end keeps the time axis."""
    if not front:
        return
    if first.stateful:
        raise UnsupportedModel(
            f"layer {first.name!r} ({first.kind}): stateful=True after a Conv1D/pooling front "
            f"end (layer {front[0].name!r}) is not supported: its windows cannot resume from "
            "an LSTM state; drop stateful=True and send each sequence whole"
        )
    why = reshapes_time([layer.config() for layer in front])
    if head.per_timestep and why:
        raise UnsupportedModel(
            f"layer {head.name!r} ({head.kind}): per-timestep outputs after a front end that "
            f"shortens the time axis ({why}) have no step-for-step meaning; end the last "
            "recurrent layer with return_sequences=False, or use strides=1 with "
            "padding='causal' or 'same'"
        )
