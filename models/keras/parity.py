"""The exported graph against Keras itself: the import's proof, when Keras is installed.

``export.py`` already proves onnxruntime equals the PyTorch rebuild; this proves
the rebuild equals what the user trained. The Keras model is loaded from the
very file that was imported and run with ``model.predict`` on the same inputs
as onnxruntime: several batch sizes and lengths (none of them the training
length), right-padded ragged batches through ``Masking`` when the model masks,
and, for a ``stateful=True`` model, a sequence streamed in chunks with the
states carried between calls on both sides. Above ``TOLERANCE`` nothing is
published.

Keras is optional: it is imported here only, lazily, with the PyTorch backend
unless the user chose another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.export import scaled_gap
from models.frontend import min_steps
from models.keras.convert import Converted
from models.keras.layers import KerasModelSpec
from service.core.contract import METADATA_FILENAME, MODEL_FILENAME, ModelMetadata

TOLERANCE = 1e-5
SHAPES = ((1, 1), (3, 7), (5, 16))  # (batch, time); stateful models use their own batch
CHUNKS = (3, 1, 5, 3)  # a 12-step sequence streamed in these pieces


class KerasParityError(RuntimeError):
    """The exported graph does not answer as the Keras model does."""


class KerasLoadError(RuntimeError):
    """Keras is installed but cannot load the file: nothing to compare against.

    Keras 3.15.1 cannot read back its own legacy ``.h5`` of a Functional model
    with a ``Masking`` layer (the mask's ``NotEqual`` op has no legacy loader);
    the importer reads it, so the import goes on, unchecked against Keras, and
    says so.
    """


@dataclass(frozen=True)
class KerasParity:
    """How far the served outputs were from ``model.predict``, and on what."""

    keras_version: str
    backend: str
    tolerance: float
    max_abs_diff: float
    cases: list[tuple[int, int, list[int], float]]  # batch, time, lengths, gap
    chunks: list[float]  # per streamed chunk, stateful models only


def load_keras() -> Any | None:
    """The ``keras`` module (PyTorch backend by default), or None when it is not installed."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError:
        return None
    return keras


class _Onnx:
    """The published graph as the server runs it: x, lengths and states in, outputs out."""

    def __init__(self, version_dir: Path, converted: Converted) -> None:
        self.meta = ModelMetadata.model_validate_json(
            (version_dir / METADATA_FILENAME).read_bytes()
        )
        self.session = ort.InferenceSession(
            str(version_dir / MODEL_FILENAME), providers=["CPUExecutionProvider"]
        )
        self.converted = converted

    def zero_states(self, batch: int) -> list[np.ndarray]:
        return [  # per layer h and c, or a GRU layer's h alone
            np.zeros(self.meta.state_shape(i, batch), np.float32)
            for i, names in enumerate(self.meta.tensors.initial_states)
            for _ in names.names
        ]

    def run(
        self, x: np.ndarray, lengths: np.ndarray, states: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """(what Keras's predict returns, the final states to carry on)."""
        names = self.meta.tensors
        feeds: dict[str, np.ndarray] = {names.x: x, names.lengths: lengths}
        flat = [n for s in names.initial_states for n in s.names]
        feeds.update(zip(flat, states, strict=True))
        served = (
            names.sequence_output if self.converted.target == "sequence" else names.final_output
        )
        outs = [served] + [n for s in names.final_states for n in s.names]
        result = self.session.run(outs, feeds)
        value = result[0][..., 1:2] if self.converted.binary_sigmoid else result[0]
        return value, list(result[1:])


def _gap(got: np.ndarray, want: np.ndarray, lengths: np.ndarray, per_step: bool) -> float:
    if per_step:  # padded steps are never served: compare the valid ones
        valid = np.arange(got.shape[1])[None, :] < lengths[:, None]
        return scaled_gap(got[valid], want[valid])
    return scaled_gap(got, want)


def check(
    keras: Any,
    path: Path,
    version_dir: Path,
    spec: KerasModelSpec,
    converted: Converted,
    seed: int = 0,
) -> KerasParity:
    """Compare ``model.predict`` with onnxruntime; raise ``KerasParityError`` above 1e-5."""
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # whatever Keras raises, the file is unreadable to it
        raise KerasLoadError(
            f"Keras {keras.__version__} could not load {path.name}: {str(error).splitlines()[0]}"
        ) from error
    graph = _Onnx(version_dir, converted)
    rng = np.random.default_rng(seed)
    mean = converted.model.x_mean.numpy()
    std = converted.model.x_std.numpy()
    per_step = converted.target == "sequence"
    pad = None
    if spec.mask_value is not None:
        norm = spec.normalization
        # A Masking after Normalization sees standardised values: pad so they hit mask_value.
        pad = spec.mask_value * std + mean if norm and norm.before_masking else spec.mask_value

    def reset() -> None:
        for layer in model.layers:
            if getattr(layer, "stateful", False):
                layer.reset_states()

    def inputs(batch: int, steps: int, ragged: bool) -> tuple[np.ndarray, np.ndarray]:
        x = (rng.normal(size=(batch, steps, spec.num_features)) * std + mean).astype(np.float32)
        lengths = np.full(batch, steps, np.int64)
        if ragged and pad is not None:
            lengths = rng.integers(1, steps + 1, size=batch).astype(np.int64)
            lengths[0] = steps
            for i, n in enumerate(lengths):
                x[i, n:] = pad
        return x, lengths

    cases: list[tuple[int, int, list[int], float]] = []
    shapes = [(spec.batch_size or 1, t) for _, t in SHAPES] if spec.stateful else list(SHAPES)
    if spec.front_end:  # the model's own length, or from the shortest it takes up
        least = min_steps([layer.config() for layer in spec.front_end])
        shapes = [(b, spec.timesteps or least + t - 1) for b, t in shapes]
    for batch, steps in shapes:
        x, lengths = inputs(batch, steps, ragged=not spec.stateful)
        reset()
        want = np.asarray(model.predict(x, batch_size=batch, verbose=0))
        got, _ = graph.run(x, lengths, graph.zero_states(batch))
        cases.append((batch, steps, lengths.tolist(), _gap(got, want, lengths, per_step)))
    chunks: list[float] = []
    if spec.stateful:
        batch = spec.batch_size or 1
        x, lengths = inputs(batch, sum(CHUNKS), ragged=False)
        reset()
        states = graph.zero_states(batch)
        start = 0
        for size in CHUNKS:
            piece = x[:, start : start + size]
            start += size
            want = np.asarray(model.predict(piece, batch_size=batch, verbose=0))
            got, states = graph.run(piece, np.full(batch, size, np.int64), states)
            chunks.append(_gap(got, want, np.full(batch, size), per_step))
        reset()
    worst = max([c[3] for c in cases] + chunks)
    if not worst <= TOLERANCE:
        raise KerasParityError(
            f"the exported model differs from Keras by {worst:.3g} (tolerance {TOLERANCE:g}): "
            f"{[(b, t, g) for b, t, _, g in cases]}, streamed chunks {chunks}; "
            "nothing was published"
        )
    return KerasParity(
        keras_version=str(keras.__version__),
        backend=str(keras.backend.backend()),
        tolerance=TOLERANCE,
        max_abs_diff=worst,
        cases=cases,
        chunks=chunks,
    )
