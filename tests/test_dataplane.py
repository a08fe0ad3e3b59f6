"""LargeRequests: a place per large request, ordinary ones never wait, a full gate sheds."""

from __future__ import annotations

import asyncio

import pytest

from service.core.errors import Overloaded
from service.dataplane import LargeRequests


def test_large_requests_wait_for_a_place_and_shed_at_their_deadline() -> None:
    async def scenario() -> None:
        gate = LargeRequests(slots=1, threshold_bytes=1000)
        async with gate.admit(5000, timeout_s=1):
            async with gate.admit(1000, timeout_s=0.01):  # not large: no place needed
                pass
            with pytest.raises(Overloaded) as refused:
                async with gate.admit(None, timeout_s=0.01):  # undeclared counts as large
                    pass
            assert refused.value.message == (
                "1 large request(s) (bodies over 1000 bytes) are being served, the limit per "
                "worker (max_large_requests); retry later"
            )
        async with gate.admit(5000, timeout_s=0.01):  # the place is free again
            pass

    asyncio.run(scenario())
