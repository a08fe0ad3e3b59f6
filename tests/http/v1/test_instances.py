"""decode_instances: nested lists to padded arrays, for any mix of lengths."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.core.errors import InvalidInput
from service.http.v1.instances import decode_instances

finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[np.ndarray], int]:
    features = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
    seqs = [draw(arrays(np.float32, (n, features), elements=finite)) for n in lengths]
    return seqs, features


@given(batches())
def test_padded_arrays_hold_every_value(batch: tuple[list[np.ndarray], int]) -> None:
    seqs, features = batch
    x, lengths = decode_instances(
        [s.tolist() for s in seqs], features=features, model="m", max_timesteps=100
    )
    assert x.dtype == np.float32 and lengths.dtype == np.int64
    assert x.shape == (len(seqs), max(len(s) for s in seqs), features)
    assert lengths.tolist() == [len(s) for s in seqs]
    for i, s in enumerate(seqs):
        assert np.array_equal(x[i, : len(s)], s)
        assert not x[i, len(s) :].any()


def test_integers_are_numbers() -> None:
    x, lengths = decode_instances([[[1, 2], [3, 4]]], features=2, model="m", max_timesteps=10)
    assert x.tolist() == [[[1.0, 2.0], [3.0, 4.0]]] and lengths.tolist() == [2]


@pytest.mark.parametrize(
    ("instances", "message"),
    [
        ([[[1, 2]], [[1, 2, 3]]], "instances[1][0] has 3 features; model 'm' expects 2"),
        ([[[1, 2]], [[1, 2], [1]]], "instances[1][1] has 1 features; model 'm' expects 2"),
        ([[[1, {"a": 1}]]], "instances[0][0][1] must be a number; got an object"),
        ([[[1, [2]]]], "instances[0][0][1] must be a number; got a list"),
        ("abc", "instances[0] must be a list of timesteps, each a list of 2 numbers; got a string"),
    ],
)
def test_errors_name_the_place(instances: object, message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode_instances(instances, features=2, model="m", max_timesteps=10)  # type: ignore[arg-type]
    assert caught.value.message == message


values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), -(2**63) - 1, 10**400]),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)


@given(
    st.lists(st.lists(values, min_size=0, max_size=4), min_size=0, max_size=10),
    st.integers(1, 4),
)
def test_a_stream_message_decodes_as_the_general_path_would(
    sequence: list[list[object]], features: int
) -> None:
    """Short sequences take a plain-Python check first; whatever it accepts is exactly the
    general path's array, and everything it declines is left to the general path."""
    from service.http.v1 import instances

    few = instances._few_steps(sequence, features)
    try:
        general = instances._sequence_array("t", sequence, features, "m", 100)
        with np.errstate(over="ignore", invalid="ignore"):
            general = general.astype(np.float32)
        instances._check_finite(general, sequence, "t")
    except InvalidInput:
        assert few is None
        return
    if few is not None:
        assert few.dtype == np.float32 and np.array_equal(few, general)
    else:  # declined only when long, or for integers past int64 (numpy's own reading)
        huge = any(type(v) is int and not -(2**63) <= v < 2**63 for s in sequence for v in s)
        assert len(sequence) > instances._FEW_STEPS or huge
