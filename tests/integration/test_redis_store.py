"""RedisRecStore and the read clients against a real redis-server: key schema, TTL, versioned compare-and-set,
concurrency, an outage (server stopped and restarted mid-write) and password authentication."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import orjson
import pytest
import redis
from redis.exceptions import AuthenticationError

from streams.localstack import RedisServer
from streams.redis_store import AsyncRecommendationsClient, RecommendationsClient, RecWrite, RedisRecStore
from streams.schemas import recommendation_event

# async fixtures run on the session loop (asyncio_default_fixture_loop_scope); so do these tests
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

TTL_S = 120
PASSWORD = "redis-test-pw-8d1f"


def event(user_id: str, version: int, n_items: int = 3) -> dict:
    items = [{"image_id": f"img-{version}-{j}", "score": 1.0 - j / 10, "source": "content"} for j in range(n_items)]
    return recommendation_event(user_id=user_id, items=items, trigger={"event_id": f"e{version}", "ts": version},
                                model_version="test", generated_at=1_700_000_000_000 + version, version=version)


def rec(user_id: str, version: int) -> RecWrite:
    return RecWrite(user_id, version, 1_700_000_000_000 + version, orjson.dumps(event(user_id, version)))


@pytest.fixture
def prefix() -> str:
    return f"rt:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def raw(redis_server):
    r = redis.Redis.from_url(redis_server.url)
    yield r
    r.close()


@pytest.fixture
async def store(redis_server, prefix):
    s = RedisRecStore(redis_server.url, prefix=prefix, ttl_s=TTL_S, retry_max_s=0.5)
    yield s
    await s.close()


def stored(raw, prefix: str, user_id: str) -> dict:
    return raw.hgetall(f"{prefix}{user_id}")


# ----------------------------------------------------------------------------------------- key schema
async def test_write_sets_hash_fields_and_ttl(store, raw, prefix) -> None:
    w = rec("u-1", 10)
    assert await store.write([w]) == [1]
    h = stored(raw, prefix, "u-1")
    assert set(h) == {b"v", b"generated_at", b"payload"}
    assert int(h[b"v"]) == 10 and int(h[b"generated_at"]) == w.generated_at
    assert orjson.loads(h[b"payload"]) == orjson.loads(w.payload)
    assert raw.type(f"{prefix}u-1") == b"hash" and store.key("u-1") == f"{prefix}u-1"
    pttl = raw.pttl(f"{prefix}u-1")
    assert TTL_S * 1000 - 5000 < pttl <= TTL_S * 1000
    assert await store.write([]) == []
    assert await store.ping()


async def test_newer_write_replaces_the_whole_hash_and_renews_the_ttl(store, raw, prefix) -> None:
    await store.write([rec("u-1", 1)])
    key = f"{prefix}u-1"
    raw.hset(key, "stray", "x")
    raw.pexpire(key, 10_000)
    assert await store.write([rec("u-1", 2)]) == [1]
    assert set(stored(raw, prefix, "u-1")) == {b"v", b"generated_at", b"payload"}, "replaced, not merged"
    assert raw.pttl(key) > 100_000, "TTL renewed on a successful write"


async def test_older_or_equal_version_never_overwrites(store, raw, prefix) -> None:
    assert await store.write([rec("u-1", 10)]) == [1]
    newer_payload = stored(raw, prefix, "u-1")[b"payload"]
    assert await store.write([rec("u-1", 5)]) == [0]
    assert await store.write([rec("u-1", 10)]) == [0], "an equal version is rejected too"
    h = stored(raw, prefix, "u-1")
    assert int(h[b"v"]) == 10 and h[b"payload"] == newer_payload
    assert orjson.loads(h[b"payload"])["version"] == 10
    assert await store.write([rec("u-1", 11)]) == [1]
    assert int(stored(raw, prefix, "u-1")[b"v"]) == 11


async def test_many_writes_in_one_call(store, raw, prefix) -> None:
    writes = [rec(f"u-{n}", 100 + n) for n in range(200)]
    writes += [rec("u-0", 50), rec("u-1", 500), rec("u-2", 102)]  # stale, newer, equal
    res = await store.write(writes)
    assert res == [1] * 200 + [0, 1, 0]
    pipe = raw.pipeline(transaction=False)
    for n in range(200):
        pipe.hget(f"{prefix}u-{n}", "v")
    versions = [int(v) for v in pipe.execute()]
    assert versions == [500 if n == 1 else 100 + n for n in range(200)]


async def test_concurrent_writers_end_with_the_max_version(redis_server, raw, prefix) -> None:
    """Two 'workers' (separate connections) race interleaved versions for the same users."""
    stores = [RedisRecStore(redis_server.url, prefix=prefix, ttl_s=TTL_S) for _ in range(2)]
    rng = random.Random(3)
    try:
        for user in ("hot-a", "hot-b"):
            versions = list(range(1, 61))
            rng.shuffle(versions)
            calls = [stores[n % 2].write([rec(user, v)]) for n, v in enumerate(versions)]
            calls += [stores[n % 2].write([rec(user, v), rec(user, v - 1)]) for n, v in enumerate(versions[:10])]
            results = await asyncio.gather(*calls)
            assert sum(r[0] for r in results[:60]) >= 1
            h = stored(raw, prefix, user)
            assert int(h[b"v"]) == 60
            assert orjson.loads(h[b"payload"])["version"] == 60, "payload and version belong together"
    finally:
        for s in stores:
            await s.close()


# ----------------------------------------------------------------------------------------- clients
async def test_sync_and_async_clients(store, redis_server, prefix) -> None:
    expected = {u: event(u, v) for u, v in (("alice", 3), ("bob", 4), ("ünï-ç", 5))}
    await store.write([RecWrite(u, e["version"], e["generated_at"], orjson.dumps(e)) for u, e in expected.items()])

    sync = RecommendationsClient(redis_server.url, prefix=prefix)
    try:
        assert sync.get("alice") == expected["alice"]
        assert sync.get("nobody") is None
        assert sync.get_many(["bob", "nobody", "ünï-ç"]) == {"bob": expected["bob"], "nobody": None,
                                                              "ünï-ç": expected["ünï-ç"]}
        assert sync.get_many([]) == {}
    finally:
        sync.close()

    client = AsyncRecommendationsClient(redis_server.url, prefix=prefix)
    try:
        assert await client.get("bob") == expected["bob"]
        assert await client.get("nobody") is None
        assert await client.get_many(["alice", "nobody"]) == {"alice": expected["alice"], "nobody": None}
    finally:
        await client.close()

    other_prefix = RecommendationsClient(redis_server.url, prefix=prefix + "x:")
    try:
        assert other_prefix.get("alice") is None, "the prefix is part of the key schema"
    finally:
        other_prefix.close()


async def test_client_ignores_a_hash_without_payload(raw, redis_server, prefix) -> None:
    raw.hset(f"{prefix}half", mapping={"v": 1})
    c = RecommendationsClient(redis_server.url, prefix=prefix)
    try:
        assert c.get("half") is None
    finally:
        c.close()


# ----------------------------------------------------------------------------------------- outage
async def test_write_survives_a_redis_outage(tmp_path, prefix) -> None:
    """Stop redis, start a write, restart redis on the same port ~1 s later: the write completes."""
    server = RedisServer(tmp_path / "outage").start()
    store = RedisRecStore(server.url, prefix=prefix, ttl_s=TTL_S, retry_max_s=0.3)
    retries: list[BaseException] = []
    try:
        assert await store.write([rec("u", 1)]) == [1]  # connection + script cached before the outage
        server.stop()
        t0 = time.monotonic()
        task = asyncio.create_task(store.write([rec("u", 2), rec("v", 1)], on_retry=retries.append))
        await asyncio.sleep(1.0)
        assert not task.done(), "the write waits for Redis instead of failing or dropping results"
        server = RedisServer(tmp_path / "outage", port=server.port).start()  # empty: no persistence
        assert await asyncio.wait_for(task, 15) == [1, 1]
        assert time.monotonic() - t0 < 6, "backoff is capped (retry_max_s), recovery is prompt"
        assert store.outage_retries > 0 and len(retries) == store.outage_retries
        c = RecommendationsClient(server.url, prefix=prefix)
        try:
            assert c.get("u")["version"] == 2 and c.get("v")["version"] == 1
        finally:
            c.close()
        before = store.outage_retries
        assert await store.write([rec("u", 3)]) == [1] and store.outage_retries == before
    finally:
        await store.close()
        server.stop()


# ----------------------------------------------------------------------------------------- authentication
@pytest.fixture
def auth_server(tmp_path):
    server = RedisServer(tmp_path / "auth", password=PASSWORD).start()
    yield server
    server.stop()


async def test_store_and_clients_with_a_password(auth_server, prefix) -> None:
    url = f"redis://127.0.0.1:{auth_server.port}/0"
    store = RedisRecStore(url, prefix=prefix, ttl_s=TTL_S, password=PASSWORD)
    try:
        assert await store.write([rec("u", 7)]) == [1]
        assert await store.ping()
    finally:
        await store.close()
    sync = RecommendationsClient(url, prefix=prefix, password=PASSWORD)
    via_url = RecommendationsClient(auth_server.url, prefix=prefix)  # redis://:<password>@host form
    aclient = AsyncRecommendationsClient(url, prefix=prefix, password=PASSWORD)
    try:
        assert sync.get("u")["version"] == 7 and via_url.get("u")["version"] == 7
        assert (await aclient.get("u"))["version"] == 7
    finally:
        sync.close()
        via_url.close()
        await aclient.close()


@pytest.mark.parametrize("password", [None, "wrong-password"])
async def test_clients_without_the_password_fail_clearly(auth_server, prefix, password) -> None:
    url = f"redis://127.0.0.1:{auth_server.port}/0"
    sync = RecommendationsClient(url, prefix=prefix, password=password)
    aclient = AsyncRecommendationsClient(url, prefix=prefix, password=password)
    try:
        with pytest.raises(AuthenticationError):
            sync.get("u")
        with pytest.raises(AuthenticationError):
            await aclient.get("u")
    finally:
        sync.close()
        await aclient.close()
    store = RedisRecStore(url, prefix=prefix, password=password)
    try:
        assert not await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize("password", [None, "wrong-password"])
async def test_store_write_without_the_password_raises_instead_of_retrying(auth_server, prefix, password) -> None:
    store = RedisRecStore(f"redis://127.0.0.1:{auth_server.port}/0", prefix=prefix, password=password,
                          retry_max_s=0.2)
    try:
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(store.write([rec("u", 1)]), 2.0)
        assert store.outage_retries == 0
    finally:
        await store.close()
