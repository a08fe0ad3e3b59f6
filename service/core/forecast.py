"""The contract's block for an encoder-decoder forecaster (Keras's ``RepeatVector``).

A forecaster reads its input with an encoder (the first ``encoder_layers`` of
``ModelMetadata.layers``), repeats the encoder's final output ``horizon`` times
and runs that through a decoder (the remaining layers) and a per-step head. Its
one answer per sequence is therefore ``horizon`` future steps, whatever the
input's length: the graph's ``final_output`` (named ``forecast``) is float32
[batch, horizon, outputs] and it has no per-input-timestep output
(``TensorNames.sequence_output`` is None).

It lives in its own module, beside ``contract.py`` which holds the field, so the
concept reads in one place; like the rest of the contract it imports neither
torch nor onnxruntime. A forecaster carries no state between requests (the
decoder restarts from zeros on every answer, and carrying only the encoder's
state is not offered yet): its graph names no state tensors.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

FORECAST_OUTPUT = "forecast"
"""The graph's output name for the forecast (``TensorNames.final_output``)."""


class Forecast(BaseModel):
    """How many future steps one answer holds, and where the decoder starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    horizon: int = Field(gt=0)
    encoder_layers: int = Field(gt=0)


def forecast_problems(
    target: str, forecast: Forecast | None, layers: int, sequence_output: str | None, states: bool
) -> list[str]:
    """What contradicts the ``forecast`` block (or its absence) in the rest of the metadata;
    empty when consistent. ``states``: whether the tensors name any state."""
    if (target == "forecast") != (forecast is not None):
        return ["target 'forecast' and the forecast block go together"]
    if forecast is None:
        return [] if sequence_output else ["tensors.sequence_output is null only for a forecaster"]
    found = []
    if forecast.encoder_layers >= layers:
        found.append(
            f"forecast.encoder_layers is {forecast.encoder_layers} of {layers} layers: "
            "a forecaster needs at least one decoder layer after its encoder"
        )
    if sequence_output is not None:
        found.append("a forecaster has no per-timestep output: tensors.sequence_output is null")
    if states:
        found.append("a forecaster carries no state: it names no states")
    return found
