"""Held-back data for the int8 certificate: which sequences ``lstm-quantize`` checks on.

Split out of ``models/quantize.py`` because finding the data is its own concern:
the test split ``lstm-train`` kept is not stored, so it is rebuilt from the
training file, its preset's preparation, the seed and fractions the fp32
version's metadata records; or a ``--data FILE.npz`` of held-back sequences is
read and checked against the model. ``NeedsData`` says, in one line, when
neither is possible.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data import Dataset, _dataset, _final_step, _task_of, load
from models.presets import DATA, PRESETS
from service.core.contract import ModelMetadata, file_sha256


class NeedsData(ValueError):
    """No held-back data is known for this model: the user must pass a file."""


@dataclass(frozen=True)
class HeldBack:
    data: Dataset
    source: str
    sha256: str | None = None


def _from_arrays(arrays: dict[str, np.ndarray], meta: ModelMetadata) -> Dataset:
    """A held-back file: ``X_test, y_test[, lengths_test]`` or ``X, y[, lengths]``."""
    suffix = "_test" if "X_test" in arrays else ""
    if f"X{suffix}" not in arrays or f"y{suffix}" not in arrays:
        raise ValueError("a held-back .npz needs X_test and y_test (or X and y)")
    x = arrays[f"X{suffix}"]
    task, _, y = _task_of(arrays[f"y{suffix}"], x.shape[1], meta.target)
    if task != meta.task:
        raise ValueError(f"the held-back labels are for {task}, the model does {meta.task}")
    data = _dataset(x, y, arrays.get(f"lengths{suffix}"))
    data = _final_step(data) if meta.target == "final" else data
    if x.shape[2] != meta.num_features:
        raise ValueError(f"held-back X has {x.shape[2]} features, the model {meta.num_features}")
    if task == "classification" and not 0 <= data.y.min() <= data.y.max() < meta.output_size:
        raise ValueError(f"held-back labels must lie in 0..{meta.output_size - 1}")
    return data


def _training_split(meta: ModelMetadata, path: Path) -> Dataset:
    """Rebuild the test split ``lstm-train`` kept: same file, preset, seed and fractions."""
    assert meta.training is not None
    hp = meta.training.hyperparameters
    with tempfile.TemporaryDirectory() as tmp:
        preset = next((p for p in PRESETS.values() if p.data.name == path.name), None)
        data = preset.prepare(path, Path(tmp)) if preset and preset.prepare else path
        given = False
        if data.suffix == ".npz":
            with np.load(data, allow_pickle=False) as npz:
                given = "X_test" in npz.files
        seed = hp.get("split_seed")
        if seed is None and (given or hp.get("restarts", 1) == 1):
            seed = hp.get("seed", 0)  # a given test split ignores it; one restart used it
        if not isinstance(seed, int):
            raise NeedsData(
                f"{meta.name}/{meta.version} was trained with restarts on a random split "
                "whose seed its metadata does not record: pass --data FILE.npz"
            )
        splits = load(
            data,
            float(hp.get("validation_split") or 0.0),  # type: ignore[arg-type]
            float(hp.get("test_split") or 0.0),  # type: ignore[arg-type]
            seed,
            str(hp.get("target", meta.target)),
        )
    if len(splits.test) != meta.training.data.n_test:
        raise NeedsData(
            f"rebuilding the test split of {meta.name}/{meta.version} gave {len(splits.test)} "
            f"sequences, its metadata records {meta.training.data.n_test}: pass --data FILE.npz"
        )
    return splits.test


def held_back(meta: ModelMetadata, data: Path | None = None) -> HeldBack:
    """The data the certificate is computed on.

    ``data`` is the training file itself (its sha256 matches the metadata's: its
    test split is rebuilt), or a file of held-back sequences used whole. Without
    it, the training file is looked for in ``models/data/``.
    """
    training = meta.training
    trained = training is not None and training.data.n_test > 0
    if data is not None:
        digest = file_sha256(data)
        if trained and training is not None and digest == training.data.sha256:
            return HeldBack(_training_split(meta, data), f"{data.name} (test split)", digest)
        with np.load(data, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        return HeldBack(_from_arrays(arrays, meta), data.name, digest)
    if training is None or not trained:
        imported = training is not None and "imported_from" in training.hyperparameters
        why = "was imported from a Keras file, which keeps" if imported else "records"
        raise NeedsData(
            f"{meta.name}/{meta.version} {why} no held-back data: pass --data FILE.npz "
            "(X_test, y_test[, lengths_test])"
        )
    path = DATA / training.data.source
    if not path.is_file() or file_sha256(path) != training.data.sha256:
        raise NeedsData(
            f"the training file of {meta.name}/{meta.version} ({training.data.source}, sha256 "
            f"{training.data.sha256[:12]}...) is not in {DATA}: pass it, or held-back "
            "data, with --data FILE.npz"
        )
    return HeldBack(_training_split(meta, path), f"{path.name} (test split)", training.data.sha256)
