"""End to end on the real broker and real redis-server: produce images + behaviour, read Redis and topics."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
import pytest

from models import UserState
from models.tags import tag_row
from streams.redis_store import RecommendationsClient
from streams.replay import Replay
from streams.schemas import decode_dead_letter
from tests.conftest import wait_until
from tests.kafka_io import produce, read_all, sync_ensure_topics

pytestmark = pytest.mark.integration

ACTIONS_POS = ["view", "click", "like", "save", "share"]


def make_images(n: int, dim: int, themes: int = 4, seed: int = 1, tags: bool = False):
    """``n`` image events spread over ``themes`` themes; with ``tags``, each carries ``["Theme<t>", "photo"]``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(themes, dim))
    recs, theme_of = [], {}
    now = int(time.time() * 1000)
    for i in range(n):
        t = i % themes
        v = centres[t] / np.linalg.norm(centres[t]) + 0.3 * rng.normal(size=dim) / np.sqrt(dim)
        image_id = f"img-{i:04d}"
        theme_of[image_id] = t
        ev = {"image_id": image_id, "embedding": v.tolist(), "created_at": now - (n - i) * 1000}
        if tags:
            ev["tags"] = [f"Theme{t}", "photo"]
        recs.append((image_id.encode(), orjson.dumps(ev)))
    return recs, theme_of, centres


def make_events(users: list[str], theme_of: dict[str, int], n: int, seed: int = 2, step_ms: int = 10):
    rng = np.random.default_rng(seed)
    images = sorted(theme_of)
    taste = {u: int(rng.integers(4)) for u in users}
    out = []
    base = int(time.time() * 1000) - n * step_ms
    for j in range(n):
        u = users[int(rng.integers(len(users)))]
        pool = [i for i in images if theme_of[i] == taste[u]] if rng.random() < 0.8 else images
        img = pool[int(rng.integers(len(pool)))]
        action = str(rng.choice(ACTIONS_POS)) if theme_of[img] == taste[u] else str(rng.choice(["skip", "hide"]))
        out.append((u.encode(), orjson.dumps({"user_id": u, "image_id": img, "action": action,
                                               "ts": base + j * step_ms, "event_id": f"e{j}"})))
    return out, taste


def redis_client(s):
    return RecommendationsClient(s.redis_url, prefix=s.redis_key_prefix)


def test_recommendations_reach_redis_and_topic(make_settings, start_worker):
    s = make_settings()
    sync_ensure_topics(s)
    images, theme_of, _ = make_images(400, s.dim)
    asyncio.run(produce(s, s.topic_images, images))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 400, 30, what="400 images indexed")
    users = [f"u{i}" for i in range(12)]
    events, taste = make_events(users, theme_of, 300)
    t0 = time.monotonic()
    asyncio.run(produce(s, s.topic_behavior, events))
    client = redis_client(s)

    last = {k.decode(): orjson.loads(v)["event_id"] for k, v in events}

    def all_done():  # every user's result reflects the user's last event
        got = client.get_many(users)
        return all(r is not None and r["trigger"].get("event_id") == last[u] for u, r in got.items())
    wait_until(all_done, 30, what="recommendations for every user")
    elapsed = time.monotonic() - t0
    assert elapsed < 15, f"300 events took {elapsed:.1f}s to reach Redis"

    seen: dict[str, set[str]] = {u: set() for u in users}
    for k, v in events:
        seen[k.decode()].add(orjson.loads(v)["image_id"])

    def settled():
        """A consistent snapshot: every user's Redis result is on the output topic and is the newest there.
        (Consumed != processed: the last batch may still be publishing slices, so poll until quiet.)"""
        got = client.get_many(users)
        if not all(r is not None and r["trigger"].get("event_id") == last[u] for u, r in got.items()):
            return None
        out = {}
        for rec in asyncio.run(read_all(s, s.topic_recommendations)):
            ev = orjson.loads(rec.value)
            assert rec.key.decode() == ev["user_id"]
            assert set(ev) >= {"user_id", "items", "generated_at", "trigger", "model_version", "rec_id"}
            out[ev["rec_id"]] = ev
        for u, r in got.items():
            mine = [e for e in out.values() if e["user_id"] == u]
            if r["rec_id"] not in out or max(mine, key=lambda e: e["version"])["rec_id"] != r["rec_id"]:
                return None
        return got, out
    got, on_topic = wait_until(settled, 15, what="Redis holding, for every user, the newest result on the topic")
    for u in users:
        r = got[u]
        ids = [i["image_id"] for i in r["items"]]
        assert len(ids) == s.k and len(set(ids)) == s.k
        assert not set(ids) & seen[u], f"{u} was recommended images already interacted with"
        # the user's planted taste dominates the content recommendations
        assert sum(theme_of[i] == taste[u] for i in ids) >= s.k * 0.7
        assert on_topic[r["rec_id"]]["items"] == r["items"]

    # Deleting an image (tombstone) removes it from every later result.
    victim = client.get(users[0])["items"][0]["image_id"]
    asyncio.run(produce(s, s.topic_images, [(victim.encode(), None)]))
    wait_until(lambda: w.metric("reco_index_size") == 399, 15, what="deletion applied")
    more, _ = make_events(users[:1], theme_of, 3, seed=9)
    more = [(k, orjson.dumps({**orjson.loads(v), "event_id": f"x{n}"})) for n, (k, v) in enumerate(more)]
    before = client.get(users[0])["version"]
    asyncio.run(produce(s, s.topic_behavior, more))
    wait_until(lambda: client.get(users[0])["version"] > before, 15, what="refresh after delete")
    assert victim not in [i["image_id"] for i in client.get(users[0])["items"]]
    assert w.metric("reco_event_to_redis_seconds_count") >= 303

    # every metric family the worker declares is exported at /metrics
    from streams.metrics import REGISTRY

    text = w.metrics()
    for family in REGISTRY.collect():
        exported = family.name + ("_total" if family.type == "counter" else "")
        assert f"# TYPE {exported} " in text, f"{exported} missing from /metrics"
    assert w.metric("reco_events_produced_total", topic=s.topic_recommendations) >= len(users)
    wait_until(lambda: w.metric("reco_user_table_size") == len(users), 10, what="user table gauge")
    wait_until(lambda: "reco_consumer_lag{" in w.metrics(), 10, what="consumer lag gauge")


def test_worker_results_equal_in_process_core(make_settings, start_worker):
    """One partition, one event per batch: the worker must compute exactly what the core computes in-process
    (the images carry tags, so the tag features take part)."""
    s = make_settings(partitions=1, batch_max=1)
    sync_ensure_topics(s)
    images, theme_of, _ = make_images(60, s.dim, seed=3, tags=True)
    img_meta = asyncio.run(produce(s, s.topic_images, images))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 60, 30, what="images indexed")
    users = [f"p{i}" for i in range(6)]
    # 15 s apart: a user's next event comes within the 60 s session gap or after it, so sessions both
    # continue and end (the session state and the ranker's session features are compared too).
    events, _ = make_events(users, theme_of, 80, seed=4, step_ms=15_000)
    meta = asyncio.run(produce(s, s.topic_behavior, events))
    client = redis_client(s)
    last_event = {}
    for (k, v), (_p, off) in zip(events, meta, strict=True):
        last_event[k.decode()] = orjson.loads(v)["event_id"]
    wait_until(lambda: all((r := client.get(u)) and r["trigger"].get("event_id") == last_event[u] for u in users),
               30, what="every user's last event processed")

    replay = Replay(s)
    for (k, v), (_p, off) in zip(images, img_meta, strict=True):
        replay.image(k, v, off)
    expected = {}
    for (k, v), (_p, off) in zip(events, meta, strict=True):
        st = replay.behavior(k, v, off)
        expected[st.user_id] = replay.recommend_ids(st.user_id)  # results right after this user's event

    # the tags took part: every positive counted its image's two tags, "photo" among them
    assert replay.core.tag_counts.shares(tag_row(["photo"]))[0] == pytest.approx(0.5)
    changelog = asyncio.run(read_all(s, f"{s.app_id}-users-changelog"))
    final = {rec.key.decode(): UserState.from_bytes(rec.value) for rec in changelog}
    sessions = [(final[u].session, len(final[u].seen)) for u in users]
    assert any(1 < n < seen for n, seen in sessions), f"no session both continued and ended: {sessions}"
    for u in users:
        assert final[u].same_as(replay.states[u]), f"table state of {u} differs from the in-process replay"
        got = [i["image_id"] for i in client.get(u)["items"]]
        assert got == expected[u], f"{u}: worker {got} != core {expected[u]}"


def test_restart_recovers_state_without_double_apply(make_settings, start_worker):
    """SIGKILL mid-stream, restart: the table comes back from the changelog and no event is applied twice."""
    s = make_settings(partitions=2, batch_max=20, commit_interval_s=30.0)  # no commit before the kill => redelivery
    sync_ensure_topics(s)
    images, theme_of, _ = make_images(40, s.dim, seed=5)
    asyncio.run(produce(s, s.topic_images, images))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 40, 30, what="images indexed")
    users = [f"r{i}" for i in range(8)]
    events, _ = make_events(users, theme_of, 400, seed=6)
    meta1 = asyncio.run(produce(s, s.topic_behavior, events[:250]))
    wait_until(lambda: w.metric("reco_events_consumed_total", topic=s.topic_behavior) >= 250, 30,
               what="first part consumed")
    w.kill()  # no commit since up to 5 s: those events will be redelivered
    w2 = start_worker(s, name="restarted")
    meta2 = asyncio.run(produce(s, s.topic_behavior, events[250:]))
    client = redis_client(s)
    last = {}
    for k, v in events:
        last[k.decode()] = orjson.loads(v)["event_id"]
    wait_until(lambda: all((r := client.get(u)) and r["trigger"].get("event_id") == last[u] for u in users), 60,
               what="all events processed after restart")

    replay = Replay(s)
    for k, v in images:
        replay.image(k, v, 0)
    # Replay per partition in offset order, exactly once.
    ordered = sorted(zip(events, meta1 + meta2, strict=True), key=lambda x: x[1])
    for (k, v), (_p, off) in ordered:
        replay.behavior(k, v, off)
    changelog = asyncio.run(read_all(s, f"{s.app_id}-users-changelog"))
    final = {rec.key.decode(): UserState.from_bytes(rec.value) for rec in changelog}
    counts = {u: sum(1 for k, _ in events if k.decode() == u) for u in users}
    for u in users:
        assert final[u].version == counts[u], f"{u}: {final[u].version} applications of {counts[u]} events"
        assert final[u].same_as(replay.states[u])
    assert w2.metric("reco_duplicate_events_total") > 0, "the kill should have caused redelivery"


def test_bad_input_goes_to_dead_letters_and_stream_keeps_flowing(make_settings, start_worker):
    s = make_settings(partitions=1)
    sync_ensure_topics(s)
    images, theme_of, _ = make_images(20, s.dim, seed=7)
    bad_images = [
        (b"img-bad1", orjson.dumps({"image_id": "img-bad1", "embedding": [1.0] * (s.dim + 1), "created_at": 1})),
        (b"img-bad2", orjson.dumps({"image_id": "img-bad2", "embedding": [1e300] * s.dim, "created_at": 1})),
        (b"img-bad3", b"\x00\x01garbage"),
    ]
    asyncio.run(produce(s, s.topic_images, images + bad_images))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 20, 30, what="good images indexed")
    bad = [
        (b"u1", b"\xff\xfe not json"),
        (b"u1", b'{"user_id": "u1", "image_id": "img-0001", "act'),
        (b"u1", orjson.dumps({"user_id": "u1", "image_id": "img-0001", "action": "teleport", "ts": 1})),
        (b"u1", orjson.dumps({"user_id": "u1", "image_id": "img-0001", "action": "like"})),
        (b"u1", orjson.dumps({"user_id": "u1", "image_id": "img-0001", "action": "like", "ts": "yesterday"})),
        (b"u2", orjson.dumps({"user_id": "u1", "image_id": "img-0001", "action": "like", "ts": 1})),
        (b"u1", b""),
    ]
    good = [(b"u1", orjson.dumps({"user_id": "u1", "image_id": "img-0002", "action": "like", "ts": 5,
                                  "event_id": "good-1"}))]
    asyncio.run(produce(s, s.topic_behavior, bad + good))
    client = redis_client(s)
    wait_until(lambda: (r := client.get("u1")) and r["trigger"].get("event_id") == "good-1", 20,
               what="the good event after the bad ones")
    letters = wait_until(lambda: (d := asyncio.run(read_all(s, s.topic_dead_letters))) and len(d) >= 10 and d,
                         20, what="10 dead letters")
    decoded = [decode_dead_letter(r.value) for r in letters]
    reasons = sorted(d["error"]["reason"] for d in decoded)
    assert reasons == sorted(["not_json", "not_json", "unknown_action", "missing_field", "wrong_type",
                              "key_mismatch", "empty", "dimension_mismatch", "huge_values", "not_json"])
    originals = {d["value"] for d in decoded if d["source"]["topic"] == s.topic_behavior}
    assert {v for _, v in bad} == originals, "dead letters carry the original bytes"
    for d in decoded:
        assert d["source"]["offset"] >= 0 and d["error"]["class"] and d["error"]["message"]
    assert w.metric("reco_dead_letters_total") == 10
    assert w.proc.poll() is None, "the worker survived"


def test_new_image_is_pushed_to_matching_users(make_settings, start_worker):
    s = make_settings(partitions=1, push_min_score=0.6)
    sync_ensure_topics(s)
    images, theme_of, centres = make_images(40, s.dim, seed=8)
    asyncio.run(produce(s, s.topic_images, images))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 40, 30, what="images indexed")
    theme0 = [i for i, t in theme_of.items() if t == 0][:5]
    asyncio.run(produce(s, s.topic_behavior, [
        (b"fan", orjson.dumps({"user_id": "fan", "image_id": i, "action": "like", "ts": n + 1, "event_id": f"f{n}"}))
        for n, i in enumerate(theme0)]))
    client = redis_client(s)
    wait_until(lambda: (r := client.get("fan")) and r["trigger"].get("event_id") == "f4", 20, what="fan warmed up")
    n0, sum0 = w.metric("reco_image_searchable_seconds_count"), w.metric("reco_image_searchable_seconds_sum")
    t0 = time.monotonic()
    new_vec = centres[0] / np.linalg.norm(centres[0])
    asyncio.run(produce(s, s.topic_images, [(b"img-new", orjson.dumps(
        {"image_id": "img-new", "embedding": new_vec.tolist(), "created_at": int(time.time() * 1000)}))]))
    r = wait_until(lambda: (r := client.get("fan")) and r["trigger"].get("image_id") == "img-new" and r, 10,
                   what="push refresh for the new image")
    assert time.monotonic() - t0 < 5
    assert r["items"][0]["image_id"] == "img-new", "the new image is the best match for this user"
    # upload -> searchable is measured per worker (the catalog record keeps the upload's timestamp)
    assert w.metric("reco_image_searchable_seconds_count") == n0 + 1
    assert 0 < w.metric("reco_image_searchable_seconds_sum") - sum0 < 5
    assert w.metric("reco_image_to_catalog_seconds_count") == 41


def test_cold_start_user_gets_trending_and_fresh(make_settings, start_worker):
    s = make_settings(partitions=1)
    sync_ensure_topics(s)
    images, theme_of, _ = make_images(30, s.dim, seed=10)
    asyncio.run(produce(s, s.topic_images, images))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 30, 30, what="images indexed")
    popular = ["img-0003"] * 5 + ["img-0007"] * 3
    evs = [(f"fan{n}".encode(), orjson.dumps({"user_id": f"fan{n}", "image_id": i, "action": "like", "ts": 10 + n}))
           for n, i in enumerate(popular)]
    evs.append((b"newbie", orjson.dumps({"user_id": "newbie", "image_id": "unknown-image", "action": "view",
                                         "ts": 100})))
    asyncio.run(produce(s, s.topic_behavior, evs))
    client = redis_client(s)
    r = wait_until(lambda: client.get("newbie"), 20, what="cold user's results")
    sources = {i["source"] for i in r["items"]}
    ids = [i["image_id"] for i in r["items"]]
    assert sources == {"trending", "fresh"}
    assert ids[0] == "img-0003" and "img-0007" in ids, "most-liked images lead a cold user's list"
    assert "img-0029" in ids, "the newest image is offered as fresh"
    assert w.metric("reco_unknown_image_events_total") == 1
