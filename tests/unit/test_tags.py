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
    tag_features_many,
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


# -------------------------------------------------------------------------------- the batched form
def _random_rows(rng: np.random.Generator, n: int, vocab: np.ndarray) -> np.ndarray:
    rows = np.full((n, MAX_TAGS), -1, dtype=np.int32)
    for i in range(n):
        b = rng.choice(vocab, size=min(int(rng.integers(0, 6)), vocab.size), replace=False)
        rows[i, : b.size] = b
    return rows


def _naive_features(user, rows, counts):
    """The features as the module docstring defines them, one row at a time (no vectorisation tricks)."""
    from models.tags import LIFT_EPS

    out = np.zeros((3, rows.shape[0]))
    if user.empty:
        return out
    mix = dict(zip(user.buckets.tolist(), user.shares.tolist(), strict=True))
    for i, row in enumerate(rows.tolist()):
        tags = [b for b in row if b >= 0]
        if not tags:
            continue
        pu = [mix.get(b, 0.0) for b in tags]
        p = counts.shares(np.asarray([b for b in tags] + [-1] * (MAX_TAGS - len(tags)), dtype=np.int32))[: len(tags)] \
            if counts is not None else np.zeros(len(tags))
        out[0, i] = 5.0 * sum(pu) / len(tags)
        out[1, i] = np.clip(np.mean(np.log((np.asarray(pu) + LIFT_EPS) / (p + LIFT_EPS))), -LIFT_CLIP, LIFT_CLIP)
        out[2, i] = 3.0 * max(pu)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_one_user_at_a_time_bit_for_bit_and_the_definition(seed):
    """The ranker computes a whole batch at once; each user's values must be exactly those of computing
    that user alone (so batching never changes a ranking), and match the definition written out naively."""
    rng = np.random.default_rng(seed)
    vocab = rng.integers(0, TAG_BUCKETS, size=int(rng.integers(1, 30)))
    tc = TagCounts(half_life_ms=DAY)
    for r in _random_rows(rng, 60, vocab):
        tc.learn(r, ts=int(rng.integers(0, 10 * DAY)))
    n_users = int(rng.integers(1, 12))
    rc = rng.integers(0, 35, size=n_users)
    nc = rng.integers(0, 120, size=n_users)
    rc[0], nc[-1] = 0, 0  # a user without recent positives; one without candidates
    recent = [_random_rows(rng, int(r), vocab) for r in rc]
    cands = [_random_rows(rng, int(c), vocab) for c in nc]
    for counts in (tc, None):
        got = tag_features_many(np.concatenate(recent), rc, np.concatenate(cands), nc, counts)
        one = [tag_features(taste(recent[u]), cands[u], counts) for u in range(n_users)]
        for f in range(3):
            assert np.array_equal(got[f], np.concatenate([o[f] for o in one]))
        lo = 0
        for u in range(n_users):
            want = _naive_features(taste(recent[u]), cands[u], counts)
            for f in range(3):
                assert got[f][lo:lo + nc[u]] == pytest.approx(want[f], rel=1e-12, abs=1e-12)
            lo += nc[u]
        assert (got[0][: nc[0]] == 0).all() and (got[1][: nc[0]] == 0).all()  # no recent positives: no evidence


def test_batch_rejects_inconsistent_counts_and_does_not_mutate_inputs():
    recent = np.stack([tag_row(["a"]), tag_row(["b"])])
    rows = np.stack([tag_row(["a"]), tag_row(["b"]), tag_row([])])
    rc, nc = np.array([1, 1]), np.array([2, 1])
    keep = (recent.copy(), rows.copy(), rc.copy(), nc.copy())
    aff, _, _ = tag_features_many(recent, rc, rows, nc, None)
    assert aff.tolist() == [5.0, 0.0, 0.0]
    assert all(np.array_equal(a, b) for a, b in zip((recent, rows, rc, nc), keep, strict=True))
    with pytest.raises(InvalidInput):
        tag_features_many(recent, np.array([1, 2]), rows, nc, None)  # counts do not add up to the rows
    with pytest.raises(InvalidInput):
        tag_features_many(recent, np.array([3, -1]), rows, nc, None)
    with pytest.raises(InvalidInput):
        tag_features_many(recent, rc.astype(np.float64), rows, nc, None)
    with pytest.raises(DimensionMismatch):
        tag_features_many(recent, np.array([2]), rows, nc, None)  # one user's recent rows, two users' candidates
    with pytest.raises(DimensionMismatch):
        tag_features_many(recent[:, :3], rc, rows, nc, None)
    with pytest.raises(InvalidInput):
        tag_features_many(recent, rc, rows.astype(np.float32), nc, None)


@pytest.mark.parametrize("width", range(1, MAX_TAGS + 1))
def test_row_sum_is_numpys_sum_of_an_eight_wide_row(width):
    """``_row_sum`` reproduces the order NumPy sums a row of 8 in; if a NumPy release changes that, this
    fails rather than the batched features drifting from the per-user ones unnoticed."""
    from models.tags import _row_sum

    rng = np.random.default_rng(width)
    a = np.zeros((5000, MAX_TAGS))
    a[:, :width] = rng.random((5000, width)) * rng.choice([1e-6, 1.0, 1e6], size=(5000, width))
    assert np.array_equal(_row_sum(a[:, :width]), a.sum(axis=1))
