"""ImageIndex: upsert / replace / remove / search / vectors / newest, snapshot + restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import DimensionMismatch, ImageIndex, InvalidInput, StateError

DIM = 16


def build(unit_rows, n: int = 30, seed: int = 0) -> tuple[ImageIndex, list[str], np.ndarray]:
    ids = [f"img{j:03d}" for j in range(n)]
    vecs = unit_rows(n, DIM, seed)
    idx = ImageIndex(DIM)
    idx.upsert(ids, vecs, created_at=[1_000 + j for j in range(n)])
    return idx, ids, vecs


def brute_force(ids: list[str], vecs: np.ndarray, q: np.ndarray, k: int) -> list[str]:
    sims = vecs @ q
    order = sorted(range(len(ids)), key=lambda j: -sims[j])
    return [ids[j] for j in order[:k]]


# ---------------------------------------------------------------------------------------------- basics
def test_upsert_then_contains_len_ids(unit_rows) -> None:
    idx, ids, _ = build(unit_rows, 12)
    assert len(idx) == 12 and sorted(idx.ids()) == ids
    assert "img003" in idx and "nope" not in idx
    assert idx.created_at("img003") == 1_003 and idx.created_at("nope") is None


def test_empty_upsert_is_a_no_op() -> None:
    idx = ImageIndex(DIM)
    idx.upsert([], np.zeros((0, DIM), dtype=np.float32))
    assert len(idx) == 0


def test_constructor_rejects_bad_dim() -> None:
    with pytest.raises(ValueError):
        ImageIndex(0)


def test_search_is_exact_cosine_best_first(unit_rows) -> None:
    idx, ids, vecs = build(unit_rows, 40)
    queries = unit_rows(5, DIM, 7)
    results = idx.search(queries, k=6)
    assert len(results) == 5
    for q, hits in zip(queries, results, strict=True):
        assert [h[0] for h in hits] == brute_force(ids, vecs, q, 6)
        scores = [s for _, s in hits]
        assert scores == sorted(scores, reverse=True)
        want = {i: float(v @ q) for i, v in zip(ids, vecs, strict=True)}
        for iid, s in hits:
            assert s == pytest.approx(want[iid], abs=1e-5)


def test_search_normalises_stored_vectors(unit_rows) -> None:
    idx = ImageIndex(DIM)
    v = unit_rows(1, DIM, 1)[0]
    idx.upsert(["a"], (v * 40.0)[None, :])  # stored as a unit vector: cosine, not dot product
    [[(iid, score)]] = idx.search(v[None, :], k=1)
    assert iid == "a" and score == pytest.approx(1.0, abs=1e-5)


def test_batched_search_equals_single_searches(unit_rows) -> None:
    idx, _, _ = build(unit_rows, 40)
    queries = unit_rows(6, DIM, 9)
    batched = idx.search(queries, k=5)
    assert batched == [idx.search(q[None, :], k=5)[0] for q in queries]


def test_search_edge_cases(unit_rows) -> None:
    idx, _, _ = build(unit_rows, 3)
    q = unit_rows(2, DIM, 5)
    assert [len(r) for r in idx.search(q, k=10)] == [3, 3]  # k larger than the catalog
    assert idx.search(q, k=0) == [[], []]
    assert idx.search(np.zeros((0, DIM), dtype=np.float32), k=3) == []
    assert ImageIndex(DIM).search(q, k=3) == [[], []]


@pytest.mark.parametrize("shape", [(DIM,), (1, DIM - 1), (1, DIM + 1), (1, 1, DIM)])
def test_search_rejects_wrong_query_shape(unit_rows, shape) -> None:
    idx, _, _ = build(unit_rows, 3)
    with pytest.raises(DimensionMismatch):
        idx.search(np.ones(shape, dtype=np.float32), k=2)


# ---------------------------------------------------------------------------------------------- replace/remove
def test_upsert_replaces_an_existing_image(unit_rows, basis) -> None:
    idx, ids, _ = build(unit_rows, 10)
    idx.upsert(["img004"], basis(0)[None, :], created_at=[9_999])
    assert len(idx) == 10
    np.testing.assert_allclose(idx.vectors(["img004"])["img004"], basis(0), atol=1e-6)
    assert idx.created_at("img004") == 9_999
    hits = idx.search(basis(0)[None, :], k=10)[0]
    assert hits[0] == ("img004", pytest.approx(1.0, abs=1e-5))
    assert len({h[0] for h in hits}) == len(hits) == 10, "a replaced image must appear once"


def test_last_write_wins_inside_one_batch(basis) -> None:
    idx = ImageIndex(DIM)
    idx.upsert(["a", "b", "a"], np.stack([basis(0), basis(1), basis(2)]), created_at=[1, 2, 3])
    assert len(idx) == 2 and idx.created_at("a") == 3
    np.testing.assert_allclose(idx.vectors(["a"])["a"], basis(2), atol=1e-6)


def test_remove_batch_and_unknown_ids(unit_rows) -> None:
    idx, ids, vecs = build(unit_rows, 20)
    gone = ids[::3]
    assert idx.remove(gone + ["unknown"]) == len(gone)
    assert idx.remove(gone) == 0
    assert len(idx) == 20 - len(gone)
    assert not any(i in idx for i in gone)
    for hits in idx.search(unit_rows(8, DIM, 4), k=20):
        assert not {h[0] for h in hits} & set(gone)
        assert len(hits) == 20 - len(gone)
    assert all(i not in dict(idx.newest(100)) for i in gone)
    assert idx.vectors(gone) == {}


def test_removed_image_can_come_back(basis) -> None:
    idx = ImageIndex(DIM)
    idx.upsert(["a", "b"], np.stack([basis(0), basis(1)]), created_at=[1, 2])
    idx.remove(["a"])
    idx.upsert(["a"], basis(3)[None, :], created_at=[5])
    assert idx.search(basis(3)[None, :], k=1)[0][0][0] == "a"
    assert len(idx) == 2


def test_upsert_rejects_id_count_mismatch_without_changes(unit_rows) -> None:
    idx, _, _ = build(unit_rows, 5)
    before = sorted(idx.ids())
    with pytest.raises(InvalidInput):
        idx.upsert(["x", "y"], unit_rows(3, DIM, 1))
    assert sorted(idx.ids()) == before


def test_upsert_is_atomic_when_one_row_is_bad(unit_rows) -> None:
    idx, _, _ = build(unit_rows, 5)
    bad = unit_rows(3, DIM, 2)
    bad[2] = np.nan
    with pytest.raises(InvalidInput):
        idx.upsert(["img000", "new1", "new2"], bad)
    assert len(idx) == 5 and "new1" not in idx
    np.testing.assert_allclose(idx.vectors(["img000"])["img000"], unit_rows(5, DIM, 0)[0], atol=1e-6)


def test_upsert_rejects_short_created_at_and_stays_consistent(unit_rows, tmp_path: Path) -> None:
    idx, _, _ = build(unit_rows, 3)
    with pytest.raises(InvalidInput):
        idx.upsert(["a", "b"], unit_rows(2, DIM, 1), created_at=[1])
    assert len(idx) == 3
    idx.snapshot(tmp_path / "s.idx", offsets={})


# ---------------------------------------------------------------------------------------------- vectors / newest
def test_vectors_returns_unit_copies_of_known_ids(unit_rows) -> None:
    idx, ids, vecs = build(unit_rows, 6)
    got = idx.vectors(["img001", "missing", "img004"])
    assert list(got) == ["img001", "img004"]
    np.testing.assert_allclose(got["img001"], vecs[1], atol=1e-6)
    got["img001"][:] = 0.0  # the caller owns the copy
    np.testing.assert_allclose(idx.vectors(["img001"])["img001"], vecs[1], atol=1e-6)
    assert idx.vectors([]) == {}


def test_newest_orders_by_created_at(basis) -> None:
    idx = ImageIndex(DIM)
    idx.upsert(["old", "mid", "new"], np.stack([basis(0), basis(1), basis(2)]), created_at=[10, 20, 30])
    assert idx.newest(2) == [("new", 30), ("mid", 20)]
    assert idx.newest(10) == [("new", 30), ("mid", 20), ("old", 10)]
    idx.upsert(["old"], basis(3)[None, :], created_at=[40])  # re-published image is fresh again
    assert idx.newest(1) == [("old", 40)]
    idx.remove(["old"])
    assert idx.newest(1) == [("new", 30)]
    assert idx.newest(0) == []


# ---------------------------------------------------------------------------------------------- snapshot/restore
def test_snapshot_restore_round_trip(unit_rows, tmp_path: Path) -> None:
    idx, ids, _ = build(unit_rows, 30)
    idx.remove(ids[5:10])
    idx.upsert(["img000", "late"], unit_rows(2, DIM, 3), created_at=[50_000, 60_000])
    offsets = {0: 41, 1: 7, 5: 0}
    path = tmp_path / "replica" / "index.snap"
    idx.snapshot(path, offsets)
    assert path.exists() and not list(path.parent.glob("*.tmp"))

    back, got_offsets = ImageIndex.restore(path, DIM)
    assert got_offsets == offsets
    assert sorted(back.ids()) == sorted(idx.ids()) and len(back) == len(idx)
    assert back.newest(100) == idx.newest(100)
    queries = unit_rows(7, DIM, 8)
    assert back.search(queries, k=10) == idx.search(queries, k=10)
    some = sorted(idx.ids())[:5]
    for iid in some:
        np.testing.assert_array_equal(back.vectors([iid])[iid], idx.vectors([iid])[iid])


def test_restored_index_keeps_working(unit_rows, basis, tmp_path: Path) -> None:
    idx, ids, vecs = build(unit_rows, 10)
    idx.snapshot(tmp_path / "s", {0: 3})
    back, _ = ImageIndex.restore(tmp_path / "s", DIM)
    back.upsert(["new"], basis(0)[None, :], created_at=[99_999])  # must not collide with restored ids
    back.remove(["img002"])
    assert len(back) == 10 and "img002" not in back
    assert back.search(basis(0)[None, :], k=1)[0][0][0] == "new"
    for j in (0, 1, 3, 9):
        assert back.search(vecs[j][None, :], k=1)[0][0][0] == ids[j]


def test_snapshot_does_not_change_the_source_and_is_a_point_in_time(unit_rows, basis, tmp_path: Path) -> None:
    idx, _, _ = build(unit_rows, 5)
    q = unit_rows(3, DIM, 1)
    before = idx.search(q, k=5)
    idx.snapshot(tmp_path / "s", {0: 1})
    assert idx.search(q, k=5) == before
    idx.upsert(["after"], basis(0)[None, :], created_at=[7])
    back, _ = ImageIndex.restore(tmp_path / "s", DIM)
    assert "after" not in back and len(back) == 5


def test_snapshot_overwrites_previous(unit_rows, tmp_path: Path) -> None:
    idx, _, _ = build(unit_rows, 4)
    idx.snapshot(tmp_path / "s", {0: 1})
    idx.remove(["img000"])
    idx.snapshot(tmp_path / "s", {0: 2})
    back, offsets = ImageIndex.restore(tmp_path / "s", DIM)
    assert offsets == {0: 2} and "img000" not in back and len(back) == 3


def test_empty_index_round_trip(tmp_path: Path) -> None:
    ImageIndex(DIM).snapshot(tmp_path / "e", {})
    back, offsets = ImageIndex.restore(tmp_path / "e", DIM)
    assert len(back) == 0 and offsets == {}


def _corruptions(raw: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "garbage": bytes(range(256)) * 4,
        "json": b'{"format": 1, "dim": 16}',
        "header-overwritten": b"\x00" * 8 + raw[8:],
        "truncated-10": raw[:10],
        "truncated-half": raw[: len(raw) // 2],
        "truncated-last-byte": raw[:-1],
    }


@pytest.mark.parametrize("case", list(_corruptions(b"x" * 64)))
def test_corrupt_snapshot_raises_state_error(unit_rows, tmp_path: Path, case: str) -> None:
    idx, _, _ = build(unit_rows, 8)
    good = tmp_path / "good"
    idx.snapshot(good, {0: 1})
    bad = tmp_path / "bad"
    bad.write_bytes(_corruptions(good.read_bytes())[case])
    with pytest.raises(StateError):
        ImageIndex.restore(bad, DIM)


def test_snapshot_of_another_dimension_raises_state_error(unit_rows, tmp_path: Path) -> None:
    idx, _, _ = build(unit_rows, 4)
    idx.snapshot(tmp_path / "s", {0: 1})
    with pytest.raises(StateError):
        ImageIndex.restore(tmp_path / "s", DIM * 2)


def test_missing_snapshot_raises_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError):
        ImageIndex.restore(tmp_path / "absent", DIM)
