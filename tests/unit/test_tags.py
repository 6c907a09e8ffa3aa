"""Image tags (models/tags.py): normalisation and buckets, the stream's tag mix, a user's tag taste and the
three ranker features; the generic properties (deterministic, rejects bad input unchanged, inputs not
mutated, state round-trips)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models.errors import DimensionMismatch, InvalidInput, StateError
from models.tags import (
    LIFT_CLIP,
    MAX_TAGS,
    TAG_BUCKETS,
    TagCounts,
    bucket,
    normalise_tags,
    tag_features,
    tag_row,
    taste,
)

DAY = 24 * 3600 * 1000


def test_normalise_strips_casefolds_and_drops_duplicates_in_order():
    assert normalise_tags(["  Beach", "SUNSET", "beach ", "", "   ", "Straße"]) == ["beach", "sunset", "strasse"]
    with pytest.raises(InvalidInput):
        normalise_tags(["ok", 3])  # type: ignore[list-item]


def test_buckets_are_the_same_in_another_process():
    """Python's own ``hash`` of a string changes per process; the buckets must not (they are persisted)."""
    here = [bucket(t) for t in ("comedy", "Drama", "sci-fi")]
    code = "from models.tags import bucket; print([bucket(t) for t in ('comedy', 'Drama', 'sci-fi')])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout.strip()
    assert str(here) == there
    assert all(0 <= b < TAG_BUCKETS for b in here) and bucket(" DRAMA ") == bucket("drama")


def test_tag_row_keeps_the_first_distinct_buckets_padded():
    row = tag_row(["a", "A", "b"])
    assert row.dtype == np.int32 and row.shape == (MAX_TAGS,)
    assert row[:2].tolist() == [bucket("a"), bucket("b")] and (row[2:] == -1).all()
    many = tag_row([f"t{i}" for i in range(3 * MAX_TAGS)])
    assert (many >= 0).all() and many.tolist() == [bucket(f"t{i}") for i in range(MAX_TAGS)]
    assert (tag_row([]) == -1).all()


# ------------------------------------------------------------------------------------------ TagCounts
def _counts(seed: int, n: int = 300) -> TagCounts:
    rng = np.random.default_rng(seed)
    tc = TagCounts(half_life_ms=7 * DAY)
    ts = 0
    for _ in range(n):
        ts += int(rng.integers(0, 6 * 3600 * 1000))
        tc.learn(tag_row([f"t{int(x)}" for x in rng.integers(0, 12, size=int(rng.integers(0, 4)))]), ts)
    return tc


def test_counts_deterministic_given_the_order_of_updates():
    assert _counts(1).to_dict() == _counts(1).to_dict()
    assert _counts(1).to_dict() != _counts(2).to_dict()


def test_counts_shares_follow_the_positive_mix_and_decay():
    tc = TagCounts(half_life_ms=DAY)
    tc.learn(tag_row(["old"]), ts=0)
    tc.learn(tag_row(["new"]), ts=DAY)  # one half-life later: "old" counts half as much
    s = tc.shares(np.stack([tag_row(["old", "new", "never"])]))[0]
    assert s[:3] == pytest.approx([1 / 3, 2 / 3, 0.0]) and (s[3:] == 0).all()
    assert (TagCounts(DAY).shares(tag_row(["x"])) == 0).all()  # nothing counted yet
    tc.learn(tag_row([]), ts=2 * DAY)  # an image without tags counts nothing
    assert tc.shares(tag_row(["old", "new"]))[:2] == pytest.approx([1 / 3, 2 / 3])
    dup = np.full(MAX_TAGS, -1, dtype=np.int32)
    dup[:2] = bucket("new")  # a bucket listed twice counts once
    tc.learn(dup, ts=DAY)
    assert tc.shares(tag_row(["old", "new"]))[:2] == pytest.approx([1 / 5, 4 / 5])


def test_counts_rescale_far_apart_in_time_without_changing_shares():
    tc = TagCounts(half_life_ms=1000)
    tc.learn(tag_row(["a"]), ts=0)
    tc.learn(tag_row(["a", "b"]), ts=10_000)
    tc.learn(tag_row(["b"]), ts=100_000)  # 100 half-lives: the stored counts are rescaled, not overflowed
    s = tc.shares(tag_row(["a", "b"]))
    assert np.isfinite(s).all() and s[1] == pytest.approx(1.0, abs=1e-12) and s[0] < 1e-20


def test_counts_round_trip_continues_identically():
    a = _counts(3)
    b = TagCounts.from_dict(a.to_dict())
    for tc in (a, b):
        tc.learn(tag_row(["t1", "t5"]), ts=10**10)
    rows = np.stack([tag_row([f"t{i}"]) for i in range(12)])
    assert np.array_equal(a.shares(rows), b.shares(rows)) and a.to_dict() == b.to_dict()


@pytest.mark.parametrize("bad", [
    {}, {"format": 1}, {"format": 1, "buckets": 7, "hl": 1.0, "ref": 0, "started": True, "b": [], "v": []},
    {"format": 1, "buckets": TAG_BUCKETS, "hl": 1.0, "ref": 0, "started": True, "b": [1, 2], "v": [1.0]},
    {"format": 1, "buckets": TAG_BUCKETS, "hl": 1.0, "ref": 0, "started": True, "b": [TAG_BUCKETS], "v": [1.0]},
    {"format": 1, "buckets": TAG_BUCKETS, "hl": 1.0, "ref": 0, "started": True, "b": [1], "v": [float("nan")]},
    {"format": 1, "buckets": TAG_BUCKETS, "hl": -1.0, "ref": 0, "started": True, "b": [], "v": []},
])
def test_counts_corrupt_state_is_a_state_error(bad):
    with pytest.raises(StateError):
        TagCounts.from_dict(bad)


@pytest.mark.parametrize(("row", "ts", "err"), [
    (np.zeros(MAX_TAGS - 1, dtype=np.int32), 0, DimensionMismatch),
    (np.zeros(MAX_TAGS + 1, dtype=np.int32), 0, DimensionMismatch),
    (np.zeros((2, MAX_TAGS), dtype=np.int32), 0, DimensionMismatch),
    (np.full(MAX_TAGS, np.nan), 0, InvalidInput),
    (np.full(MAX_TAGS, TAG_BUCKETS, dtype=np.int64), 0, InvalidInput),
    (np.full(MAX_TAGS, -2, dtype=np.int64), 0, InvalidInput),
    (tag_row(["a"]), float("nan"), InvalidInput),
    (tag_row(["a"]), True, InvalidInput),
])
def test_counts_reject_bad_input_without_changing_state(row, ts, err):
    tc = _counts(4)
    before = tc.to_dict()
    with pytest.raises(err):
        tc.learn(row, ts)
    assert tc.to_dict() == before


@pytest.mark.parametrize("bad_ctor", [0.0, -1.0, float("nan"), float("inf")])
def test_counts_reject_a_bad_half_life(bad_ctor):
    with pytest.raises(ValueError):
        TagCounts(bad_ctor)


# ----------------------------------------------------------------------------------- taste + features
def test_taste_weights_the_newest_positives_most():
    t = taste(np.stack([tag_row(["a"]), tag_row(["b"]), tag_row(["b", "c"])]))  # oldest first
    got = dict(zip(t.buckets.tolist(), t.shares.tolist(), strict=True))
    w = {"a": 0.81, "b": 0.9 + 1.0, "c": 1.0}
    total = sum(w.values())
    assert got == pytest.approx({bucket(k): v / total for k, v in w.items()})
    assert taste(np.stack([tag_row([])])).empty and taste(np.zeros((0, MAX_TAGS), dtype=np.int32)).empty


def test_features_prefer_the_users_tags_and_lift_what_others_like_less():
    tc = TagCounts(half_life_ms=1e12)
    for _ in range(9):
        tc.learn(tag_row(["popular"]), ts=0)
    tc.learn(tag_row(["niche"]), ts=0)
    user = taste(np.stack([tag_row(["popular"]), tag_row(["niche"])]))  # half and half (about)
    rows = np.stack([tag_row(["niche"]), tag_row(["popular"]), tag_row(["other"]), tag_row([]),
                     tag_row(["niche", "other"])])
    aff, lift, top = tag_features(user, rows, tc)
    assert aff[0] > 0 and aff[1] > 0 and aff[2] == aff[3] == 0
    assert lift[0] > 0 > lift[1]  # the user likes "niche" far more than the stream does, "popular" less
    assert lift[3] == 0 and top[3] == 0  # no tags: no evidence either way
    assert aff[4] == pytest.approx(aff[0] / 2) and top[4] == top[0]  # mean over its tags; max of them
    assert (np.abs(lift) <= LIFT_CLIP).all()
    none = tag_features(taste(np.zeros((0, MAX_TAGS), dtype=np.int32)), rows, tc)
    assert all((f == 0).all() for f in none)
    no_stream = tag_features(user, rows, None)  # no counts: every candidate tag is rarer than the user's
    assert no_stream[1][0] > 0 and no_stream[1][1] > 0


def test_features_reject_bad_rows_and_do_not_mutate_inputs():
    tc = _counts(5)
    recent = np.stack([tag_row(["t1"]), tag_row(["t2", "t3"])])
    rows = np.stack([tag_row(["t1"]), tag_row(["t9"])])
    keep = (recent.copy(), rows.copy(), tc.to_dict())
    user = taste(recent)
    tag_features(user, rows, tc)
    assert np.array_equal(recent, keep[0]) and np.array_equal(rows, keep[1]) and tc.to_dict() == keep[2]
    with pytest.raises(DimensionMismatch):
        tag_features(user, np.zeros((2, MAX_TAGS + 1), dtype=np.int32), tc)
    with pytest.raises(DimensionMismatch):
        taste(np.zeros(MAX_TAGS, dtype=np.int32))
    with pytest.raises(InvalidInput):
        tag_features(user, rows.astype(np.float32), tc)
