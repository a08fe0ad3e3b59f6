"""A Conv1D/pooling front end in the core (no Keras): its lengths, loading, per-request
checks and batching, on a real exported model and real onnxruntime sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.architecture import StackedLSTM
from models.export import export_model
from models.frontend import FrontEnd, min_steps, out_steps, reshapes_time
from service.core.batching import BatchingOptions, DynamicBatcher
from service.core.errors import InvalidInput
from service.core.frontend import check_front_end
from service.core.model import load_version
from service.core.runtime import ModelRuntime, RuntimeOptions
from service.core.types import FINAL, SEQUENCE, InferenceRequest

# Conv1D(5, 4, valid, strides 2) then MaxPooling1D(3): 4 steps make one conv step, three
# conv steps (2 * 2 + 4 = 8 input steps) one pooled step.
STRIDED = [
    {"kind": "conv1d", "name": "conv", "size": 4, "strides": 2, "padding": "valid",
     "filters": 5, "activation": "tanh"},
    {"kind": "max_pool", "name": "pool", "size": 3, "strides": 3, "padding": "valid"},
]  # fmt: skip


def _item(kind: str, size: int, strides: int, padding: str, dilation: int) -> dict[str, Any]:
    if kind == "conv1d":
        return {"kind": kind, "name": "c", "size": size, "strides": strides,
                "padding": padding, "filters": 2, "dilation": dilation}  # fmt: skip
    return {"kind": kind, "name": "p", "size": size, "strides": strides, "padding": padding}


layer = st.one_of(
    st.builds(
        lambda size, dilation, padding: _item("conv1d", size, 1, padding, dilation),
        st.integers(1, 5),
        st.integers(1, 4),
        st.sampled_from(["causal", "valid", "same"]),
    ),
    st.builds(
        lambda size, strides, padding: _item("conv1d", size, strides, padding, 1),
        st.integers(1, 5),
        st.integers(2, 3),
        st.sampled_from(["causal", "valid"]),
    ),
    st.builds(
        lambda kind, size, strides: _item(kind, size, strides, "valid", 1),
        st.sampled_from(["max_pool", "avg_pool"]),
        st.integers(1, 4),
        st.integers(1, 4),
    ),
    st.builds(lambda size: _item("max_pool", size, 1, "same", 1), st.integers(1, 4)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(layer, min_size=1, max_size=3), st.integers(1, 40))
def test_lengths_follow_the_torch_front_end(config: list[dict[str, Any]], steps: int) -> None:
    """out_steps is what the module really hands on; min_steps is the least that yields
    a step; reshapes_time is empty exactly when every length maps to itself."""
    front = FrontEnd(3, config).eval()
    least = min_steps(config)
    assert out_steps(config, least) >= 1
    assert least == 1 or out_steps(config, least - 1) == 0
    assert (out_steps(config, steps) >= 1) == (steps >= least)
    if steps >= least:
        with torch.no_grad():
            got = front(torch.randn(2, steps, 3))
        assert got.shape[1] == out_steps(config, steps)
    keeps = all(out_steps(config, n) == n for n in range(1, 30))
    assert (reshapes_time(config) == "") == keeps


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("front")
    torch.manual_seed(0)
    model = StackedLSTM(3, [6], 2, task="regression", front_end=STRIDED)
    model.set_normalization(torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.5, 0.7, 2.0]))
    export_model(model, root, "strided", 1)
    return root


@pytest.fixture(scope="module")
def runtime(repository: Path) -> ModelRuntime:
    # Loading warms the session up: at 1 step this model had no step for its LSTM and
    # did not load at all.
    served = load_version(repository / "strided" / "1", RuntimeOptions(), lambda _: None)  # type: ignore[arg-type,return-value]
    return served.runtime


def test_metadata_describes_the_front_end(runtime: ModelRuntime) -> None:
    front = runtime.metadata.front_end
    assert front is not None
    assert [(layer.kind, layer.name) for layer in front.layers] == [
        ("Conv1D", "conv"),
        ("MaxPooling1D", "pool"),
    ]
    assert front.min_length == 8
    assert front.reshapes_time == "layer 'conv' (Conv1D): strides=2"
    assert not runtime.metadata.carries_state and not runtime.metadata.tensors.initial_states


def _request(x: np.ndarray, lengths: list[int], outputs: Any = FINAL) -> InferenceRequest:
    return InferenceRequest(x=x, lengths=np.array(lengths, np.int64), outputs=outputs)


def test_each_request_is_checked_with_a_message_that_says_what_works(
    runtime: ModelRuntime,
) -> None:
    meta = runtime.metadata
    rng = np.random.default_rng(0)
    check_front_end(meta, _request(rng.normal(size=(2, 8, 3)).astype(np.float32), [8, 8]))
    with pytest.raises(InvalidInput) as short:
        check_front_end(meta, _request(np.zeros((1, 7, 3), np.float32), [7]))
    assert str(short.value) == (
        "model 'strided' needs sequences of at least 8 timesteps (its front end, Conv1D "
        "'conv', MaxPooling1D 'pool', reads 8 steps before its first output); a sequence "
        "has 7: send 8 or more"
    )
    with pytest.raises(InvalidInput) as ragged:
        check_front_end(meta, _request(np.zeros((2, 12, 3), np.float32), [12, 9]))
    assert str(ragged.value) == (
        "model 'strided' has a Conv1D/pooling front end (Conv1D 'conv', MaxPooling1D 'pool') "
        "that reads the whole time axis: sequences in one request must have equal lengths "
        "(here 9 to 12 steps), with no padding; send sequences of other lengths in separate "
        "requests"
    )
    with pytest.raises(InvalidInput, match=r"here 10 to 12 steps"):  # padded past its lengths
        check_front_end(meta, _request(np.zeros((1, 12, 3), np.float32), [10]))
    with pytest.raises(InvalidInput) as steps:
        check_front_end(meta, _request(np.zeros((1, 9, 3), np.float32), [9], SEQUENCE))
    assert str(steps.value) == (
        "model 'strided' has no per-timestep outputs: its front end shortens the time axis "
        "(layer 'conv' (Conv1D): strides=2), so its steps are not the input's; ask for the "
        "final output (/v1: return_sequences false; V2: final_output)"
    )


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def test_the_batcher_merges_only_requests_of_one_length(
    runtime: ModelRuntime, executor: ThreadPoolExecutor
) -> None:
    """Requests queued together merge only at the same length: merged across lengths, the
    shorter ones would be padded and their padding read by the convolution."""
    rng = np.random.default_rng(1)
    lengths = [9, 9, 14, 20, 14, 9]  # 9 and 14 share a length bucket; 1 and 2 LSTM steps
    requests = [
        _request(rng.normal(size=(2, n, 3)).astype(np.float32) * 3, [n, n]) for n in lengths
    ]
    lone = [runtime.run(r.x, r.lengths, None, FINAL).final_output for r in requests]

    async def scenario() -> tuple[list[Any], int]:
        batcher = DynamicBatcher(runtime, executor, BatchingOptions(max_queue_delay_s=0.05))
        try:
            answers = await asyncio.gather(*(batcher.submit(r) for r in requests))
            return [a.final_output for a in answers], batcher.stats.calls
        finally:
            await batcher.close()

    started = time.monotonic()
    answers, calls = asyncio.run(scenario())
    assert time.monotonic() - started < 10
    for got, want in zip(answers, lone, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert calls == 3  # one call per length (9, 14, 20), each merging all of its requests
