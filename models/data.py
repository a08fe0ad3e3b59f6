"""Sequence datasets: .npz and CSV in, padded arrays with lengths out, split and scaled.

Accepted ``.npz`` layouts:
- ``X`` (n, T, F) float, ``y``, optional ``lengths`` (n,) for right-padded
  variable-length sequences, optional ``classes`` and ``feature_names``. Split
  here into train / validation / test.
- ``X_train, y_train, X_test, y_test`` (optionally ``lengths_train``,
  ``lengths_test``, ``classes``): the test split is kept as given (BasicMotions).

``y`` decides the task: integers (n,) -> classification of whole sequences;
floats (n,) or (n, k) -> regression of the final output; floats (n, T) or
(n, T, k) -> per-timestep regression (Keras ``return_sequences=True``).
``lstm-train --target final`` trains per-step targets on each sequence's last
real step instead (and reads a float (n, T) as T final outputs).
``lstm-train --horizon n`` trains a forecaster (target ``forecast``): floats
(n, n) or (n, n, k), the next ``n`` steps after each sequence; or a plain
series (``value`` (N,) or (N, F), like ``data/sunspots.npz``), cut into
windows by ``series.py``.

CSV (long format, one row per timestep, rows of a sequence in time order)::

    sequence_id,timestep,<feature columns...>,label        # classification
    sequence_id,timestep,<feature columns...>,target[,...]  # per-timestep regression

``label`` (text or integer) must be the same on every row of a sequence; columns
whose names start with ``target`` are per-timestep regression targets. Every
other column after ``timestep`` is a feature. Sequences may differ in length.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.series import forecast_windows, is_series
from service.core.contract import file_sha256


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 (n, T, F), right-padded
    y: np.ndarray  # int64 (n,) | float32 (n, k) | float32 (n, T, k)
    lengths: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, index: np.ndarray) -> Dataset:
        return Dataset(self.x[index], self.y[index], self.lengths[index])


@dataclass(frozen=True)
class Splits:
    train: Dataset
    validation: Dataset
    test: Dataset
    task: str  # "classification" | "regression"
    target: str  # "final" | "sequence" | "forecast"
    classes: list[str] | None
    feature_names: list[str] | None
    source: Path
    sha256: str

    @property
    def num_features(self) -> int:
        return int(self.train.x.shape[2])

    @property
    def output_size(self) -> int:
        if self.task == "classification":
            return len(self.classes or [])
        return int(self.train.y.shape[-1])


def _task_of(y: np.ndarray, steps: int, wanted: str | None) -> tuple[str, str, np.ndarray]:
    """Infer (task, target) from the labels' dtype and shape; normalise y's shape.

    ``wanted`` ("final", "sequence" or None for automatic) settles the two cases
    the shape cannot: a float (n, T) array is T per-step values unless "final"
    asks for T outputs, and per-step targets (n, T, k) train on the last real
    step only under "final" (``_dataset`` picks that step). "forecast" reads
    floats (n, H[, k]) as the H future steps of each sequence.
    """
    if wanted == "forecast":
        if np.issubdtype(y.dtype, np.integer) or y.ndim not in (2, 3):
            raise ValueError(
                f"a forecaster's targets are floats (n, horizon) or (n, horizon, k): the steps "
                f"after each sequence; y has shape {y.shape} ({y.dtype})"
            )
        y = y.astype(np.float32)
        return "regression", "forecast", y[:, :, None] if y.ndim == 2 else y
    if np.issubdtype(y.dtype, np.integer):
        if y.ndim != 1:
            raise ValueError(f"integer labels must have shape (n,), got {y.shape}")
        task, target, y = "classification", "final", y.astype(np.int64)
    else:
        y = y.astype(np.float32)
        if y.ndim == 1:
            y = y[:, None]
        elif y.ndim == 2 and y.shape[1] == steps and wanted != "final":
            y = y[:, :, None]
        elif y.ndim > 3:
            raise ValueError(f"targets of shape {y.shape} are not understood")
        task, target = "regression", "sequence" if y.ndim == 3 and wanted != "final" else "final"
    if wanted == "sequence" and target == "final":
        raise ValueError(
            f"target 'sequence' needs per-timestep targets of shape (n, T) or (n, T, k); "
            f"y has shape {y.shape}"
        )
    return task, target, y


def _dataset(x: np.ndarray, y: np.ndarray, lengths: np.ndarray | None) -> Dataset:
    if x.ndim != 3:
        raise ValueError(f"X must have shape (n, T, F), got {x.shape}")
    if len(y) != len(x):
        raise ValueError(f"X holds {len(x)} sequences but y {len(y)}")
    if lengths is None:
        lengths = np.full(len(x), x.shape[1], dtype=np.int64)
    lengths = lengths.astype(np.int64)
    if lengths.min() < 1 or lengths.max() > x.shape[1]:
        raise ValueError(f"lengths must lie in 1..{x.shape[1]}")
    return Dataset(x.astype(np.float32), y, lengths)


def _final_step(data: Dataset) -> Dataset:
    """Per-step targets (n, T, k) -> the target at each sequence's last real step."""
    if data.y.ndim != 3:
        return data
    return Dataset(data.x, data.y[np.arange(len(data)), data.lengths - 1], data.lengths)


def _split(data: Dataset, fraction: float, rng: np.random.Generator) -> tuple[Dataset, Dataset]:
    """(rest, held out); a positive fraction holds out at least one sequence, 0 none."""
    order = rng.permutation(len(data))
    cut = max(1, round(len(data) * fraction)) if fraction > 0 else 0
    if cut >= len(data):
        raise ValueError(f"a split of {fraction} leaves nothing of {len(data)} sequences")
    return data.take(order[cut:]), data.take(order[:cut])


def _splits(
    arrays: dict[str, np.ndarray],
    path: Path,
    validation_split: float,
    test_split: float,
    seed: int,
    wanted: str | None,
) -> Splits:
    rng = np.random.default_rng(seed)
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
    features = [str(f) for f in arrays["feature_names"]] if "feature_names" in arrays else None
    if "X_train" in arrays:
        steps = arrays["X_train"].shape[1]
        task, target, y_train = _task_of(arrays["y_train"], steps, wanted)
        _, _, y_test = _task_of(arrays["y_test"], steps, target)
        pool = _dataset(arrays["X_train"], y_train, arrays.get("lengths_train"))
        test = _dataset(arrays["X_test"], y_test, arrays.get("lengths_test"))
    else:
        task, target, y = _task_of(arrays["y"], arrays["X"].shape[1], wanted)
        pool, test = _split(_dataset(arrays["X"], y, arrays.get("lengths")), test_split, rng)
    if target == "final":
        pool, test = _final_step(pool), _final_step(test)
    train, validation = _split(pool, validation_split, rng)
    if task == "classification":
        top = int(max(pool.y.max(), test.y.max(initial=0)))
        classes = classes or [str(i) for i in range(top + 1)]
        if pool.y.min() < 0 or top >= len(classes):
            raise ValueError(f"labels must lie in 0..{len(classes) - 1} (one per class name)")
    return Splits(train, validation, test, task, target, classes, features, path, file_sha256(path))


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """Long-format CSV to the arrays an .npz would hold (see the module docstring)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if columns[:2] != ["sequence_id", "timestep"]:
        raise ValueError("a CSV must start with the columns sequence_id,timestep")
    targets = [c for c in columns[2:] if c.startswith("target")]
    label = "label" in columns
    features = [c for c in columns[2:] if c != "label" and c not in targets]
    if label == bool(targets):
        raise ValueError("a CSV needs either a label column or target columns, not both")
    sequences: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        sequences.setdefault(row["sequence_id"], []).append(row)
    ids = list(sequences)
    lengths = np.array([len(sequences[i]) for i in ids], dtype=np.int64)
    x = np.zeros((len(ids), int(lengths.max()), len(features)), dtype=np.float32)
    for n, seq_id in enumerate(ids):
        steps = sorted(sequences[seq_id], key=lambda r: float(r["timestep"]))
        x[n, : len(steps)] = [[float(r[c]) for c in features] for r in steps]
    out: dict[str, np.ndarray] = {"X": x, "lengths": lengths, "feature_names": np.array(features)}
    if label:
        names = [sequences[i][0]["label"] for i in ids]
        classes = sorted(set(names))
        out["y"] = np.array([classes.index(n) for n in names], dtype=np.int64)
        out["classes"] = np.array(classes)
    else:
        y = np.zeros((len(ids), int(lengths.max()), len(targets)), dtype=np.float32)
        for n, seq_id in enumerate(ids):
            steps = sorted(sequences[seq_id], key=lambda r: float(r["timestep"]))
            y[n, : len(steps)] = [[float(r[c]) for c in targets] for r in steps]
        out["y"] = y
    return out


def load(
    path: Path,
    validation_split: float = 0.2,
    test_split: float = 0.2,
    seed: int = 0,
    target: str | None = None,
    horizon: int | None = None,
    lookback: int | None = None,
) -> Splits:
    """Read an .npz or a long-format .csv and split it (seeded).

    ``target`` overrides what the targets' shape implies (see ``_task_of``).
    ``horizon`` makes it a forecaster's data (target ``forecast``): a series is cut
    into windows of ``lookback`` (default 4 x horizon) inputs and ``horizon``
    targets (``series.py``); sequences must come with ``horizon`` target steps.
    """
    if path.suffix == ".csv":
        arrays = read_csv(path)
    else:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    if horizon is None:
        return _splits(arrays, path, validation_split, test_split, seed, target)
    if is_series(arrays):
        arrays = forecast_windows(arrays, lookback or 4 * horizon, horizon, test_split)
    elif lookback is not None:
        raise ValueError(f"{path.name} holds sequences (X): --lookback is for a plain series")
    splits = _splits(arrays, path, validation_split, test_split, seed, "forecast")
    if splits.train.y.shape[1] != horizon:
        raise ValueError(
            f"--horizon {horizon}, but the targets hold {splits.train.y.shape[1]} steps per "
            f"sequence (y {splits.train.y.shape})"
        )
    return splits


def valid_mask(data: Dataset) -> np.ndarray:
    """(n, T) True at real timesteps, False in the padding."""
    return np.arange(data.x.shape[1])[None, :] < data.lengths[:, None]


def standardization(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over real timesteps only; padding must not shift them."""
    real = values[mask]
    mean = real.mean(axis=0)
    std = real.std(axis=0)
    return mean.astype(np.float32), np.where(std < 1e-6, 1.0, std).astype(np.float32)
