"""The contract's block for an int8 version: how it was made and its accuracy certificate.

``ModelMetadata.quantization`` (``contract.py``) holds a ``Quantization`` for a
version that ``models/quantize.py`` made from an fp32 source; fp32 versions have
none. It lives in its own module, beside ``contract.py`` which holds the field, so
the concept reads in one place; like the rest of the contract it imports neither
torch nor onnxruntime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricComparison(_Frozen):
    """The task metric on the held-back data, fp32 and int8 side by side.

    ``accuracy`` (classification, higher is better) or ``mse`` (regression, in
    the targets' units, lower is better).
    """

    name: Literal["accuracy", "mse"]
    fp32: float
    int8: float

    @property
    def drop(self) -> float:
        """How much worse int8 is: accuracy points lost, or the MSE's relative rise."""
        if self.name == "accuracy":
            return self.fp32 - self.int8
        return (self.int8 - self.fp32) / max(abs(self.fp32), 1e-12)


class OutputDifference(_Frozen):
    """|int8 - fp32| over one output, at every valid (unpadded) position."""

    max_abs_diff: float = Field(ge=0)
    mean_abs_diff: float = Field(ge=0)


class Drift(_Frozen):
    """A long stream run through both versions, as the service runs a stateful sequence.

    ``streams`` sequences of ``steps`` timesteps (``factor`` times the held-back
    data's length), fed in chunks of ``chunk`` steps with each version carrying
    its own states from chunk to chunk (``chunked`` is false for a bidirectional
    model, which cannot carry state: the stream then runs whole).
    """

    factor: int
    steps: int
    chunk: int
    streams: int
    chunked: bool
    max_abs_diff_at_end: float = Field(ge=0)
    max_abs_diff: float = Field(ge=0)


class Tolerance(_Frozen):
    """What a certificate must stay within to be published.

    ``max_abs_diff`` bounds every output difference (the held-back outputs and the
    drift), relative to the certificate's ``scale`` as the parity record is: the
    absolute difference for outputs within [-1, 1], relative to their magnitude
    above. ``max_metric_drop`` bounds ``MetricComparison.drop``.
    """

    max_abs_diff: float = Field(gt=0)
    max_metric_drop: float = Field(ge=0)


class Certificate(_Frozen):
    """int8 against its fp32 source on held-back data, computed before publishing."""

    data: str
    data_sha256: str | None = None
    sequences: int = Field(gt=0)
    time: int = Field(gt=0)
    metric: MetricComparison
    final_output: OutputDifference
    sequence_output: OutputDifference
    drift: Drift
    scale: float = Field(ge=1.0)

    @property
    def worst_abs_diff(self) -> float:
        """The largest difference the tolerance is checked against, before scaling."""
        return max(
            self.final_output.max_abs_diff,
            self.sequence_output.max_abs_diff,
            self.drift.max_abs_diff_at_end,
        )

    def violations(self, tolerance: Tolerance) -> list[str]:
        """What exceeds ``tolerance``, each with its figures; empty when it passes."""
        found = []
        if self.worst_abs_diff / self.scale > tolerance.max_abs_diff:
            found.append(
                f"outputs differ by up to {self.worst_abs_diff:.3g} (final "
                f"{self.final_output.max_abs_diff:.3g}, per-timestep "
                f"{self.sequence_output.max_abs_diff:.3g}, after a {self.drift.steps}-step "
                f"stream {self.drift.max_abs_diff_at_end:.3g}; scale {self.scale:.3g}), "
                f"past the tolerance {tolerance.max_abs_diff:g}"
            )
        if self.metric.drop > tolerance.max_metric_drop:
            found.append(
                f"{self.metric.name} {self.metric.fp32:.6g} in fp32, {self.metric.int8:.6g} in "
                f"int8: a drop of {self.metric.drop:.3g}, past the tolerance "
                f"{tolerance.max_metric_drop:g}"
            )
        return found


class QuantizationCandidate(_Frozen):
    """One set of quantizer options tried before choosing (``Quantization.choice``)."""

    per_channel: bool
    reduce_range: bool
    max_abs_diff: float
    int8_seq_per_s: float | None = None


class Speed(_Frozen):
    """Raw onnxruntime throughput of both versions on the machine that quantized."""

    batch: int
    time: int
    threads: int = 1
    fp32_seq_per_s: float
    int8_seq_per_s: float

    @property
    def ratio(self) -> float:
        return self.int8_seq_per_s / self.fp32_seq_per_s


class Quantization(_Frozen):
    """How an int8 version was made from its fp32 source, and its accuracy certificate.

    ``parity`` of such a version stays the fp32 source's export record (torch
    against the fp32 graph); this block takes it from the fp32 graph to this one.
    ``quantized_ops`` counts the nodes rewritten (``LSTM`` -> ``DynamicQuantizeLSTM``),
    ``fp32_ops`` the compute nodes left in float and why.
    """

    dtype: Literal["int8"] = "int8"
    source_version: int = Field(ge=1)
    source_sha256: str
    method: str = "onnxruntime.quantization.quantize_dynamic"
    weight_type: str = "QInt8"
    per_channel: bool
    reduce_range: bool
    choice: str
    quantized_ops: dict[str, int]
    fp32_ops: dict[str, str] = Field(default_factory=dict)
    candidates: list[QuantizationCandidate] = Field(default_factory=list)
    speed: list[Speed] = Field(default_factory=list)
    certificate: Certificate
    tolerance: Tolerance

    @model_validator(mode="after")
    def _within_tolerance(self) -> Quantization:
        found = self.certificate.violations(self.tolerance)
        if found:
            raise ValueError("the int8 certificate exceeds its tolerance: " + "; ".join(found))
        return self
