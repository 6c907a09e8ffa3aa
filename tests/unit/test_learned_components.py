"""Properties of the online-learned model components: co-visitation, item embeddings, the scorer, the
item-to-item linear model and popularity by user stage.

For each: deterministic given a seed and the order of updates, rejects NaN / wrong dimensions, never
mutates its inputs, and its serialised state round-trips to a component that behaves identically.
"""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from models.covisit import CoVisitation
from models.ease import ItemLinear
from models.errors import DimensionMismatch, InvalidInput, StateError
from models.itemvec import ItemEmbeddings
from models.registry import ItemRegistry
from models.scorer import MEMBER_SEED_STRIDE, OnlineScorer, ScorerEnsemble, scorer_from_bytes
from models.stage import STAGE_EDGES, StagePopularity


def _sessions(seed: int, n_users: int = 12, n_items: int = 40, n_events: int = 400):
    """(user, image, ts) triples with planted structure: users draw from one of 4 item blocks."""
    rng = np.random.default_rng(seed)
    block = {f"u{u}": u % 4 for u in range(n_users)}
    ts = 1_000
    out = []
    for _ in range(n_events):
        u = f"u{int(rng.integers(n_users))}"
        b = block[u]
        i = int(rng.integers(n_items // 4)) + b * (n_items // 4)
        ts += int(rng.integers(1, 60_000))
        out.append((u, f"i{i:03d}", ts))
    return out


# ------------------------------------------------------------------------------------ co-visitation
def _train_covisit(seed: int, **kw) -> tuple[CoVisitation, dict[str, list[str]]]:
    cv = CoVisitation(**kw)
    recent: dict[str, list[str]] = {}
    for u, i, ts in _sessions(seed):
        r = recent.setdefault(u, [])
        cv.learn(r, i, 1.0, ts)
        r.append(i)
        del r[:-20]
    return cv, recent


def test_covisit_deterministic_and_finds_planted_blocks():
    a, rec = _train_covisit(1)
    b, _ = _train_covisit(1)
    assert a.to_bytes() == b.to_bytes()
    c, _ = _train_covisit(2)
    assert a.to_bytes() != c.to_bytes()
    top = [i for i, _ in a.candidates(["i000", "i001"], n=8)]
    assert top and all(int(i[1:]) < 10 for i in top), top  # same block as the query


def test_covisit_round_trip_and_bounded_neighbours():
    cv, rec = _train_covisit(3, max_neighbors=5)
    back = CoVisitation.from_bytes(cv.to_bytes())
    assert back.to_bytes() == cv.to_bytes()
    for u, r in rec.items():
        assert back.candidates(r, 10) == cv.candidates(r, 10)
        q1, q2 = cv.query(r), back.query(r)
        assert np.array_equal(q1.scores, q2.scores)
    assert all(len(cv.neighbors(f"i{j:03d}")) < 10 for j in range(40))
    with pytest.raises(StateError):
        CoVisitation.from_bytes(b"{not json")


def test_covisit_rejects_non_finite_and_does_not_mutate_inputs():
    cv, _ = _train_covisit(4)
    before = cv.to_bytes()
    recent = ["i000", "i001"]
    for bad in (float("nan"), float("inf")):
        with pytest.raises(InvalidInput):
            cv.learn(recent, "i002", bad, 10**9)
    assert cv.to_bytes() == before
    cv.learn(recent, "i002", 1.0, 10**9)
    assert recent == ["i000", "i001"]
    ex = {"i003"}
    cv.candidates(recent, 5, ex)
    assert ex == {"i003"}


def test_covisit_forget_and_decay():
    cv = CoVisitation(half_life_ms=1000.0)
    cv.learn([], "a", 1.0, 0)
    cv.learn(["a"], "b", 1.0, 0)
    m0 = cv.mass("b")
    cv.learn([], "c", 1.0, 1000)  # one half-life later
    assert cv.mass("b") == pytest.approx(m0 / 2)
    cv.forget("b")
    assert [i for i, _ in cv.candidates(["a"], 5)] == []


# ------------------------------------------------------------------------------------ embeddings
def _train_emb(seed: int, **kw) -> tuple[ItemEmbeddings, dict[str, list[str]]]:
    emb = ItemEmbeddings(dim=8, seed=seed, **kw)
    recent: dict[str, list[str]] = {}
    for u, i, _ in _sessions(seed):
        r = recent.setdefault(u, [])
        emb.learn(r, i)
        r.append(i)
        del r[:-20]
    return emb, recent


def test_embeddings_deterministic_and_learn_the_blocks():
    a, rec = _train_emb(5)
    b, _ = _train_emb(5)
    assert a.to_bytes() == b.to_bytes()
    c, _ = _train_emb(6)
    assert a.to_bytes() != c.to_bytes()
    u = a.user_vector(["i000", "i001", "i002"])
    aff = a.affinity(u, [f"i{j:03d}" for j in range(40)])
    assert aff[:10].mean() > aff[10:].mean() + 0.5


def test_embeddings_round_trip_continues_identically():
    a, rec = _train_emb(7)
    b = ItemEmbeddings.from_bytes(a.to_bytes())
    assert b.to_bytes() == a.to_bytes()
    for emb in (a, b):
        emb.learn(["i000", "i001"], "i002")
        emb.learn(["i010"], "i011", ["i030"])
    assert a.to_bytes() == b.to_bytes()
    u = a.user_vector(["i000"])
    assert np.array_equal(a.affinity(u, ["i001", "zzz"]), b.affinity(u, ["i001", "zzz"]))
    with pytest.raises(StateError):
        ItemEmbeddings.from_bytes(b'{"f": 99}')


def test_embeddings_do_not_mutate_inputs_and_handle_unknown_ids():
    emb, _ = _train_emb(8)
    recent = ["i000", "i001"]
    negs = ["i020"]
    emb.learn(recent, "i002", negs)
    assert recent == ["i000", "i001"] and negs == ["i020"]
    u = emb.user_vector(recent)
    u0 = u.copy()
    out = emb.affinity(u, ["nope", "i000"])
    assert out[0] == 0.0 and np.array_equal(u, u0)
    assert not np.any(emb.user_vector(["nope"]))
    assert emb.top(np.zeros(8, dtype=np.float32), 5, set()) == []


@pytest.mark.parametrize("kw", [{"dim": 0}, {"lr": 0.0}, {"gamma": 1.5}, {"negatives": 0}, {"replay": -1}])
def test_embeddings_reject_bad_config(kw):
    with pytest.raises(ValueError):
        ItemEmbeddings(**kw)


# ------------------------------------------------------------------------------------ scorer
def _groups(seed: int, n: int = 120, f: int = 5) -> list[np.ndarray]:
    """Positive rows have feature 1 high; negatives are noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = rng.normal(size=(8, f)).astype(np.float32)
        g[0, 1] += 2.0
        out.append(g)
    return out


def _train_scorer(seed: int, groups: list[np.ndarray]) -> OnlineScorer:
    s = OnlineScorer(5, prior=[1.0, 0.0, 0.0, 0.0, 0.0], hidden=4, lr=0.05, batch_groups=8, replay=64, seed=seed)
    for g in groups:
        s.observe(g)
    return s


def test_scorer_deterministic_given_seed_and_learns():
    gs = _groups(0)
    a, b = _train_scorer(1, gs), _train_scorer(1, gs)
    x = np.random.default_rng(9).normal(size=(20, 5)).astype(np.float32)
    assert np.array_equal(a.score(x), b.score(x))
    c = _train_scorer(2, gs)
    assert not np.array_equal(a.score(x), c.score(x))
    w = a.weights()["w"]
    assert w[1] > w[0] and w[1] > 0.2, w  # the informative feature overtook the prior's


def test_scorer_round_trip_mid_training_continues_identically():
    gs = _groups(3)
    a = _train_scorer(4, gs[:60])
    for _ in range(3):  # leave something in the un-stepped buffer
        a.observe(gs[60])
    b = OnlineScorer.from_bytes(a.to_bytes())
    assert b.to_bytes() == a.to_bytes()
    for g in gs[61:]:
        a.observe(g)
        b.observe(g)
    x = np.ones((3, 5), dtype=np.float32)
    assert np.array_equal(a.score(x), b.score(x))
    with pytest.raises(StateError):
        OnlineScorer.from_bytes(b"garbage")


@pytest.mark.parametrize("train", [_train_scorer, lambda seed, gs: _train_ensemble(seed, gs)],
                         ids=["scorer", "ensemble"])
def test_scorer_rejects_nan_and_wrong_dims_without_changing_state(train):
    s = train(5, _groups(5, n=20))
    before = s.to_bytes()
    bad = np.ones((4, 5), dtype=np.float32)
    bad[2, 3] = np.nan
    with pytest.raises(InvalidInput):
        s.observe(bad)
    with pytest.raises(DimensionMismatch):
        s.observe(np.ones((4, 6), dtype=np.float32))
    with pytest.raises(DimensionMismatch):
        s.observe(np.ones(5, dtype=np.float32))
    with pytest.raises(DimensionMismatch):
        s.score(np.ones((4, 4), dtype=np.float32))
    assert s.to_bytes() == before  # for an ensemble: no member changed


def test_scorer_and_ensemble_reject_bad_config():
    with pytest.raises(DimensionMismatch):
        OnlineScorer(3, prior=[1.0, 2.0])
    for members in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError):
            ScorerEnsemble(5, members=members)


def test_scorer_does_not_mutate_inputs():
    s = OnlineScorer(5, batch_groups=1, replay=4, seed=0)
    g = _groups(6, n=1)[0]
    g0 = g.copy()
    s.observe(g)
    s.score(g)
    assert np.array_equal(g, g0)


def _small_scale_groups(seed: int, n: int, scale: float = 0.01) -> list[np.ndarray]:
    """Feature 1 is on a scale of ``scale``, and only its magnitude marks the positive (row 0: ±3 scale,
    sign random), so no linear score can rank it and the MLP has to learn it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        g = rng.normal(size=(8, 3)).astype(np.float32)
        g[:, 1] *= scale
        g[0, 1] = rng.choice([-3.0, 3.0]) * scale
        out.append(g)
    return out


def _mean_rank_of_positive(s: OnlineScorer, groups: list[np.ndarray]) -> float:
    return float(np.mean([int((s.score(g)[1:] >= s.score(g)[0]).sum()) for g in groups]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scorer_standardization_lets_the_mlp_learn_a_small_scale_feature(seed):
    """Why the MLP's input is standardised: with raw inputs the MLP does not pick up a feature whose scale is
    1 % of the others' (the positive ranks ~3.5 of 7 negatives, chance), with standardised ones it does."""
    train, test = _small_scale_groups(seed, 400), _small_scale_groups(100 + seed, 200)
    ranks = {}
    for std in (True, False):
        s = OnlineScorer(3, hidden=8, lr=0.05, batch_groups=8, replay=64, seed=seed, standardize=std)
        for g in train:
            s.observe(g)
        ranks[std] = _mean_rank_of_positive(s, test)
    assert ranks[True] < 0.5 and ranks[False] > 2.5, ranks


def test_scorer_standardization_is_the_floored_moments_of_the_trained_rows_held_between_steps():
    gs = _groups(11, n=40)
    s = OnlineScorer(5, hidden=4, batch_groups=8, replay=16, seed=0, std_floor=0.5)
    mu0, sd0 = s.standardization()
    assert np.array_equal(mu0, np.zeros(5)) and np.array_equal(sd0, np.ones(5))
    for g in gs[:16]:  # two steps: the second one refreshed (μ, σ) from all 16 groups
        s.observe(g)
    rows = np.vstack(gs[:16]).astype(np.float64)
    want_sd = np.maximum(rows.std(axis=0), 0.5)
    mu, sd = s.standardization()
    assert np.allclose(mu, rows.mean(axis=0), atol=1e-6) and np.allclose(sd, want_sd, atol=1e-6)
    x = np.ones((3, 5), dtype=np.float32)
    before = s.score(x)
    for g in gs[16:23]:  # seven groups: no step, so neither (μ, σ) nor the scores move
        s.observe(g)
    assert np.array_equal(s.standardization()[0], mu) and np.array_equal(s.score(x), before)
    s.observe(gs[23])  # the eighth: a step, now over 24 groups
    assert np.allclose(s.standardization()[0], np.vstack(gs[:24]).mean(axis=0), atol=1e-6)
    # A feature that never varies is divided by the floor, not by ~0.
    c = OnlineScorer(2, hidden=2, batch_groups=1, replay=0, seed=0, std_floor=0.05)
    c.observe(np.array([[1.0, 3.0], [0.0, 3.0]], dtype=np.float32))
    assert c.standardization()[1][1] == np.float32(0.05)
    with pytest.raises(ValueError):
        OnlineScorer(2, std_floor=0.0)


def test_scorer_format_1_state_loads_with_raw_inputs_and_bad_standardization_is_rejected():
    a = _train_scorer(4, _groups(3, n=40))
    d = orjson.loads(a.to_bytes())
    assert d["f"] == 2 and d["std"]["on"]
    old = dict(d, f=1)
    del old["std"]
    b = OnlineScorer.from_bytes(orjson.dumps(old))  # a state written before the standardisation
    assert not b.standardize
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    w = a.weights()
    raw = x @ w["w"] + np.maximum(x @ w["w1"] + w["b1"], 0.0) @ w["w2"]
    assert np.allclose(b.score(x), raw, atol=1e-5)
    assert not np.allclose(a.score(x), raw, atol=1e-3)  # a itself standardises
    short = dict(d, std=dict(d["std"], mu=base64.b64encode(np.zeros(4, dtype="<f4").tobytes()).decode()))
    with pytest.raises(StateError):
        OnlineScorer.from_bytes(orjson.dumps(short))
    neg = dict(d, std=dict(d["std"], sd=base64.b64encode(np.full(5, -1.0, dtype="<f4").tobytes()).decode()))
    with pytest.raises(StateError):
        OnlineScorer.from_bytes(orjson.dumps(neg))


# ------------------------------------------------------------------------------------ scorer ensemble
_SCORER_KW = dict(prior=[1.0, 0.0, 0.0, 0.0, 0.0], hidden=4, lr=0.05, batch_groups=8, replay=64)


def _train_ensemble(seed: int, groups: list[np.ndarray], members: int = 2) -> ScorerEnsemble:
    e = ScorerEnsemble(5, members=members, seed=seed, **_SCORER_KW)
    for g in groups:
        e.observe(g)
    return e


def test_ensemble_scores_the_mean_of_members_that_differ_only_in_seed():
    gs = _groups(0)
    e = _train_ensemble(3, gs, members=3)
    assert [m.seed for m in e.members] == [3, 3 + MEMBER_SEED_STRIDE, 3 + 2 * MEMBER_SEED_STRIDE]
    assert e.steps == 45 and e.groups_seen == 120 and all(m.steps == 45 for m in e.members)
    x = np.random.default_rng(9).normal(size=(20, 5)).astype(np.float32)
    each = [m.score(x) for m in e.members]
    assert np.allclose(e.score(x), np.mean(each, axis=0), atol=1e-6)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the members did learn different functions
    # each member is exactly the OnlineScorer its seed makes, trained alone on the same groups
    for m in e.members:
        alone = OnlineScorer(5, seed=m.seed, **_SCORER_KW)
        for g in gs:
            alone.observe(g)
        assert alone.to_bytes() == m.to_bytes()
    # and the mean kept what each member learned: the informative feature outranks the prior's
    assert all(m.weights()["w"][1] > m.weights()["w"][0] for m in e.members)


def test_ensemble_deterministic_given_seed():
    gs = _groups(1)
    x = np.random.default_rng(2).normal(size=(10, 5)).astype(np.float32)
    a, b, c = _train_ensemble(7, gs), _train_ensemble(7, gs), _train_ensemble(8, gs)
    assert np.array_equal(a.score(x), b.score(x)) and a.to_bytes() == b.to_bytes()
    assert not np.array_equal(a.score(x), c.score(x))


def test_ensemble_round_trip_mid_training_continues_identically_and_loads_by_kind():
    gs = _groups(3)
    a = _train_ensemble(4, gs[:60])
    for _ in range(3):  # leave something in the members' un-stepped buffers
        a.observe(gs[60])
    raw = a.to_bytes()
    b = ScorerEnsemble.from_bytes(raw)
    c = scorer_from_bytes(raw)
    assert isinstance(c, ScorerEnsemble) and b.to_bytes() == raw == c.to_bytes()
    for g in gs[61:]:
        for s in (a, b, c):
            s.observe(g)
    x = np.ones((3, 5), dtype=np.float32)
    assert np.array_equal(a.score(x), b.score(x)) and np.array_equal(a.score(x), c.score(x))
    single = _train_scorer(4, gs[:20])
    assert isinstance(scorer_from_bytes(single.to_bytes()), OnlineScorer)
    assert scorer_from_bytes(single.to_bytes()).to_bytes() == single.to_bytes()
    d = orjson.loads(raw)
    for bad in (b"garbage", b"[1]", orjson.dumps(dict(d, f=2)), orjson.dumps(dict(d, members=[])),
                orjson.dumps(dict(d, members=[d["members"][0], _train_scorer(0, gs[:9]).to_bytes().decode()[:-9]])),
                orjson.dumps(dict(d, members=[d["members"][0], OnlineScorer(4, seed=0).to_bytes().decode()]))):
        with pytest.raises(StateError):
            scorer_from_bytes(bad)
    with pytest.raises(StateError):
        ScorerEnsemble.from_bytes(single.to_bytes())  # a single scorer's state is not an ensemble's


def test_ensemble_does_not_mutate_inputs_and_one_member_is_the_plain_scorer():
    gs = _groups(6, n=24)
    copies = [g.copy() for g in gs]
    e = _train_ensemble(2, gs, members=1)
    e.score(gs[0])
    assert all(np.array_equal(g, g0) for g, g0 in zip(gs, copies))
    s = _train_scorer(2, gs)
    x = np.random.default_rng(3).normal(size=(6, 5)).astype(np.float32)
    assert np.array_equal(e.score(x), s.score(x))


def test_item_embeddings_member_array_tracks_appends_and_restores() -> None:
    """The negative-sampling array grows in place; it must always equal the member list (also after a
    restore replaces the list), or sampling would draw stale or missing images."""
    emb = ItemEmbeddings(dim=8, seed=1)
    for j in range(3000):  # crosses several capacity doublings
        emb.learn([f"i{j - 1}", f"i{j - 2}"] if j > 1 else [], f"i{j}")
        if j % 499 == 0:
            assert emb._members_array().tolist() == emb._members
    back = ItemEmbeddings.from_bytes(emb.to_bytes())
    assert back._members_array().tolist() == back._members == emb._members
    emb._members = emb._members[:10]  # replaced list (as a restore does): rebuilt, not reused
    assert emb._members_array().tolist() == emb._members


def test_item_embeddings_top_n_uses_an_up_to_date_transposed_copy() -> None:
    """top_idx_batch keeps a transposed copy of the members' rows between calls; after SGD steps, new
    members, forget and a restore it must give exactly what a fresh computation gives."""
    rng = np.random.default_rng(0)

    def fresh(emb: ItemEmbeddings, uv: np.ndarray, n: int) -> list[list[int]]:
        members = np.asarray(emb._members, dtype=np.int64)
        s = uv @ emb._e[members].T
        names = emb.registry.names
        return [sorted(members.tolist(), key=lambda j: (-float(row[list(members).index(j)]), names[j]))[:n]
                for row in s]

    emb = ItemEmbeddings(dim=8, seed=3)
    for step in range(6):
        for j in range(40 * step, 40 * step + 60):
            emb.learn([f"i{(j * 7) % 97}", f"i{(j * 3) % 89}"], f"i{j % 150}")
        if step == 3:
            emb.forget("i5")
        if step == 4:
            emb = ItemEmbeddings.from_bytes(emb.to_bytes())
        uv = rng.normal(size=(5, 8)).astype(np.float32)
        got = emb.top_idx_batch(uv, 10, [np.zeros(0, dtype=np.int64)] * 5)
        assert [g.tolist() for g in got] == fresh(emb, uv, 10), f"step {step}"


# ------------------------------------------------------------------------------ item linear (EASE)
def _train_linear(seed: int, **kw) -> tuple[ItemLinear, dict[str, list[str]]]:
    kw = {"head": 64, "lam": 5.0, "refit_every": 50, "min_count": 1, **kw}
    lin = ItemLinear(**kw)
    hist: dict[str, list[str]] = {}
    for u, i, ts in _sessions(seed):
        h = hist.setdefault(u, [])
        lin.learn(h, i, ts)
        h.append(i)
    return lin, hist


def test_linear_deterministic_and_finds_planted_blocks():
    a, hist = _train_linear(0)
    b, _ = _train_linear(0)
    assert a.to_bytes() == b.to_bytes()
    assert a.refits == 400 // 50
    # u0 draws from block 0 (i000..i009): its best unseen images come from that block, not the others.
    top = a.top_idx(hist["u0"][-5:], 5, np.zeros(0, dtype=np.int64))
    names = [a.registry.names[i] for i in top.tolist()]
    assert names and all(int(n[1:]) < 10 for n in names), names
    s = a.scores(hist["u0"], ["i001", "i035"])
    assert s[0] > s[1]


def test_linear_round_trip_continues_identically():
    a, hist = _train_linear(1, refit_every=37)
    b = ItemLinear.from_bytes(a.to_bytes())
    for lin in (a, b):
        for u, i, ts in _sessions(2)[:100]:
            lin.learn(hist.setdefault(u, []), i, ts)
    assert a.to_bytes() == b.to_bytes()
    assert np.array_equal(a.scores(hist["u1"], ["i010", "i011"]), b.scores(hist["u1"], ["i010", "i011"]))
    with pytest.raises(StateError):
        ItemLinear.from_bytes(b"{not json")


def test_linear_head_is_bounded_rotates_and_forgets():
    lin = ItemLinear(head=4, lam=1.0, refit_every=10**6, min_count=2)
    for _ in range(2):  # while slots are free, an image takes one at once
        lin.learn([], "a", 0)
        lin.learn(["a"], "b", 0)
    assert "a" in lin and "b" in lin and len(lin) == 2
    for n in range(2):  # c, d fill the head
        lin.learn(["a", "b"], "c", 0)
        lin.learn(["a", "b"], "d", 0)
    assert len(lin) == 4
    lin.learn([], "once", 0)  # the head is full: waits outside
    for _ in range(6):  # e is hot: admitted at the next refit in place of the weakest
        lin.learn(["a"], "e", 0)
    lin.refit()
    assert "e" in lin and "once" not in lin and len(lin) == 4
    for _ in range(5):  # two hot newcomers at once: each displaces an old image, not the other newcomer
        lin.learn(["a"], "f", 1)
        lin.learn(["a"], "g", 1)
    lin.refit()
    assert "e" in lin and "f" in lin and "g" in lin and len(lin) == 4
    lin.forget("e")
    assert "e" not in lin and len(lin) == 3
    assert float(lin.scores(["a"], ["e"])[0]) == 0.0


def test_linear_does_not_mutate_inputs_and_handles_unknown_ids():
    lin, hist = _train_linear(3)
    h = list(hist["u2"])
    ex = np.array([-1, 10**6, 0], dtype=np.int64)
    ex0 = ex.copy()
    lin.top_idx(h, 5, ex)
    lin.scores(h, ["nobody", "i000"])
    lin.learn(h, "brand-new", 10**9)
    assert h == hist["u2"] and np.array_equal(ex, ex0)
    assert lin.scores(["nobody"], ["also-nobody"]).tolist() == [0.0]


@pytest.mark.parametrize("kw", [{"head": 1}, {"lam": 0.0}, {"refit_every": 0}, {"recency": 1.5}, {"floor": -1.0}])
def test_linear_rejects_bad_config(kw):
    with pytest.raises(ValueError):
        ItemLinear(**kw)


def test_linear_background_refit_matches_inline_and_drops_slots_changed_meanwhile():
    import threading

    from models import ease

    inline, hist = _train_linear(4, refit_every=10**6)
    bg, _ = _train_linear(4, refit_every=10**6, background=True)
    gate = threading.Event()
    ease._executor().submit(gate.wait)  # hold the refit thread: the solve below queues behind it
    inline.refit()
    bg.refit()
    assert bg._future is not None and bg.refits == 0  # not installed yet: the old (no) weights serve
    assert bg.scores(hist["u0"], ["i001"]).tolist() == [0.0]
    bg.forget("i001")  # its slot changes while the solve runs
    inline.forget("i001")
    gate.set()
    bg._future[1].result(timeout=10)
    bg._poll()  # the next call installs it
    assert bg.refits == 1 and bg._future is None
    assert np.array_equal(bg.scores(hist["u0"], ["i002", "i003", "i001"]),
                          inline.scores(hist["u0"], ["i002", "i003", "i001"]))
    assert np.array_equal(bg._b, inline._b)


def test_linear_matrices_grow_with_the_head_and_new_slots_wait_for_the_next_refit():
    lin = ItemLinear(head=300, lam=1.0, refit_every=10**6, min_count=1)
    hist: list[str] = []
    for n in range(100):
        lin.learn(hist[-5:], f"i{n}", n)
        hist.append(f"i{n}")
    assert lin._g.shape == (128, 128)  # not 300 x 300 up front
    lin.refit()
    for n in range(100, 150):
        lin.learn(hist[-5:], f"i{n}", n)
        hist.append(f"i{n}")
    assert lin._g.shape == (256, 256) and lin._b.shape == (128, 128)
    assert lin.scores(["i148"], ["i149"]).tolist() == [0.0]  # admitted after the refit: not covered yet
    top = lin.top_idx(["i97", "i98", "i149"], 3, np.zeros(0, dtype=np.int64))
    names = [lin.registry.names[i] for i in top.tolist()]
    assert names and all(int(n[1:]) < 100 and n not in ("i97", "i98") for n in names), names  # refit's items
    back = ItemLinear.from_bytes(lin.to_bytes())
    assert back.to_bytes() == lin.to_bytes()
    assert np.array_equal(back.scores(hist[-20:], hist[:50]), lin.scores(hist[-20:], hist[:50]))
    lin.refit()
    assert lin._b.shape == (256, 256) and lin.scores(["i148"], ["i149"])[0] > 0


def test_linear_round_trip_with_many_images_waiting_outside_a_full_head():
    lin = ItemLinear(head=2, lam=1.0, refit_every=10**6, min_count=1)
    lin.learn([], "a", 0)
    lin.learn(["a"], "b", 0)
    for n in range(200):  # the head is full: these wait, with registry ids far past the first 64
        lin.learn(["a"], f"x{n}", 0)
    back = ItemLinear.from_bytes(lin.to_bytes())
    back.refit()  # rotation admits restored waiting images
    lin.refit()
    assert back.to_bytes() == lin.to_bytes() and len(back) == 2


# ------------------------------------------------------------------------------------ stage popularity
def _train_stage(seed: int) -> tuple[StagePopularity, dict[str, int]]:
    """Users of block b act on block b's items once they have 10 events, on block (b + 1) % 4's before."""
    sp = StagePopularity(half_life_ms=3600e3)
    events: dict[str, int] = {}
    for u, i, ts in _sessions(seed):
        n = events.get(u, 0)
        sp.learn(n, i, ts)
        events[u] = n + 1
    return sp, events


def _stage_content(sp: StagePopularity) -> list:
    return [(c["hl"], c["ref"], c["now"], c["started"], dict(zip(c["names"], c["v"], strict=True)))
            for c in sp.to_dict()["stages"]]


def test_stage_deterministic_and_separates_stages():
    a, events = _train_stage(1)
    b, _ = _train_stage(1)
    assert a.to_dict() == b.to_dict()
    assert _train_stage(2)[0].to_dict() != a.to_dict()
    sp = StagePopularity(half_life_ms=1e12)
    for n in range(40):  # newcomers act on "early", users with 20+ events on "late"
        sp.learn(n % 5, "early", n)
        sp.learn(20 + n, "late", n)
    idx = sp.registry.lookup(["early", "late"])
    assert sp.relative(0, idx)[0].tolist() == [1.0, 0.0]
    assert sp.relative(25, idx)[0].tolist() == [0.0, 1.0]
    # 5-9 events: no count of its own, but stage 0 is next to it
    own, near = sp.relative(7, idx)
    assert own.tolist() == [0.0, 0.0] and near[0] > 0 and near[1] == 0


def test_stage_round_trip_continues_identically_and_shares_one_registry():
    a, _ = _train_stage(3)
    back = StagePopularity.from_dict(a.to_dict())
    assert _stage_content(back) == _stage_content(a)  # image order in a fresh registry may differ
    assert all(c.registry is back.registry for c in back.counts)
    for sp in (a, back):
        sp.learn(12, "i001", 10**7)
    idx = a.registry.lookup(["i001", "i002", "zz"])
    for n in (0, 12, 400):
        for x, y in zip(a.relative(n, idx), back.relative(n, back.registry.lookup(["i001", "i002", "zz"])), strict=True):
            assert np.array_equal(x, y)


@pytest.mark.parametrize("events", [-1, True, 2.5, "3", None])
def test_stage_rejects_a_bad_event_count_without_changing_state(events):
    sp, _ = _train_stage(4)
    before = sp.to_dict()
    with pytest.raises(InvalidInput):
        sp.learn(events, "i001", 10**7)
    with pytest.raises(InvalidInput):
        sp.relative(events, np.array([0]))
    with pytest.raises(InvalidInput):
        sp.top_near(events, 5)
    assert sp.to_dict() == before


@pytest.mark.parametrize("n", [-1, True, 2.5, "3", None])
def test_stage_top_near_rejects_a_bad_pool_size(n):
    sp, _ = _train_stage(4)
    with pytest.raises(InvalidInput):
        sp.top_near(0, n)


def test_stage_top_near_orders_the_near_stages_counts_deterministically():
    """``top_near`` ranks by the summed decayed counts of the user's stage and the two next to it (the order
    of ``stage_near``), keeps only images with counts there, breaks ties by registry id, and survives the
    snapshot (same names in the same order)."""
    sp = StagePopularity(half_life_ms=1000.0)
    for name, events, times in [("own", 12, 3), ("below", 7, 2), ("above", 25, 1), ("far", 400, 9),
                                ("tie1", 12, 1), ("tie0", 12, 1)]:
        for _ in range(times):
            sp.learn(events, name, 0)
    names = sp.registry.names
    top = [names[i] for i in sp.top_near(12, 10)]  # stage 10-19 with 5-9 and 20-29
    assert top == ["own", "below", "above", "tie1", "tie0"]  # tie1 registered first
    assert [names[i] for i in sp.top_near(12, 2)] == ["own", "below"]
    assert [names[i] for i in sp.top_near(12, 4)] == ["own", "below", "above", "tie1"]  # the tie cut by id
    assert sp.top_near(12, 0).shape == (0,) and [names[i] for i in sp.top_near(400, 5)] == ["far"]
    assert sp.top_near(1000, 5).tolist() == sp.top_near(400, 5).tolist()  # the last, open stage
    sp.learn(400, "far", 3000)  # 3 half-lives later: the old counts decay, their order does not change
    assert [names[i] for i in sp.top_near(12, 10)] == top
    registry = ItemRegistry()  # the core restores its registry first: same ids, so the same tie order
    for name in names:
        registry.add(name)
    back = StagePopularity.from_dict(sp.to_dict(), registry)
    for events in (0, 12, 25, 400):
        got = [back.registry.names[i] for i in back.top_near(events, 10)]
        assert got == [names[i] for i in sp.top_near(events, 10)]
    sp.forget("own")
    assert "own" not in [names[i] for i in sp.top_near(12, 10)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stage_top_near_kept_by_learn_equals_a_rebuild_from_the_counts(seed):
    """The best-first lists that ``learn`` patches give exactly what a rebuild from the counts gives (a copy
    restored from the snapshot has none), through new images, forgets, stages starting late and decay
    references that move (event-time jumps of more than 60 half-lives)."""
    rng = np.random.default_rng(seed)
    sp = StagePopularity(half_life_ms=1000.0)
    ts, checks = 0, 0
    for step in range(3000):
        ts += int(rng.integers(0, 400)) if rng.random() > 0.002 else 70_000  # a rare jump past 60 half-lives
        sp.learn(int(rng.choice([0, 3, 6, 12, 25, 40, 60, 90, 120, 170, 250, 400])), f"i{int(rng.zipf(1.3)) % 300}", ts)
        if rng.random() < 0.01:
            sp.forget(f"i{int(rng.integers(20))}")
        if step % 7 == 0:
            events, n = int(rng.integers(0, 500)), int(rng.choice([1, 5, 20, 100]))
            got = sp.top_near(events, n)
            fresh = StagePopularity.from_dict(sp.to_dict(), sp.registry)  # same registry: same ids, no lists
            assert got.tolist() == fresh.top_near(events, n).tolist(), (step, events, n)
            checks += 1
    assert checks > 400 and sp._tops  # the lists were in use, not rebuilt on every call


def test_stage_does_not_mutate_inputs_forgets_and_decays():
    sp = StagePopularity(half_life_ms=1000.0)
    sp.learn(0, "a", 0)
    sp.learn(0, "b", 0)
    sp.learn(0, "b", 0)
    idx = sp.registry.lookup(["a", "b"])
    copy = idx.copy()
    assert sp.relative(0, idx)[0].tolist() == [0.5, 1.0]
    assert np.array_equal(idx, copy)
    sp.learn(len(STAGE_EDGES) * 100, "c", 1000)  # another stage: one shared clock, stage 0 decays too
    assert sp.counts[0].scores_idx(idx).tolist() == [0.5, 1.0]
    sp.forget("b")
    assert sp.relative(0, idx)[0].tolist() == [1.0, 0.0]


@pytest.mark.parametrize("bad", [{}, {"format": 1}, {"format": 1, "edges": [0, 5], "stages": []},
                                 {"format": 1, "edges": list(STAGE_EDGES), "stages": [{}]},
                                 {"format": 1, "edges": list(STAGE_EDGES), "stages": []}, {"format": 9}])
def test_stage_corrupt_state_is_a_state_error(bad):
    with pytest.raises(StateError):
        StagePopularity.from_dict(bad)


@pytest.mark.parametrize("field, value", [("hl", 1234.0), ("now", 1)])
def test_stage_snapshot_whose_stages_disagree_on_half_life_or_clock_is_a_state_error(field, value):
    d = _train_stage(5)[0].to_dict()
    assert _stage_content(StagePopularity.from_dict(d)) == _stage_content(_train_stage(5)[0])  # untouched: loads
    d["stages"][3][field] = value
    with pytest.raises(StateError, match="disagree"):
        StagePopularity.from_dict(d)
