"""A ``/v1`` predict body's ``instances`` read straight to float32, when the body is simple.

The general path (``body.parse_json`` then ``instances.decode_instances``) makes a
Python float for every number and then numpy reads them back. Here simdjson parses
the body, its shape is checked without making Python objects, and every number is
copied into one float64 buffer in C, then cast to float32. For 32 sequences of 50
steps of 6 features (108 KB), measured in-process: ~1,040 µs (~110 ns a number) on
the general path with the envelope's validation, ~350 µs (~36 ns a number) here:
simdjson's parse ~165, the shape check ~135 (~1.1 ns a byte of the body's text),
the numbers to float32 ~40.

``read_simple`` answers only the case it can answer exactly as the general path
would: a JSON object whose ``instances`` is B >= 1 sequences of T_i >= 1 steps of
exactly F numbers, every number with magnitude below 2**53 (so ints convert the way
numpy converts them, and nothing overflows float32). For anything else it returns
None, never raises: the general path then reads the body and gives its error
message, naming the culprit. Declining costs one extra parse, only for bodies that
are odd or wrong.

The limits (``max_instances``, ``max_timesteps``, ``max_input_bytes``) are not
checked here: they are checked after the envelope's validation, in the same order
and with the same messages as the general path (``SimpleInstances.padded``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import simdjson

from service.http.v1.instances import check_size, check_timesteps

_EXACT = float(2**53)
"""Below this magnitude a JSON integer is exact as a float64, so float64 -> float32
rounds it as numpy's int64 -> float32 does, and no value overflows float32."""

_BOM = b"\xef\xbb\xbf"
"""simdjson skips a UTF-8 byte order mark; orjson refuses it, so the general path answers."""


@dataclass(frozen=True)
class SimpleInstances:
    """A simple body's numbers, in order, and each sequence's length."""

    values: np.ndarray
    """float32 [sum T_i, F], the timesteps of all sequences one after another."""
    lengths: np.ndarray
    """int64 [B]"""

    def __len__(self) -> int:
        return len(self.lengths)

    def padded(
        self, *, max_timesteps: int, max_input_bytes: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 [B, max T_i, F] right-padded, lengths): the general path's answer.

        The limits are checked first, with the general path's messages (the size
        before the padded array is allocated).
        """
        batch, features = len(self.lengths), self.values.shape[1]
        steps = int(self.lengths.max())
        if steps > max_timesteps:  # the first sequence over, as the general path names it
            first = int(np.argmax(self.lengths > max_timesteps))
            check_timesteps(f"instances[{first}]", int(self.lengths[first]), max_timesteps)
        check_size(batch, steps, features, max_input_bytes)
        if len(self.values) == batch * steps:  # every sequence as long: no padding to do
            return self.values.reshape(batch, steps, features), self.lengths
        x = np.zeros((batch, steps, features), dtype=np.float32)
        x[np.arange(steps) < self.lengths[:, None]] = self.values
        return x, self.lengths


def read_simple(body: bytes, features: int) -> tuple[dict[str, Any], SimpleInstances] | None:
    """The body's envelope and instances when the body is simple, else None (see the module).

    The envelope is every top-level key as orjson would read it, with ``instances``
    mapped to ``[]``: pydantic validates it as it would the whole body, and the
    instances themselves are in the ``SimpleInstances``.
    """
    parsed: Parsed | None = None
    try:
        parsed = parse(body, features)
        simple = None if parsed is None else parsed.numbers()
        return None if parsed is None or simple is None else (parsed.envelope, simple)
    except Exception:  # the general path reads any body this one cannot
        # ValueError: not JSON, or a number simdjson cannot hold; RuntimeError: an
        # integer past 64 bits; TypeError: a non-number, which the checks rule out
        # first; KeyError: a key simdjson cannot look up (one holding "\u0000", found
        # by the fuzz test). Whatever it is, the orjson path answers, errors included.
        return None
    finally:
        parsed = None  # the parser and its buffers go now, not when the caller's frame does


@dataclass(frozen=True)
class Parsed:
    """A simple body, parsed and its shape checked: all but the numbers read."""

    envelope: dict[str, Any]
    """Every top-level key, as orjson reads it, with ``instances`` mapped to []."""
    lengths: list[int]
    """Each sequence's number of timesteps."""
    features: int
    instances: Any
    """simdjson's ``instances`` array (it keeps its parser and document alive)."""

    def numbers(self) -> SimpleInstances | None:
        """The numbers as float32, copied in C, or None if one is not below 2**53 in magnitude.

        The count is checked too: with F = 1 the shape check cannot tell ``[]`` from
        ``[5]``.
        """
        flat = np.frombuffer(self.instances.as_buffer(of_type="d"), dtype=np.float64)
        if len(flat) != sum(self.lengths) * self.features:
            return None
        if not (flat.min() > -_EXACT and flat.max() < _EXACT):
            return None
        values = flat.astype(np.float32).reshape(-1, self.features)
        return SimpleInstances(values, np.array(self.lengths, dtype=np.int64))


def parse(body: bytes, features: int) -> Parsed | None:
    """``body`` parsed by simdjson, if it is simple (raises what simdjson raises).

    A new parser per body: a parser is not thread-safe, its document dies with its
    next parse, and it keeps ~13x the largest body it has parsed (52 MiB after a
    4 MiB body). One kept per thread saved under 1 µs a request (measured), so
    nothing is kept between requests.

    simdjson gives the top-level keys and each sequence's length. The rest of the
    nesting (every step exactly F numbers, nothing deeper) is checked on the body's
    own text of ``instances``, with numbers and whitespace removed, against the text
    expected for those lengths: ragged steps, deeper nesting, strings, booleans, null
    and objects all leave characters that the expected text does not have. (The
    body's text, not simdjson's ``mini``: ``mini`` writes every number anew, ~55 ns
    each.)
    """
    if body.startswith(_BOM) or features < 1:
        return None
    doc = simdjson.Parser().parse(body)
    if not isinstance(doc, simdjson.Object):
        return None
    envelope: dict[str, Any] = {}
    instances = None
    for key in doc:
        value = doc[key]
        if key == "instances":
            instances = value
            envelope[key] = []
        elif isinstance(value, simdjson.Object):
            envelope[key] = value.as_dict()
        elif isinstance(value, simdjson.Array):
            envelope[key] = value.as_list()
        else:
            envelope[key] = value
    # A repeated key: orjson keeps the last, simdjson's lookup finds the first.
    if len(envelope) != len(doc) or not isinstance(instances, simdjson.Array):
        return None
    lengths = []
    for sequence in instances:
        if not isinstance(sequence, simdjson.Array):
            return None
        lengths.append(len(sequence))
    if not lengths or min(lengths) < 1:
        return None
    start = _instances_start(body)
    if start is None:
        return None
    # The text from the value on (the envelope's later keys too: usually a few bytes).
    # Whatever follows the expected text cannot be part of the value: the expected text
    # is balanced brackets without quotes, so it ends where the array does.
    rest = body[start:].translate(None, _REMOVED)
    if not rest.startswith(_skeleton(lengths, features)):
        return None
    return Parsed(envelope, lengths, features, instances)


def _instances_start(body: bytes) -> int | None:
    """Where the top-level ``instances`` value starts in ``body`` (valid JSON, an object).

    The usual body starts with that key; otherwise the keys before it are skipped,
    token by token (strings whole, runs of other bytes whole). None when the key is
    written with escapes (``"\\u0069nstances"``): then the general path reads it.
    """
    if first := _FIRST_KEY.match(body):
        return first.end()
    depth = 0
    for token in _TOKEN.finditer(body):
        text = token.group()
        if text in (b"{", b"["):
            depth += 1
        elif text in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and text == b'"instances"' and (colon := _COLON.match(body, token.end())):
            return colon.end()
    return None


_FIRST_KEY = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"instances"[ \t\n\r]*:')
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]|[^"{}\[\]]+', re.DOTALL)
_COLON = re.compile(rb"[ \t\n\r]*:")
_REMOVED = b"0123456789.eE+- \t\n\r"
"""Number characters and JSON's whitespace: what is left of simple instances is brackets
and commas. In valid JSON with no quotes, a run of these between brackets and commas
can only be a number (``true``, ``false``, ``null`` have other letters)."""


def _skeleton(lengths: list[int], features: int) -> bytes:
    """The instances' minified text without its numbers, for these lengths.

    Built per request from one step's text (bytes repetition is a memcpy), so nothing
    sized by a request is kept between requests.
    """
    step = _step(features)
    sequences = {t: b"[" + (step * t)[:-1] + b"]" for t in set(lengths)}
    return b"[" + b",".join([sequences[t] for t in lengths]) + b"]"


@lru_cache(maxsize=64)
def _step(features: int) -> bytes:
    """One timestep's text without its numbers, and the comma after it."""
    return b"[" + b"," * (features - 1) + b"],"
