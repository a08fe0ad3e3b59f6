"""lstm-import on hostile files: each refused on one line, exit 2, in bounded memory.

Issue 26, item 5. Every file here is a few KB, crafted with h5py and zipfile
(no Keras needed), and run through the real command in a fresh process whose
own peak RSS (``os.wait4``) is checked against ``PEAK_RSS_MIB``. Before the
bounds, the zip bomb reached 4.5 GB, the 4 KB ``.keras`` declaring a 2 GiB
weight 6.6 GB, the ``.h5`` with a wrong bias was published, the 1 TiB tensor
and the nested config ended in tracebacks, and ``/dev/zero`` grew for ever.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from models.keras.bounds import json_depth, parse_size, size_text

ROOT = Path(__file__).resolve().parents[2]
# What a refused import may peak at: the interpreter with torch, onnx and h5py
# loaded is about 270 MiB, a whole import of the tutorial model about 330 MiB
# (measured on CPython 3.12, torch 2.x, Linux x86-64).
PEAK_RSS_MIB = 512
TIMEOUT_S = 60
FEATURES, CLASSES = 2, 4
TUTORIAL = (64, 32)  # the tutorial's model, 29,700 weights (116 KiB)
UNITS = (16, 8)  # the hostile files' model, 2,052 weights: files of a few KB


def _config(units: tuple[int, ...] = UNITS, features: int = FEATURES) -> dict[str, Any]:
    """The tutorial's Sequential config as Keras 3 writes it, the settings that matter."""
    layers: list[dict[str, Any]] = [
        {
            "class_name": "InputLayer",
            "config": {"batch_shape": [None, 10, features], "name": "input_layer"},
        }
    ]
    for i, u in enumerate(units):
        layers.append(
            {
                "class_name": "LSTM",
                "config": {
                    "name": "lstm" if i == 0 else f"lstm_{i}",
                    "units": u,
                    "return_sequences": i < len(units) - 1,
                    "activation": "tanh",
                    "recurrent_activation": "sigmoid",
                    "use_bias": True,
                },
            }
        )
    layers.append(
        {
            "class_name": "Dense",
            "config": {"name": "dense", "units": CLASSES, "activation": "softmax"},
        }
    )
    return {"class_name": "Sequential", "config": {"name": "sequential", "layers": layers}}


Declared = np.ndarray | tuple[tuple[int, ...], str]  # an array, or a shape declared with no data


def _arrays(units: tuple[int, ...] = UNITS) -> dict[str, list[Declared]]:
    """Layer name -> its arrays in Keras's order, seeded random values scaled by their
    fan-in as trained ones are (``keras_models.randomize``)."""
    rng = np.random.default_rng(0)

    def random(s: tuple[int, ...]) -> np.ndarray:
        scale = 0.5 if len(s) == 1 else s[0] ** -0.5
        return rng.normal(scale=scale, size=s).astype(np.float32)

    out: dict[str, list[Declared]] = {}
    width = FEATURES
    for i, u in enumerate(units):
        shapes = [(width, 4 * u), (u, 4 * u), (4 * u,)]
        out["lstm" if i == 0 else f"lstm_{i}"] = [random(s) for s in shapes]
        width = u
    out["dense"] = [random(s) for s in [(width, CLASSES), (CLASSES,)]]
    return out


def _dataset(group: h5py.Group, name: str, value: Declared) -> None:
    if isinstance(value, np.ndarray):
        group.create_dataset(name, data=value)
    else:  # declared, never written: chunked storage is allocated only when written
        shape, dtype = value
        group.create_dataset(
            name, shape=shape, dtype=dtype, chunks=(*(1 for _ in shape[:-1]), 1024)
        )


def _keras3_h5(path: Path, arrays: dict[str, list[Declared]]) -> None:
    """``model.weights.h5`` as Keras 3 lays it out (``layers/<group>/cell/vars/<i>``)."""
    with h5py.File(path, "w") as f:
        for name, values in arrays.items():
            vars_ = f.create_group(
                f"layers/{name}/cell/vars" if "lstm" in name else f"layers/{name}/vars"
            )
            for i, value in enumerate(values):
                _dataset(vars_, str(i), value)


def write_keras(
    path: Path,
    config: Any = None,
    arrays: dict[str, list[Declared]] | None = None,
    *,
    extra: dict[str, bytes] | None = None,
) -> Path:
    weights = path.with_suffix(".weights.h5")
    _keras3_h5(weights, _arrays() if arrays is None else arrays)
    config_text = config if isinstance(config, str) else json.dumps(config or _config())
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", config_text)
        archive.write(weights, "model.weights.h5")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    weights.unlink()
    return path


def write_h5(
    path: Path, config: Any = None, arrays: dict[str, list[Declared]] | None = None
) -> Path:
    """A legacy ``.h5`` as Keras 2 writes it: ``model_config``, ``model_weights/<layer>``."""
    with h5py.File(path, "w") as f:
        config_text = config if isinstance(config, str) else json.dumps(config or _config())
        f.attrs["model_config"] = config_text
        f.attrs["keras_version"] = "2.15.0"
        root = f.create_group("model_weights")
        for name, values in (_arrays() if arrays is None else arrays).items():
            group = root.create_group(name)
            names = [f"{name}/w{i}" for i in range(len(values))]
            group.attrs["weight_names"] = names
            for weight_name, value in zip(names, values, strict=True):
                _dataset(group, weight_name, value)
    return path


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    peak_rss_mib: float


# The command is forked from this small launcher, not from pytest: Linux keeps a
# process's peak RSS across exec, so a child forked straight from a large pytest
# would report pytest's size as its own peak.
LAUNCHER = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.executable, [sys.executable, '-m', 'models.keras_import', *sys.argv[1:]])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "sys.stderr.write(f'\\n@@maxrss {usage.ru_maxrss}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_cli(*args: str) -> Run:
    """The real command in a fresh process; its own peak RSS from ``os.wait4``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    chunks: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda k=k, s=s: chunks.__setitem__(k, s.read()))
        for k, s in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    timer = threading.Timer(TIMEOUT_S, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    del usage  # the launcher's own; the command's is the line it wrote last
    err, _, peak = chunks["err"].decode().rpartition("\n@@maxrss ")
    return Run(proc.returncode, chunks["out"].decode(), err, int(peak) / 1024)  # KiB


def zip_bomb(tmp: Path) -> Path:
    """32 MiB of zeros as ``model.weights.h5``, deflated to 32 KB."""
    path = tmp / "bomb.keras"
    zeros = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", json.dumps(_config()))
        with archive.open("model.weights.h5", "w") as member:
            for _ in range(32):
                member.write(zeros)
    return path


def lying_header(tmp: Path) -> Path:
    """The same 32 MiB of zeros, its headers saying 1 MiB (under the ratio check's floor)."""
    path = zip_bomb(tmp)
    data = bytearray(path.read_bytes())
    declared = 1 << 20
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (at := data.find(signature, start)) >= 0:
            name_at = at + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + 16] == b"model.weights.h5":
                struct.pack_into("<I", data, at + offset, declared)
            start = at + 4
    path.write_bytes(bytes(data))
    return path


def huge_weight_keras(tmp: Path) -> Path:
    """4 KB declaring a 2 GiB recurrent kernel, never written."""
    arrays = _arrays()
    arrays["lstm"][1] = ((16, 1 << 25), "f4")
    return write_keras(tmp / "huge.keras", arrays=arrays)


def wrong_bias_h5(tmp: Path) -> Path:
    """A bias of one value where 64 belong: torch would broadcast it, and publish."""
    arrays = _arrays()
    arrays["lstm"][2] = np.ones(1, np.float32)
    return write_h5(tmp / "bias.h5", arrays=arrays)


def tebibyte_h5(tmp: Path) -> Path:
    """The dense kernel declared as 1 TiB."""
    arrays = _arrays()
    arrays["dense"][0] = ((1 << 18, 1 << 20), "f4")
    return write_h5(tmp / "tib.h5", arrays=arrays)


def dev_zero(tmp: Path) -> Path:
    path = tmp / "zero.keras"
    path.symlink_to("/dev/zero")
    return path


def fifo(tmp: Path) -> Path:
    path = tmp / "fifo.h5"
    os.mkfifo(path)
    return path


NESTED = "[" * 10_000 + "]" * 10_000


def nested_keras(tmp: Path) -> Path:
    return write_keras(tmp / "nested.keras", config=NESTED)


def nested_h5(tmp: Path) -> Path:
    return write_h5(tmp / "nested.h5", config=NESTED)


HUGE = 1 << 20
HUGE_WEIGHTS = 4 * HUGE * (FEATURES + HUGE + 1) + 4 * 8 * (HUGE + 8 + 1) + 8 * CLASSES + CLASSES


def huge_units(tmp: Path) -> Path:
    """A config declaring LSTM(1,048,576): 16 TiB of weights, in a 2 KB file."""
    return write_keras(tmp / "units.keras", config=_config(units=(HUGE, 8)))


def external_data(tmp: Path) -> Path:
    """A kernel whose bytes are another file's (HDF5 external storage)."""
    outside = tmp / "outside.bin"
    outside.write_bytes(bytes(2 * 64 * 4))
    path = write_h5(tmp / "external.h5")
    with h5py.File(path, "a") as f:
        group = f["model_weights/lstm"]
        del group["lstm/w0"]
        group.create_dataset(
            "lstm/w0", shape=(2, 64), dtype="f4", external=[(str(outside), 0, 512)]
        )
    return path


def external_link(tmp: Path) -> Path:
    """A layer's group linking into another file."""
    other = write_h5(tmp / "other.h5")
    path = write_h5(tmp / "link.h5")
    with h5py.File(path, "a") as f:
        del f["model_weights/dense"]
        f["model_weights/dense"] = h5py.ExternalLink(str(other), "/model_weights/dense")
    return path


def extra_member(tmp: Path) -> Path:
    return write_keras(tmp / "extra.keras", extra={"assets/evil.py": b"print('hi')"})


def over_max_size(tmp: Path) -> Path:
    return write_keras(tmp / "big.keras")


HOSTILE: dict[str, tuple[Callable[[Path], Path], str, tuple[str, ...]]] = {
    "zip_bomb": (
        zip_bomb,
        "{path}: member 'model.weights.h5' declares 32 MiB from 3",
        (),
    ),
    "lying_header": (lying_header, "{path}: member 'model.weights.h5' is corrupt", ()),
    "huge_weight_keras": (
        huge_weight_keras,
        "layer 'lstm' (LSTM): array 1 (/layers/lstm/cell/vars/1) is declared (16, 33554432) "
        "float32; the architecture expects (16, 64) float",
        (),
    ),
    "wrong_bias_h5": (
        wrong_bias_h5,
        "layer 'lstm' (LSTM): array 2 (/model_weights/lstm/lstm/w2) is declared (1,) float32; "
        "the architecture expects (64,) float",
        (),
    ),
    "tebibyte_h5": (
        tebibyte_h5,
        "layer 'dense' (Dense): array 0 (/model_weights/dense/dense/w0) is declared "
        "(262144, 1048576) float32; the architecture expects (8, 4) float",
        (),
    ),
    "dev_zero": (dev_zero, "{path} is a character device; only a regular file is read", ()),
    "fifo": (fifo, "{path} is a FIFO; only a regular file is read", ()),
    "nested_keras": (nested_keras, "{path}: config.json nests deeper than 64 levels", ()),
    "nested_h5": (nested_h5, "{path}: model_config nests deeper than 64 levels", ()),
    "huge_units": (
        huge_units,
        f"the config declares a model of {HUGE_WEIGHTS:,} weights "
        f"({4 * HUGE_WEIGHTS / 2**40:.3g} TiB as float32); the limit is 2 GiB (--max-size)",
        (),
    ),
    "external_data": (
        external_data,
        "layer 'lstm' (LSTM): array 0 (/model_weights/lstm/lstm/w0) is stored outside the file",
        (),
    ),
    "external_link": (
        external_link,
        "/model_weights/dense is an external link; only the file's own arrays are read",
        (),
    ),
    "extra_member": (
        extra_member,
        "{path}: unexpected member 'assets/evil.py' in the .keras zip",
        (),
    ),
    "over_max_size": (
        over_max_size,
        "{path} is {size}; the limit is 4 KiB (--max-size)",
        ("--max-size", "4k"),
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_file_is_refused_on_one_line_in_bounded_memory(tmp_path: Path, case: str) -> None:
    build, message, options = HOSTILE[case]
    path = build(tmp_path)
    assert case in ("dev_zero", "fifo") or path.stat().st_size < 64_000, "a few KB, not more"
    repository = tmp_path / "repository"
    run = run_cli(
        str(path), "--name", "m", "--repository", str(repository), "--no-keras-check", *options
    )
    assert run.code == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(
        "lstm-import: " + message.format(path=path, size=size_text(path.stat().st_size))
    ), run.stderr
    assert run.peak_rss_mib < PEAK_RSS_MIB, f"{case}: peak RSS {run.peak_rss_mib:.0f} MiB"
    assert not repository.exists() or not any(repository.iterdir())


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_well_formed_file_still_imports_within_the_same_bound(tmp_path: Path, fmt: str) -> None:
    write = write_keras if fmt == "keras" else write_h5
    path = write(tmp_path / f"tutorial.{fmt}", _config(TUTORIAL), _arrays(TUTORIAL))
    repository = tmp_path / "repository"
    run = run_cli(
        str(path),
        "--name",
        "t",
        "--classes",
        "a,b,c,d",
        "--repository",
        str(repository),
        "--no-keras-check",
    )
    assert run.code == 0, run.stderr
    assert "Total params: 29,700" in run.stdout
    assert (repository / "t" / "1" / "model.onnx").is_file()
    assert run.peak_rss_mib < PEAK_RSS_MIB, f"peak RSS {run.peak_rss_mib:.0f} MiB"


def test_the_depth_scan_counts_brackets_outside_strings_only() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}], "c": "\\"[["}', 99) == 3
    assert json_depth(b"[" * 10 + b"]" * 10, 99) == 10
    assert json_depth(b"[" * 1_000_000, 5) == 6  # stops as soon as it passes the limit
    assert parse_size("2GiB") == 2 << 30 and parse_size("64k") == 65536
    assert parse_size("1000") == 1000
