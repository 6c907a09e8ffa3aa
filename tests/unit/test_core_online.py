"""The core's online learning: determinism, state round trips, shared-state snapshots, exclusions."""

from __future__ import annotations

import numpy as np
import pytest

from models import RecommenderCore, UserState
from models.errors import ConfigError, DimensionMismatch, NonFiniteVector, StateError
from models.index import ImageIndex
from models.ranking import FEATURES, N_FEATURES, Ranker, Signals
from models.synthetic import BehaviourEvent, ImageRecord, SyntheticConfig, generate

CFG = SyntheticConfig(seed=11, dim=16, n_users=25, n_topics=5, n_initial_images=60, n_new_images=15, n_events=500)


def _replay(seed: int = 0, cfg: SyntheticConfig = CFG, recommend_every: int = 3):
    core = RecommenderCore(dim=cfg.dim, k=5, seed=seed)
    states: dict[str, UserState] = {}
    lists = []
    for n, r in enumerate(generate(cfg)):
        if isinstance(r, ImageRecord):
            core.apply_images([(r.image_id, r.embedding, r.created_at)])
            continue
        st = states.get(r.user_id) or core.new_state(r.user_id)
        if n % recommend_every == 0:
            lists.append([(i.image_id, i.score, i.source) for i in core.recommend([st])[0]])
        states[r.user_id], _ = core.learn(st, image_id=r.image_id, action=r.action, ts=r.ts)
    return core, states, lists


@pytest.fixture(scope="module")
def replayed():
    return _replay()


def test_same_seed_and_order_same_results(replayed):
    core, states, lists = replayed
    core2, states2, lists2 = _replay()
    assert lists == lists2
    assert all(states[u].same_as(states2[u]) for u in states)
    assert core.shared_state_bytes() == core2.shared_state_bytes()


def test_user_state_round_trip_keeps_recent(replayed):
    _, states, _ = replayed
    for st in states.values():
        back = UserState.from_bytes(st.to_bytes())
        assert back.same_as(st) and back.recent == st.recent
    assert any(st.recent for st in states.values())
    # A state written before ``recent`` existed still reads (the key is optional).
    d = next(iter(states.values())).to_dict()
    d.pop("r")
    assert UserState.from_dict(d).recent == ()


def test_recommendations_exclude_seen_hidden_and_deleted():
    core, states, _ = _replay(seed=1, cfg=SyntheticConfig(**{**CFG.__dict__, "n_events": 200}))
    sts = list(states.values())
    victim = core.recommend(sts[:1])[0][0].image_id
    for st, items in zip(sts, core.recommend(sts), strict=True):
        ids = [i.image_id for i in items]
        assert len(ids) == len(set(ids)) <= 5
        assert not set(ids) & st.excluded()
        assert all(i in core.index for i in ids)
    core.apply_images([], deletes=[victim])
    assert victim not in {i.image_id for items in core.recommend(sts) for i in items}


def test_shared_state_round_trip_continues_identically():
    core_a, states_a, _ = _replay(seed=3)
    blob = core_a.shared_state_bytes()
    core_b = RecommenderCore(dim=CFG.dim, k=5, seed=99)
    core_b.index = core_a.index
    core_b.load_shared_state(blob)
    assert core_b.shared_state_bytes() == blob
    core_a._served.clear()
    core_a._skipped.clear()
    sts = list(states_a.values())[:5]
    ra = [[(i.image_id, i.score) for i in items] for items in core_a.recommend(sts)]
    rb = [[(i.image_id, i.score) for i in items] for items in core_b.recommend(sts)]
    assert ra == rb
    with pytest.raises(StateError):
        core_b.load_shared_state(b"nope")
    with pytest.raises(StateError):
        core_b.load_shared_state(b'{"v": "other-model"}')


def test_the_core_scores_with_two_scorers_averaged_and_restores_them(replayed):
    from models import OnlineScorer, ScorerEnsemble

    core, _, _ = replayed
    assert isinstance(core.scorer, ScorerEnsemble) and core.ranker.scorer is core.scorer
    assert [m.seed for m in core.scorer.members] == [0, 1000] and core.scorer.steps > 0
    back = RecommenderCore(dim=CFG.dim, k=5, seed=5, scorer_members=3)
    back.load_shared_state(core.shared_state_bytes())
    assert isinstance(back.scorer, ScorerEnsemble) and len(back.scorer.members) == 2
    assert back.ranker.scorer is back.scorer and back.scorer.to_bytes() == core.scorer.to_bytes()
    one = RecommenderCore(dim=CFG.dim, k=5, scorer_members=1)
    assert len(one.scorer.members) == 1
    single = RecommenderCore(dim=CFG.dim, k=5, scorer=OnlineScorer(N_FEATURES, seed=0))
    plain = RecommenderCore(dim=CFG.dim, k=5)
    plain.load_shared_state(single.shared_state_bytes())  # a single scorer's state still loads as one
    assert isinstance(plain.scorer, OnlineScorer) and plain.ranker.scorer is plain.scorer


def test_learn_does_not_mutate_the_input_state(replayed):
    core, states, _ = replayed
    st = next(iter(states.values()))
    before = st.to_bytes()
    img = core.index.ids()[0]
    new, applied = core.learn(st, image_id=img, action="like", ts=st.updated_ts + 1)
    assert applied and st.to_bytes() == before and new.version == st.version + 1
    assert new.recent[-1] == img


def test_bad_vectors_and_dimensions_are_rejected():
    core = RecommenderCore(dim=4, k=3)
    with pytest.raises(NonFiniteVector):
        core.apply_images([("a", np.array([1.0, np.nan, 0.0, 0.0]), 1)])
    with pytest.raises(DimensionMismatch):
        core.apply_images([("a", np.ones(5), 1)])
    with pytest.raises(ConfigError):
        core.index = ImageIndex(5)
    assert len(core.index) == 0


def test_swapping_the_index_drops_caches():
    core = RecommenderCore(dim=2, k=2)
    core.apply_images([("a", np.array([1.0, 0.0]), 1), ("b", np.array([0.0, 1.0]), 2)])
    st = core.new_state("u")
    assert {i.image_id for i in core.recommend([st])[0]} == {"a", "b"}
    fresh = ImageIndex(2)
    fresh.upsert(["c"], np.array([[1.0, 1.0]], dtype=np.float32), created_at=[3])
    core.index = fresh
    assert [i.image_id for i in core.recommend([st])[0]] == ["c"]


def test_feature_rows_are_finite_and_complete(replayed):
    core, states, _ = replayed
    ranker: Ranker = core.ranker
    sig: Signals = core.signals()
    for sc in ranker.score_batch(list(states.values())[:6], sig, 5):
        assert sc.features.shape == (len(sc.ids), N_FEATURES) == (len(sc.ids), len(FEATURES))
        assert np.all(np.isfinite(sc.features)) and np.all(np.isfinite(sc.scores))


def test_cold_user_gets_trending_and_fresh(replayed):
    core, _, _ = replayed
    items = core.recommend([core.new_state("brand-new")])[0]
    assert len(items) == 5
    assert {i.source for i in items} <= {"trending", "fresh", "covisit", "collab", "content"}


def test_item_linear_model_feeds_the_ranker_and_round_trips():
    """With refits every 50 interactions the linear model scores candidates, is a candidate source, shares
    the core's image ids, and its state survives the shared-state snapshot."""
    from models.ease import ItemLinear
    from models.ranking import F

    def make(seed):
        return RecommenderCore(dim=CFG.dim, k=5, seed=seed, item_linear=ItemLinear(256, refit_every=50))

    core = make(0)
    assert core.item_linear.registry is core.registry
    states: dict[str, UserState] = {}
    for r in generate(CFG):
        if isinstance(r, ImageRecord):
            core.apply_images([(r.image_id, r.embedding, r.created_at)])
            continue
        st = states.get(r.user_id) or core.new_state(r.user_id)
        states[r.user_id], _ = core.learn(st, image_id=r.image_id, action=r.action, ts=r.ts)
    assert core.item_linear.refits == 500 // 50 and len(core.item_linear) > 0
    sts = sorted(states.values(), key=lambda s: s.user_id)
    scored = core.ranker.score_batch(sts, core.signals(), 5)
    lin = np.concatenate([sc.features[:, F["linear"]] for sc in scored])
    assert np.count_nonzero(lin) > 0 and np.all(np.isfinite(lin))
    for sc in scored:  # the linear model's own top images are all among the candidates (a source)
        excl = core.registry.lookup(list(sc.state.excluded()))
        own = core.item_linear.top_idx(sc.state.seen, core.ranker.linear_pool, excl)
        assert set(own.tolist()) <= set(sc.idx.tolist())
    assert any(core.item_linear.top_idx(sc.state.seen, 5, np.zeros(0, dtype=np.int64)).size for sc in scored)
    other = make(7)
    other.index = core.index
    other.load_shared_state(core.shared_state_bytes())
    assert other.item_linear.to_bytes() == core.item_linear.to_bytes()
    core._served.clear()
    core._skipped.clear()
    assert [[(i.image_id, i.score) for i in x] for x in core.recommend(sts)] == \
        [[(i.image_id, i.score) for i in x] for x in other.recommend(sts)]


def test_session_covisitation_counts_every_interaction_within_sessions_only(basis):
    """Images a user interacts with in one session (skips too) become session neighbours; images of
    different sessions do not. The ranker's ``session`` features score a candidate against the images of
    the user's latest session, and the counts survive the shared-state snapshot."""
    from models.ranking import F

    core = RecommenderCore(dim=16, k=5, seed=0)
    core.apply_images([(f"i{j}", basis(j % 16), 1) for j in range(8)])
    gap = int(core.interest.session_gap_ms)
    a = core.new_state("a")
    for iid, ts, action in (("i0", 10, "like"), ("i1", 11 + gap, "skip"), ("i2", 20 + gap, "like"),
                            ("i3", 30 + gap, "like")):
        a, _ = core.learn(a, image_id=iid, action=action, ts=ts)
    assert a.session == 3 and a.session_items == ("i1", "i2", "i3")
    assert set(core.covisit_session.neighbors("i1")) == {"i2", "i3"}  # the skip is counted
    assert core.covisit_session.neighbors("i0") == {}  # a session of its own
    assert "i1" not in core.covisit.neighbors("i2"), "positive co-visitation ignores the skip"
    b = core.new_state("b")
    b, _ = core.learn(b, image_id="i1", action="view", ts=10 * gap)
    sc = core.ranker.score_batch([b], core.signals(), 5)[0]
    rows = {i: sc.features[j] for j, i in enumerate(sc.ids)}
    assert rows["i2"][F["session"]] > 0 and rows["i3"][F["session"]] > 0
    assert rows["i2"][F["session_last"]] == rows["i2"][F["session"]]  # one image in b's session
    assert all(r[F["session"]] == 0 for i, r in rows.items() if i not in ("i2", "i3"))
    other = RecommenderCore(dim=16, k=5, seed=1)
    other.index = core.index
    other.load_shared_state(core.shared_state_bytes())
    assert other.covisit_session.to_bytes() == core.covisit_session.to_bytes()


def test_stage_popularity_counts_each_interaction_at_the_users_stage(basis):
    """Every interaction (skips too) is counted in the stage of the user's history it happened in; the
    ``stage_pop`` features score a candidate in the requesting user's stage (``stage_near``: and the stages
    next to it), and the counts survive the shared-state snapshot."""
    from models.ranking import F
    from models.stage import StagePopularity

    core = RecommenderCore(dim=16, k=8, seed=0)
    core.apply_images([(f"i{j}", basis(j % 16), 1) for j in range(12)])
    veteran = core.new_state("veteran")
    for j in range(25):  # 25 events on i10/i11 take the veteran to stage 20-29
        veteran, _ = core.learn(veteran, image_id=f"i{10 + j % 2}", action="view", ts=1000 + j)
    veteran, _ = core.learn(veteran, image_id="i5", action="skip", ts=2000)  # counted at 25 events
    newcomer = core.new_state("newcomer")
    newcomer, _ = core.learn(newcomer, image_id="i0", action="like", ts=3000)  # counted at 0 events
    stage = StagePopularity.stage
    i0, i5 = core.registry.get("i0"), core.registry.get("i5")
    assert core.stage_pop.counts[stage(0)].scores_idx(np.array([i0, i5])).tolist()[1] == 0
    assert core.stage_pop.counts[stage(25)].scores_idx(np.array([i5]))[0] > 0
    fresh = core.new_state("fresh")
    fresh, _ = core.learn(fresh, image_id="i3", action="view", ts=4000)  # one event: stage 0
    sc = core.ranker.score_batch([fresh], core.signals(), 10)[0]
    rows = {i: sc.features[j] for j, i in enumerate(sc.ids)}
    assert rows["i0"][F["stage_pop"]] > 0 and rows["i0"][F["stage_near"]] > 0
    assert rows["i5"][F["stage_pop"]] == 0 and rows["i5"][F["stage_near"]] == 0  # a stage far from 0
    other = RecommenderCore(dim=16, k=8, seed=1)
    other.index = core.index
    other.load_shared_state(core.shared_state_bytes())
    assert other.stage_pop.to_dict() == core.stage_pop.to_dict()
    assert all(c.registry is other.registry for c in other.stage_pop.counts)


def test_stage_source_brings_what_users_at_the_same_stage_acted_on(basis):
    """The ``stage`` candidates of a user are the images most acted on at the user's stage and the two next
    to it, labelled ``stage`` when no earlier source found them; never seen ones, never images acted on only
    at far stages; none with ``stage_pool=0``."""
    core = RecommenderCore(dim=16, k=8, seed=0)
    core.apply_images([(f"i{j}", basis(j % 16), 1) for j in range(12)])
    core.ranker.trending_pool = 0  # no other source for a user with no positives: only the stage list
    core.ranker.fresh_pool = 0
    for n in range(4):  # newcomers (stage 0) skip i0 and view i1; one veteran (stage 20-29) views i9
        st = core.new_state(f"new{n}")
        st, _ = core.learn(st, image_id="i0", action="skip", ts=100 + n)
        st, _ = core.learn(st, image_id="i1", action="view", ts=200 + n)
    veteran = core.new_state("veteran")
    for j in range(26):
        veteran, _ = core.learn(veteran, image_id="i1" if j < 25 else "i9", action="view", ts=1000 + j)
    user = core.new_state("user")
    user, _ = core.learn(user, image_id="i1", action="skip", ts=3000)  # one event: stage 0, no positives
    sc = core.ranker.score_batch([user], core.signals(), 10)[0]
    assert sc.ids == ["i0"], sc.ids  # i1 is seen; i9 was acted on only at a far stage
    assert sc.sources == ["stage"]
    assert [it.image_id for it in core.recommend([user])[0]] == ["i0"]
    core.ranker.stage_pool = 0
    assert core.ranker.score_batch([user], core.signals(), 10)[0].ids == []


def test_age_features_place_a_candidate_against_the_age_of_the_users_positives(basis):
    """``age_taste`` is how long ago the user's recent positives were created, in units of the catalog's
    mean age (0 without positives); ``age_z`` is a candidate's creation time relative to theirs, over their
    spread plus 0.15 of the catalog's: 0 for an image of the same time, positive for a newer one, negative
    for an older one, clipped to ±5. Scaling every time by the same factor changes neither."""
    from models.ranking import F

    def rows_for(year: float):
        t0 = 100 * year
        core = RecommenderCore(dim=16, k=8, seed=0)
        core.apply_images([("liked", basis(0), t0), ("same", basis(1), t0), ("newer", basis(2), t0 + year),
                           ("older", basis(3), t0 - year), ("ancient", basis(4), t0 - 30 * year),
                           ("future", basis(5), t0 + 30 * year)])
        fan = core.new_state("fan")
        fan, _ = core.learn(fan, image_id="liked", action="like", ts=int(t0 + 40 * year))
        none = core.new_state("none")
        none, _ = core.learn(none, image_id="same", action="skip", ts=int(t0 + 40 * year))  # no positive
        sc = core.ranker.score_batch([fan, none], core.signals(), 10)
        assert not sc[1].features[:, [F["age_taste"], F["age_z"]]].any()
        return {i: sc[0].features[j] for j, i in enumerate(sc[0].ids)}

    rows = rows_for(365.25 * 24 * 3600 * 1000)
    z_one_year = 1 / (0.15 * np.sqrt((1 + 1 + 900 + 900) / 6))  # the catalog's spread: 17.3 years
    assert rows["same"][F["age_taste"]] == pytest.approx(1.0)  # the catalog's mean is the liked image's time
    assert rows["same"][F["age_z"]] == pytest.approx(0.0, abs=1e-6)
    assert rows["newer"][F["age_z"]] == pytest.approx(z_one_year, rel=1e-4)
    assert rows["older"][F["age_z"]] == pytest.approx(-z_one_year, rel=1e-4)
    assert rows["future"][F["age_z"]] == 5.0 and rows["ancient"][F["age_z"]] == -5.0
    days = rows_for(24 * 3600 * 1000)  # the same catalog with days for years
    for image in ("same", "newer", "older", "future", "ancient"):
        np.testing.assert_allclose(days[image][[F["age_taste"], F["age_z"]]],
                                   rows[image][[F["age_taste"], F["age_z"]]], rtol=1e-3, atol=1e-6)


def test_tag_features_read_the_users_positive_tags_against_the_streams(basis):
    """Images keep the tags they were upserted with (normalised, in the index and the mirror). Only positive
    interactions count in the stream's tag mix; a user's recent positives give the ``tag_*`` features of
    candidates sharing their tags, 0 for untagged ones and for users whose positives have no tags. The
    counts survive the shared-state snapshot and a restored index brings the tags back to the mirror."""
    from models.ranking import F
    from models.tags import tag_row

    core = RecommenderCore(dim=16, k=8, seed=0)
    core.apply_images([("cat1", basis(0), 1, ["Cats"]), ("cat2", basis(1), 1, ["cats", "Indoor"]),
                       ("dog1", basis(2), 1, ["dogs"]), ("dog2", basis(3), 1, ["Dogs"]),
                       ("plain", basis(4), 1), ("plain2", basis(5), 1, [])])
    assert core.index.tags("cat2") == ("cats", "indoor") and core.index.tags("plain") == ()
    assert np.array_equal(core.mirror.tag_rows[core.registry.get("cat2")], tag_row(["cats", "indoor"]))
    cols = [F["tag_aff"], F["tag_lift"], F["tag_max"]]
    crowd = core.new_state("crowd")
    for n, iid in enumerate(("dog1", "dog2", "dog1")):  # the stream likes dogs
        crowd, _ = core.learn(crowd, image_id=iid, action="like", ts=10 + n)
    crowd, _ = core.learn(crowd, image_id="cat2", action="skip", ts=20)  # not positive: not counted
    shares = core.tag_counts.shares(np.stack([tag_row(["dogs"]), tag_row(["cats"])]))[:, 0]
    assert shares.tolist() == [1.0, 0.0]
    fan = core.new_state("fan")
    fan, _ = core.learn(fan, image_id="cat1", action="like", ts=30)
    plain = core.new_state("plainfan")
    plain, _ = core.learn(plain, image_id="plain", action="like", ts=31)
    sc = core.ranker.score_batch([fan, plain], core.signals(), 10)
    rows = {i: sc[0].features[j] for j, i in enumerate(sc[0].ids)}
    assert rows["cat2"][F["tag_aff"]] > 0 and rows["cat2"][F["tag_lift"]] > 0 and rows["cat2"][F["tag_max"]] > 0
    assert rows["dog1"][F["tag_aff"]] == 0 and rows["dog1"][F["tag_lift"]] < 0  # liked by all, not by the fan
    assert not rows["plain2"][cols].any()
    assert not sc[1].features[:, cols].any()  # the plain fan's positives have no tags
    other = RecommenderCore(dim=16, k=8, seed=1)
    other.index = core.index
    other.load_shared_state(core.shared_state_bytes())
    assert other.tag_counts.to_dict() == core.tag_counts.to_dict()
    assert np.array_equal(other.mirror.tag_rows[other.registry.get("cat2")], tag_row(["cats", "indoor"]))
    core._served.clear()
    assert [[(i.image_id, i.score) for i in x] for x in core.recommend([fan])] == \
        [[(i.image_id, i.score) for i in x] for x in other.recommend([fan])]
