"""Bounded calls (core/cost.py): a batch split by length bucket, row group and time chunk
returns exactly what one whole call returns, and no call exceeds the cell cap."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.calls import CostLimits, check_request, execute
from service.core.errors import CostLimit
from service.core.runtime import ModelRuntime
from service.core.types import Outputs, RunResult


class Recording:
    """The runtime, counting the padded cells of every call it makes."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self.metadata = runtime.metadata
        self.padding_output = runtime.padding_output
        self.cells: list[int] = []

    def zero_states(self, batch: int) -> Any:
        return self.runtime.zero_states(batch)

    def run(self, x: np.ndarray, *args: Any) -> RunResult:
        self.cells.append(int(x.shape[0] * x.shape[1]))
        return self.runtime.run(x, *args)


def batch_of(runtime: ModelRuntime, lengths: list[int], seed: int) -> tuple[np.ndarray, Any]:
    rng = np.random.default_rng(seed)
    meta = runtime.metadata
    x = rng.normal(size=(len(lengths), max(lengths), meta.num_features)).astype(np.float32)
    states = [
        (
            rng.normal(size=meta.state_shape(i, len(lengths))).astype(np.float32),
            rng.normal(size=meta.state_shape(i, len(lengths))).astype(np.float32),
        )
        for i in range(len(meta.layers))
    ]
    return x, states


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 90), min_size=1, max_size=40),
    cells=st.integers(1, 400),
    which=st.sampled_from(["uni", "bi"]),
    with_states=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_bounded_calls_equal_one_whole_call(
    uni: ModelRuntime,
    bi: ModelRuntime,
    lengths: list[int],
    cells: int,
    which: str,
    with_states: bool,
    seed: int,
) -> None:
    runtime = uni if which == "uni" else bi
    if which == "bi":
        cells = max(cells, max(lengths))  # check_request refuses longer bidirectional rows
        with_states = False
    x, states = batch_of(runtime, lengths, seed)
    states = states if with_states else None
    n = np.array(lengths, dtype=np.int64)
    everything = Outputs(sequence=True, final=True, states=which == "uni")
    whole = runtime.run(x, n, states, everything)
    recording = Recording(runtime)
    limits = CostLimits(max_call_cells=cells)
    parts = execute(recording, x, n, states, everything, limits)  # type: ignore[arg-type]
    assert whole.sequence_output is not None and parts.sequence_output is not None
    np.testing.assert_allclose(parts.sequence_output, whole.sequence_output, atol=2e-6)
    np.testing.assert_allclose(parts.final_output, whole.final_output, atol=2e-6)  # type: ignore[arg-type]
    for (h, c), (ph, pc) in zip(whole.final_states, parts.final_states, strict=True):
        np.testing.assert_allclose(ph, h, atol=2e-6)
        np.testing.assert_allclose(pc, c, atol=2e-6)
    # every call within the cap (uni keeps 16 rows a call and chunks time to fit)
    assert max(recording.cells) <= max(cells, 16)
    # padding within the bucket ratio: no call pays for more than twice its real steps
    assert sum(recording.cells) <= 2 * sum(lengths) + 16 * len(recording.cells)


def test_the_issue_batch_pays_for_its_own_steps(uni: ModelRuntime) -> None:
    """One sequence of 2,500 steps and 1,023 of one step: ~3.5k cells, not 2.5M."""
    lengths = [2500] + [1] * 1023
    x = np.zeros((1024, 2500, uni.metadata.num_features), np.float32)
    recording = Recording(uni)
    n = np.array(lengths, dtype=np.int64)
    result = execute(recording, x, n, None, Outputs(False, True), CostLimits())  # type: ignore[arg-type]
    assert sum(recording.cells) == 2500 + 1023
    assert result.final_output is not None and result.final_output.shape == (1024, 3)


def test_request_limits_name_the_setting() -> None:
    limits = CostLimits(max_request_timesteps=100, max_call_cells=50)
    check_request(np.array([50, 50]), limits, whole="is bidirectional")
    with pytest.raises(CostLimit, match=r"has 101 timesteps in all .* limit is 100 \(max_request_"):
        check_request(np.array([50, 51]), limits)
    with pytest.raises(
        CostLimit, match=r"51 timesteps; this model has GRU layers \(x\), so .*max_call_cells"
    ):
        check_request(np.array([51]), limits, whole="has GRU layers (x)")
    check_request(np.array([99]), limits)  # chunked in time instead


def test_a_failing_call_reaches_every_request_of_its_batch(uni: ModelRuntime) -> None:
    """onnxruntime refusing a batch is each request's answer, never the batcher's crash."""
    from service.core.calls import run_batch
    from service.core.types import InferenceRequest

    wrong = np.zeros((1, 4, 5), np.float32)  # the model takes 3 features, not 5
    requests = [InferenceRequest(wrong, np.array([4])) for _ in range(2)]
    outcomes = run_batch(uni, requests)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert isinstance(outcome, Exception) and not isinstance(outcome, NameError)
        assert "x" in str(outcome)  # onnxruntime names the input it could not take
