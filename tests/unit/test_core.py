"""RecommenderCore: catalog updates, learn() dedup, recommend(), match_new_images() push matching."""

from __future__ import annotations

import numpy as np
import pytest

from models import (
    MODEL_VERSION,
    ConfigError,
    DimensionMismatch,
    ImageIndex,
    InvalidInput,
    Popularity,
    RecommenderCore,
)

DIM = 16


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def core(basis) -> RecommenderCore:
    c = RecommenderCore(dim=DIM, k=4)
    c.apply_images([(f"i{j}", basis(j), 100 + j) for j in range(DIM)])
    return c


def trending(core: RecommenderCore):
    return core.popularity.top(100)


# ---------------------------------------------------------------------------------------------- construction
def test_index_dim_must_match(basis) -> None:
    other = ImageIndex(DIM + 1)
    other.upsert(["x"], np.ones((1, DIM + 1), dtype=np.float32))
    with pytest.raises(ConfigError):
        RecommenderCore(dim=DIM, index=other)
    assert RecommenderCore(dim=DIM).model_version == MODEL_VERSION and MODEL_VERSION


def test_core_uses_the_components_it_is_given(basis) -> None:
    index = ImageIndex(DIM)
    index.upsert(["a"], basis(0)[None, :])
    pop = Popularity()
    pop.learn_one("a", 1.0, ts=0)
    core = RecommenderCore(dim=DIM, index=index, popularity=pop)
    assert core.index is index and core.popularity is pop


# An EMPTY ImageIndex/Popularity is falsy (__len__ == 0): the constructor must not replace it with a default
# (a worker that passes a fresh replica and keeps updating it would feed an index the core never reads), nor
# skip the dim check.
def test_core_keeps_an_empty_index_it_is_given(basis) -> None:
    index = ImageIndex(DIM)
    core = RecommenderCore(dim=DIM, index=index)
    index.upsert(["a"], basis(0)[None, :])
    assert core.index is index and "a" in core.index


def test_core_keeps_an_empty_popularity_it_is_given() -> None:
    pop = Popularity()
    assert RecommenderCore(dim=DIM, popularity=pop).popularity is pop


def test_empty_index_of_another_dim_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        RecommenderCore(dim=DIM, index=ImageIndex(DIM + 1))


# ---------------------------------------------------------------------------------------------- catalog
def test_apply_images_upserts_and_deletes(core, basis) -> None:
    core.apply_images([("new", basis(0) * 5, 999)], deletes=["i1", "i2", "unknown"])
    assert "new" in core.index and "i1" not in core.index and "i2" not in core.index
    assert len(core.index) == DIM - 2 + 1
    np.testing.assert_allclose(core.index.vectors(["new"])["new"], basis(0), atol=1e-6)
    assert core.index.newest(1) == [("new", 999)]


def test_deleted_image_leaves_trending(core) -> None:
    st = core.new_state("u")
    st, _ = core.learn(st, image_id="i5", action="save", ts=10)
    assert [i for i, _ in trending(core)] == ["i5"]
    core.apply_images([], deletes=["i5"])
    assert trending(core) == []
    for items in core.recommend([core.new_state("cold"), st]):
        assert "i5" not in {it.image_id for it in items}


def test_apply_images_rejects_a_bad_batch_atomically(core, basis) -> None:
    before = sorted(core.index.ids())
    for bad in (np.ones(DIM + 1), np.zeros(DIM), np.full(DIM, np.nan), "not a vector"):
        with pytest.raises(InvalidInput):
            core.apply_images([("ok", basis(0), 1), ("bad", bad, 2)], deletes=["i0"])
        assert sorted(core.index.ids()) == before, "nothing of a rejected batch may be applied"
    with pytest.raises(DimensionMismatch):
        core.apply_images([("long", np.r_[basis(0), 0.0], 1)])


# ---------------------------------------------------------------------------------------------- learn / dedup
def test_learn_applies_and_updates_trending(core, basis) -> None:
    st, applied = core.learn(core.new_state("u"), image_id="i3", action="like", ts=10, offset=5, event_id="e1")
    assert applied and not st.is_cold and st.last_offset == 5 and "e1" in st.event_ids
    assert float(st.interests[0] @ basis(3)) == pytest.approx(1.0, abs=1e-6)
    assert [i for i, _ in trending(core)] == ["i3"]


def test_negative_actions_do_not_make_an_image_trend(core) -> None:
    st = core.new_state("u")
    st, _ = core.learn(st, image_id="i3", action="skip", ts=10)
    st, _ = core.learn(st, image_id="i4", action="hide", ts=11)
    assert trending(core) == []


def test_learn_unknown_image_is_seen_but_not_trending(core) -> None:
    st, applied = core.learn(core.new_state("u"), image_id="ghost", action="like", ts=10, offset=1)
    assert applied and st.is_cold and "ghost" in st.seen
    assert trending(core) == []


@pytest.mark.parametrize("redelivery", [
    {"offset": 7, "event_id": None},         # same offset again (consumer restarted before commit)
    {"offset": 3, "event_id": None},         # an older offset
    {"offset": 7, "event_id": "e7"},
    {"offset": None, "event_id": "e7"},      # producer retry: same event id, no offset
    {"offset": 99, "event_id": "e7"},        # producer retry: same event id, new offset
])
def test_learn_dedups_redelivered_events(core, redelivery) -> None:
    st, applied = core.learn(core.new_state("u"), image_id="i1", action="like", ts=10, offset=7, event_id="e7")
    assert applied
    raw, top = st.to_bytes(), trending(core)
    again, applied2 = core.learn(st, image_id="i1", action="like", ts=10, **redelivery)
    assert applied2 is False
    assert again.to_bytes() == raw, "state must be unchanged by a duplicate"
    assert st.to_bytes() == raw
    assert trending(core) == top, "a duplicate must not count twice in trending"


def test_learn_new_offset_and_new_event_id_is_applied(core) -> None:
    st, _ = core.learn(core.new_state("u"), image_id="i1", action="like", ts=10, offset=7, event_id="e7")
    st2, applied = core.learn(st, image_id="i1", action="like", ts=11, offset=8, event_id="e8")
    assert applied and st2.version == st.version + 1 and st2.last_offset == 8
    assert core.popularity.score("i1", ts=11) > 3.9  # two likes of weight 2, barely decayed


def test_learn_without_ids_cannot_dedup(core) -> None:
    st, a1 = core.learn(core.new_state("u"), image_id="i1", action="view", ts=10)
    st, a2 = core.learn(st, image_id="i1", action="view", ts=10)
    assert a1 and a2 and st.version == 2


def test_learn_rejects_unknown_action_without_side_effects(core) -> None:
    st = core.new_state("u")
    with pytest.raises(InvalidInput):
        core.learn(st, image_id="i1", action="buy", ts=10, offset=1)
    assert trending(core) == [] and st.version == 0


def test_recommend_after_learning_prefers_taste(core, basis) -> None:
    core.apply_images([("near3", unit(basis(3) + 0.2 * basis(9)), 1)])
    st, _ = core.learn(core.new_state("u"), image_id="i3", action="like", ts=10)
    [items] = core.recommend([st])
    assert items[0].image_id == "near3" and items[0].source == "content"
    assert "i3" not in {it.image_id for it in items}
    assert len(items) == core.k
    d = items[0].to_dict()
    assert set(d) == {"image_id", "score", "source"} and d["image_id"] == "near3"


def test_replay_is_deterministic(basis) -> None:
    def run():
        c = RecommenderCore(dim=DIM, k=5)
        rng = np.random.default_rng(42)
        c.apply_images([(f"i{j}", rng.normal(size=DIM), j) for j in range(50)])
        st = c.new_state("u")
        for n in range(40):
            st, _ = c.learn(st, image_id=f"i{int(rng.integers(50))}", action=("like", "skip", "view")[n % 3],
                            ts=1_000 * n, offset=n)
        return st.to_bytes(), [(it.image_id, it.score, it.source) for it in c.recommend([st])[0]]
    assert run() == run()


# ---------------------------------------------------------------------------------------------- push matching
def _tasteful(core, basis):
    a, _ = core.learn(core.new_state("a"), image_id="i0", action="like", ts=1)   # likes direction 0
    b, _ = core.learn(core.new_state("b"), image_id="i1", action="like", ts=2)   # likes direction 1
    c, _ = core.learn(core.new_state("c"), image_id="i2", action="like", ts=3)
    c, _ = core.learn(c, image_id="i0", action="like", ts=4)                      # likes 2 and 0
    return a, b, c, core.new_state("cold")


def test_match_new_images_finds_users_whose_taste_matches(core, basis) -> None:
    users = _tasteful(core, basis)
    core.apply_images([("new0", unit(basis(0) + 0.2 * basis(7)), 500), ("new8", basis(8), 501)])
    matches = core.match_new_images(["new0", "new8"], list(users), min_score=0.5)
    got = {m.user_id: (m.image_id, m.score) for m in matches}
    assert set(got) == {"a", "c"}, "b likes another direction; cold users are never pushed"
    assert got["a"][0] == got["c"][0] == "new0"
    assert got["a"][1] == pytest.approx(float(unit(basis(0) + 0.2 * basis(7)) @ basis(0)), abs=1e-5)
    assert len(matches) == len(got), "one entry per user"


def test_match_new_images_picks_each_users_best_image(core, basis) -> None:
    a, b, _, _ = _tasteful(core, basis)
    core.apply_images([("n_a", unit(basis(0) + 0.1 * basis(9)), 1), ("n_b", unit(basis(1) + 0.1 * basis(9)), 2)])
    got = {m.user_id: m.image_id for m in core.match_new_images(["n_a", "n_b"], [a, b], min_score=0.0)}
    assert got == {"a": "n_a", "b": "n_b"}


def test_match_new_images_respects_min_score(core, basis) -> None:
    a, *_ = _tasteful(core, basis)
    core.apply_images([("half", unit(basis(0) + basis(9)), 1)])  # cosine ~0.707 with a's taste
    assert [m.user_id for m in core.match_new_images(["half"], [a], min_score=0.7)] == ["a"]
    assert core.match_new_images(["half"], [a], min_score=0.75) == []


def test_match_new_images_ignores_unknown_and_deleted_images(core, basis) -> None:
    a, *_ = _tasteful(core, basis)
    core.apply_images([("gone", basis(0), 1)], deletes=[])
    core.apply_images([], deletes=["gone"])
    assert core.match_new_images(["gone", "never-existed"], [a], min_score=0.0) == []
    assert core.match_new_images([], [a]) == []
    assert core.match_new_images(["i0"], []) == []


def test_match_new_images_never_pushes_a_seen_image(core, basis) -> None:
    a, *_ = _tasteful(core, basis)
    assert core.match_new_images(["i0"], [a], min_score=0.0) == []  # a already liked i0


def test_match_new_images_falls_back_to_the_next_best_unseen_image(core, basis) -> None:
    core.apply_images([("n1", basis(0), 2), ("n2", unit(basis(0) + 0.3 * basis(5)), 3)])
    a, _ = core.learn(core.new_state("a"), image_id="i0", action="like", ts=5)
    a, _ = core.learn(a, image_id="n1", action="view", ts=6)  # the best match is already seen
    matches = core.match_new_images(["n1", "n2"], [a], min_score=0.5)
    assert [(m.user_id, m.image_id) for m in matches] == [("a", "n2")]
    a, _ = core.learn(a, image_id="n2", action="hide", ts=7)  # nothing left to push to this user
    assert core.match_new_images(["n1", "n2"], [a], min_score=0.5) == []


def test_configured_popularity_half_life_is_kept() -> None:
    """streams/app.py build_core passes a fresh (empty) Popularity(half_life_ms=RECO_TRENDING_HALF_LIFE_H...)."""
    core = RecommenderCore(dim=DIM, popularity=Popularity(half_life_ms=3_600_000.0))
    assert core.popularity.half_life_ms == 3_600_000.0
