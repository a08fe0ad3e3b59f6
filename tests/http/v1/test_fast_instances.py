"""fast_instances: a simple body's instances equal the general path's bit for bit, and
anything else is declined (None), so the general path's answer and errors stand."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from service.http import body as body_module
from service.http.v1 import codec
from service.http.v1.fast_instances import read_simple
from service.http.v1.instances import decode_instances
from tests.conftest import make_client, reference

LIMIT = 1 << 20
PROPERTY = settings(max_examples=300, deadline=None)


@dataclass(frozen=True)
class Raw:
    """Text written into the body as is: a number in a given spelling, or a bad token."""

    text: str


def write(value: Any, space: Iterator[str]) -> str:
    """JSON text for ``value``, with whitespace from ``space`` between all tokens."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, list):
        inner = ",".join(next(space) + write(v, space) + next(space) for v in value)
        return "[" + inner + next(space) + "]"
    if isinstance(value, dict):
        inner = ",".join(
            next(space) + json.dumps(k) + next(space) + ":" + next(space) + write(v, space)
            for k, v in value.items()
        )
        return "{" + inner + next(space) + "}"
    return json.dumps(value)


def spacing(draw: st.DrawFn) -> Iterator[str]:
    """Whitespace between tokens: none (minified), the stdlib's, or pretty-printed, at random."""
    style = draw(st.sampled_from(["none", "some", "pretty"]))
    choices = {"none": [""], "some": ["", " "], "pretty": ["", " ", "\n  ", "\t", "\r\n"]}[style]
    seeds = draw(st.lists(st.sampled_from(choices), min_size=1, max_size=16))
    while True:
        yield from seeds


_EXACT = 2**53 - 1
floats = st.floats(-1e15, 1e15, allow_nan=False, allow_infinity=False) | st.floats(
    -1e-30, 1e-30, allow_nan=False
)


@st.composite
def number(draw: st.DrawFn) -> Raw:
    """A JSON number in one of the spellings a client may send."""
    kind = draw(st.sampled_from(["int", "float", "exp", "EXP", "zero", "small", "long"]))
    if kind == "long":  # more digits than a double holds: both parsers must round alike
        digits = draw(st.text("0123456789", min_size=18, max_size=40))
        point = draw(st.integers(1, 15))
        sign = draw(st.sampled_from(["", "-"]))
        return Raw(f"{sign}{int(digits[:point])}.{digits[point:]}")
    if kind == "int":
        return Raw(str(draw(st.integers(-_EXACT, _EXACT) | st.integers(-10, 10))))
    if kind == "zero":
        return Raw(draw(st.sampled_from(["0", "-0", "0.0", "-0.0", "0e0", "-0E-0", "0.0e+5"])))
    if kind == "small":
        return Raw(repr(draw(st.floats(-1.0, 1.0, width=32))))
    value = draw(floats)
    if kind == "float":
        return Raw(repr(value))
    mantissa, exponent = f"{value:.{draw(st.integers(0, 17))}e}".split("e")
    spelled = f"{mantissa}{'e' if kind == 'exp' else 'E'}{int(exponent):+d}"
    return Raw(spelled if draw(st.booleans()) else spelled.replace("+", ""))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(-1e300, 1e300)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)  # fmt: skip


@dataclass(frozen=True)
class Case:
    features: int
    instances: list[Any]
    others: dict[str, Any]
    first: bool

    def body(self, space: Iterator[str], instances: Any = None) -> bytes:
        items = list(self.others.items())
        place = 0 if self.first else len(items) // 2 + (len(items) % 2)
        items.insert(place, ("instances", self.instances if instances is None else instances))
        return write(dict(items), space).encode()


@st.composite
def cases(draw: st.DrawFn) -> Case:
    features = draw(st.integers(1, 5))
    if draw(st.booleans()):
        lengths = [draw(st.integers(1, 8))] * draw(st.integers(1, 5))  # a regular batch
    else:
        lengths = draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    instances = [
        [[draw(number()) for _ in range(features)] for _ in range(length)] for length in lengths
    ]
    others = draw(
        st.dictionaries(
            st.sampled_from(["return_sequences", "sequence_id", "signature_name", "x", "ïnst"]),
            json_values,
            max_size=3,
        )
    )
    return Case(features, instances, others, draw(st.booleans()))


def general(body: bytes, features: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    payload = orjson.loads(body)
    x, lengths = decode_instances(
        payload["instances"], features=features, model="m", max_timesteps=LIMIT
    )
    return payload, x, lengths


def fast(body: bytes, features: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    simple = read_simple(body, features)
    if simple is None:
        return None
    envelope, instances = simple
    x, lengths = instances.padded(max_timesteps=LIMIT, max_input_bytes=None)
    return envelope, x, lengths


@PROPERTY
@given(cases(), st.data())
def test_simple_bodies_decode_bit_for_bit_as_the_general_path(case: Case, data: Any) -> None:
    body = case.body(data.draw(st.builds(spacing, st.just(data.draw))))
    want_payload, want_x, want_lengths = general(body, case.features)
    got = fast(body, case.features)
    assert got is not None, body
    envelope, x, lengths = got
    assert envelope == {**want_payload, "instances": []}
    assert list(envelope) == list(want_payload)  # the same keys, in the same order
    assert x.dtype == np.float32 and x.shape == want_x.shape
    assert np.array_equal(x.view(np.uint32), want_x.view(np.uint32))  # -0.0 stays -0.0
    assert lengths.dtype == np.int64 and np.array_equal(lengths, want_lengths)


def _mutations(case: Case) -> list[tuple[str, Any]]:
    """The case's instances made not simple, each way the fast path must decline."""
    first = case.instances[0]
    step = first[0]
    rest = case.instances[1:]
    number_ = step[0]
    return [
        ("a step with a number more", [[[*step, number_], *first[1:]], *rest]),
        ("a step with a number less", [[step[:-1], *first[1:]], *rest]),
        ("a number nested deeper", [[[[number_], *step[1:]], *first[1:]], *rest]),
        ("a step one level deeper", [[[step], *first[1:]], *rest]),
        ("a bare number as a step", [[number_, *first[1:]], *rest]),
        ("a bare step as a sequence", [step, *rest]),
        ("a string", [[[Raw('"1.0"'), *step[1:]], *first[1:]], *rest]),
        ("true", [[[Raw("true"), *step[1:]], *first[1:]], *rest]),
        ("false", [[[Raw("false"), *step[1:]], *first[1:]], *rest]),
        ("null", [[[Raw("null"), *step[1:]], *first[1:]], *rest]),
        ("an object", [[[Raw('{"a": 1}'), *step[1:]], *first[1:]], *rest]),
        ("beyond float32", [[[Raw("1e39"), *step[1:]], *first[1:]], *rest]),
        ("below -float32", [[[Raw("-3.5e38"), *step[1:]], *first[1:]], *rest]),
        ("beyond double", [[[Raw("1e400"), *step[1:]], *first[1:]], *rest]),
        ("an int past 64 bits", [[[Raw(str(2**64)), *step[1:]], *first[1:]], *rest]),
        ("an int below int64", [[[Raw(str(-(2**63) - 1)), *step[1:]], *first[1:]], *rest]),
        ("an int past 2**53", [[[Raw(str(2**53 + 1)), *step[1:]], *first[1:]], *rest]),
        ("NaN", [[[Raw("NaN"), *step[1:]], *first[1:]], *rest]),
        ("Infinity", [[[Raw("-Infinity"), *step[1:]], *first[1:]], *rest]),
        ("an empty sequence", [[], *case.instances]),
        ("an empty step", [[[], *first], *rest]),
        ("empty instances", []),
        ("instances not a list", Raw("5")),
    ]


@PROPERTY
@given(cases(), st.data())
def test_bodies_that_are_not_simple_are_declined(case: Case, data: Any) -> None:
    label, instances = data.draw(st.sampled_from(_mutations(case)))
    space = data.draw(st.builds(spacing, st.just(data.draw)))
    body = case.body(space, instances)
    assert read_simple(body, case.features) is None, (label, body)


@given(cases(), st.data())
@settings(max_examples=100, deadline=None)
def test_bodies_with_odd_framing_are_declined(case: Case, data: Any) -> None:
    body = case.body(data.draw(st.builds(spacing, st.just(data.draw))))
    text = body.decode()
    odd = {
        "instances twice": text.rstrip()[:-1] + ', "instances": [[[0]]]}',
        "another key twice": '{"a": 1, "a": 2, ' + text.lstrip()[1:],
        "a byte order mark": "\ufeff" + text,
        "top level an array": write(case.instances, iter(lambda: "", None)),
        "top level a string": json.dumps(text),
        "trailing garbage": text + " x",
        "two documents": text + text,
        "truncated": text[: len(text) // 2],
        "the key escaped": text.replace('"instances"', '"\\u0069nstances"', 1),
    }
    label = data.draw(st.sampled_from(sorted(odd)))
    assert read_simple(odd[label].encode(), case.features) is None, (label, odd[label])


@pytest.mark.parametrize(
    ("before", "value"),
    [
        ('"return_sequences": true', True),
        ('"x": {"instances": [[[1]]]}', {"instances": [[[1]]]}),
        ('"x": ["instances", {"instances": [[[1]]]}]', ["instances", {"instances": [[[1]]]}]),
        ('"x": "\\"instances\\": [[[1]]]"', '"instances": [[[1]]]'),
        ('"x": "[{\\\\", "y": "}]"', "[{\\"),
    ],
)
def test_instances_after_other_keys_are_found(before: str, value: Any) -> None:
    """The keys before ``instances`` are skipped whole, whatever their values hold."""
    body = f'{{{before}, "instances": [[[1, 2]]]}}'.encode()
    got = fast(body, 2)
    assert got is not None, body
    assert got[0] == {**orjson.loads(body), "instances": []}
    assert next(v for k, v in got[0].items() if k != "instances") == value
    assert got[1].tolist() == [[[1.0, 2.0]]]


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b'{"instances": [[[1, 2]]]',
        b'{"instances": [[[1, 2]]], "instances": [[[1, 2]]]}',
        b'{"a": "\\ud800", "instances": [[[1, 2]]]}',
        b'{"a": 18446744073709551616, "instances": [[[1, 2]]]}',
        b'{"instances": [[[1, 2]], [[3, 4], [5]]]}',
        b'{"instances": [[[1, 2]], [[3, 4, 5]]]}',
        b'{"instances": [[[1, 2], [3, [4]]]]}',
    ],
)
def test_declined_bodies(body: bytes) -> None:
    assert read_simple(body, 2) is None


def test_a_feature_count_of_one_is_counted() -> None:
    """With one feature, ``[]`` and ``[5]`` leave the same text once numbers are removed."""
    assert read_simple(b'{"instances": [[[1], [], [3]]]}', 1) is None
    got = fast(b'{"instances": [[[1], [2], [3]], [[4]]]}', 1)
    assert got is not None and got[1][:, :, 0].tolist() == [[1, 2, 3], [4, 0, 0]]


# ---------------------------------------------------------------- through the HTTP stack


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which path each request's body took: "fast" or "general"."""
    taken: list[str] = []
    fast_read, load_json = read_simple, body_module.load_json

    def read(body: bytes, features: int) -> Any:
        simple = fast_read(body, features)
        if simple is not None:
            taken.append("fast")
        return simple

    async def general_read(body: bytes, limits: Any) -> Any:
        taken.append("general")
        return await load_json(body, limits)

    monkeypatch.setattr(codec, "read_simple", read)
    monkeypatch.setattr(codec, "load_json", general_read)
    return taken


@pytest.fixture(scope="module")
def threaded(tiny_repository: Path) -> Iterator[TestClient]:
    """Every body read on a worker thread."""
    with make_client(tiny_repository, json_thread_bytes=0, max_json_bytes=20000) as c:
        yield c


def _probabilities(answer: dict[str, Any]) -> np.ndarray:
    return np.array([p["probabilities"] for p in answer["predictions"]], dtype=np.float32)


@pytest.mark.parametrize("which", ["client", "threaded"])
@pytest.mark.parametrize("lengths", [[5], [4, 4, 4], [1, 7, 3]])
def test_fast_path_answers_equal_the_reference(
    request: pytest.FixtureRequest,
    which: str,
    lengths: list[int],
    paths: list[str],
    tiny_repository: Path,
) -> None:
    client: TestClient = request.getfixturevalue(which)
    rng = np.random.default_rng(sum(lengths))
    x = np.zeros((len(lengths), max(lengths), 3), np.float32)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.normal(size=(n, 3))
    instances = [x[i, :n].tolist() for i, n in enumerate(lengths)]
    body = json.dumps({"instances": instances}, indent=1).encode()
    answer = client.post("/v1/models/tiny:predict", content=body)
    assert answer.status_code == 200, answer.text
    assert paths == ["fast"]
    want = reference(tiny_repository / "tiny" / "2", x, np.array(lengths))
    np.testing.assert_allclose(_probabilities(answer.json()), want["final_output"], atol=1e-5)


@pytest.mark.parametrize(
    ("body", "path", "status", "message"),
    [
        (
            {"instances": [[[0.1, 0.2, 0.3]], [[0.1, 0.2]]]},
            "general",
            422,
            "instances[1][0] has 2 features; model 'tiny' expects 3",
        ),
        (
            {"instances": [[[0.1, 1e39, 0.3]]]},
            "general",
            422,
            "instances[0][0][1] is 1e+39; only finite numbers within float32 range are accepted",
        ),
        (
            {"instances": [[[0.1, 0.2, 0.3]]] * 17},
            "fast",
            422,
            "instances has 17 sequences; the limit is 16",
        ),
        (
            {"instances": [[[0.1, 0.2, 0.3]], [[0.1, 0.2, 0.3]] * 65]},
            "fast",
            422,
            "instances[1] has 65 timesteps; the limit is 64",
        ),
        (
            {"instances": [[[0.1, 0.2, 0.3]]], "return_sequence": True},
            "fast",
            422,
            "return_sequence: Extra inputs are not permitted",
        ),
    ],
)
def test_errors_are_the_general_paths(
    client: TestClient, paths: list[str], body: Any, path: str, status: int, message: str
) -> None:
    answer = client.post("/v1/models/tiny:predict", content=orjson.dumps(body))
    assert (answer.status_code, answer.json()["error"]) == (status, message)
    assert paths == [path]


def test_padded_size_is_refused_with_the_general_message(
    tiny_repository: Path, paths: list[str]
) -> None:
    with make_client(tiny_repository, max_input_bytes=1024) as client:
        body = {"instances": [[[0.0, 0.0, 0.0]], [[0.0, 0.0, 0.0]] * 43]}
        answer = client.post("/v1/models/tiny:predict", json=body)
    assert answer.status_code == 422
    assert answer.json()["error"] == (
        "instances pad to 2 x 43 x 3 float32 values (1032 bytes); the limit is 1024 bytes "
        "(max_input_bytes)"
    )
    assert paths == ["fast"]


def test_json_over_its_limit_is_refused_before_either_path(
    threaded: TestClient, paths: list[str]
) -> None:
    body = orjson.dumps({"instances": [[[0.0] * 3] * 10] * 200})
    answer = threaded.post("/v1/models/tiny:predict", content=body)
    assert answer.status_code == 413
    assert answer.json()["error"].startswith(
        f"the JSON in the request body is {len(body)} bytes; the limit is 20000 (max_json_bytes)"
    )
    assert paths == ["general"]  # load_json refused it; the fast path never parsed it


def test_client_carried_state_takes_the_fast_path(client: TestClient, paths: list[str]) -> None:
    """``initial_states`` is read into the envelope as orjson reads it: the state carries."""
    x = np.random.default_rng(0).normal(size=(1, 6, 3)).astype(np.float32)
    first = client.post(
        "/v1/models/tiny:predict", json={"instances": x[:, :3].tolist(), "return_states": True}
    ).json()
    second = client.post(
        "/v1/models/tiny:predict",
        json={"instances": x[:, 3:].tolist(), "initial_states": first["states"]},
    )
    assert second.status_code == 200, second.text
    whole = client.post("/v1/models/tiny:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(_probabilities(second.json()), _probabilities(whole), atol=1e-5)
    assert paths == ["fast"] * 3


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [[[1]]], "\\u0000": null}',
        b'{"instances": [[[1]]], "\\u0000x": 1}',
        b'{"instances": [[[1]]], "a\\u0000b": [1]}',
    ],
)
def test_keys_simdjson_cannot_look_up_take_the_general_path(body: bytes) -> None:
    """Found by the fuzz test: a key holding NUL made simdjson's lookup raise KeyError.

    Every body carries simple ``instances``, so only the NUL key sends it away from the
    fast path (without it, the same instances are read there)."""
    assert read_simple(body, 1) is None
    assert read_simple(b'{"instances": [[[1]]]}', 1) is not None
