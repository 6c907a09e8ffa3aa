"""Index kinds: the approximate ``hnsw`` index behaves like the exact ``flat`` one (upsert, replace, remove,
newest, snapshot/restore), has high recall against exact search, never returns removed images, and keeps
its results across a rebuild (in place or in the background with a hot swap)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
import orjson
import pytest

from models import ImageIndex, InvalidInput, StateError
from models.index import HNSWImageIndex, _Newest, make_index, restore_index

DIM = 16
KINDS = ["flat", "hnsw"]


def units(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    m = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return m / np.linalg.norm(m, axis=1, keepdims=True)


def build(kind: str, n: int = 40, seed: int = 0, dim: int = DIM, **params) -> tuple[ImageIndex, list[str], np.ndarray]:
    ids = [f"img{j:04d}" for j in range(n)]
    vecs = units(n, dim, seed)
    idx = make_index(dim, kind, **params)
    idx.upsert(ids, vecs, created_at=[1_000 + j for j in range(n)])
    return idx, ids, vecs


def exact(ids: list[str], vecs: np.ndarray, queries: np.ndarray, k: int) -> list[list[str]]:
    sims = queries @ vecs.T
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in sims]


def recall(got: list[list[tuple[str, float]]], want: list[list[str]]) -> float:
    hit = sum(len({h[0] for h in g} & set(w)) for g, w in zip(got, want, strict=True))
    return hit / sum(len(w) for w in want)


# ---------------------------------------------------------------------------------------------- construction
def test_kind_dispatch_and_unknown_kind() -> None:
    assert type(ImageIndex(DIM)) is ImageIndex and ImageIndex(DIM).kind == "flat"
    h = ImageIndex(DIM, kind="hnsw", m=8)
    assert isinstance(h, HNSWImageIndex) and isinstance(h, ImageIndex) and h.kind == "hnsw" and h.m == 8
    assert type(make_index(DIM, "flat")) is ImageIndex
    with pytest.raises(ValueError):
        ImageIndex(DIM, kind="ivf")
    with pytest.raises(ValueError):
        make_index(DIM, "nope")
    with pytest.raises(ValueError):
        HNSWImageIndex(0)


# ---------------------------------------------------------------------------------------------- same behaviour as flat
@pytest.mark.parametrize("kind", KINDS)
def test_upsert_contains_len_ids_created_at(kind: str) -> None:
    idx, ids, _ = build(kind, 12)
    assert len(idx) == 12 and sorted(idx.ids()) == ids
    assert "img0003" in idx and "nope" not in idx
    assert idx.created_at("img0003") == 1_003 and idx.created_at("nope") is None
    idx.upsert([], np.zeros((0, DIM), dtype=np.float32))
    assert len(idx) == 12


@pytest.mark.parametrize("kind", KINDS)
def test_small_index_search_is_exact(kind: str) -> None:
    idx, ids, vecs = build(kind, 60)
    q = units(8, seed=5)
    got = idx.search(q, k=7)
    assert [[h[0] for h in row] for row in got] == exact(ids, vecs, q, 7)
    for row in got:
        for iid, s in row:
            assert s == pytest.approx(float(vecs[ids.index(iid)] @ q[got.index(row)]), abs=1e-5)
    assert [len(r) for r in idx.search(q[:2], k=1000)] == [60, 60]
    assert idx.search(q[:2], k=0) == [[], []]
    assert idx.search(np.zeros((0, DIM), dtype=np.float32), k=3) == []


@pytest.mark.parametrize("kind", KINDS)
def test_replace_keeps_one_copy_and_last_write_wins(kind: str) -> None:
    idx, ids, _ = build(kind, 10)
    e0 = np.eye(DIM, dtype=np.float32)[0]
    idx.upsert(["img0004"], e0[None, :], created_at=[9_999])
    assert len(idx) == 10 and idx.created_at("img0004") == 9_999
    np.testing.assert_allclose(idx.vectors(["img0004"])["img0004"], e0, atol=1e-6)
    hits = idx.search(e0[None, :], k=10)[0]
    assert hits[0][0] == "img0004" and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert len({h[0] for h in hits}) == len(hits) == 10, "a replaced image must appear once"
    idx.upsert(["a", "b", "a"], np.eye(DIM, dtype=np.float32)[1:4], created_at=[1, 2, 3])
    assert idx.created_at("a") == 3
    np.testing.assert_allclose(idx.vectors(["a"])["a"], np.eye(DIM, dtype=np.float32)[3], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_remove_and_come_back(kind: str) -> None:
    idx, ids, vecs = build(kind, 30)
    gone = ids[::3]
    assert idx.remove(gone + ["unknown"]) == len(gone)
    assert idx.remove(gone) == 0
    assert len(idx) == 30 - len(gone) and not any(i in idx for i in gone)
    for hits in idx.search(units(8, seed=4), k=30):
        assert not {h[0] for h in hits} & set(gone)
        assert len(hits) == 30 - len(gone)
    assert idx.vectors(gone) == {} and all(i not in dict(idx.newest(100)) for i in gone)
    idx.upsert([gone[0]], vecs[0][None, :] * -1, created_at=[5])
    assert gone[0] in idx and idx.search(-vecs[0][None, :], k=1)[0][0][0] == gone[0]


@pytest.mark.parametrize("kind", KINDS)
def test_newest(kind: str) -> None:
    idx = make_index(DIM, kind)
    eye = np.eye(DIM, dtype=np.float32)
    idx.upsert(["old", "mid", "new"], eye[:3], created_at=[10, 20, 30])
    assert idx.newest(2) == [("new", 30), ("mid", 20)]
    assert idx.newest(10) == [("new", 30), ("mid", 20), ("old", 10)]
    idx.upsert(["old"], eye[3][None, :], created_at=[40])
    assert idx.newest(1) == [("old", 40)]
    idx.remove(["old"])
    assert idx.newest(1) == [("new", 30)] and idx.newest(0) == []


@pytest.mark.parametrize("kind", KINDS)
def test_snapshot_restore_round_trip(kind: str, tmp_path: Path) -> None:
    idx, ids, _ = build(kind, 50)
    idx.remove(ids[5:12])
    idx.upsert(["img0000", "late"], units(2, seed=3), created_at=[50_000, 60_000])
    path = tmp_path / "r" / "index.snapshot"
    idx.snapshot(path, {0: 41, 1: 7})
    back, offsets = type(idx).restore(path, DIM)
    assert type(back) is type(idx) and offsets == {0: 41, 1: 7}
    assert sorted(back.ids()) == sorted(idx.ids()) and back.newest(100) == idx.newest(100)
    q = units(6, seed=8)
    assert back.search(q, k=10) == idx.search(q, k=10)
    for iid in sorted(idx.ids())[:5]:
        np.testing.assert_array_equal(back.vectors([iid])[iid], idx.vectors([iid])[iid])
    back.upsert(["new"], np.eye(DIM, dtype=np.float32)[0][None, :], created_at=[99_999])
    back.remove(["img0002"])
    assert "new" in back and "img0002" not in back and back.search(np.eye(DIM, dtype=np.float32)[:1], k=1)[0][0][0] == "new"
    again, _ = restore_index(path, DIM)
    assert type(again) is type(idx)


@pytest.mark.parametrize("kind", KINDS)
def test_tags_are_kept_normalised_replaced_removed_and_snapshotted(kind: str, tmp_path: Path) -> None:
    idx, ids, _ = build(kind, 6)
    assert idx.tags(ids[0]) == () and idx.tags("nope") == ()
    idx.upsert(["a", "b", "a"], units(3, seed=4), created_at=[1, 2, 3], tags=[["x"], [" Sky", "sky", "Sea"], ["Y "]])
    assert idx.tags("a") == ("y",) and idx.tags("b") == ("sky", "sea")  # last write wins inside a batch
    idx.upsert(["b"], units(1, seed=5), created_at=[4])  # a replacement without tags has none
    assert idx.tags("b") == ()
    idx.upsert(["c"], units(1, seed=6), created_at=[5], tags=[["z"]])
    idx.remove(["c"])
    assert idx.tags("c") == ()
    path = tmp_path / "index.snapshot"
    idx.snapshot(path, {0: 1})
    back, _ = restore_index(path, DIM)
    assert back.tags("a") == ("y",) and back.tags("b") == () and back.tags("c") == ()
    # a snapshot written before tags were kept (no "tags" key) restores with none
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[8:16])
    meta = orjson.loads(raw[16:16 + n])
    del meta["tags"]
    old = orjson.dumps(meta)
    (tmp_path / "old").write_bytes(raw[:8] + struct.pack("<Q", len(old)) + old + raw[16 + n:])
    before, _ = restore_index(tmp_path / "old", DIM)
    assert before.tags("a") == () and sorted(before.ids()) == sorted(idx.ids())
    meta["tags"] = {"ghost": ["x"]}  # tags of an image the snapshot does not hold: corrupt
    bad = orjson.dumps(meta)
    (tmp_path / "bad").write_bytes(raw[:8] + struct.pack("<Q", len(bad)) + bad + raw[16 + n:])
    with pytest.raises(StateError):
        restore_index(tmp_path / "bad", DIM)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tags", [[["x"]], [["x"], "yz"], [["x"], [1]]])
def test_bad_tags_are_rejected_before_anything_changes(kind: str, tags) -> None:
    idx, ids, _ = build(kind, 3)
    with pytest.raises(InvalidInput):
        idx.upsert(["new", ids[0]], units(2, seed=7), created_at=[1, 2], tags=tags)
    assert "new" not in idx and len(idx) == 3 and idx.created_at(ids[0]) == 1_000


def test_snapshot_of_the_other_kind_is_a_state_error(tmp_path: Path) -> None:
    flat, _, _ = build("flat", 5)
    hnsw, _, _ = build("hnsw", 5)
    flat.snapshot(tmp_path / "f", {})
    hnsw.snapshot(tmp_path / "h", {})
    with pytest.raises(StateError, match="flat"):
        HNSWImageIndex.restore(tmp_path / "f", DIM)
    with pytest.raises(StateError, match="hnsw"):
        ImageIndex.restore(tmp_path / "h", DIM)
    with pytest.raises(StateError):
        HNSWImageIndex.restore(tmp_path / "h", DIM + 1)
    raw = (tmp_path / "h").read_bytes()
    (tmp_path / "bad").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(StateError):
        HNSWImageIndex.restore(tmp_path / "bad", DIM)


def test_hnsw_upsert_validates_before_changing_anything() -> None:
    idx, _, _ = build("hnsw", 5)
    with pytest.raises(InvalidInput):
        idx.upsert(["a", "b"], units(2, seed=1), created_at=[1])
    bad = units(2, seed=2)
    bad[1] = np.nan
    with pytest.raises(InvalidInput):
        idx.upsert(["img0000", "x"], bad)
    assert len(idx) == 5 and "a" not in idx and "x" not in idx


# ---------------------------------------------------------------------------------------------- approximate search
def test_hnsw_recall_at_10_against_exact_search() -> None:
    n, dim = 5_000, 32
    idx, ids, vecs = build("hnsw", n, seed=11, dim=dim)
    q = units(200, dim, seed=12)
    r = recall(idx.search(q, k=10), exact(ids, vecs, q, 10))
    assert r >= 0.95, f"recall@10 = {r:.3f}"


def test_hnsw_removed_ids_are_never_returned_and_recall_holds() -> None:
    n, dim = 3_000, 32
    idx, ids, vecs = build("hnsw", n, seed=21, dim=dim, rebuild_ratio=0.9)  # keep the tombstones
    rng = random.Random(3)
    gone = set(rng.sample(ids, n // 3))
    idx.remove(sorted(gone))
    assert idx.stats()["tombstones"] == len(gone) and idx.stats()["rebuilds"] == 0
    live = [i for i in ids if i not in gone]
    lv = vecs[[ids.index(i) for i in live]]
    # the removed vectors themselves as queries: their nearest neighbour is the tombstone
    q = np.vstack([vecs[[ids.index(i) for i in sorted(gone)[:100]]], units(100, dim, seed=22)])
    got = idx.search(q, k=10)
    assert not {h[0] for row in got for h in row} & gone
    assert all(len(row) == 10 for row in got)
    assert recall(got, exact(live, lv, q, 10)) >= 0.95


def test_hnsw_rebuild_in_place_drops_tombstones_and_keeps_results() -> None:
    n, dim = 2_000, 32
    idx, ids, vecs = build("hnsw", n, seed=31, dim=dim, rebuild_ratio=0.25, background_min=10**9)
    q = units(100, dim, seed=32)
    idx.remove(ids[: n // 5])  # 20%: below the threshold
    assert idx.stats()["rebuilds"] == 0 and idx.stats()["tombstones"] == n // 5
    idx.upsert(ids[n // 5: n // 5 + 200], vecs[n // 5: n // 5 + 200])  # replacements tombstone too: > 25%
    st = idx.stats()
    assert st["rebuilds"] == 1 and st["tombstones"] == 0 and st["slots"] == st["images"] == n - n // 5
    live = ids[n // 5:]
    got = idx.search(q, k=10)
    assert not {h[0] for row in got for h in row} & set(ids[: n // 5])
    assert recall(got, exact(live, vecs[n // 5:], q, 10)) >= 0.95
    before = idx.search(q, k=10)
    idx.rebuild()
    assert recall(idx.search(q, k=10), [[h[0] for h in row] for row in before]) >= 0.95
    assert sorted(idx.ids()) == sorted(live) and idx.created_at(live[-1]) == 1_000 + n - 1


def test_hnsw_background_rebuild_replays_mutations_and_hot_swaps() -> None:
    n, dim = 3_000, 32
    idx, ids, vecs = build("hnsw", n, seed=41, dim=dim, rebuild_ratio=0.5)
    idx.remove(ids[:500])
    idx.rebuild(background=True)
    assert idx.rebuilding
    # mutations while the new graph is built: must be replayed onto it
    e = np.eye(dim, dtype=np.float32)
    idx.upsert(["during-a", "during-b"], e[:2], created_at=[7, 8])
    idx.remove(ids[500:600] + ["during-b"])
    idx.upsert([ids[700]], e[2][None, :], created_at=[9])  # replace a live image
    mid = idx.search(e[:3], k=1)  # the old graph serves meanwhile
    assert mid[0][0][0] == "during-a" and mid[2][0][0] == ids[700] and mid[1][0][0] != "during-b"
    assert idx.wait_rebuild(timeout=60)
    st = idx.stats()
    assert not idx.rebuilding and st["rebuilds"] == 1
    # replayed: 100 removals + during-b (added then removed) + the replaced ids[700] slot
    assert st["images"] == n - 600 + 1 and st["tombstones"] == 102
    assert "during-a" in idx and "during-b" not in idx and ids[550] not in idx
    assert idx.search(e[:1], k=1)[0][0][0] == "during-a"
    assert idx.search(e[2:3], k=1)[0][0][0] == ids[700]
    np.testing.assert_allclose(idx.vectors([ids[700]])[ids[700]], e[2], atol=1e-6)
    live = ids[600:]
    lv = vecs[600:].copy()
    lv[ids[600:].index(ids[700])] = e[2]
    q = units(100, dim, seed=42)
    got = idx.search(q, k=10)
    assert not {h[0] for row in got for h in row} & set(ids[:600])
    assert recall(got, exact(live + ["during-a"], np.vstack([lv, e[:1]]), q, 10)) >= 0.95
    assert idx.newest(1) == [(ids[-1], 1_000 + n - 1)] and idx.created_at(ids[700]) == 9


def test_hnsw_background_rebuild_is_triggered_by_removals() -> None:
    idx, ids, _ = build("hnsw", 1_000, seed=51, dim=DIM, rebuild_ratio=0.1, rebuild_min_dead=10, background_min=500)
    idx.remove(ids[:150])
    assert idx.rebuilding or idx.stats()["rebuilds"] == 1
    assert idx.wait_rebuild(timeout=60)
    assert idx.stats()["tombstones"] == 0 and len(idx) == 850


def test_snapshot_during_background_rebuild_is_consistent(tmp_path: Path) -> None:
    idx, ids, _ = build("hnsw", 2_000, seed=61, dim=DIM, rebuild_ratio=0.9)
    idx.remove(ids[:300])
    idx.rebuild(background=True)
    idx.upsert(["x"], units(1, seed=62), created_at=[1])
    idx.snapshot(tmp_path / "s", {0: 5})
    idx.wait_rebuild(timeout=60)
    back, _ = HNSWImageIndex.restore(tmp_path / "s", DIM)
    assert sorted(back.ids()) == sorted(idx.ids()) and "x" in back


# ---------------------------------------------------------------------------------------------- newest cache
def test_newest_cache_matches_a_full_sort_under_random_operations() -> None:
    rng = random.Random(5)
    cache = _Newest(cap=8)
    created: dict[str, int] = {}
    for step in range(3_000):
        op = rng.random()
        if op < 0.6:
            i = f"i{rng.randrange(60)}"
            if i in created:
                cache.discard(i, created[i])
            created[i] = rng.randrange(200)
            cache.offer(i, created[i])
        elif created:
            i = rng.choice(sorted(created))
            cache.discard(i, created.pop(i))
        n = rng.choice([0, 1, 3, 8, 12, 100])
        want = sorted(((i, c) for i, c in created.items()), key=lambda kv: (kv[1], kv[0]), reverse=True)[:n]
        assert cache.top(n, created) == want, step
