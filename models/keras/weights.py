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

Nothing is read on trust (``bounds.py``): the file must be a regular file within
``--max-size``, the zip's members and the JSON within their limits, and every
array the import needs is checked, by its declared shape and dtype, against the
shapes the parsed config gives its layer before any array is read. The HDF5 is
walked by hard links only (no soft, external or virtual data), without
recursion, to a bounded depth.
"""

from __future__ import annotations

import os
import re
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from models.keras.bounds import (
    KERAS_MEMBERS,
    MAX_H5_DEPTH,
    MAX_H5_OBJECTS,
    MAX_METADATA_BYTES,
    MAX_WEIGHT_NAMES,
    MAX_ZIP_ENTRIES,
    Expected,
    FileRefused,
    KiB,
    Limits,
    check_archive,
    check_model_size,
    copy_member,
    expected_arrays,
    loads,
    open_regular,
    read_member,
    size_text,
    weights_file_limit,
)
from models.keras.spec import parse

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
MAX_VERSION_CHARS = 64


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


def _expected(
    config: dict[str, Any], limits: Limits, where: str
) -> tuple[dict[str, Expected], int]:
    """The arrays the config's model must hold, and its weights' size at float32.

    A config that is JSON but not a model's (a list where a layer belongs, a
    layer without its class) is refused here, before any array is looked at.
    """
    try:
        spec = parse(config)
    except (KeyError, TypeError, AttributeError, IndexError) as error:
        raise FileRefused(
            f"{where} is not a Keras model config ({type(error).__name__}: {str(error)[:100]})"
        ) from error
    expected = expected_arrays(spec)
    return expected, check_model_size(expected, limits)


def _h5_errors(path: Path, error: Exception) -> FileRefused:
    return FileRefused(f"{path}: the HDF5 data cannot be read ({str(error)[:200]})")


def _read_keras(path: Path, source: IO[bytes], limits: Limits) -> KerasFile:
    end = getattr(zipfile, "_EndRecData", None)  # the directory, before zipfile parses it all
    if end is not None:
        record = end(source)
        if record is not None and (record[4] > MAX_ZIP_ENTRIES or record[5] > 64 * KiB):
            raise FileRefused(
                f"{path}: the .keras zip lists {record[4]:,} members in "
                f"{size_text(record[5])}; expected {', '.join(KERAS_MEMBERS)}"
            )
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, ValueError, EOFError) as error:
        raise FileRefused(f"{path}: not a readable .keras zip ({error})") from error
    with archive, tempfile.TemporaryFile(prefix="lstm-import-") as weights:
        members = check_archive(archive, path, limits)
        config_text = read_member(archive, members["config.json"], limits.max_config_bytes, path)
        config = loads(config_text, f"{path}: config.json", limits)
        meta: Any = {}
        if "metadata.json" in members:
            meta_text = read_member(archive, members["metadata.json"], MAX_METADATA_BYTES, path)
            meta = loads(meta_text, f"{path}: metadata.json", limits, MAX_METADATA_BYTES)
        if not isinstance(config, dict) or not isinstance(meta, dict):
            raise FileRefused(f"{path}: config.json and metadata.json must each be a JSON object")
        expected, model_bytes = _expected(config, limits, f"{path}: config.json")
        limit = min(weights_file_limit(model_bytes), limits.max_bytes)
        copy_member(archive, members["model.weights.h5"], weights, limit, path)
        weights.seek(0)
        try:
            with h5py.File(weights, "r") as f:
                groups = _hard(f, "layers")
                found: dict[str, list[h5py.Dataset]] = {}
                if isinstance(groups, h5py.Group):
                    for name, key in _group_names(config).items():
                        group = _hard(groups, key) if name in expected else None
                        if isinstance(group, h5py.Group):
                            found[name] = _layer_vars(group)
                arrays = _read_checked(expected, found, f, model_bytes)
        except (OSError, KeyError, RuntimeError, TypeError) as error:
            raise _h5_errors(path, error) from error
    version = str(meta.get("keras_version", "unknown"))[:MAX_VERSION_CHARS]
    return KerasFile(path, "keras", version, config, arrays)


def _attr_text(obj: h5py.HLObject, name: str, limit: int, path: Path) -> str | None:
    """A scalar string attribute, refused if it declares more than ``limit`` bytes.

    A variable-length string's length is known only once read; it is bounded by
    the file's own size (attributes are never compressed).
    """
    if name not in obj.attrs:
        return None
    attr = obj.attrs.get_id(name)
    if attr.shape not in ((), (1,)) or attr.dtype.kind not in "OSU":
        raise FileRefused(
            f"{path}: the {name} attribute is {attr.shape} {attr.dtype}; a string expected"
        )
    if attr.dtype.itemsize > limit:
        raise FileRefused(
            f"{path}: the {name} attribute is {size_text(attr.dtype.itemsize)}; "
            f"at most {size_text(limit)} expected"
        )
    value = obj.attrs[name]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    return _text(value)


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
    return [_text(n) for n in np.asarray(group.attrs["weight_names"]).reshape(-1)]


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


def _read_h5(path: Path, source: IO[bytes], limits: Limits) -> KerasFile:
    try:
        with h5py.File(source, "r") as f:
            text = _attr_text(f, "model_config", limits.max_config_bytes, path)
            if text is None:
                raise FileRefused(
                    f"{path} holds no model_config: it is a weights-only file "
                    "(save_weights); save the whole model with model.save()"
                )
            config = loads(text, f"{path}: model_config", limits)
            if not isinstance(config, dict):
                raise FileRefused(f"{path}: model_config must be a JSON object")
            try:
                version = _attr_text(f, "keras_version", MAX_VERSION_CHARS, path) or "unknown"
            except FileRefused:
                version = "unknown"  # only shown, never relied on
            expected, model_bytes = _expected(config, limits, f"{path}: model_config")
            root = _hard(f, "model_weights")
            root = root if isinstance(root, h5py.Group) else f
            found: dict[str, list[h5py.Dataset]] = {}
            for name in expected:
                group = _hard(root, name)
                if isinstance(group, h5py.Group):
                    found[name] = [_dataset_at(group, n) for n in _weight_names(group)]
            arrays = _read_checked(expected, found, f, model_bytes)
    except (OSError, KeyError, RuntimeError, TypeError) as error:
        raise _h5_errors(path, error) from error
    return KerasFile(path, "h5", version[:MAX_VERSION_CHARS], config, arrays)


def _is_hdf5(source: IO[bytes], size: int) -> bool:
    """HDF5's signature at 0, 512, 1024, 2048, ... (where a user block may put it)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= size:
        source.seek(offset)
        if source.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def read(path: Path, limits: Limits | None = None) -> KerasFile:
    """Open a ``.keras`` zip or a legacy ``.h5`` file, by content rather than by suffix.

    Refused with a ``FileRefused`` (a ``ValueError``) whenever the file, its
    config or its arrays are beyond ``limits`` or differ from the architecture
    the config declares; ``UnsupportedModel`` when the model itself cannot be
    served exactly.
    """
    limits = limits or Limits()
    with open_regular(path, limits) as source:
        size = os.fstat(source.fileno()).st_size
        if zipfile.is_zipfile(source):
            source.seek(0)
            return _read_keras(path, source, limits)
        if _is_hdf5(source, size):
            source.seek(0)
            return _read_h5(path, source, limits)
    raise FileRefused(f"{path} is neither a .keras zip nor an HDF5 .h5 file")
