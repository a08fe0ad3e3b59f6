"""examples.json: a few test sequences per exported version, for the page at /ui/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models import train
from models.data import Dataset, load
from models.examples import EXAMPLES_FILENAME, select_examples, write_examples


def test_one_example_per_class_trimmed_and_rounded() -> None:
    x = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2) / 3
    data = Dataset(x, np.array([1, 1, 0, 1]), np.array([3, 2, 1, 3]))
    examples = select_examples(data, ["a", "b"])
    assert [(e["name"], e["label"]) for e in examples] == [
        ("a (test #2)", "a"),
        ("b (test #0)", "b"),
    ]
    assert examples[0]["timesteps"] == np.round(x[2, :1].astype(np.float64), 4).tolist()
    assert len(examples[1]["timesteps"]) == 3


def test_regression_examples_have_no_label_and_an_empty_split_writes_nothing(
    tmp_path: Path,
) -> None:
    data = Dataset(np.ones((9, 4, 1), np.float32), np.ones((9, 4, 1), np.float32), np.full(9, 4))
    examples = select_examples(data, None, limit=3)
    assert [e["name"] for e in examples] == ["test #0", "test #1", "test #2"]
    assert all(e["label"] is None for e in examples)
    assert write_examples(tmp_path, data.take(np.array([], dtype=int)), None) is None
    assert not (tmp_path / EXAMPLES_FILENAME).exists()


def test_lstm_train_exports_examples_from_its_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 30)
    x = rng.normal(size=(30, 6, 2)).astype(np.float32)
    x[:, :, 0] += np.where(y == 1, 1.0, -1.0)[:, None]
    data = tmp_path / "toy.npz"
    np.savez(data, X=x, y=y, classes=np.array(["down", "up"]))
    repository = tmp_path / "repo"
    args = ["--data", str(data), "--name", "toy", "--layers", "4", "--epochs", "2"]
    path = train.run([*args, "--repository", str(repository), "--quiet"])
    examples = json.loads((path / EXAMPLES_FILENAME).read_text())["examples"]
    test = load(data).test  # the same seeded split lstm-train made
    assert [e["label"] for e in examples] == ["down", "up"]
    assert examples == select_examples(test, ["down", "up"])
