"""Schemathesis hooks for the tester run (``SCHEMATHESIS_HOOKS``).

The binary tensor extension's body is a JSON header followed by raw tensor bytes
whose layout the header declares: a byte-string schema cannot say that, so
schema-valid ("positive") binary bodies generated from it are random bytes the
server rightly refuses. Those cases are left out; negative ones stay, and the
binary format itself is tested with Triton's own client and perf_analyzer.
"""

from __future__ import annotations

from typing import Any

import schemathesis

BINARY = "application/octet-stream"


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    meta = case.meta
    positive = meta is None or meta.generation.mode.is_positive
    return not (case.media_type == BINARY and positive)
