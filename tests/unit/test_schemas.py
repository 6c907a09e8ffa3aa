"""Event contracts (streams.schemas): every kind of bad input maps to its stable dead-letter ``reason``.

Table-driven: each row is one kind of bad record and the reason code it must be rejected with. Valid events
parse to the right dataclass without mutating their input; dead letters carry the original bytes exactly.
"""

from __future__ import annotations

import base64
import copy

import numpy as np
import orjson
import pytest

from models.errors import InvalidInput
from streams.errors import InvalidEvent, StreamError
from streams.schemas import (
    BehaviorEvent,
    ImageEvent,
    catalog_record,
    dead_letter,
    decode_dead_letter,
    parse_behavior,
    parse_catalog,
    parse_image,
    recommendation_event,
)

NOW = 1_800_000_000_000  # fixed "now" (epoch ms) for the timestamp checks
DAY = 86_400_000
DIM = 8
GOOD_B = {"user_id": "u-42", "image_id": "img-7", "action": "like", "ts": NOW - 1000, "event_id": "e-1",
          "dwell_ms": 3200}
GOOD_I = {"image_id": "img-7", "embedding": [0.5] * DIM, "caption": "a cat on a sofa", "tags": ["cat"],
          "url": "https://example.invalid/7.jpg", "created_at": NOW - 1000}


def b(**changes) -> bytes:
    """The good behaviour event with fields changed (value ``...`` = field removed), as JSON bytes."""
    d = {**GOOD_B, **changes}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


def i(**changes) -> bytes:
    d = {**GOOD_I, **changes}
    return orjson.dumps({k: v for k, v in d.items() if v is not ...})


def behavior(raw, key=b"u-42", **kw):
    return parse_behavior(raw, key=key, now_ms=NOW, **kw)


def image(raw, key=b"img-7", **kw):
    return parse_image(raw, key=key, dim=DIM, now_ms=NOW, **kw)


# ------------------------------------------------------------------------------------------ behaviour
BAD_BEHAVIOR = [
    # (case id, raw bytes, extra kwargs, expected reason)
    ("garbage-bytes", b"\xff\xfe\x00garbage", {}, "not_json"),
    ("empty", b"", {}, "empty"),
    ("none", None, {}, "empty"),
    ("truncated-json", b'{"user_id": "u-42", "image_id": "img-7", "act', {}, "not_json"),
    ("utf8-bom", b"\xef\xbb\xbf" + b(), {}, "not_json"),
    ("nan-literal", b'{"user_id": "u-42", "ts": NaN}', {}, "not_json"),
    ("lone-surrogate", b'{"user_id": "\\ud800", "image_id": "i", "action": "like", "ts": 1}', {}, "not_json"),
    ("json-array", b'[{"user_id": "u-42"}]', {}, "not_object"),
    ("json-number", b"42", {}, "not_object"),
    ("json-string", b'"u-42 liked img-7"', {}, "not_object"),
    ("json-null", b"null", {}, "not_object"),
    ("schema-2", b(schema=2), {}, "unsupported_schema"),
    ("schema-0", b(schema=0), {}, "unsupported_schema"),
    ("schema-string", b(schema="1"), {}, "unsupported_schema"),
    ("schema-bool", b(schema=True), {}, "unsupported_schema"),
    ("missing-user_id", b(user_id=...), {}, "missing_field"),
    ("missing-image_id", b(image_id=...), {}, "missing_field"),
    ("missing-action", b(action=...), {}, "missing_field"),
    ("missing-ts", b(ts=...), {}, "missing_field"),
    ("null-ts", b(ts=None), {}, "missing_field"),
    ("user_id-int", b(user_id=42), {"key": None}, "wrong_type"),
    ("image_id-list", b(image_id=["img-7"]), {}, "wrong_type"),
    ("action-int", b(action=1), {}, "wrong_type"),
    ("ts-string", b(ts="yesterday"), {}, "wrong_type"),
    ("ts-float", b(ts=float(NOW - 1000)), {}, "wrong_type"),
    ("ts-fraction", b(ts=1.5), {}, "wrong_type"),
    ("ts-bool", b(ts=True), {}, "wrong_type"),
    ("ts-beyond-int64", b'{"user_id":"u-42","image_id":"i","action":"like","ts":123456789012345678901234567890}',
     {}, "wrong_type"),
    ("event_id-int", b(event_id=7), {}, "wrong_type"),
    ("dwell-bool", b(dwell_ms=True), {}, "wrong_type"),
    ("dwell-float", b(dwell_ms=3.5), {}, "wrong_type"),
    ("dwell-string", b(dwell_ms="3s"), {}, "wrong_type"),
    ("unknown-action", b(action="teleport"), {}, "unknown_action"),
    ("action-wrong-case", b(action="LIKE"), {}, "unknown_action"),
    ("action-empty", b(action=""), {}, "unknown_action"),
    ("user_id-empty", b(user_id=""), {"key": b""}, "bad_id"),
    ("user_id-too-long", b(user_id="u" * 257), {"key": None}, "bad_id"),
    ("user_id-over-custom-limit", b(user_id="u" * 17), {"key": None, "max_id_length": 16}, "bad_id"),
    ("image_id-too-long", b(image_id="i" * 257), {}, "bad_id"),
    ("user_id-newline", b(user_id="u-42\n"), {"key": None}, "bad_id"),
    ("user_id-nul", b(user_id="u\x0042"), {"key": None}, "bad_id"),
    ("image_id-tab", b(image_id="img\t7"), {}, "bad_id"),
    ("image_id-escape", b(image_id="img\x1b[31m7"), {}, "bad_id"),
    ("user_id-leading-space", b(user_id=" u-42"), {"key": None}, "bad_id"),
    ("user_id-trailing-space", b(user_id="u-42 "), {"key": None}, "bad_id"),
    ("user_id-nbsp", b(user_id="u-42\u00a0"), {"key": None}, "bad_id"),
    ("user_id-zero-width", b(user_id="u-\u200b42"), {"key": None}, "bad_id"),
    ("user_id-spaces-only", b(user_id="   "), {"key": None}, "bad_id"),
    ("event_id-empty", b(event_id=""), {}, "bad_id"),
    ("event_id-control", b(event_id="e\r1"), {}, "bad_id"),
    ("event_id-too-long", b(event_id="e" * 257), {}, "bad_id"),
    ("ts-negative", b(ts=-1), {}, "bad_timestamp"),
    ("ts-beyond-2^53", b(ts=2**53 + 1), {}, "bad_timestamp"),
    ("ts-far-future", b(ts=NOW + DAY + 1), {}, "future_timestamp"),
    ("ts-future-custom-skew", b(ts=NOW + 1001), {"max_future_skew_ms": 1000}, "future_timestamp"),
    ("dwell-negative", b(dwell_ms=-1), {}, "bad_dwell"),
    ("dwell-over-a-day", b(dwell_ms=DAY + 1), {}, "bad_dwell"),
    ("key-mismatch", b(), {"key": b"u-43"}, "key_mismatch"),
    ("key-mismatch-case", b(), {"key": b"U-42"}, "key_mismatch"),
    ("key-empty", b(), {"key": b""}, "key_mismatch"),
    ("oversized", b(image_id="i" * 200), {"max_bytes": 128}, "too_large"),
    ("oversized-default", b'{"user_id": "' + b"u" * (64 * 1024) + b'"}', {}, "too_large"),
]


@pytest.mark.parametrize(("raw", "kw", "reason"), [c[1:] for c in BAD_BEHAVIOR], ids=[c[0] for c in BAD_BEHAVIOR])
def test_bad_behavior_is_rejected_with_its_reason(raw, kw, reason) -> None:
    before = copy.copy(raw)
    with pytest.raises(InvalidEvent) as ei:
        behavior(raw, **kw)
    assert ei.value.reason == reason, str(ei.value)
    assert isinstance(ei.value, InvalidInput) and isinstance(ei.value, StreamError)
    assert str(ei.value), "a dead letter needs a message"
    assert raw == before


def test_behavior_table_covers_every_behavior_reason() -> None:
    assert {c[3] for c in BAD_BEHAVIOR} == {
        "empty", "too_large", "not_json", "not_object", "unsupported_schema", "missing_field", "wrong_type",
        "bad_id", "key_mismatch", "unknown_action", "bad_timestamp", "future_timestamp", "bad_dwell"}
    assert len(BAD_BEHAVIOR) >= 25


def test_error_message_of_an_over_long_id_is_bounded() -> None:
    with pytest.raises(InvalidEvent) as ei:
        behavior(b(user_id="x" * 100_000), key=None, max_bytes=1 << 20)
    assert ei.value.reason == "bad_id" and len(str(ei.value)) < 300


def test_valid_behavior_parses_to_the_dataclass() -> None:
    raw = b()
    ev = behavior(raw)
    assert ev == BehaviorEvent("u-42", "img-7", "like", NOW - 1000, "e-1", 3200)
    assert raw == b(), "input bytes unchanged"
    # round trip through the event's own serialisation (adds "schema": 1)
    assert orjson.loads(ev.to_bytes())["schema"] == 1
    assert behavior(ev.to_bytes()) == ev


def test_behavior_optional_fields_and_limits() -> None:
    ev = behavior(b(event_id=..., dwell_ms=...), key=None)
    assert (ev.event_id, ev.dwell_ms) == (None, None)
    assert behavior(b(event_id=None, dwell_ms=None)).event_id is None, "null optional = absent"
    assert behavior(b(schema=1)).user_id == "u-42"
    assert behavior(b(dwell_ms=0)).dwell_ms == 0 and behavior(b(dwell_ms=DAY)).dwell_ms == DAY
    assert behavior(b(ts=0)).ts == 0
    assert behavior(b(ts=NOW + DAY)).ts == NOW + DAY, "exactly at the skew limit is accepted"
    assert behavior(b(user_id="u" * 256), key=b"u" * 256).user_id == "u" * 256
    assert behavior(b(extra="ignored", nested={"x": 1})).action == "like", "unknown fields are ignored"
    raw = b()
    assert behavior(raw, max_bytes=len(raw)).user_id == "u-42", "exactly max_bytes is accepted"
    assert behavior(bytearray(raw)).user_id == "u-42"


@pytest.mark.parametrize("action", ["view", "click", "like", "save", "share", "skip", "hide"])
def test_every_documented_action_is_accepted(action) -> None:
    assert behavior(b(action=action)).action == action


@pytest.mark.parametrize("uid", ["用户-42", "ユーザー", "émilie", "пользователь", "u-🙂", "a:b/c@d.e", "x" * 8])
def test_unicode_ids_are_fine(uid) -> None:
    ev = behavior(b(user_id=uid, image_id=f"img-{uid}", event_id=f"e-{uid}"), key=uid.encode())
    assert (ev.user_id, ev.image_id, ev.event_id) == (uid, f"img-{uid}", f"e-{uid}")


def test_parsing_does_not_mutate_a_mutable_buffer() -> None:
    buf = bytearray(b())
    snapshot = bytes(buf)
    behavior(buf)
    assert bytes(buf) == snapshot


# ------------------------------------------------------------------------------------------ images
BAD_IMAGE = [
    ("garbage-bytes", b"\x00\x01garbage", {}, "not_json"),
    ("empty", b"", {}, "empty"),
    ("truncated-json", b'{"image_id": "img-7", "embedding": [0.1, 0.2', {}, "not_json"),
    ("nan-in-json", b'{"image_id": "img-7", "embedding": [NaN], "created_at": 1}', {}, "not_json"),
    ("infinity-overflow", b'{"image_id": "img-7", "embedding": [1e400], "created_at": 1}', {}, "not_json"),
    ("json-array", b"[0.1, 0.2]", {}, "not_object"),
    ("json-number", b"3.14", {}, "not_object"),
    ("json-string", b'"img-7"', {}, "not_object"),
    ("schema-99", i(schema=99), {}, "unsupported_schema"),
    ("missing-image_id", i(image_id=...), {"key": None}, "missing_field"),
    ("missing-created_at", i(created_at=...), {}, "missing_field"),
    ("image_id-int", i(image_id=7), {"key": None}, "wrong_type"),
    ("created_at-float", i(created_at=1.0), {}, "wrong_type"),
    ("created_at-bool", i(created_at=False), {}, "wrong_type"),
    ("embedding-dict", i(embedding={"0": 0.5}), {}, "wrong_type"),
    ("embedding-string", i(embedding="0.5,0.5"), {}, "wrong_type"),
    ("caption-list", i(caption=["a", "cat"]), {}, "wrong_type"),
    ("tags-string", i(tags="cat"), {}, "wrong_type"),
    ("url-int", i(url=7), {}, "wrong_type"),
    ("image_id-control", i(image_id="img\x007"), {"key": None}, "bad_id"),
    ("image_id-surrounding-space", i(image_id=" img-7 "), {"key": None}, "bad_id"),
    ("image_id-too-long", i(image_id="i" * 257), {"key": None}, "bad_id"),
    ("key-mismatch", i(), {"key": b"img-8"}, "key_mismatch"),
    ("created_at-negative", i(created_at=-5), {}, "bad_timestamp"),
    ("created_at-far-future", i(created_at=NOW + 2 * DAY), {}, "future_timestamp"),
    ("oversized", i(caption="c" * 2000), {"max_bytes": 1024}, "too_large"),
    ("dim-shorter", i(embedding=[0.5] * (DIM - 1)), {}, "dimension_mismatch"),
    ("dim-longer", i(embedding=[0.5] * (DIM + 1)), {}, "dimension_mismatch"),
    ("dim-empty", i(embedding=[]), {}, "dimension_mismatch"),
    ("dim-much-longer", i(embedding=[0.5] * (DIM * 48)), {}, "dimension_mismatch"),
    ("huge-values", i(embedding=[1e300] * DIM), {}, "huge_values"),
    ("one-huge-value", i(embedding=[0.5] * (DIM - 1) + [-1e7]), {}, "huge_values"),
    ("huge-int", i(embedding=[10**18] + [0] * (DIM - 1)), {}, "huge_values"),
    ("zero-vector", i(embedding=[0.0] * DIM), {}, "zero_vector"),
    ("zero-int-vector", i(embedding=[0] * DIM), {}, "zero_vector"),
    ("embedding-strings", i(embedding=["0.5"] * DIM), {}, "bad_embedding"),
    ("embedding-null-item", i(embedding=[0.5] * (DIM - 1) + [None]), {}, "bad_embedding"),
    ("embedding-bools", i(embedding=[True] * DIM), {}, "bad_embedding"),
    ("embedding-nested", i(embedding=[[0.5] * DIM]), {}, "bad_embedding"),
    ("tags-not-strings", i(tags=["cat", 7]), {}, "bad_field"),
    ("tags-empty-string", i(tags=["cat", ""]), {}, "bad_field"),
    ("tags-too-many", i(tags=[f"t{n}" for n in range(101)]), {}, "bad_field"),
    ("tag-too-long", i(tags=["t" * 101]), {}, "bad_field"),
    ("caption-too-long", i(caption="c" * 10_001), {}, "bad_field"),
    ("nothing-to-embed", i(embedding=..., caption=..., tags=...), {}, "nothing_to_embed"),
    ("nothing-to-embed-blank", i(embedding=..., caption="  \n ", tags=[]), {}, "nothing_to_embed"),
    ("nothing-to-embed-nulls", i(embedding=None, caption=None, tags=None), {}, "nothing_to_embed"),
    ("tombstone-without-key", None, {"key": None}, "empty"),
    ("tombstone-empty-key", None, {"key": b""}, "empty"),
]


@pytest.mark.parametrize(("raw", "kw", "reason"), [c[1:] for c in BAD_IMAGE], ids=[c[0] for c in BAD_IMAGE])
def test_bad_image_is_rejected_with_its_reason(raw, kw, reason) -> None:
    before = copy.copy(raw)
    with pytest.raises(InvalidEvent) as ei:
        image(raw, **kw)
    assert ei.value.reason == reason, str(ei.value)
    assert str(ei.value)
    assert raw == before


def test_image_table_covers_every_image_reason() -> None:
    assert {c[3] for c in BAD_IMAGE} == {
        "empty", "too_large", "not_json", "not_object", "unsupported_schema", "missing_field", "wrong_type",
        "bad_id", "key_mismatch", "bad_timestamp", "future_timestamp", "bad_embedding", "dimension_mismatch",
        "zero_vector", "huge_values", "bad_field", "nothing_to_embed"}
    assert len(BAD_IMAGE) >= 25


def test_dimension_mismatch_names_both_dimensions() -> None:
    with pytest.raises(InvalidEvent) as ei:
        image(i(embedding=[0.5] * (DIM + 3)))
    assert str(DIM) in str(ei.value) and str(DIM + 3) in str(ei.value)


def test_tombstone_with_key_is_a_delete() -> None:
    assert image(None, key=b"img-7") is None


def test_valid_image_parses_to_a_unit_vector_and_does_not_mutate_the_input() -> None:
    emb = [float(n + 1) for n in range(DIM)]
    d = {**GOOD_I, "embedding": emb}
    raw = orjson.dumps(d)
    ev = image(raw)
    assert isinstance(ev, ImageEvent)
    assert (ev.image_id, ev.created_at, ev.caption, ev.tags, ev.url) == (
        "img-7", NOW - 1000, "a cat on a sofa", ("cat",), "https://example.invalid/7.jpg")
    assert ev.embedding.dtype == np.float32 and ev.embedding.shape == (DIM,)
    assert np.linalg.norm(ev.embedding) == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(ev.embedding, np.array(emb) / np.linalg.norm(emb), rtol=1e-6)
    assert raw == orjson.dumps(d) and emb == [float(n + 1) for n in range(DIM)]
    assert "cat" in ev.text()


def test_image_variants_that_are_fine() -> None:
    text_only = image(i(embedding=...))
    assert text_only.embedding is None and text_only.caption == "a cat on a sofa"
    tags_only = image(i(embedding=..., caption=..., url=...))
    assert tags_only.embedding is None and tags_only.tags == ("cat",) and tags_only.url is None
    assert image(i(embedding=..., tags=...)).tags == ()
    ints = image(i(embedding=[1] + [0] * (DIM - 1), caption=..., tags=...))
    np.testing.assert_array_equal(ints.embedding, np.eye(DIM, dtype=np.float32)[0])
    assert image(i(caption="c" * 10_000)).caption == "c" * 10_000, "exactly 10000 characters is fine"
    assert len(image(i(tags=[f"t{n}" for n in range(100)])).tags) == 100
    assert image(i(), key=None).image_id == "img-7", "no key: nothing to compare"
    assert image(i(image_id="画像-7"), key="画像-7".encode()).image_id == "画像-7"
    raw = i()
    assert image(raw, max_bytes=len(raw)).image_id == "img-7"


# ------------------------------------------------------------------------------------------ outputs
@pytest.mark.parametrize(("value", "key"), [
    (b"\xff\xfe not json", b"u1"),
    (bytes(range(256)), bytes(range(255, -1, -1))),
    (b"", b""),
    (None, b"img-7"),  # a tombstone that could not be applied
    (b'{"user_id": "u1"}', None),
    ("ünïcødé ✓".encode(), "ключ".encode()),
])
def test_dead_letter_round_trips_the_original_bytes(value, key) -> None:
    err = InvalidEvent("bad thing", "not_json")
    raw = dead_letter(value=value, key=key, topic="ub", partition=3, offset=1234, error=err,
                      reason=err.reason, worker="w-1")
    assert isinstance(raw, bytes)
    d = decode_dead_letter(raw)
    assert d["value"] == value and d["key"] == key
    assert type(d["value"]) is type(value) and type(d["key"]) is type(key)
    assert d["schema"] == 1
    assert d["source"] == {"topic": "ub", "partition": 3, "offset": 1234}
    assert d["error"] == {"class": "InvalidEvent", "message": "bad thing", "reason": "not_json"}
    assert d["worker"] == "w-1" and isinstance(d["failed_at"], int) and d["failed_at"] > 1_600_000_000_000
    plain = orjson.loads(raw)  # the wire format: base64 fields, plain JSON
    assert plain["value_b64"] == (base64.b64encode(value).decode() if value is not None else None)


def test_dead_letter_of_a_parse_failure_carries_class_reason_and_bounded_message() -> None:
    bad = b(user_id="x" * 5000)
    try:
        behavior(bad, key=None, max_bytes=1 << 20)
    except InvalidEvent as exc:
        raw = dead_letter(value=bad, key=None, topic="t", partition=0, offset=0, error=exc, reason=exc.reason,
                          worker="w")
    d = decode_dead_letter(raw)
    assert d["value"] == bad and d["error"]["reason"] == "bad_id" and d["error"]["class"] == "InvalidEvent"
    huge = RuntimeError("m" * 10_000)
    d2 = decode_dead_letter(dead_letter(value=b"x", key=None, topic="t", partition=0, offset=0, error=huge,
                                        reason="internal", worker="w"))
    assert d2["error"]["class"] == "RuntimeError" and len(d2["error"]["message"]) == 2000


def test_recommendation_event_contract() -> None:
    items = [{"image_id": "img-9", "score": 0.93, "source": "content"}]
    trigger = {"event_id": "e-1", "ts": NOW}
    ev = recommendation_event(user_id="u-42", items=items, trigger=trigger, model_version="m1",
                              generated_at=NOW + 5, version=17)
    assert set(ev) == {"schema", "user_id", "items", "generated_at", "trigger", "model_version", "rec_id",
                       "version"}
    assert ev["schema"] == 1 and ev["user_id"] == "u-42" and ev["items"] == items and ev["trigger"] == trigger
    assert ev["generated_at"] == NOW + 5 and ev["version"] == 17 and ev["model_version"] == "m1"
    assert isinstance(ev["rec_id"], str) and len(ev["rec_id"]) == 32 and int(ev["rec_id"], 16) >= 0
    assert orjson.loads(orjson.dumps(ev)) == ev, "serialisable as-is"
    again = recommendation_event(user_id="u-42", items=items, trigger=trigger, model_version="m1",
                                 generated_at=NOW + 5, version=17)
    assert again["rec_id"] != ev["rec_id"], "every result gets its own rec_id for attribution"
    assert items == [{"image_id": "img-9", "score": 0.93, "source": "content"}] and trigger == {"event_id": "e-1",
                                                                                                "ts": NOW}


def test_catalog_record_round_trips_the_tags() -> None:
    vec = np.full(DIM, 1 / np.sqrt(DIM), dtype=np.float32)
    img = ImageEvent("img-1", NOW, vec, "a caption", ("Sky", "sea"), None)
    image_id, back, created, tags = parse_catalog(catalog_record(img, vec, 7), DIM)
    assert (image_id, created, tags) == ("img-1", NOW, ["Sky", "sea"]) and np.array_equal(back, vec)
    old = orjson.loads(catalog_record(img, vec, 7))
    del old["tags"]  # a record without the field: no tags
    assert parse_catalog(orjson.dumps(old), DIM)[3] == []
    with pytest.raises(InvalidEvent):
        parse_catalog(orjson.dumps({**old, "tags": ["ok", 3]}), DIM)
