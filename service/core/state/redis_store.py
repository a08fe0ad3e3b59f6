"""The shared sequence store: Redis, so that any worker of any replica continues any
sequence (``LSTM_SERVE_STATE_URL=redis://...``).

Each sequence is one hash (``rev``, ``data``: ``store.encode``'s bytes) whose TTL is
the idle timeout. A write is one Lua script, atomic in Redis: compare the stored
revision with the one the chunk read (so two chunks never both apply to one state),
and for a new key check the live counts (a sorted set of live keys in total and one
per owner, scored by expiry in Redis's own clock, expired members dropped first)
before writing. Reads are a plain ``HGET``.

Every call is bounded: the connection pool (``max_connections``, waits included),
and a time limit per call (``timeout_s``, never past the request's deadline). A call
that fails or runs out of time raises ``StoreUnavailable`` (503 with Retry-After);
the client reconnects by itself when Redis is back. Redis Cluster is not supported
(the script touches several keys); a single Redis, with a replica or Sentinel for
failover, or a managed one, is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.core.errors import SequenceLimit, StoreUnavailable
from service.core.state.memory import check_limits
from service.core.state.store import (
    Limits,
    Record,
    SequenceKey,
    decode,
    encode,
    key_digest,
    owner_digest,
)

log = logging.getLogger(__name__)

PREFIX = "lstm-serve:"
LIVE = PREFIX + "live"
"""Every live sequence's key, scored by its expiry (ms, Redis's clock)."""

_PUT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('HGET', KEYS[1], 'rev')
if ARGV[1] ~= '' and current ~= ARGV[1] then return {0, 0, 0} end
if not current then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  local total = redis.call('ZCARD', KEYS[2])
  local owned = redis.call('ZCARD', KEYS[3])
  if total >= tonumber(ARGV[5]) or (ARGV[6] ~= '' and owned >= tonumber(ARGV[6])) then
    return {-1, total, owned}
  end
end
redis.call('HSET', KEYS[1], 'rev', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local expiry = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], expiry, KEYS[1])
redis.call('ZADD', KEYS[3], expiry, KEYS[1])
return {1, 0, 0}
"""

_DELETE = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
redis.call('ZREM', KEYS[3], KEYS[1])
return 1
"""


def describe_url(url: str) -> str:
    """The URL without credentials, for logs and messages: secrets never reach a log."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore:
    """``SequenceStore`` in Redis."""

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        timeout_s: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        self.url = describe_url(url)
        self.timeout_s = timeout_s
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,  # a wait for a free connection is bounded too
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            **({"password": password} if password is not None else {}),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._put = self._redis.register_script(_PUT)
        self._delete = self._redis.register_script(_DELETE)

    def _bounded(self, deadline: float | None) -> float:
        left = self.timeout_s if deadline is None else deadline - time.monotonic()
        return max(0.001, min(self.timeout_s, left))

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        log.warning("sequence store %s: %s", self.url, type(exc).__name__)
        return StoreUnavailable(
            f"the sequence store ({self.url}) did not answer within {self.timeout_s:g} s; "
            "server-held sequences wait for it: retry shortly"
        )

    async def get(self, key: SequenceKey, deadline: float | None = None) -> Record | None:
        try:
            async with asyncio.timeout(self._bounded(deadline)):
                blob = await self._redis.hget(PREFIX + key_digest(key), "data")
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        if blob is None:
            return None
        return decode(blob if isinstance(blob, bytes) else blob.encode("latin-1"))

    async def put(
        self,
        key: SequenceKey,
        record: Record,
        *,
        expected_rev: int | None,
        ttl_s: float,
        limits: Limits,
        deadline: float | None = None,
    ) -> bool:
        keys = [PREFIX + key_digest(key), LIVE, PREFIX + "owner:" + owner_digest(key[0])]
        args: list[str | bytes | int] = [
            "" if expected_rev is None else str(expected_rev),
            str(record.rev),
            encode(record),
            max(1, int(ttl_s * 1000)),
            limits.total,
            "" if limits.per_owner is None else limits.per_owner,
        ]
        try:
            async with asyncio.timeout(self._bounded(deadline)):
                code, total, owned = await self._put(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None
        if int(code) == -1:
            check_limits(int(total), int(owned), limits)
            raise SequenceLimit("the sequence limit was reached")  # not reached: check raises
        return int(code) == 1

    async def delete(self, key: SequenceKey, deadline: float | None = None) -> None:
        keys = [PREFIX + key_digest(key), LIVE, PREFIX + "owner:" + owner_digest(key[0])]
        try:
            async with asyncio.timeout(self._bounded(deadline)):
                await self._delete(keys=keys)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unavailable(exc) from None

    async def ping(self) -> bool:
        """Whether Redis answers now (startup logs it; readiness does not depend on it)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
