"""Generic property checks applied to every component of ``models/``.

Each component is described once by a :class:`Component` (how to run a seeded scenario through its public
API, how to push one vector into it, how to call it on inputs we can compare afterwards); the properties
below are parametrised over all of them:

- determinism: the same seed gives the same observable result, and another seed a different one;
- bad vectors (NaN, ±Inf, too short, too long, all zeros) are rejected with the right class from
  ``models.errors``, and the rejection leaves the component unchanged (a too-long vector whose first
  ``DIM`` components are valid must still be rejected: dimension mismatches are never truncated);
- inputs are never mutated (arrays copied before the call and compared bit for bit after).

Known bugs in ``models/`` are listed per component in ``known_bugs`` and run as ``xfail(strict=True)``:
when one gets fixed, the XPASS fails the suite and the entry must be removed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models import (
    DimensionMismatch,
    ImageIndex,
    InvalidInput,
    InterestModel,
    NonFiniteVector,
    Popularity,
    PushMatch,
    Ranker,
    RecItem,
    RecommenderCore,
    UserState,
    ZeroVector,
    as_unit_matrix,
    as_unit_vector,
)

DIM = 16
ACTIONS = ("view", "click", "like", "save", "share", "skip", "hide")
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------- helpers
def fingerprint(obj: Any) -> Any:
    """A comparable, bit-exact summary of anything a component returns or holds (public API only)."""
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, UserState):
        return ("state", obj.to_bytes())
    if isinstance(obj, ImageIndex):
        ids = sorted(obj.ids())
        vecs = obj.vectors(ids)
        return ("index", obj.dim, tuple(ids), tuple(vecs[i].tobytes() for i in ids),
                tuple(obj.newest(len(obj) + 1)))
    if isinstance(obj, Popularity):
        top = obj.top(len(obj) + 1)
        return ("popularity", len(obj), tuple(top), tuple(obj.score(i) for i, _ in top))
    if isinstance(obj, RecommenderCore):
        return ("core", fingerprint(obj.index), fingerprint(obj.popularity))
    if isinstance(obj, RecItem):
        return ("item", obj.image_id, obj.score, obj.source)
    if isinstance(obj, PushMatch):
        return ("push", obj.user_id, obj.image_id, obj.score)
    if isinstance(obj, dict):
        return ("dict", tuple(sorted((k, fingerprint(v)) for k, v in obj.items())))
    if isinstance(obj, (set, frozenset)):
        return ("set", tuple(sorted(obj)))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(fingerprint(x) for x in obj))
    return obj


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    m = rng.normal(size=(n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def catalog(seed: int, n: int = 40) -> list[tuple[str, np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    vecs = unit_rows(rng, n)
    return [(f"img{j:03d}", vecs[j], 1_000 + 10 * j) for j in range(n)]


def stream(seed: int, image_ids: list[str], n_users: int = 6, n_events: int = 80) -> list[dict]:
    rng = np.random.default_rng(seed + 7_919)
    out, ts = [], 10_000
    for n in range(n_events):
        ts += int(rng.integers(1, 5_000_000))
        out.append({
            "user": f"u{int(rng.integers(n_users))}", "image_id": image_ids[int(rng.integers(len(image_ids)))],
            "action": ACTIONS[int(rng.integers(len(ACTIONS)))], "ts": ts, "offset": n, "event_id": f"e{n}",
        })
    return out


def warm_core(seed: int, n_images: int = 40, k: int = 5) -> tuple[RecommenderCore, dict[str, UserState]]:
    core = RecommenderCore(dim=DIM, k=k)
    cat = catalog(seed, n_images)
    core.apply_images(cat)
    states: dict[str, UserState] = {}
    for ev in stream(seed, [i for i, _, _ in cat]):
        st = states.get(ev["user"]) or core.new_state(ev["user"])
        states[ev["user"]], _ = core.learn(st, image_id=ev["image_id"], action=ev["action"], ts=ev["ts"],
                                           offset=ev["offset"], event_id=ev["event_id"])
    return core, states


def learned_state(seed: int, model: InterestModel | None = None) -> UserState:
    model = model or InterestModel(dim=DIM)
    rng = np.random.default_rng(seed)
    st = model.new_state(f"user-{seed}")
    vecs = unit_rows(rng, 20)
    for n in range(20):
        st = model.learn_one(st, image_id=f"img{n}", action=ACTIONS[n % len(ACTIONS)], ts=1_000 + 3_600_000 * n,
                             vector=vecs[n], offset=n, event_id=f"e{n}")
    return st


# ---------------------------------------------------------------------------------------------- bad vectors
def _bad(kind: str, rng: np.random.Generator) -> np.ndarray:
    good = unit_rows(rng, 1)[0].astype(np.float64)
    if kind == "nan":
        good[0] = np.nan
        return good
    if kind == "+inf":
        good[0] = np.inf
        return good
    if kind == "-inf":
        good[0] = -np.inf
        return good
    if kind == "short":
        return good[:-1]
    if kind == "long":  # first DIM components are a valid unit vector: truncating would "work"
        return np.append(good, 0.0)
    if kind == "zero":
        return np.zeros(DIM)
    raise AssertionError(kind)


EXPECTED = {
    "nan": NonFiniteVector, "+inf": NonFiniteVector, "-inf": NonFiniteVector,
    "short": DimensionMismatch, "long": DimensionMismatch, "zero": ZeroVector,
}
ALL_BAD = tuple(EXPECTED)


# ---------------------------------------------------------------------------------------------- components
Feed = Callable[[np.ndarray], tuple[Callable[[], Any], Callable[[], Any]]]


@dataclass(frozen=True)
class Component:
    name: str
    #: seed -> observable result of a seeded scenario through the public API
    run: Callable[[int], Any]
    #: vector -> (observe, call): ``call`` pushes the vector in; ``observe`` summarises the component's state
    feed: Feed
    #: rng -> (inputs, call): ``call`` uses ``inputs``, which must be unchanged afterwards
    on_inputs: Callable[[np.random.Generator], tuple[list, Callable[[], Any]]]
    bad_kinds: tuple[str, ...] = ALL_BAD
    known_bugs: dict[str, str] = field(default_factory=dict)


def _nothing() -> None:
    return None


# -- as_unit_vector / as_unit_matrix
def _run_unit_vector(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    return [as_unit_vector(rng.normal(size=DIM) * 3.0, DIM) for _ in range(3)]


def _run_unit_matrix(seed: int) -> Any:
    return as_unit_matrix(np.random.default_rng(seed).normal(size=(5, DIM)) * 3.0, DIM)


def _inputs_unit_vector(rng):
    arr = (rng.normal(size=DIM) * 5).astype(np.float32)
    lst = [float(x) for x in rng.normal(size=DIM) * 5]

    def call():
        out = as_unit_vector(arr, DIM)
        assert not np.shares_memory(out, arr), "as_unit_vector must return a new array"
        return out, as_unit_vector(lst, DIM)
    return [arr, lst], call


def _inputs_unit_matrix(rng):
    mat = (rng.normal(size=(4, DIM)) * 5).astype(np.float32)

    def call():
        out = as_unit_matrix(mat, DIM)
        assert not np.shares_memory(out, mat), "as_unit_matrix must return a new array"
        return out
    return [mat], call


# -- ImageIndex
def _seeded_index(seed: int, n: int = 30) -> ImageIndex:
    idx = ImageIndex(DIM)
    cat = catalog(seed, n)
    idx.upsert([i for i, _, _ in cat], np.stack([v for _, v, _ in cat]), created_at=[c for _, _, c in cat])
    return idx


def _run_index(seed: int) -> Any:
    idx = _seeded_index(seed)
    rng = np.random.default_rng(seed + 1)
    idx.remove([f"img{j:03d}" for j in rng.choice(30, size=5, replace=False)])
    idx.upsert(["img001", "extra"], unit_rows(rng, 2), created_at=[5_000, 6_000])
    return idx.search(unit_rows(rng, 4), k=6), idx.newest(5), idx


def _feed_index_upsert(vec):
    idx = _seeded_index(0, 8)
    return (lambda: fingerprint(idx)), (lambda: idx.upsert(["new"], vec[None, :], created_at=[99]))


def _feed_index_search(vec):
    idx = _seeded_index(0, 8)
    return (lambda: fingerprint(idx)), (lambda: idx.search(np.asarray(vec, dtype=np.float32)[None, :], k=3))


def _inputs_index(rng):
    idx = _seeded_index(3, 10)
    ids = ["img001", "new1", "new2", "new1"]
    vecs = (rng.normal(size=(4, DIM)) * 7).astype(np.float32)  # not unit: the index normalises a copy
    created = [7, 8, 9, 10]
    queries = (rng.normal(size=(3, DIM)) * 2).astype(np.float32)

    def call():
        idx.upsert(ids, vecs, created_at=created)
        got = idx.search(queries, k=4)
        idx.vectors(ids)
        idx.remove(["img002"])
        return got
    return [ids, vecs, created, queries], call


# -- InterestModel
def _run_interest(seed: int) -> Any:
    return learned_state(seed)


def _feed_interest(vec):
    model = InterestModel(dim=DIM)
    state = learned_state(1, model)
    return (lambda: fingerprint(state)), (lambda: model.learn_one(
        state, image_id="new", action="like", ts=state.updated_ts + 1, vector=vec))


def _inputs_interest(rng):
    model = InterestModel(dim=DIM, max_interests=2)
    state = learned_state(2, model)
    vec = unit_rows(rng, 1)[0]

    def call():
        out = [model.learn_one(state, image_id=f"x-{a}", action=a, ts=state.updated_ts + 10, vector=vec,
                               offset=state.last_offset + 1, event_id=f"new-{a}") for a in ACTIONS]
        out.append(model.learn_one(state, image_id="unknown", action="like", ts=1, vector=None))
        return out
    return [state, vec], call


# -- Popularity
def _run_popularity(seed: int) -> Any:
    rng = np.random.default_rng(seed)
    pop = Popularity(half_life_ms=3_600_000)
    ts = 0
    for _ in range(60):
        ts += int(rng.integers(0, 600_000))
        pop.learn_one(f"img{int(rng.integers(15))}", float(rng.uniform(0.1, 3.0)), ts)
    return pop


def _feed_popularity(vec):
    # Popularity takes scalar weights, not vectors: the bad component (NaN/+Inf at position 0) is the weight.
    pop = _run_popularity(0)
    return (lambda: fingerprint(pop)), (lambda: pop.learn_one("new", float(vec[0]), ts=10**7))


def _inputs_popularity(rng):
    pop = _run_popularity(1)
    exclude = {"img001", "img002"}
    return [exclude], (lambda: pop.top(5, exclude=exclude))


# -- Ranker
def _run_ranker(seed: int) -> Any:
    core, states = warm_core(seed)
    ranker = Ranker(k=6)
    users = sorted(states) + ["cold"]
    sts = [states.get(u) or core.new_state(u) for u in users]
    return ranker.recommend(sts, core.index, core.popularity)


def _feed_ranker(vec):
    core, _ = warm_core(0, n_images=10)

    def call():
        st = UserState("u", DIM, interests=np.asarray(vec, dtype=np.float32)[None, :],
                       weights=np.ones(1, dtype=np.float32))
        return Ranker(k=3).recommend([st], core.index, core.popularity)
    return (lambda: fingerprint(core)), call


def _inputs_ranker(rng):
    core, states = warm_core(4)
    sts = list(states.values()) + [core.new_state("cold")]
    return [sts, core.index, core.popularity], (lambda: Ranker(k=7).recommend(sts, core.index, core.popularity))


# -- RecommenderCore
def _run_core(seed: int) -> Any:
    core, states = warm_core(seed)
    users = sorted(states)
    recs = core.recommend([states[u] for u in users])
    rng = np.random.default_rng(seed + 3)
    core.apply_images([(f"fresh{j}", v, 10**9 + j) for j, v in enumerate(unit_rows(rng, 4))], deletes=["img000"])
    pushes = core.match_new_images([f"fresh{j}" for j in range(4)], [states[u] for u in users], min_score=0.0)
    return recs, pushes, [states[u] for u in users], core


def _feed_core(vec):
    core, _ = warm_core(0, n_images=10)
    return (lambda: fingerprint(core)), (lambda: core.apply_images([("new", vec, 99)]))


def _inputs_core(rng):
    core, states = warm_core(5)
    upserts = [(f"n{j}", (v * 3).astype(np.float32), 10**8 + j) for j, v in enumerate(unit_rows(rng, 3))]
    state = next(iter(states.values()))
    sts = list(states.values())

    def call():
        core.apply_images(upserts, deletes=["img003"])
        new, applied = core.learn(state, image_id="n0", action="like", ts=state.updated_ts + 1,
                                  offset=state.last_offset + 1, event_id="fresh-event")
        assert applied
        return core.recommend(sts + [new]), core.match_new_images(["n0", "n1", "n2"], sts, min_score=-1.0)
    return [upserts, state, sts], call


# -- UserState
def _run_state(seed: int) -> Any:
    st = learned_state(seed)
    return st, UserState.from_bytes(st.to_bytes())


def _feed_state(vec):
    return _nothing, (lambda: UserState("u", DIM, interests=np.asarray(vec, dtype=np.float32)[None, :],
                                        weights=np.ones(1, dtype=np.float32)))


def _inputs_state(rng):
    interests = unit_rows(rng, 2)
    weights = np.array([1.5, 0.5], dtype=np.float32)
    negative = (rng.normal(size=DIM)).astype(np.float32)
    base = learned_state(6)

    def call():
        st = UserState("u", DIM, interests=interests, weights=weights, negative=negative, seen=("a",))
        return st.to_bytes(), st.excluded(), UserState.from_bytes(st.to_bytes()), base.evolve(version=999)
    return [interests, weights, negative, base], call


COMPONENTS = [
    Component("as_unit_vector", _run_unit_vector, lambda v: (_nothing, lambda: as_unit_vector(v, DIM)),
              _inputs_unit_vector),
    Component("as_unit_matrix", _run_unit_matrix, lambda v: (_nothing, lambda: as_unit_matrix(v[None, :], DIM)),
              _inputs_unit_matrix),
    Component("ImageIndex.upsert", _run_index, _feed_index_upsert, _inputs_index),
    Component("ImageIndex.search", _run_index, _feed_index_search, _inputs_index),
    Component("InterestModel", _run_interest, _feed_interest, _inputs_interest),
    Component("Popularity", _run_popularity, _feed_popularity, _inputs_popularity, bad_kinds=("nan", "+inf")),
    Component("Ranker", _run_ranker, _feed_ranker, _inputs_ranker),
    Component("RecommenderCore", _run_core, _feed_core, _inputs_core),
    Component("UserState", _run_state, _feed_state, _inputs_state),
]
_BY_NAME = {c.name: c for c in COMPONENTS}
#: how a known bug shows: no exception at all, or an InvalidInput of the wrong subclass (anything else fails)
_BUG_OUTCOMES = (pytest.fail.Exception, InvalidInput)


def _bad_cases():
    for comp in COMPONENTS:
        for kind in comp.bad_kinds:
            marks = [pytest.mark.xfail(strict=True, reason=comp.known_bugs[kind], raises=_BUG_OUTCOMES)] \
                if kind in comp.known_bugs else []
            yield pytest.param(comp.name, kind, id=f"{comp.name}-{kind}", marks=marks)


# ---------------------------------------------------------------------------------------------- properties
@pytest.mark.parametrize("name", [c.name for c in COMPONENTS])
def test_deterministic_with_a_seed(name: str) -> None:
    comp = _BY_NAME[name]
    first, again, other = fingerprint(comp.run(11)), fingerprint(comp.run(11)), fingerprint(comp.run(12))
    assert first == again, f"{name}: two runs with seed 11 differ"
    assert first != other, f"{name}: the scenario does not depend on the seed (the check above proves nothing)"


@pytest.mark.parametrize(("name", "kind"), list(_bad_cases()))
def test_rejects_bad_vectors_with_the_right_error(name: str, kind: str) -> None:
    comp = _BY_NAME[name]
    bad = _bad(kind, np.random.default_rng(0))
    observe, call = comp.feed(bad)
    before = observe()
    with pytest.raises(EXPECTED[kind]):
        call()
    assert observe() == before, f"{name}: a rejected {kind} vector still changed the component"


@pytest.mark.parametrize("name", [c.name for c in COMPONENTS])
def test_good_vector_is_accepted_by_the_same_entry_point(name: str) -> None:
    """Control for the test above: the same call with a valid vector does not raise."""
    comp = _BY_NAME[name]
    good = unit_rows(np.random.default_rng(0), 1)[0].astype(np.float64) * (1.0 if name != "Popularity" else 2.0)
    _, call = comp.feed(good)
    call()


@pytest.mark.parametrize("name", [c.name for c in COMPONENTS])
def test_does_not_mutate_inputs(name: str) -> None:
    comp = _BY_NAME[name]
    inputs, call = comp.on_inputs(np.random.default_rng(99))
    before = [fingerprint(copy.deepcopy(x)) if not isinstance(x, (ImageIndex, Popularity)) else fingerprint(x)
              for x in inputs]
    call()
    after = [fingerprint(x) for x in inputs]
    for n, (b, a) in enumerate(zip(before, after, strict=True)):
        assert a == b, f"{name}: input #{n} ({type(inputs[n]).__name__}) was mutated"


def test_fingerprint_sees_a_single_flipped_bit() -> None:
    """The mutation check is only as good as ``fingerprint``: it must notice the smallest change."""
    arr = unit_rows(np.random.default_rng(0), 3)
    before = fingerprint(arr.copy())
    arr.view(np.uint32)[1, 2] ^= 1
    assert fingerprint(arr) != before
    st = learned_state(0)
    st.interests[0, 0] = np.nextafter(st.interests[0, 0], np.float32(2))
    assert fingerprint(st) != fingerprint(learned_state(0))


def test_core_is_deterministic_across_processes() -> None:
    """String hashing (set/dict order of image ids) must not leak into results: two other hash seeds agree."""
    import hashlib

    script = textwrap.dedent(f"""
        import hashlib, importlib.util, sys
        spec = importlib.util.spec_from_file_location("props", {str(Path(__file__))!r})
        props = sys.modules["props"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(props)
        print(hashlib.sha256(repr(props.fingerprint(props._run_core(5))).encode()).hexdigest())
    """)
    here = hashlib.sha256(repr(fingerprint(_run_core(5))).encode()).hexdigest()
    for hashseed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = proc.stdout.strip()
        assert out == here, f"RecommenderCore gives different results with PYTHONHASHSEED={hashseed}"
