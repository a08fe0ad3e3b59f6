"""The Keras tutorials' stacked LSTMs, built in real Keras 3 (PyTorch backend) for tests.

Tiny except the tutorial's own 64 -> 32 classifier (its parameter counts are the
point). No training: every LSTM and Dense array is set to seeded random values,
biases included (Keras initialises them to zeros and ones, which would hide a
wrong bias conversion).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

from collections.abc import Callable

import keras
import numpy as np
from keras import layers as L


def randomize(model: keras.Model, seed: int) -> keras.Model:
    """Random weights in every recurrent, dense and Conv1D layer; Normalization keeps its
    statistics."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.LayerNormalization | L.BatchNormalization):
            # gamma, beta (and BatchNormalization's moving mean, and a positive variance)
            weights = [
                rng.normal(scale=0.5, size=w.shape).astype("float32") for w in layer.get_weights()
            ]
            if isinstance(layer, L.BatchNormalization):
                weights[-1] = rng.uniform(0.5, 2.0, size=weights[-1].shape).astype("float32")
            layer.set_weights(weights)
        if isinstance(
            layer, L.LSTM | L.GRU | L.Bidirectional | L.Dense | L.TimeDistributed | L.Conv1D
        ):
            # Kernels scaled by their fan-in, as trained ones are: larger random
            # recurrent weights make the dynamics chaotic, and then float32
            # rounding alone grows past any tolerance over a hundred steps.
            layer.set_weights(
                [
                    rng.normal(
                        scale=0.5 if w.ndim == 1 else w.shape[0] ** -0.5, size=w.shape
                    ).astype("float32")
                    for w in layer.get_weights()
                ]
            )
    return model


def tutorial() -> keras.Model:
    """The tutorial's own code, ``input_shape`` and all."""
    return keras.Sequential(
        [
            L.LSTM(64, return_sequences=True, input_shape=(10, 2)),
            L.LSTM(32),
            L.Dense(4, activation="softmax"),
        ]
    )


def bidirectional() -> keras.Model:
    """Bidirectional stack: concat into the second layer, sum into the head."""
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Bidirectional(L.LSTM(8, return_sequences=True)),
            L.Dropout(0.2),
            L.Bidirectional(L.LSTM(4), merge_mode="sum"),
            L.Dense(3, activation="softmax"),
        ]
    )


def per_timestep() -> keras.Model:
    """A per-timestep regressor with a TimeDistributed head."""
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            L.LSTM(8, return_sequences=True),
            L.LSTM(4, return_sequences=True),
            L.TimeDistributed(L.Dense(2)),
        ]
    )


def masked() -> keras.Model:
    """Functional, Masking for padded sequences, a bidirectional top, a binary sigmoid."""
    inputs = keras.Input((None, 3))
    h = L.Masking(mask_value=0.0)(inputs)
    h = L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="ave")(h)
    h = L.Bidirectional(L.LSTM(4))(h)
    return keras.Model(inputs, L.Dense(1, activation="sigmoid")(h))


def masked_unidirectional() -> keras.Model:
    """Sequential, Masking: the final output is the state at each sequence's last real step."""
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Masking(),
            L.LSTM(6, return_sequences=True),
            L.LSTM(4),
            L.Dense(3, activation="softmax"),
        ]
    )


STATEFUL_BATCH = 2


def stateful() -> keras.Model:
    """``stateful=True`` with a fixed batch size, per-timestep outputs (Dense on a sequence)."""
    return keras.Sequential(
        [
            keras.Input(batch_shape=(STATEFUL_BATCH, None, 3)),
            L.LSTM(8, return_sequences=True, stateful=True),
            L.LSTM(4, return_sequences=True, stateful=True),
            L.Dense(2),
        ]
    )


NORMALIZATION_MEAN = np.array([5.0, -2.0], np.float32)
NORMALIZATION_STD = np.array([3.0, 0.5], np.float32)


def normalized() -> keras.Model:
    """A Normalization layer adapted on data far from zero mean, a softmax Activation."""
    norm = L.Normalization()
    rng = np.random.default_rng(7)
    norm.adapt(rng.normal(size=(64, 5, 2)) * NORMALIZATION_STD + NORMALIZATION_MEAN)
    return keras.Sequential(
        [keras.Input((None, 2)), norm, L.LSTM(8), L.Dense(3), L.Activation("softmax")]
    )


def mixed_directions() -> keras.Model:
    """Issue 25's first row: a bidirectional layer, then a forward one, wrapper names default."""
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Bidirectional(L.LSTM(16, return_sequences=True)),
            L.LSTM(8),
            L.Dense(3, activation="softmax"),
        ]
    )


def go_backwards() -> keras.Model:
    """``go_backwards=True`` returning its (reversed) sequence into a forward layer, then one
    more backward layer whose per-timestep outputs are the model's (Dense on a sequence)."""
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            L.LSTM(6, return_sequences=True, go_backwards=True),
            L.LSTM(5, return_sequences=True),
            L.LSTM(4, return_sequences=True, go_backwards=True),
            L.Dense(2),
        ]
    )


def merge_modes() -> keras.Model:
    """Bidirectional ``mul`` into a forward layer, ``ave`` into the head."""
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Bidirectional(L.LSTM(6, return_sequences=True), merge_mode="mul"),
            L.LSTM(5, return_sequences=True),
            L.Bidirectional(L.LSTM(4), merge_mode="ave"),
            L.Dense(2),
        ]
    )


def dense_stack() -> keras.Model:
    """Issue 25's fifth row and more: a chain of Dense layers with the usual activations,
    Dropout, Activation and both normalisations, ending in softmax."""
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.LSTM(8),
            L.Dense(16, activation="relu"),
            L.Dropout(0.2),
            L.Dense(12, activation="gelu"),
            L.LayerNormalization(),
            L.Dense(10, activation="elu"),
            L.Dense(10, activation="selu"),
            L.BatchNormalization(),
            L.Dense(8, activation="swish"),
            L.Dense(8, activation="softplus"),
            L.Dense(8, activation="tanh"),
            L.Dense(8),
            L.Activation("sigmoid"),
            L.Dense(4, activation="softmax"),
        ]
    )


def per_step_dense_stack() -> keras.Model:
    """Issue 25's last row: a sequence into TimeDistributed(Dense) layers, per timestep by
    default, with a relu regression output."""
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            L.LSTM(8, return_sequences=True),
            L.TimeDistributed(L.Dense(6, activation="relu")),
            L.TimeDistributed(L.Dense(2, activation="relu")),
        ]
    )


def gru() -> keras.Model:
    """Issue 25's GRU row: a stacked GRU classifier (reset_after=True, Keras 3's default)."""
    return keras.Sequential(
        [
            keras.Input((10, 3)),
            L.GRU(16, return_sequences=True),
            L.GRU(8),
            L.Dense(4, activation="softmax"),
        ]
    )


def masked_gru() -> keras.Model:
    """An LSTM into a GRU behind Masking: ragged batches through both ops' sequence_lens."""
    return keras.Sequential(
        [
            keras.Input((None, 3)),
            L.Masking(0.0),
            L.LSTM(8, return_sequences=True),
            L.GRU(6),
            L.Dense(3, activation="softmax"),
        ]
    )


def bidirectional_gru() -> keras.Model:
    """Bidirectional(GRU) into a go_backwards GRU, a relu Dense stack, a regression head."""
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Bidirectional(L.GRU(6, return_sequences=True)),
            L.GRU(5, return_sequences=True, go_backwards=True),
            L.GRU(4),
            L.Dense(8, activation="relu"),
            L.Dense(2),
        ]
    )


def gru_reset_before() -> keras.Model:
    """reset_after=False (tf.keras 1.x's and older models' GRU), forward and bidirectional."""
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            L.GRU(6, return_sequences=True, reset_after=False),
            L.Bidirectional(L.GRU(4, reset_after=False), merge_mode="sum"),
            L.Dense(3, activation="softmax"),
        ]
    )


def stateful_gru() -> keras.Model:
    """``GRU(stateful=True)`` on every layer, per-timestep outputs: its state carried."""
    return keras.Sequential(
        [
            keras.Input(batch_shape=(STATEFUL_BATCH, None, 3)),
            L.GRU(8, return_sequences=True, stateful=True),
            L.GRU(4, return_sequences=True, stateful=True),
            L.Dense(2),
        ]
    )


def stateful_mixed() -> keras.Model:
    """A stateful LSTM into a stateful reset-before GRU, a softmax head on the last step."""
    return keras.Sequential(
        [
            keras.Input(batch_shape=(STATEFUL_BATCH, None, 3)),
            L.LSTM(6, return_sequences=True, stateful=True),
            L.GRU(5, stateful=True, reset_after=False),
            L.Dense(3, activation="softmax"),
        ]
    )


STATEFUL_GRU_BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "stateful_gru": stateful_gru,
    "stateful_mixed": stateful_mixed,
}
"""GRU state carried (``tests/models/test_keras_gru_state.py``): stateful models, served
in chunks, so they are kept out of ``BUILDERS``' batch-of-3 checks."""


BUILDERS: dict[str, Callable[[], keras.Model]] = {
    "tutorial": tutorial,
    "bidirectional": bidirectional,
    "per_timestep": per_timestep,
    "masked": masked,
    "masked_unidirectional": masked_unidirectional,
    "stateful": stateful,
    "normalized": normalized,
    "mixed_directions": mixed_directions,
    "go_backwards": go_backwards,
    "merge_modes": merge_modes,
    "dense_stack": dense_stack,
    "per_step_dense_stack": per_step_dense_stack,
    "gru": gru,
    "masked_gru": masked_gru,
    "bidirectional_gru": bidirectional_gru,
    "gru_reset_before": gru_reset_before,
}


# -- encoder-decoder forecasters (RepeatVector), tests/models/test_keras_forecast.py ----------

FORECAST_HORIZON = 5


def forecaster_tutorial() -> keras.Model:
    """The tutorial's forecaster: LSTM(64) -> RepeatVector(5) -> LSTM(64) -> TimeDistributed."""
    return keras.Sequential(
        [
            keras.Input((None, 1)),
            L.LSTM(64),
            L.RepeatVector(FORECAST_HORIZON),
            L.LSTM(64, return_sequences=True),
            L.TimeDistributed(L.Dense(1)),
        ]
    )


def forecaster_stacked() -> keras.Model:
    """Masking (ragged batches), a two-layer encoder, a GRU-then-LSTM decoder, a Dense stack."""
    return keras.Sequential(
        [
            keras.Input((None, 2)),
            L.Masking(0.0),
            L.LSTM(12, return_sequences=True),
            L.LSTM(8),
            L.RepeatVector(3),
            L.Dropout(0.1),
            L.GRU(6, return_sequences=True),
            L.LSTM(5, return_sequences=True),
            L.TimeDistributed(L.Dense(6, activation="relu")),
            L.TimeDistributed(L.Dense(2)),
        ]
    )


def forecaster_classes() -> keras.Model:
    """Functional, a bidirectional GRU encoder, a per-step softmax (a class per future step)."""
    inputs = keras.Input((None, 3))
    h = L.Bidirectional(L.GRU(6))(inputs)
    h = L.RepeatVector(4)(h)
    h = L.LSTM(5, return_sequences=True)(h)
    return keras.Model(inputs, L.Dense(3, activation="softmax")(h))


FORECASTERS: dict[str, Callable[[], keras.Model]] = {
    "tutorial": forecaster_tutorial,
    "stacked": forecaster_stacked,
    "classes": forecaster_classes,
}
