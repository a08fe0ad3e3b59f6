"""Model outputs to TF-Serving-style predictions, trimmed to each sequence's length.

Classification: ``{"label": ..., "probabilities": [...]}`` (probabilities in the
order of the model's ``classes``). Regression: the output values. With
``return_sequences`` each instance gets a list of those, one per real timestep.
A forecaster's instance gets a list of its ``horizon`` future steps, each one of
those (``final_output`` is [B, horizon, K] there).
Arrays stay numpy: orjson writes them without building Python floats.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.contract import ModelMetadata
from service.core.types import RunResult


def _classify(classes: list[str], probabilities: np.ndarray) -> list[dict[str, Any]]:
    """Rows of class probabilities [N, K] to labelled predictions."""
    labels = probabilities.argmax(axis=-1)
    return [
        {"label": classes[k], "probabilities": row}
        for k, row in zip(labels.tolist(), probabilities, strict=True)
    ]


def format_predictions(
    meta: ModelMetadata, result: RunResult, lengths: np.ndarray, return_sequences: bool
) -> list[Any]:
    classes = meta.classes
    if return_sequences:
        assert result.sequence_output is not None
        per_sequence = [
            np.ascontiguousarray(result.sequence_output[i, :n])
            for i, n in enumerate(lengths.tolist())
        ]
        if classes is None:
            return per_sequence
        return [_classify(classes, steps) for steps in per_sequence]
    assert result.final_output is not None
    final = np.ascontiguousarray(result.final_output)
    if classes is None:
        return list(final)
    if meta.forecast is not None:  # [B, horizon, K]: a labelled prediction per future step
        return [_classify(classes, steps) for steps in final]
    return _classify(classes, final)
