"""Twenty-plus kinds of bad input through a real worker: each is dead-lettered with its reason and counted,
or handled by a documented rule (README "Bad input rules"); the partition keeps flowing; the worker lives."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from streams.redis_store import RecommendationsClient
from streams.schemas import decode_dead_letter
from tests.conftest import wait_until
from tests.kafka_io import produce, read_all, sync_ensure_topics

pytestmark = pytest.mark.chaos

NOW = int(time.time() * 1000)


def b(**fields) -> bytes:
    base = {"user_id": "u1", "image_id": "img-0001", "action": "like", "ts": NOW}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


# (key, value, expected dead-letter reason) on the behaviour topic
BEHAVIOUR = [
    (b"u1", b"\x00\xff\xfe garbage", "not_json"),
    (b"u1", b"", "empty"),
    (b"u1", b'{"user_id": "u1", "image_id": "img-0001", "act', "not_json"),
    (b"u1", b"[1, 2, 3]", "not_object"),
    (b"u1", b(action="teleport"), "unknown_action"),
    (b"u1", b(ts=...), "missing_field"),
    (b"u1", b(user_id=...), "missing_field"),
    (b"u1", b(ts="yesterday"), "wrong_type"),
    (b"u1", b(ts=True), "wrong_type"),
    (b"u1", b(image_id=42), "wrong_type"),
    (b"u1", b(ts=-5), "bad_timestamp"),
    (b"u1", b(ts=NOW + 10 * 86_400_000), "future_timestamp"),
    (b"u1", b(dwell_ms=-1), "bad_dwell"),
    (b"u1", b(schema=2), "unsupported_schema"),
    (b"u2", b(), "key_mismatch"),
    (b"x" * 300, orjson.dumps({"user_id": "x" * 300, "image_id": "img-0001", "action": "like", "ts": NOW}), "bad_id"),
    (b"u1", b(image_id="img\n0001"), "bad_id"),
    (b"u1", b(caption="x" * 70_000), "too_large"),
]

# (key, value, expected reason) on the new-images topic (dim 16 in these tests)
IMAGES = [
    (b"bad-dim", orjson.dumps({"image_id": "bad-dim", "embedding": [0.1] * 17, "created_at": NOW}), "dimension_mismatch"),
    (b"bad-short", orjson.dumps({"image_id": "bad-short", "embedding": [0.1] * 3, "created_at": NOW}), "dimension_mismatch"),
    (b"bad-huge", orjson.dumps({"image_id": "bad-huge", "embedding": [1e300] * 16, "created_at": NOW}), "huge_values"),
    (b"bad-zero", orjson.dumps({"image_id": "bad-zero", "embedding": [0.0] * 16, "created_at": NOW}), "zero_vector"),
    (b"bad-nan", b'{"image_id": "bad-nan", "embedding": [NaN], "created_at": 1}', "not_json"),
    (b"bad-str", orjson.dumps({"image_id": "bad-str", "embedding": ["a"] * 16, "created_at": NOW}), "bad_embedding"),
    (b"bad-empty", orjson.dumps({"image_id": "bad-empty", "created_at": NOW}), "nothing_to_embed"),
    (b"bad-tags", orjson.dumps({"image_id": "bad-tags", "tags": [1, 2], "created_at": NOW}), "bad_field"),
]


def test_bad_input_kinds_through_a_real_worker(make_settings, start_worker):
    s = make_settings(partitions=1, max_event_bytes=64 * 1024)
    sync_ensure_topics(s)
    good_images = [(f"img-{i:04d}".encode(), orjson.dumps({"image_id": f"img-{i:04d}", "created_at": NOW,
                                                            "embedding": [float((i + j) % 5) + 0.1 for j in range(16)]}))
                   for i in range(10)]
    asyncio.run(produce(s, s.topic_images, good_images + [(k, v) for k, v, _ in IMAGES] + [(b"never-existed", None)]))
    w = start_worker(s)
    wait_until(lambda: w.metric("reco_index_size") == 10, 30, what="good images indexed")

    rules = [
        # documented rules, not dead letters:
        (b"u1", b(image_id="img-0002", event_id="dup-1")),   # duplicate event_id: applied once
        (b"u1", b(image_id="img-0003", event_id="dup-1")),
        (b"u1", b(image_id="img-0004", ts=NOW - 3_600_000, event_id="late")),  # out of order in time: applied
        (b"u1", b(image_id="no-such-image", event_id="unknown")),  # unknown image: seen, no taste update
        (b"\xc3\xa9l\xc3\xa8ve-\xe2\x9c\x93", b(user_id="élève-✓", event_id="unicode")),  # unicode ids are fine
    ]
    last = (b"u1", b(image_id="img-0005", event_id="last-good"))
    asyncio.run(produce(s, s.topic_behavior, [(k, v) for k, v, _ in BEHAVIOUR] + rules + [last]))

    client = RecommendationsClient(s.redis_url, prefix=s.redis_key_prefix)
    wait_until(lambda: (r := client.get("u1")) and r["trigger"]["event_id"] == "last-good", 30,
               what="the good event after all the bad ones")
    assert client.get("élève-✓") is not None
    expected = sorted([r for _, _, r in BEHAVIOUR] + [r for _, _, r in IMAGES])
    letters = wait_until(lambda: (d := asyncio.run(read_all(s, s.topic_dead_letters))) and len(d) >= len(expected)
                         and d, 30, what="all dead letters")
    decoded = [decode_dead_letter(r.value) for r in letters]
    assert sorted(d["error"]["reason"] for d in decoded) == expected
    originals = {(d["source"]["topic"], d["value"]) for d in decoded}
    for _, v, _ in BEHAVIOUR:
        assert (s.topic_behavior, v) in originals, "the original bytes are kept"
    for reason in set(expected):
        topic = s.topic_images if reason in {r for _, _, r in IMAGES} - {r for _, _, r in BEHAVIOUR} else None
        assert w.metric("reco_dead_letters_total", reason=reason) >= 1, reason
        if topic:
            assert w.metric("reco_dead_letters_total", topic=topic, reason=reason) >= 1
    assert w.metric("reco_dead_letters_total") == len(expected)

    # the documented rules
    state = client.get("u1")
    assert w.metric("reco_duplicate_events_total") == 1, "the second 'dup-1' is recognised and skipped"
    assert w.metric("reco_unknown_image_events_total") == 1
    assert "no-such-image" not in [i["image_id"] for i in state["items"]]
    assert w.proc.poll() is None, "the worker is alive"
    assert w.metric("reco_index_size") == 10, "a tombstone for an unknown image is a no-op"
