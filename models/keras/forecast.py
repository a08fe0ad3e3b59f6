"""Keras's encoder-decoder forecasters: where ``RepeatVector`` may sit, and what it means.

The tutorial's model is ``LSTM(64)`` -> ``RepeatVector(5)`` ->
``LSTM(64, return_sequences=True)`` -> ``TimeDistributed(Dense(1))``: an encoder
(one or more recurrent layers, the last handing on its final output), the
repeat, a decoder (one or more recurrent layers, the last returning every
step) and a per-step dense head. ``spec.py`` parses the recurrent and dense
layers as for any stack; this module finds the ``RepeatVector`` first, refuses
every placement that is not that shape (naming the layer and the setting, and
saying what would import), and completes the spec with the horizon and the
encoder/decoder split that ``convert.py`` builds a ``models.forecaster.Forecaster``
from.

Refused: ``return_sequences=True`` on the encoder's last layer (RepeatVector
repeats one vector), anything but a recurrent layer right before or after it,
a decoder whose last layer does not return sequences, two RepeatVectors, and
``stateful=True`` (a forecaster's state is not carried across requests).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from models.keras.graph import UnsupportedModel
from models.keras.layers import KerasModelSpec

RECURRENT = ("LSTM", "GRU", "Bidirectional")
# Layers that change nothing between the encoder, the repeat and the decoder.
PASS_THROUGH = frozenset(
    {"Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise", "AlphaDropout"}
)


@dataclass(frozen=True)
class Repeat:
    """The model's ``RepeatVector``: its name, the horizon, the recurrent layers before it."""

    name: str
    horizon: int
    encoder_layers: int


def _name(layer: dict[str, Any]) -> str:
    return str(layer.get("config", {}).get("name", layer.get("name", "")))


def _returns_sequences(layer: dict[str, Any]) -> bool:
    cfg = layer.get("config", {})
    if layer["class_name"] == "Bidirectional":
        cfg = cfg.get("layer", {}).get("config", {})
    return bool(cfg.get("return_sequences"))


def _kind(layer: dict[str, Any]) -> str:
    kind = str(layer["class_name"])
    if kind in ("Bidirectional", "TimeDistributed"):
        kind = f"{kind}({layer['config']['layer']['class_name']})"
    return kind


def _neighbour(layers: list[dict[str, Any]], at: int, step: int) -> dict[str, Any] | None:
    """The nearest layer before (step -1) or after (+1) ``at`` that does something."""
    i = at + step
    while 0 <= i < len(layers) and layers[i]["class_name"] in PASS_THROUGH:
        i += step
    return layers[i] if 0 <= i < len(layers) else None


def find_repeat(layers: list[dict[str, Any]]) -> Repeat | None:
    """The forecaster's ``RepeatVector`` (its place checked), or None for any other model."""
    at = [i for i, layer in enumerate(layers) if layer["class_name"] == "RepeatVector"]
    if not at:
        return None
    name = _name(layers[at[0]])
    where = f"layer {name!r} (RepeatVector)"
    if len(at) > 1:
        raise UnsupportedModel(
            f"layer {_name(layers[at[1]])!r} (RepeatVector) follows another RepeatVector "
            f"({name!r}); a forecaster has one: encoder, RepeatVector, decoder"
        )
    before = _neighbour(layers, at[0], -1)
    if before is None or before["class_name"] not in RECURRENT:
        found = f"layer {_name(before)!r} ({_kind(before)})" if before else "the input"
        raise UnsupportedModel(
            f"{where} follows {found}; it must follow the encoder's last recurrent layer "
            "(LSTM or GRU with return_sequences=False), whose final output it repeats"
        )
    if _returns_sequences(before):
        raise UnsupportedModel(
            f"layer {_name(before)!r} ({_kind(before)}): return_sequences=True before {where} "
            "is not supported: RepeatVector repeats the encoder's final output; set "
            "return_sequences=False on it"
        )
    after = _neighbour(layers, at[0], 1)
    if after is None or after["class_name"] not in RECURRENT:
        found = f"layer {_name(after)!r} ({_kind(after)})" if after else "nothing"
        raise UnsupportedModel(
            f"{where} is followed by {found}; it must be followed by the decoder: recurrent "
            "layers (LSTM or GRU), the last with return_sequences=True, then "
            "TimeDistributed(Dense)"
        )
    horizon = int(layers[at[0]].get("config", {}).get("n", 0))
    if horizon < 1:
        raise UnsupportedModel(f"{where}: n={horizon} is not supported; it must be at least 1")
    encoder = sum(1 for layer in layers[: at[0]] if layer["class_name"] in RECURRENT)
    return Repeat(name, horizon, encoder)


def decodes(repeat: Repeat | None, recurrent_so_far: int) -> bool:
    """Whether the next recurrent layer is the decoder's first (after the RepeatVector)."""
    return repeat is not None and repeat.encoder_layers == recurrent_so_far


def complete(spec: KerasModelSpec, repeat: Repeat | None) -> KerasModelSpec:
    """The spec with the forecaster's horizon and split, once the whole model is parsed."""
    if repeat is None:
        return spec
    last = spec.lstms[-1]
    if not last.return_sequences:
        raise UnsupportedModel(
            f"layer {last.name!r} ({last.kind}): return_sequences=False on the decoder's last "
            "layer is not supported: a forecaster answers one output per future step; set "
            "return_sequences=True on it (then TimeDistributed(Dense))"
        )
    stateful = [layer for layer in spec.lstms if layer.stateful]
    if stateful:
        raise UnsupportedModel(
            f"layer {stateful[0].name!r} ({stateful[0].kind}): stateful=True is not supported in a "
            f"forecaster (RepeatVector {repeat.name!r}): its state is not carried across "
            "requests; drop stateful=True (each request's sequences are then encoded whole)"
        )
    return replace(spec, horizon=repeat.horizon, encoder_layers=repeat.encoder_layers)


def refuse_front_end(layers: list[dict[str, Any]], repeat: Repeat | None) -> None:
    """A forecaster builds no Conv1D/pooling front end: refuse the pair by name, before
    anything else about the model is judged."""
    if repeat is None:
        return
    for layer in layers:
        kind = layer["class_name"]
        if kind in ("Conv1D", "MaxPooling1D", "AveragePooling1D"):
            name = layer.get("config", {}).get("name", kind.lower())
            raise UnsupportedModel(
                f"layer {name!r} ({kind}): a Conv1D/pooling front end is not supported in a "
                f"forecaster (RepeatVector {repeat.name!r}); one or the other imports: drop "
                "the front end, or the RepeatVector decoder"
            )
