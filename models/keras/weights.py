"""A Keras file's config and arrays, with h5py alone: no TensorFlow, no Keras.

- ``.keras`` (Keras 3): a zip of ``config.json``, ``metadata.json`` and
  ``model.weights.h5``, where a layer's arrays sit under ``layers/<name>/``, in
  ``vars/0, 1, ...`` of the layer and of its sublayers (an LSTM's ``cell``, a
  wrapper's ``layer``, a Bidirectional's ``forward_layer`` and ``backward_layer``).
- ``.h5`` (Keras 2, ``tf.keras``, Keras 3's legacy writer): the config in the
  root's ``model_config`` attribute, the arrays under ``model_weights/<name>/``
  in the order the group's ``weight_names`` attribute lists.

Either way a layer's arrays come out in Keras's own order (kernel,
recurrent_kernel, bias; forward then backward), which ``convert.py`` relies on.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np


@dataclass(frozen=True)
class KerasFile:
    """What one saved model holds: the layer graph and every layer's arrays."""

    path: Path
    format: str  # "keras" or "h5"
    keras_version: str
    config: dict[str, Any]
    arrays: dict[str, list[np.ndarray]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _vars_in_order(group: h5py.Group) -> list[np.ndarray]:
    """A Keras 3 layer group's arrays: its own ``vars`` first, then its sublayers'.

    A Bidirectional's forward layer precedes its backward one, as in Keras's
    ``weights``; other sublayers (an LSTM's single ``cell``) come alphabetically.
    """
    out: list[np.ndarray] = []
    own = group.get("vars")
    if isinstance(own, h5py.Group):
        out += [np.asarray(own[k]) for k in sorted(own, key=int)]
    children = [k for k in group if k != "vars" and isinstance(group[k], h5py.Group)]
    order = {"forward_layer": 0, "backward_layer": 1}
    for child in sorted(children, key=lambda k: (order.get(k, 2), k)):
        out += _vars_in_order(group[child])
    return out


def _snake_case(name: str) -> str:
    """Keras's ``naming.to_snake_case``, which names the weight groups."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _group_names(config: dict[str, Any]) -> dict[str, str]:
    """Layer name -> its group in ``model.weights.h5``.

    Keras 3 does not name the groups after the layers but after their classes,
    numbered in order (``lstm``, ``lstm_1``, ...), so a model whose layers were
    named ``lstm_2`` and ``lstm_3`` by Keras's global counter still stores them
    as ``lstm`` and ``lstm_1``.
    """
    inner = config.get("config", {})
    layers = inner if isinstance(inner, list) else inner.get("layers", [])
    used: dict[str, int] = {}
    names: dict[str, str] = {}
    for layer in layers:
        key = _snake_case(layer["class_name"])
        if key in used:
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        names[layer.get("config", {}).get("name", layer.get("name", key))] = key
    return names


def _read_keras(path: Path) -> KerasFile:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        names = set(archive.namelist())
        meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        weights = archive.read("model.weights.h5")
    arrays: dict[str, list[np.ndarray]] = {}
    with h5py.File(io.BytesIO(weights), "r") as f:
        groups = f.get("layers")
        if isinstance(groups, h5py.Group):
            for name, key in _group_names(config).items():
                if key in groups:
                    arrays[name] = _vars_in_order(groups[key])
    return KerasFile(path, "keras", str(meta.get("keras_version", "unknown")), config, arrays)


def _read_h5(path: Path) -> KerasFile:
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(
                f"{path} holds no model_config: it is a weights-only file "
                "(save_weights); save the whole model with model.save()"
            )
        config = json.loads(_text(f.attrs["model_config"]))
        version = _text(f.attrs.get("keras_version", "unknown"))
        root = f.get("model_weights", f)
        arrays: dict[str, list[np.ndarray]] = {}
        for name in root:
            group = root[name]
            if not isinstance(group, h5py.Group):
                continue
            weight_names = [_text(n) for n in group.attrs.get("weight_names", [])]
            arrays[name] = [np.asarray(group[n]) for n in weight_names]
    return KerasFile(path, "h5", version, config, arrays)


def read(path: Path) -> KerasFile:
    """Open a ``.keras`` zip or a legacy ``.h5`` file, by content rather than by suffix."""
    if zipfile.is_zipfile(path):
        return _read_keras(path)
    if h5py.is_hdf5(path):
        return _read_h5(path)
    raise ValueError(f"{path} is neither a .keras zip nor an HDF5 .h5 file")
