"""The Redis key schema, the atomic writer used by workers, and the small read client for applications.

Key schema (one key per user)::

    <prefix><user_id>   HASH   v            monotonically increasing result version (int)
                               generated_at epoch-ms when the result was computed
                               payload      the recommendation event, JSON (same as on the topic)
                        TTL    settings.redis_ttl_s, renewed on every write

A write is one Lua script call (atomic on the server): it replaces the whole hash and its TTL **only if**
the stored ``v`` is lower than the new one, so an older result never overwrites a newer one, whatever
order workers' writes arrive in. Many writes go in one pipeline per batch.

Readers::

    from streams.redis_store import RecommendationsClient
    recs = RecommendationsClient("redis://127.0.0.1:6379/0").get("user-42")   # dict or None
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
import redis
import redis.asyncio as aredis
from redis.exceptions import AuthenticationError, AuthorizationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RedisUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "rec:"

# KEYS[1]=key  ARGV: version, generated_at, payload, ttl_ms  -> 1 written, 0 stale (kept newer)
_PUT_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'v')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'generated_at', ARGV[2], 'payload', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""


@dataclass(frozen=True, slots=True)
class RecWrite:
    user_id: str
    version: int
    generated_at: int
    payload: bytes


def _connection_kwargs(username: str | None, password: str | None) -> dict:
    kw: dict = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0, "health_check_interval": 30}
    if username:
        kw["username"] = username
    if password:
        kw["password"] = password
    return kw


class RedisRecStore:
    """Async writer used by workers: one pipeline per batch, retried with backoff until it succeeds."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, ttl_s: int = 7 * 24 * 3600,
                 username: str | None = None, password: str | None = None, retry_max_s: float = 5.0) -> None:
        self.prefix = prefix
        self.ttl_ms = int(ttl_s * 1000)
        self.retry_max_s = retry_max_s
        self._redis = aredis.Redis.from_url(url, **_connection_kwargs(username, password))
        self._script = self._redis.register_script(_PUT_IF_NEWER)
        self.outage_retries = 0

    def key(self, user_id: str) -> str:
        return f"{self.prefix}{user_id}"

    async def _write_once(self, writes: Sequence[RecWrite]) -> list[int]:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for w in writes:
                    await self._script(keys=[self.key(w.user_id)],
                                       args=[w.version, w.generated_at, w.payload, self.ttl_ms], client=pipe)
                return [int(r) for r in await pipe.execute()]
        except (AuthenticationError, AuthorizationError):
            raise  # subclasses of ConnectionError in redis-py, but no retry fixes a wrong password
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailable(f"redis unavailable: {exc}") from exc

    async def write(self, writes: Sequence[RecWrite], on_retry=None) -> list[int]:
        """Write all results; returns 1 (written) / 0 (a newer result was kept) per write.

        Connection failures are retried forever with capped exponential backoff and jitter: the batch's
        offsets are not committed until this returns, so an outage delays results but loses none.
        Other Redis errors (auth, wrong type) are raised: they need an operator, not a retry.
        """
        if not writes:
            return []
        delay = 0.05
        while True:
            try:
                return await self._write_once(writes)
            except RedisUnavailable as exc:
                self.outage_retries += 1
                if on_retry is not None:
                    on_retry(exc)
                log.warning("%s; retrying %d results in %.2fs", exc, len(writes), delay)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(self.retry_max_s, delay * 2)

    async def exists(self, key: str) -> bool:
        try:
            return bool(await self._redis.exists(key))
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailable(f"redis unavailable: {exc}") from exc

    async def missing(self, user_ids: Sequence[str]) -> list[str]:
        """The users among ``user_ids`` that have no result in Redis (one pipeline)."""
        if not user_ids:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for u in user_ids:
                    pipe.exists(self.key(u))
                found = await pipe.execute()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailable(f"redis unavailable: {exc}") from exc
        return [u for u, f in zip(user_ids, found, strict=True) if not f]

    async def set_marker(self, key: str, value: str) -> None:
        """The worker's liveness marker: no TTL, so its absence means Redis lost data."""
        await self._redis.set(key, value)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def _decode(raw: dict | None) -> dict | None:
    if not raw:
        return None
    payload = raw.get(b"payload")
    return orjson.loads(payload) if payload else None


class RecommendationsClient:
    """Synchronous reader: ``get(user_id)`` returns the latest recommendation event as a dict, or None."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = DEFAULT_PREFIX,
                 username: str | None = None, password: str | None = None) -> None:
        self.prefix = prefix
        self._redis = redis.Redis.from_url(url, **_connection_kwargs(username, password))

    def get(self, user_id: str) -> dict | None:
        return _decode(self._redis.hgetall(f"{self.prefix}{user_id}"))

    def get_many(self, user_ids: Sequence[str]) -> dict[str, dict | None]:
        pipe = self._redis.pipeline(transaction=False)
        for u in user_ids:
            pipe.hgetall(f"{self.prefix}{u}")
        return {u: _decode(r) for u, r in zip(user_ids, pipe.execute(), strict=True)}

    def close(self) -> None:
        self._redis.close()


class AsyncRecommendationsClient:
    """asyncio reader with the same API as :class:`RecommendationsClient`."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = DEFAULT_PREFIX,
                 username: str | None = None, password: str | None = None) -> None:
        self.prefix = prefix
        self._redis = aredis.Redis.from_url(url, **_connection_kwargs(username, password))

    async def get(self, user_id: str) -> dict | None:
        return _decode(await self._redis.hgetall(f"{self.prefix}{user_id}"))

    async def get_many(self, user_ids: Sequence[str]) -> dict[str, dict | None]:
        async with self._redis.pipeline(transaction=False) as pipe:
            for u in user_ids:
                pipe.hgetall(f"{self.prefix}{u}")
            res = await pipe.execute()
        return {u: _decode(r) for u, r in zip(user_ids, res, strict=True)}

    async def close(self) -> None:
        await self._redis.aclose()
