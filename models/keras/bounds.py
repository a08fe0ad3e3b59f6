"""What ``lstm-import`` reads from a Keras file, bounded before it is read.

A model file comes from elsewhere, so nothing it declares is believed before it
is checked against a limit or against the model it claims to be:

- only a regular file is opened (a symlink is followed, then a device, FIFO or
  socket is refused), and no larger than ``Limits.max_bytes``;
- a ``.keras`` zip holds exactly ``config.json``, ``model.weights.h5`` and an
  optional ``metadata.json``, each stored or deflated, each within its own
  limit and, above 1 MiB, expanding at most ``max_ratio`` times; a member is
  read in chunks and never past the size its header declares;
- the JSON config is at most ``max_config_bytes`` and nested at most
  ``max_json_depth`` levels, counted by a flat scan before ``json.loads``;
- the weights: every dataset the file declares adds up to at most
  ``OTHER_ARRAYS_FACTOR`` times the model's own weights (an optimizer's slots
  fit), and each array the import reads must have exactly the shape the parsed
  architecture gives it (``expected_arrays``) before any of them is read.

Each refusal is a ``FileRefused`` (a ``ValueError``) saying what was found and
what was expected; ``lstm-import`` prints it on one line and exits 2.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from models.keras.layers import KerasModelSpec

GiB, MiB, KiB = 1 << 30, 1 << 20, 1 << 10
MAX_BYTES = 2 * GiB
CHUNK = 1 * MiB
# Members below this size may be compressed any amount: they cannot amount to much.
RATIO_FLOOR = 1 * MiB
# All the datasets of a weights file, optimizer slots included (Adam keeps two
# per weight), against the model's own weights at 4 bytes each; plus the HDF5
# structure's overhead.
OTHER_ARRAYS_FACTOR = 4
WEIGHTS_FILE_SLACK = 4 * MiB
MAX_H5_OBJECTS = 100_000
MAX_H5_DEPTH = 16
MAX_WEIGHT_NAMES = 64
KERAS_MEMBERS = ("config.json", "metadata.json", "model.weights.h5")
MAX_ZIP_ENTRIES = 16  # read from the zip's end record before its directory is parsed
MAX_METADATA_BYTES = 64 * KiB


class FileRefused(ValueError):
    """The file is not what a Keras model file holds, or is beyond ``Limits``."""


@dataclass(frozen=True)
class Limits:
    """The bounds on one import; ``max_bytes`` is ``lstm-import --max-size``."""

    max_bytes: int = MAX_BYTES  # the input file, and the model's weights at 4 bytes each
    max_config_bytes: int = 4 * MiB
    max_json_depth: int = 64
    max_ratio: int = 100


def size_text(n: int) -> str:
    for unit, size in (("TiB", GiB << 10), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} bytes"


def parse_size(text: str) -> int:
    """``2GiB``, ``512M``, ``100k``, ``1000``: bytes, for ``--max-size``."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 2GiB, 512MiB or 1000000")
    power: int = " kmgt".index(match[2] or " ")
    return int(match[1]) << (10 * power)


_KINDS = {
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def _check_regular(path: Path, st: os.stat_result, limits: Limits) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FileRefused(f"{path} is {kind}; only a regular file is read")
    if st.st_size > limits.max_bytes:
        raise FileRefused(
            f"{path} is {size_text(st.st_size)}; the limit is {size_text(limits.max_bytes)} "
            "(--max-size)"
        )


def open_regular(path: Path, limits: Limits) -> IO[bytes]:
    """The file opened for reading, refused unless it is a regular file within the limit.

    Checked on the path (after its symlinks) before opening, so that opening a
    FIFO cannot block, and again on the open descriptor, which is what is read.
    """
    try:
        _check_regular(path, os.stat(path), limits)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError as error:
        raise FileRefused(f"{path}: no such file") from error
    try:
        _check_regular(path, os.fstat(fd), limits)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_archive(
    archive: zipfile.ZipFile, path: Path, limits: Limits
) -> dict[str, zipfile.ZipInfo]:
    """The ``.keras`` members by name, each checked from its header before anything is read."""
    found: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if name not in KERAS_MEMBERS:
            raise FileRefused(
                f"{path}: unexpected member {name[:80]!r} in the .keras zip; "
                f"expected only {', '.join(KERAS_MEMBERS)}"
            )
        if name in found:
            raise FileRefused(f"{path}: member {name!r} appears twice in the .keras zip")
        if info.flag_bits & 0x1:
            raise FileRefused(f"{path}: member {name!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise FileRefused(
                f"{path}: member {name!r} uses compression method {info.compress_type}; "
                "expected stored or deflated"
            )
        if info.file_size > RATIO_FLOOR and info.file_size > limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise FileRefused(
                f"{path}: member {name!r} declares {size_text(info.file_size)} from "
                f"{size_text(info.compress_size)} compressed, a ratio over "
                f"{limits.max_ratio}x (a zip bomb?)"
            )
        total += info.file_size
        found[name] = info
    if total > limits.max_bytes:
        raise FileRefused(
            f"{path}: the .keras zip declares {size_text(total)} uncompressed; the limit is "
            f"{size_text(limits.max_bytes)} (--max-size)"
        )
    for name in ("config.json", "model.weights.h5"):
        if name not in found:
            raise FileRefused(f"{path}: the .keras zip holds no {name}")
    return found


def copy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, out: IO[bytes], limit: int, path: Path
) -> int:
    """A member written to ``out`` in chunks: refused as soon as it passes ``limit``
    or the size its header declared, whichever is smaller."""
    if info.file_size > limit:
        raise FileRefused(
            f"{path}: member {info.filename!r} declares {size_text(info.file_size)}; "
            f"at most {size_text(limit)} expected"
        )
    written = 0
    try:
        with archive.open(info) as member:
            while chunk := member.read(CHUNK):
                written += len(chunk)
                if written > info.file_size:
                    raise FileRefused(
                        f"{path}: member {info.filename!r} holds more than the "
                        f"{size_text(info.file_size)} its header declares"
                    )
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise FileRefused(f"{path}: member {info.filename!r} is corrupt ({error})") from error
    return written


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, path: Path) -> bytes:
    out = io.BytesIO()
    copy_member(archive, info, out, limit, path)
    return out.getvalue()


# A JSON escape pair (which may hide a quote), or a character that opens or
# closes a string, an array or an object.
_JSON_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)


def json_depth(data: bytes, stop_above: int) -> int:
    """How deeply ``data``'s arrays and objects nest, by a flat scan (no recursion).

    Brackets inside strings do not count; the scan stops once the depth passes
    ``stop_above``. Up to the first invalid character it reads JSON exactly as
    ``json.loads`` does, and ``json.loads`` stops there.
    """
    depth = deepest = 0
    in_string = False
    for match in _JSON_TOKENS.finditer(data):
        token = match[0]
        if token[0] == 0x5C:  # \x: an escape, inside a string (invalid outside)
            continue
        if token == b'"':
            in_string = not in_string
        elif in_string:
            continue
        elif token in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def loads(data: bytes | str, what: str, limits: Limits, limit: int | None = None) -> Any:
    """``json.loads`` once the text is within the size and nesting limits."""
    raw = data.encode() if isinstance(data, str) else data
    limit = limits.max_config_bytes if limit is None else limit
    if len(raw) > limit:
        raise FileRefused(f"{what} is {size_text(len(raw))}; at most {size_text(limit)} expected")
    depth = json_depth(raw, limits.max_json_depth)
    if depth > limits.max_json_depth:
        raise FileRefused(
            f"{what} nests deeper than {limits.max_json_depth} levels; "
            "a Keras config nests about 10"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise FileRefused(f"{what} is not valid JSON ({str(error)[:200]})") from error


@dataclass(frozen=True)
class Expected:
    """The arrays one layer must hold, in Keras's order: (shape, dtype kinds) each."""

    layer: str
    kind: str
    arrays: tuple[tuple[tuple[int, ...], str], ...]
    optional: bool = False  # may hold no arrays at all (statistics given in the config)

    @property
    def values(self) -> int:
        return sum(_size(shape) for shape, _ in self.arrays)

    def describe(self) -> str:
        return ", ".join(str(shape) for shape, _ in self.arrays) or "none"


def _size(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


FLOAT = "f"
NUMBER = "iuf"


def expected_arrays(spec: KerasModelSpec) -> dict[str, Expected]:
    """Every layer of the parsed model -> the arrays it must hold, from its config alone.

    LSTM(u) over i inputs: kernel (i, 4u), recurrent kernel (u, 4u), bias (4u,),
    per direction; GRU(u): kernel (i, 3u), recurrent kernel (u, 3u), bias (2, 3u)
    with reset_after=True (input and recurrent biases) or (3u,) without, per direction;
    Dense(k) over i inputs: kernel (i, k), bias (k,), in the stack and as
    the head; LayerNormalization/BatchNormalization over w: gamma, beta (w,) as configured,
    BatchNormalization's moving mean and variance (w,);
    Normalization over F features: mean (F,), variance (F,), count ();
    Conv1D(f, k) over i inputs: kernel (k, i, f), bias (f,); pooling layers: none;
    every other layer the spec keeps (InputLayer, Masking, Dropout, Activation):
    none. A layer kind added to the spec needs its shapes here.
    """
    out: dict[str, Expected] = {name: Expected(name, kind, ()) for name, kind in spec.layers}
    width = spec.num_features
    for conv in spec.front_end:  # Conv1D(f, k) over i inputs: kernel (k, i, f), bias (f,)
        if conv.kind == "conv1d":
            kernel: list[tuple[tuple[int, ...], str]] = [((conv.size, width, conv.filters), FLOAT)]
            if conv.use_bias:
                kernel.append(((conv.filters,), FLOAT))
            out[conv.name] = Expected(conv.name, "Conv1D", tuple(kernel))
            width = conv.filters
    for lstm in spec.lstms:
        u = lstm.units
        kind = lstm.kind
        g = 4 if lstm.cell == "lstm" else 3
        one: list[tuple[tuple[int, ...], str]] = [((width, g * u), FLOAT), ((u, g * u), FLOAT)]
        if lstm.use_bias:
            gru_two = lstm.cell == "gru" and lstm.reset_after
            one.append(((2, g * u) if gru_two else (g * u,), FLOAT))
        out[lstm.name] = Expected(lstm.name, kind, tuple(one * (2 if lstm.bidirectional else 1)))
        width = lstm.output_width
    for step in spec.hidden:  # the dense stack between the recurrent layers and the head
        if step.kind == "dense" and step.dense is not None:
            layer = step.dense
            arrays: list[tuple[tuple[int, ...], str]] = [((width, layer.units), FLOAT)]
            if layer.use_bias:
                arrays.append(((layer.units,), FLOAT))
            out[layer.name] = Expected(layer.name, layer.kind, tuple(arrays))
            width = layer.units
        elif step.kind in ("layer_norm", "batch_norm"):
            count = int(step.scale) + int(step.center) + (2 if step.kind == "batch_norm" else 0)
            kind = "LayerNormalization" if step.kind == "layer_norm" else "BatchNormalization"
            out[step.name] = Expected(step.name, kind, (((width,), FLOAT),) * count)
    head = spec.head
    dense: list[tuple[tuple[int, ...], str]] = [((width, head.units), FLOAT)]
    if head.use_bias:
        dense.append(((head.units,), FLOAT))
    out[head.name] = Expected(head.name, head.kind, tuple(dense))
    norm = spec.normalization
    if norm is not None:
        f = spec.num_features
        out[norm.name] = Expected(
            norm.name,
            "Normalization",
            (((f,), FLOAT), ((f,), FLOAT), ((), NUMBER)),
            optional=norm.mean is not None and norm.variance is not None,
        )
    for expected in out.values():
        for shape, _ in expected.arrays:
            if any(d <= 0 for d in shape):
                raise FileRefused(
                    f"layer {expected.layer!r} ({expected.kind}): the config gives it arrays of "
                    f"shape {shape}; every dimension must be positive"
                )
    return out


def check_model_size(expected: dict[str, Expected], limits: Limits) -> int:
    """The model's weights in bytes at float32, refused above ``--max-size``."""
    values = sum(e.values for e in expected.values())
    if 4 * values > limits.max_bytes:
        raise FileRefused(
            f"the config declares a model of {values:,} weights ({size_text(4 * values)} as "
            f"float32); the limit is {size_text(limits.max_bytes)} (--max-size)"
        )
    return 4 * values


def weights_file_limit(model_bytes: int) -> int:
    """The most a weights file (or all its datasets) may hold for a model of this size."""
    return OTHER_ARRAYS_FACTOR * model_bytes + WEIGHTS_FILE_SLACK
