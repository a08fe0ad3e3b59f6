"""Issue 23: one RedisStore get + put (the default model's state, with its last chunk kept for
retries) against a loopback redis-server, timed directly: ``python
deploy/benchmark/issue23_store_rtt.py redis://127.0.0.1:PORT/0``."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.core.state.redis_store import RedisStore  # noqa: E402
from service.core.state.store import LastChunk, Limits, Record, encode  # noqa: E402


async def main(url: str, n: int = 3000) -> dict[str, float]:
    store = RedisStore(url)
    states = [(np.zeros((1, 1, u), np.float32), np.zeros((1, 1, u), np.float32)) for u in (64, 32)]
    last = LastChunk(offset=0, digest=b"x" * 16, states_before=states)
    limits = Limits(total=100_000, per_owner=None)
    key = ("", "basic_motions", "i:1")
    rev = 0
    await store.put(key, Record(1, 0, states, rev, last), expected_rev=None, ttl_s=60,
                    limits=limits)  # fmt: skip
    gets, puts = [], []
    for i in range(n):
        t0 = time.perf_counter()
        record = await store.get(key)
        t1 = time.perf_counter()
        assert record is not None
        ok = await store.put(key, Record(1, i + 1, states, rev + 1, last), expected_rev=rev,
                             ttl_s=60, limits=limits)  # fmt: skip
        t2 = time.perf_counter()
        assert ok
        rev += 1
        gets.append(t1 - t0)
        puts.append(t2 - t1)
    await store.delete(key)
    await store.close()
    g, p = np.array(gets[200:]) * 1e6, np.array(puts[200:]) * 1e6
    both = g + p
    return {"record_bytes": len(encode(Record(1, 1, states, 1, last))),
            "get_p50_us": float(np.median(g)), "put_p50_us": float(np.median(p)),
            "get_put_p50_us": float(np.median(both)),
            "get_put_p99_us": float(np.percentile(both, 99))}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1]))))
