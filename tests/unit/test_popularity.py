"""Popularity: decayed trending counts in event time."""

from __future__ import annotations

import math

import pytest

from models import Popularity

HOUR = 3_600_000


def test_top_orders_by_weight_and_normalises() -> None:
    p = Popularity(half_life_ms=HOUR)
    for iid, w in (("a", 1.0), ("b", 3.0), ("c", 2.0), ("b", 1.0)):
        p.learn_one(iid, w, ts=0)
    top = p.top(3)
    assert [i for i, _ in top] == ["b", "c", "a"]
    assert top[0][1] == 1.0
    assert [s for _, s in top] == pytest.approx([1.0, 0.5, 0.25])
    assert len(p) == 3


def test_recent_events_outweigh_old_ones() -> None:
    p = Popularity(half_life_ms=HOUR)
    p.learn_one("old", 3.0, ts=0)
    p.learn_one("new", 1.0, ts=2 * HOUR)  # old is worth 3/4 by now
    assert [i for i, _ in p.top(2)] == ["new", "old"]
    assert p.score("old") == pytest.approx(0.75)
    assert p.score("new") == pytest.approx(1.0)


def test_score_halves_per_half_life() -> None:
    p = Popularity(half_life_ms=HOUR)
    p.learn_one("a", 4.0, ts=10 * HOUR)
    assert p.score("a", ts=10 * HOUR) == pytest.approx(4.0)
    assert p.score("a", ts=11 * HOUR) == pytest.approx(2.0)
    assert p.score("a", ts=13 * HOUR) == pytest.approx(0.5)
    assert p.score("unknown") == 0.0


def test_long_streams_stay_finite_and_ordered() -> None:
    """Far-apart event times (hundreds of half-lives) must not overflow."""
    p = Popularity(half_life_ms=HOUR)
    for n in range(0, 2_000, 10):
        p.learn_one(f"i{n % 7}", 1.0, ts=n * HOUR)
    p.learn_one("last", 5.0, ts=2_000 * HOUR)
    top = p.top(3)
    assert top[0][0] == "last"
    assert all(math.isfinite(s) and 0 < s <= 1 for _, s in top)
    assert all(math.isfinite(p.score(i)) for i, _ in p.top(10))


def test_non_positive_weights_are_ignored() -> None:
    p = Popularity()
    p.learn_one("a", 0.0, ts=1)
    p.learn_one("b", -2.0, ts=1)
    assert len(p) == 0 and p.top(5) == []


def test_forget_and_exclude() -> None:
    p = Popularity()
    for j, iid in enumerate("abcde"):
        p.learn_one(iid, float(j + 1), ts=0)
    p.forget("e")
    p.forget("never-seen")
    assert [i for i, _ in p.top(10)] == ["d", "c", "b", "a"]
    assert [i for i, _ in p.top(2, exclude={"d", "b"})] == ["c", "a"]
    assert p.top(2, exclude={"a", "b", "c", "d"}) == []
    assert p.top(0) == []


def test_ties_are_deterministic() -> None:
    def build(order):
        p = Popularity()
        for iid in order:
            p.learn_one(iid, 1.0, ts=0)
        return p.top(4)
    assert build("abcd") == build("dcba") == build("cadb")


def test_rejects_non_positive_half_life() -> None:
    with pytest.raises(ValueError):
        Popularity(half_life_ms=0)
