"""Locating and reading each layer's arrays in a Keras weights HDF5, with h5py alone.

- ``.keras`` (Keras 3): in ``model.weights.h5`` a layer's arrays sit under
  ``layers/<name>/``, in ``vars/0, 1, ...`` of the layer and of its sublayers (an
  LSTM's ``cell``, a wrapper's ``layer``, a Bidirectional's ``forward_layer`` and
  ``backward_layer``).
- ``.h5`` (Keras 2, ``tf.keras``, Keras 3's legacy writer): the arrays under
  ``model_weights/<name>/`` in the order the group's ``weight_names`` attribute lists.

Either way a layer's arrays come out in Keras's own order (kernel,
recurrent_kernel, bias; forward then backward), which ``convert.py`` relies on.

Apart from ``files.py``, which opens the file (zip members, temp file, format
sniffing) and hands over an open ``h5py.File``, because walking the HDF5 is a
concern of its own: every array the import needs is checked, by its declared
shape and dtype, against the shapes the parsed config gives its layer before
any array is read, and the file is walked by hard links only (no soft, external
or virtual data), without recursion, to a bounded depth.
"""

from __future__ import annotations

import re
from typing import Any

import h5py
import numpy as np

from models.keras.bounds import (
    MAX_H5_DEPTH,
    MAX_H5_OBJECTS,
    MAX_WEIGHT_NAMES,
    Expected,
    FileRefused,
    size_text,
    weights_file_limit,
)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hard(group: h5py.Group, key: str) -> Any:
    """``group[key]`` when it is one of the file's own objects, None when absent.

    A soft or external link (another file, which could be anything) is refused.
    """
    link = group.get(key, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        kind = "an external" if isinstance(link, h5py.ExternalLink) else "a soft"
        raise FileRefused(
            f"{group.name.rstrip('/')}/{key} is {kind} link; only the file's own arrays are read"
        )
    return group[key]


def _declared_bytes(dataset: h5py.Dataset) -> int:
    shape = dataset.shape
    if shape is None:  # a null dataspace
        return 0
    n = 1
    for d in shape:
        n *= int(d)
    return n * int(dataset.dtype.itemsize)


def _check_all_datasets(f: h5py.File, limit: int) -> None:
    """Every dataset the file declares, optimizer slots included, summed against ``limit``.

    Keras itself (the parity check) reads them all. Walked by hard links, without
    recursion, at most ``MAX_H5_DEPTH`` groups deep and ``MAX_H5_OBJECTS`` links.
    """
    total = objects = 0
    stack: list[tuple[h5py.Group, int]] = [(f, 0)]
    while stack:
        group, depth = stack.pop()
        for key in group:
            objects += 1
            if objects > MAX_H5_OBJECTS:
                raise FileRefused(
                    f"the weights file holds over {MAX_H5_OBJECTS:,} objects; "
                    "a Keras model's holds a few per layer"
                )
            if not isinstance(group.get(key, getlink=True), h5py.HardLink):
                continue  # not followed, here or when reading
            item = group[key]
            if isinstance(item, h5py.Group):
                if depth >= MAX_H5_DEPTH:
                    raise FileRefused(
                        f"the weights file nests groups deeper than {MAX_H5_DEPTH} ({item.name})"
                    )
                stack.append((item, depth + 1))
            elif isinstance(item, h5py.Dataset):
                total += _declared_bytes(item)
                if total > limit:
                    raise FileRefused(
                        f"the weights file declares over {size_text(limit)} of arrays "
                        f"({item.name} {item.shape} {item.dtype} among them); a model of these "
                        "layers, with an optimizer's state, holds less"
                    )


def _layer_vars(group: h5py.Group) -> list[h5py.Dataset]:
    """A Keras 3 layer group's arrays: its own ``vars`` first, then its sublayers'.

    A Bidirectional's forward layer precedes its backward one, as in Keras's
    ``weights``; other sublayers (an LSTM's single ``cell``) come alphabetically.
    Depth first, without recursion.
    """
    out: list[h5py.Dataset] = []
    order = {"forward_layer": 0, "backward_layer": 1}
    stack: list[tuple[h5py.Group, int]] = [(group, 0)]
    while stack:
        node, depth = stack.pop()
        own = _hard(node, "vars")
        if isinstance(own, h5py.Group):
            keys = list(own)
            if len(keys) > MAX_WEIGHT_NAMES or not all(k.isdigit() for k in keys):
                raise FileRefused(
                    f"{own.name} holds {len(keys)} entries named {sorted(keys)[:4]}...; "
                    "Keras numbers a layer's few arrays 0, 1, 2, ..."
                )
            for k in sorted(keys, key=int):
                item = _hard(own, k)
                if not isinstance(item, h5py.Dataset):
                    raise FileRefused(f"{own.name}/{k} is not an array")
                out.append(item)
        children = [k for k in node if k != "vars" and isinstance(_hard(node, k), h5py.Group)]
        if children and depth >= MAX_H5_DEPTH:
            raise FileRefused(f"{node.name} nests sublayers deeper than {MAX_H5_DEPTH}")
        for child in sorted(children, key=lambda k: (order.get(k, 2), k), reverse=True):
            stack.append((node[child], depth + 1))
        if len(out) > MAX_WEIGHT_NAMES:
            raise FileRefused(f"{group.name} holds over {MAX_WEIGHT_NAMES} arrays")
    return out


def _check_declared(expected: Expected, datasets: list[h5py.Dataset]) -> None:
    """The layer's arrays, as declared, against the shapes its config gives it."""
    where = f"layer {expected.layer!r} ({expected.kind})"
    if not datasets and expected.optional:
        return
    if len(datasets) != len(expected.arrays):
        declared = ", ".join(str(d.shape) for d in datasets[:8]) or "none"
        raise FileRefused(
            f"{where}: the file holds {len(datasets)} arrays ({declared}); "
            f"the architecture expects {len(expected.arrays)}: {expected.describe()}"
        )
    for i, (dataset, (shape, kinds)) in enumerate(zip(datasets, expected.arrays, strict=True)):
        declared = dataset.shape
        dtype = dataset.dtype
        if (
            declared != shape
            or dtype.kind not in kinds
            or dtype.itemsize > 8
            or dtype.fields is not None
        ):
            want = "float" if kinds == "f" else "a number"
            raise FileRefused(
                f"{where}: array {i} ({dataset.name}) is declared {declared} {dtype}; "
                f"the architecture expects {shape} {want}"
            )
        if dataset.is_virtual or dataset.external:
            raise FileRefused(
                f"{where}: array {i} ({dataset.name}) is stored outside the file; "
                "only the file's own arrays are read"
            )


def _read_checked(
    expected: dict[str, Expected],
    found: dict[str, list[h5py.Dataset]],
    f: h5py.File,
    model_bytes: int,
) -> dict[str, list[np.ndarray]]:
    """Every layer's arrays checked against its config, then the whole file's
    declared size, and only then anything read: a mismatch anywhere reads nothing."""
    for name, layer in expected.items():
        _check_declared(layer, found.get(name, []))
    _check_all_datasets(f, weights_file_limit(model_bytes))
    return {name: [np.asarray(dataset[()]) for dataset in found.get(name, [])] for name in expected}


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


def _weight_names(group: h5py.Group) -> list[str]:
    if "weight_names" not in group.attrs:
        return []
    attr = group.attrs.get_id("weight_names")
    count = int(np.prod(attr.shape)) if attr.shape else 1
    if count == 0:
        return []
    if count > MAX_WEIGHT_NAMES or attr.dtype.kind not in "OSU":
        raise FileRefused(
            f"{group.name}: weight_names is {attr.shape} {attr.dtype}; "
            "a few names of arrays expected"
        )
    return [text(n) for n in np.asarray(group.attrs["weight_names"]).reshape(-1)]


def _dataset_at(group: h5py.Group, name: str) -> h5py.Dataset:
    """``group[name]`` through hard links only, refused if it is not an array."""
    node: Any = group
    parts = [p for p in name.split("/") if p]
    if not parts or len(parts) > MAX_H5_DEPTH:
        raise FileRefused(f"{group.name}: weight name {name[:80]!r} is not a path to an array")
    for part in parts:
        node = _hard(node, part) if isinstance(node, h5py.Group) else None
        if node is None:
            raise FileRefused(f"{group.name}: weight {name[:80]!r} is listed but absent")
    if not isinstance(node, h5py.Dataset):
        raise FileRefused(f"{group.name}: weight {name[:80]!r} is not an array")
    return node


def keras3_arrays(
    f: h5py.File, config: dict[str, Any], expected: dict[str, Expected], model_bytes: int
) -> dict[str, list[np.ndarray]]:
    """A ``.keras`` zip's ``model.weights.h5``: each layer's arrays under ``layers/<group>/``."""
    groups = _hard(f, "layers")
    found: dict[str, list[h5py.Dataset]] = {}
    if isinstance(groups, h5py.Group):
        for name, key in _group_names(config).items():
            group = _hard(groups, key) if name in expected else None
            if isinstance(group, h5py.Group):
                found[name] = _layer_vars(group)
    return _read_checked(expected, found, f, model_bytes)


def h5_arrays(
    f: h5py.File, expected: dict[str, Expected], model_bytes: int
) -> dict[str, list[np.ndarray]]:
    """A legacy ``.h5``: each layer's arrays under ``model_weights/<name>/``, as listed."""
    root = _hard(f, "model_weights")
    root = root if isinstance(root, h5py.Group) else f
    found: dict[str, list[h5py.Dataset]] = {}
    for name in expected:
        group = _hard(root, name)
        if isinstance(group, h5py.Group):
            found[name] = [_dataset_at(group, n) for n in _weight_names(group)]
    return _read_checked(expected, found, f, model_bytes)
