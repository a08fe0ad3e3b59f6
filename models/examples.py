"""Example sequences shipped beside a model, for people trying it (the service's page at ``/ui/``).

A model version folder may hold an optional ``examples.json`` next to
``model.onnx`` and ``metadata.json``::

    {"examples": [{"name": "walking (test #20)", "label": "walking",
                   "timesteps": [[f1, ..., fF], ...]}, ...]}

``label`` is the true class (null for regression or when unknown); timesteps
are in the model's raw input units (the graph applies the standardisation), so
they can be sent to ``/v1`` predict as they are. The server never needs the
file to serve the model: it only offers it to the page, which is why it lives
outside the metadata contract (``service/contract.py``) and is kept small
(a handful of test sequences, values rounded).

``lstm-train`` writes it from the test split at export time; for an existing
version, ``python -m models.examples --data DATA.npz --version-dir DIR`` writes
it from the data file's test split without touching the model. Torch-free.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from models.data import Dataset, load

EXAMPLES_FILENAME = "examples.json"
DEFAULT_PER_CLASS = 1
DEFAULT_LIMIT = 6
DEFAULT_DECIMALS = 4


def select_examples(
    data: Dataset,
    classes: list[str] | None,
    per_class: int = DEFAULT_PER_CLASS,
    limit: int = DEFAULT_LIMIT,
    decimals: int = DEFAULT_DECIMALS,
) -> list[dict[str, Any]]:
    """A few sequences of ``data``: the first ``per_class`` of each class, or the first few.

    Deterministic (first occurrences, in class order) so regenerating the file
    gives the same bytes. Each sequence is trimmed to its real length.
    """
    if classes is not None and data.y.ndim == 1:
        chosen = [
            int(i) for k in range(len(classes)) for i in np.flatnonzero(data.y == k)[:per_class]
        ][:limit]
    else:
        chosen = list(range(min(limit, len(data))))
    examples = []
    for i in chosen:
        steps = np.round(data.x[i, : int(data.lengths[i])].astype(np.float64), decimals)
        label = classes[int(data.y[i])] if classes is not None and data.y.ndim == 1 else None
        examples.append(
            {
                "name": f"{label} (test #{i})" if label is not None else f"test #{i}",
                "label": label,
                "timesteps": steps.tolist(),
            }
        )
    return examples


def write_examples(
    version_dir: Path,
    data: Dataset,
    classes: list[str] | None,
    per_class: int = DEFAULT_PER_CLASS,
    limit: int = DEFAULT_LIMIT,
) -> Path | None:
    """Write ``version_dir/examples.json`` from ``data``; None (no file) when it is empty."""
    if not len(data):
        return None
    examples = select_examples(data, classes, per_class, limit)
    path = version_dir / EXAMPLES_FILENAME
    path.write_text(json.dumps({"examples": examples}, separators=(",", ":")) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """Write ``examples.json`` into an existing version folder from a data file's test split."""
    parser = argparse.ArgumentParser(prog="python -m models.examples", description=main.__doc__)
    parser.add_argument("--data", type=Path, required=True, help=".npz or .csv (models/data.py)")
    parser.add_argument("--version-dir", type=Path, required=True, help="<repository>/<name>/<v>")
    parser.add_argument("--per-class", type=int, default=DEFAULT_PER_CLASS)
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT)
    parser.add_argument("--seed", type=int, default=0, help="split seed, when the data has none")
    args = parser.parse_args(argv)
    splits = load(args.data, seed=args.seed)
    path = write_examples(args.version_dir, splits.test, splits.classes, args.per_class, args.limit)
    print(f"wrote {path}" if path else f"{args.data} has no test split: nothing written")


if __name__ == "__main__":
    main()
