"""Opening a saved Keras model within bounds: its config, then its arrays, by format.

- ``.keras`` (Keras 3): a zip of ``config.json``, ``metadata.json`` and
  ``model.weights.h5``; the weights member is copied, within its limit, to a
  temporary file before h5py opens it.
- ``.h5`` (Keras 2, ``tf.keras``, Keras 3's legacy writer): the config in the
  root's ``model_config`` attribute.

Apart from ``weights.py``, which locates and reads each layer's arrays in the
opened HDF5, because this is the file-handling side: nothing is read on trust
(``bounds.py``): the file must be a regular file within ``--max-size``, the
zip's members and the JSON within their limits, and the config parsed into the
arrays it must hold before any array is looked at.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from models.keras.bounds import (
    KERAS_MEMBERS,
    MAX_METADATA_BYTES,
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
from models.keras.weights import h5_arrays, keras3_arrays, text

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
                arrays = keras3_arrays(f, config, expected, model_bytes)
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
    return text(value)


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
            arrays = h5_arrays(f, expected, model_bytes)
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
