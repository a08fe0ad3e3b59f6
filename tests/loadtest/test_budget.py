"""The CPU budget's steps run the server's own codecs on the benchmark's bodies."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.loadtest.budget import stage_costs

STEPS = {"decode", "merge", "session.run", "encode"}


@pytest.mark.parametrize("protocol", ["v1", "v2-json", "v2-binary"])
def test_every_step_is_timed(tiny_repository: Path, protocol: str) -> None:
    costs = stage_costs(tiny_repository / "tiny" / "1", protocol, 4, 10, merge_with=2)  # type: ignore[arg-type]
    assert set(costs) == STEPS
    assert all(value > 0 for value in costs.values()), costs
