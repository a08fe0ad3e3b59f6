"""A series to forecasting windows: ``lstm-train --horizon n`` on a plain series.

A series file is an ``.npz`` holding ``value`` — (N,) or (N, F), in time order —
and nothing shaped like sequences (no ``X``, no ``X_train``); the shipped
``models/data/sunspots.npz`` is one (``year``, ``value``). Each window is
``lookback`` consecutive values (the input) and the ``horizon`` values right
after it (the targets, every feature): what an encoder-decoder forecaster
(``models/forecaster.py``) learns to answer.

The split is chronological, never random: the last ``test_split`` of the
series is the test period, a test window's targets all lie in it (its input
may reach back before it, as history), and no training window's targets
reach into it. Random splits of overlapping windows would leak the test
targets into training. The validation split is then drawn from the training
windows as for any data (``data.py``).
"""

from __future__ import annotations

import numpy as np


def is_series(arrays: dict[str, np.ndarray]) -> bool:
    """Whether the file is a plain series (``value``) rather than sequences (``X``...)."""
    return "value" in arrays and "X" not in arrays and "X_train" not in arrays


def forecast_windows(
    arrays: dict[str, np.ndarray], lookback: int, horizon: int, test_split: float
) -> dict[str, np.ndarray]:
    """``X_train, y_train, X_test, y_test`` (+ ``feature_names``) windows of the series.

    X (n, lookback, F) and y (n, horizon, F), float32; ValueError when the series
    is too short for one training and one test window.
    """
    values = np.asarray(arrays["value"], np.float32)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"a series' value must be (N,) or (N, F); got {values.shape}")
    if lookback < 1 or horizon < 1:
        raise ValueError(f"--lookback ({lookback}) and --horizon ({horizon}) must be positive")
    n = len(values)
    cut = n - max(1, round(n * test_split)) if test_split > 0 else n
    span = lookback + horizon

    def windows(starts: range) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([values[s : s + lookback] for s in starts]) if starts else None
        y = np.stack([values[s + lookback : s + span] for s in starts]) if starts else None
        empty = np.zeros((0, lookback, values.shape[1]), np.float32)
        return (empty, empty[:, :horizon]) if x is None or y is None else (x, y)

    train = range(0, cut - span + 1)  # targets end before the test period
    test = range(max(0, cut - lookback), n - span + 1)  # targets start in it
    if not train:
        raise ValueError(
            f"the series has {n} values: too short for a training window of {lookback} + "
            f"{horizon} values before its test period ({n - cut} values)"
        )
    x_train, y_train = windows(train)
    x_test, y_test = windows(test)
    names = arrays.get("feature_names")
    if names is None:
        names = np.array(
            ["value"] if values.shape[1] == 1 else [f"value_{i}" for i in range(values.shape[1])]
        )
    return {
        "X_train": x_train,
        "y_train": y_train,
        "X_test": x_test,
        "y_test": y_test,
        "feature_names": names,
    }
