"""The image index: a FAISS inner-product index over unit vectors, keyed by string image ids.

Every worker holds a full replica (behaviour is partitioned by user, but each user must be able to see the
whole catalog). The replica is derived state: :meth:`ImageIndex.snapshot` writes it, together with the
source-topic offsets it reflects, to one file atomically; :meth:`ImageIndex.restore` reads it back.

Two kinds behind one interface (``upsert/remove/search/vectors/newest/created_at/tags/ids/snapshot/restore``,
``len``, ``in``), chosen with ``ImageIndex(dim, kind=...)`` (the worker's ``RECO_INDEX_KIND``):

``flat`` (:class:`ImageIndex`)
    exact search (``IndexIDMap2`` over ``IndexFlatIP``). Removal is ``remove_ids``, O(N) per call, so
    removals are batched. Search cost grows linearly with the catalog: fine to ~100k images.
``hnsw`` (:class:`HNSWImageIndex`)
    approximate search (``IndexHNSWFlat``, inner product), sub-linear search. HNSW cannot remove vectors
    (faiss #3339), so a delete or a replacement *tombstones* the old slot: tombstoned slots are filtered at
    search time by a FAISS ``IDSelectorBitmap`` (never returned), and when they exceed
    ``rebuild_ratio`` of the slots the graph is rebuilt from the live vectors — synchronously for small
    indexes, otherwise in a background thread (FAISS releases the GIL) while the old graph keeps serving;
    mutations made meanwhile are logged and replayed onto the new graph, which is then hot-swapped in.

Vectors are added in batches (one FAISS call per batch, never one per vector: faiss #3316).
``newest(n)`` is served from a small sorted cache maintained on every upsert/remove (it used to sort the
whole catalog on every call).

Thread safety: mutations and ``snapshot`` (which the worker runs in an executor thread) take one lock, so a
snapshot never serialises a half-applied batch. Searches run on the caller's thread without the lock.

>>> import numpy as np
>>> idx = ImageIndex(dim=2)
>>> idx.upsert(["a", "b"], np.array([[1, 0], [0, 1]], dtype=np.float32), created_at=[1, 2])
>>> [hit[0] for hit in idx.search(np.array([[0.9, 0.1]], dtype=np.float32), k=2)[0]]
['a', 'b']
>>> idx.remove(["a"]), "a" in idx, len(idx)
(1, False, 1)
>>> h = ImageIndex(dim=2, kind="hnsw")
>>> h.kind, isinstance(h, ImageIndex)
('hnsw', True)
"""

from __future__ import annotations

import bisect
import heapq
import io
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import faiss
import numpy as np
import orjson

from .errors import DimensionMismatch, InvalidInput, NonFiniteVector, StateError, ZeroVector
from .tags import normalise_tags
from .vectors import as_unit_matrix

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_MAGIC = b"RECOIDX1"
_MAGIC_HNSW = b"RECOHNS1"

INDEX_KINDS = ("flat", "hnsw")

Hit = tuple[str, float]


class _Newest:
    """The newest images by ``(created_at, image_id)``, kept incrementally.

    Invariant: ``keys`` (ascending) are exactly the top ``len(keys)`` of the catalog under that order;
    ``complete`` means they are the whole catalog. Removing a cached key keeps the invariant (the rest are
    still the top of what is left); a new key is cached only when it provably belongs to the top (it beats
    the smallest cached key, or the cache is complete). When a caller asks for more than is cached, the
    cache is refilled with one ``heapq.nlargest`` pass over the catalog — O(N), not a full sort, and rare.
    """

    __slots__ = ("cap", "keys", "complete")

    def __init__(self, cap: int = 1024) -> None:
        self.cap = cap
        self.keys: list[tuple[int, str]] = []
        self.complete = True

    def discard(self, image_id: str, created: int) -> None:
        key = (created, image_id)
        j = bisect.bisect_left(self.keys, key)
        if j < len(self.keys) and self.keys[j] == key:
            del self.keys[j]

    def offer(self, image_id: str, created: int) -> None:
        key = (created, image_id)
        if self.complete or (self.keys and key > self.keys[0]):
            bisect.insort(self.keys, key)
            if len(self.keys) > self.cap:
                del self.keys[: len(self.keys) - self.cap]
                self.complete = False

    def top(self, n: int, created_at: dict[str, int]) -> list[tuple[str, int]]:
        if n <= 0:
            return []
        if n > len(self.keys) and not self.complete:
            want = max(n, self.cap)
            best = heapq.nlargest(want, ((c, i) for i, c in created_at.items()))
            best.reverse()
            self.keys = best
            self.complete = len(best) == len(created_at)
        return [(i, c) for c, i in reversed(self.keys[-n:])]

    def reset(self, created_at: dict[str, int]) -> None:
        self.keys = []
        self.complete = not created_at


class ImageIndex:
    """Exact cosine search (IndexIDMap2 + IndexFlatIP) with upsert/remove/snapshot/restore.

    ``ImageIndex(dim, kind="hnsw", **params)`` returns an :class:`HNSWImageIndex` instead (same interface).
    """

    kind = "flat"

    def __new__(cls, dim: int = 0, kind: str | None = None, **params):  # noqa: ARG003 - dispatch only
        if cls is ImageIndex and kind not in (None, "flat"):
            if kind not in _KINDS:
                raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
            return super().__new__(_KINDS[kind])
        return super().__new__(cls)

    def __init__(self, dim: int, kind: str | None = None) -> None:
        if kind not in (None, self.kind):
            raise ValueError(f"{type(self).__name__} is kind {self.kind!r}, not {kind!r}")
        if dim <= 0:
            raise ValueError("dim must be positive")
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._int_of: dict[str, int] = {}
        self._str_of: dict[int, str] = {}
        self._created_at: dict[str, int] = {}
        self._tags: dict[str, tuple[str, ...]] = {}  # only images that have tags
        self._next_id = 0
        self._newest = _Newest()
        self._lock = threading.RLock()
        self.mutations = 0  # bumped by every upsert/remove (lets derived copies tell they are stale)

    # ------------------------------------------------------------------ mutation
    def upsert(self, image_ids: Sequence[str], vectors: np.ndarray, created_at: Sequence[int] | None = None,
               tags: Sequence[Sequence[str]] | None = None) -> None:
        """Insert or replace a batch of images. ``vectors`` is (n, dim); it is validated and normalised (copied).

        ``created_at`` (optional, one per id; 0 when not given) orders :meth:`newest`. ``tags`` (optional,
        one list per id) are kept normalised (:func:`models.tags.normalise_tags`); a replacement without
        tags drops the old ones. The whole batch is
        validated before anything changes: a bad batch raises :class:`InvalidInput` and leaves the index
        as it was.
        """
        if len(image_ids) == 0:
            return
        mat, ids, rows, created, tag_lists = _prepare_upsert(self.dim, image_ids, vectors, created_at, tags)
        with self._lock:
            self.remove([i for i in ids if i in self._int_of])
            new_ints = np.arange(self._next_id, self._next_id + len(ids), dtype=np.int64)
            self._next_id += len(ids)
            self._index.add_with_ids(np.ascontiguousarray(mat[rows]), new_ints)
            for image_id, iid, c in zip(ids, new_ints.tolist(), created, strict=True):
                self._int_of[image_id] = iid
                self._str_of[iid] = image_id
                self._created_at[image_id] = c
                self._newest.offer(image_id, c)
            _set_tags(self._tags, ids, tag_lists)
            self.mutations += 1

    def remove(self, image_ids: Iterable[str]) -> int:
        """Remove a batch of images; unknown ids are ignored. Returns how many were removed."""
        with self._lock:
            ints = [self._int_of.pop(i) for i in image_ids if i in self._int_of]
            if not ints:
                return 0
            for iid in ints:
                sid = self._str_of.pop(iid)
                self._tags.pop(sid, None)
                created = self._created_at.pop(sid, None)
                if created is not None:
                    self._newest.discard(sid, created)
            self._index.remove_ids(np.array(ints, dtype=np.int64))
            self.mutations += 1
            return len(ints)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._int_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._int_of

    def ids(self) -> list[str]:
        return list(self._int_of)

    def created_at(self, image_id: str) -> int | None:
        return self._created_at.get(image_id)

    def tags(self, image_id: str) -> tuple[str, ...]:
        """The image's normalised tags (empty when it has none or is not in the index)."""
        return self._tags.get(image_id, ())

    def vectors(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored unit vectors for the ids that exist (missing ids are left out)."""
        known = [i for i in image_ids if i in self._int_of]
        if not known:
            return {}
        mat = self._index.reconstruct_batch(np.array([self._int_of[i] for i in known], dtype=np.int64))
        return {i: mat[n].copy() for n, i in enumerate(known)}

    def newest(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most recently created images as (image_id, created_at), newest first (ties: larger id)."""
        return self._newest.top(n, self._created_at)

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """One batched search; returns per query up to ``k`` (image_id, inner product) pairs, best first.

        Queries are (n, dim) and searched as given (unit queries give cosines). Like
        :func:`~models.vectors.as_unit_matrix`, a wrong shape raises :class:`DimensionMismatch`, NaN/Inf
        :class:`NonFiniteVector` and an all-zero query :class:`ZeroVector`.
        """
        q = _check_queries(queries, self.dim)
        if q.shape[0] == 0 or len(self) == 0 or k <= 0:
            return [[] for _ in range(q.shape[0])]
        kk = min(k, len(self))
        scores, ints = self._index.search(np.ascontiguousarray(q), kk)
        out: list[list[Hit]] = []
        str_of = self._str_of
        for srow, irow in zip(scores.tolist(), ints.tolist(), strict=True):
            out.append([(str_of[i], s) for i, s in zip(irow, srow, strict=True) if i >= 0])
        return out

    def stats(self) -> dict:
        """Sizes for metrics and benchmarks."""
        return {"kind": self.kind, "images": len(self), "slots": int(self._index.ntotal), "tombstones": 0}

    # ------------------------------------------------------------------ persistence
    def snapshot(self, path: str | os.PathLike[str], offsets: dict[int, int]) -> None:
        """Write index + metadata + the source offsets it reflects to ``path`` atomically (tmp + fsync + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:  # a consistent point in time even when called from another thread
            meta = orjson.dumps({
                "format": SNAPSHOT_FORMAT, "dim": self.dim, "next_id": self._next_id,
                "ids": [[i, s, self._created_at[s]] for s, i in self._int_of.items()],
                "tags": {s: list(t) for s, t in self._tags.items()},
                "offsets": {str(p): o for p, o in offsets.items()},
            })
            blob = faiss.serialize_index(self._index)
        _write_atomically(path, _MAGIC, meta, blob)

    @classmethod
    def restore(cls, path: str | os.PathLike[str], dim: int) -> tuple[ImageIndex, dict[int, int]]:
        """Read a snapshot; raises :class:`StateError` when it is corrupt or of another dimension/format/kind."""
        meta, index = _read_snapshot(path, dim, _MAGIC)
        self = cls(dim)
        self._index = index
        self._next_id = meta["next_id"]
        for iid, sid, created in meta["ids"]:
            self._int_of[sid] = iid
            self._str_of[iid] = sid
            self._created_at[sid] = created
        self._tags = _restore_tags(meta, self._created_at, path)
        self._newest.reset(self._created_at)
        if self._index.ntotal != len(self._int_of):
            raise StateError(f"{path}: index holds {self._index.ntotal} vectors but metadata {len(self._int_of)}")
        return self, {int(p): o for p, o in meta["offsets"].items()}


def _check_queries(queries: np.ndarray, dim: int) -> np.ndarray:
    """Search queries as a float32 (n, dim) array, validated but not normalised (scores are inner products)."""
    q = np.asarray(queries, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise DimensionMismatch(f"queries must be (n, {dim}), got {q.shape}")
    if not np.all(np.isfinite(q)):
        raise NonFiniteVector("queries contain NaN or Inf")
    if q.size and not np.all(q.any(axis=1)):
        raise ZeroVector("queries contain an all-zero vector")
    return q


def _prepare_upsert(
    dim: int, image_ids: Sequence[str], vectors: np.ndarray, created_at: Sequence[int] | None,
    tags: Sequence[Sequence[str]] | None = None,
) -> tuple[np.ndarray, list[str], np.ndarray, list[int], list[tuple[str, ...]]]:
    """Validate an upsert batch before any mutation: (unit matrix, distinct ids, their rows, created_at,
    normalised tags).

    Last write wins inside one batch, as on the compacted topic: each distinct id keeps its last row.
    Raises :class:`InvalidInput` (or a subclass, see :func:`~models.vectors.as_unit_matrix`) when the
    vectors are bad, a tag is not a string, or ``vectors``/``created_at``/``tags`` do not have one entry
    per id.
    """
    mat = as_unit_matrix(vectors, dim)
    if mat.shape[0] != len(image_ids):
        raise InvalidInput(f"{len(image_ids)} ids for {mat.shape[0]} vectors", reason="bad_batch")
    if created_at is not None and len(created_at) != len(image_ids):
        raise InvalidInput(f"{len(image_ids)} ids for {len(created_at)} created_at values", reason="bad_batch")
    if tags is not None and len(tags) != len(image_ids):
        raise InvalidInput(f"{len(image_ids)} ids for {len(tags)} tag lists", reason="bad_batch")
    last: dict[str, int] = {}
    for row, image_id in enumerate(image_ids):
        last[image_id] = row
    ids = list(last)
    rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
    if created_at is None:
        created = [0] * len(ids)
    else:
        try:
            created = [int(created_at[r]) for r in rows.tolist()]
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"created_at values must be integers: {exc}", reason="bad_batch") from None
    if tags is None:
        tag_lists: list[tuple[str, ...]] = [()] * len(ids)
    else:
        for r in rows.tolist():
            if isinstance(tags[r], str | bytes):
                raise InvalidInput("each image's tags must be a list of strings, not one string", reason="bad_tags")
        tag_lists = [tuple(normalise_tags(tags[r])) for r in rows.tolist()]
    return mat, ids, rows, created, tag_lists


def _set_tags(store: dict[str, tuple[str, ...]], ids: list[str], tag_lists: list[tuple[str, ...]]) -> None:
    for image_id, t in zip(ids, tag_lists, strict=True):
        if t:
            store[image_id] = t
        else:
            store.pop(image_id, None)


def _restore_tags(meta: dict, live: dict[str, int], path) -> dict[str, tuple[str, ...]]:
    """The snapshot's tags (absent in snapshots written before tags were kept: none), for live images only."""
    raw = meta.get("tags", {})
    if not isinstance(raw, dict):
        raise StateError(f"{path}: snapshot tags must be an object")
    out: dict[str, tuple[str, ...]] = {}
    for sid, t in raw.items():
        if sid not in live or not isinstance(t, list) or not all(isinstance(x, str) for x in t):
            raise StateError(f"{path}: bad tags for {sid!r}")
        if t:
            out[sid] = tuple(t)
    return out


def _write_atomically(path: Path, magic: bytes, meta: bytes, blob: np.ndarray) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(magic + struct.pack("<Q", len(meta)) + meta)
        fh.write(memoryview(blob))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_snapshot(path: str | os.PathLike[str], dim: int, magic: bytes):
    try:
        raw = Path(path).read_bytes()
        buf = io.BytesIO(raw)
        head = buf.read(8)
        if head != magic:
            other = {_MAGIC: "flat", _MAGIC_HNSW: "hnsw"}.get(head)
            if other:
                raise StateError(f"{path}: a {other!r} index snapshot, not {({_MAGIC: 'flat', _MAGIC_HNSW: 'hnsw'})[magic]!r}")
            raise StateError(f"{path}: not an index snapshot")
        (n,) = struct.unpack("<Q", buf.read(8))
        meta = orjson.loads(buf.read(n))
        if meta.get("format") != SNAPSHOT_FORMAT or meta.get("dim") != dim:
            raise StateError(f"{path}: snapshot format/dim {meta.get('format')}/{meta.get('dim')} != {SNAPSHOT_FORMAT}/{dim}")
        index = faiss.deserialize_index(np.frombuffer(raw, dtype=np.uint8, offset=16 + n))
    except StateError:
        raise
    except Exception as exc:  # faiss raises RuntimeError, orjson JSONDecodeError, struct.error ...
        raise StateError(f"{path}: cannot read snapshot: {exc}") from exc
    return meta, index


class _Graph:
    """One HNSW graph and its slot bookkeeping (what a rebuild replaces as a whole)."""

    __slots__ = ("index", "slot_ids", "slot_of", "bitmap", "dead")

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.slot_ids: list[str | None] = []
        self.slot_of: dict[str, int] = {}
        self.bitmap = np.zeros(1024, dtype=np.uint8)  # bit s set = slot s is live
        self.dead = 0

    def add(self, ids: list[str], mat: np.ndarray) -> None:
        """Append vectors for ``ids`` (none of which is live here) as new slots."""
        start = len(self.slot_ids)
        self.index.add(np.ascontiguousarray(mat, dtype=np.float32))
        end = start + len(ids)
        need = (end + 7) // 8
        if need > self.bitmap.shape[0]:
            grown = np.zeros(max(need, 2 * self.bitmap.shape[0]), dtype=np.uint8)
            grown[: self.bitmap.shape[0]] = self.bitmap
            self.bitmap = grown
        self.slot_ids.extend(ids)
        for s, image_id in enumerate(ids, start):
            self.slot_of[image_id] = s
            self.bitmap[s >> 3] |= 1 << (s & 7)

    def kill(self, image_id: str) -> bool:
        s = self.slot_of.pop(image_id, None)
        if s is None:
            return False
        self.slot_ids[s] = None
        self.bitmap[s >> 3] &= ~(1 << (s & 7)) & 0xFF
        self.dead += 1
        return True


class HNSWImageIndex(ImageIndex):
    """Approximate cosine search (``IndexHNSWFlat``, inner product) with tombstoned deletes.

    ``m``: graph degree (memory ≈ dim·4 + m·8 bytes per slot); ``ef_construction``: build-time beam;
    ``ef_search``: search-time beam (raised to the requested k when k is larger); ``rebuild_ratio``:
    tombstones / slots that triggers a rebuild; ``background_min``: indexes with at least this many live
    images rebuild in a background thread and hot-swap, smaller ones rebuild in place.
    """

    kind = "hnsw"

    def __init__(self, dim: int, kind: str | None = None, *, m: int = 32, ef_construction: int = 40,
                 ef_search: int = 48, rebuild_ratio: float = 0.2, rebuild_min_dead: int = 64,
                 background_min: int = 20_000) -> None:
        if kind not in (None, self.kind):
            raise ValueError(f"HNSWImageIndex is kind 'hnsw', not {kind!r}")
        if dim <= 0:
            raise ValueError("dim must be positive")
        if m < 2 or ef_construction < 1 or ef_search < 1 or not 0 < rebuild_ratio < 1:
            raise ValueError("m >= 2, ef_construction >= 1, ef_search >= 1, 0 < rebuild_ratio < 1")
        self.dim = dim
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.rebuild_ratio = rebuild_ratio
        self.rebuild_min_dead = rebuild_min_dead
        self.background_min = background_min
        self._g = _Graph(self._new_faiss())
        self._created_at: dict[str, int] = {}
        self._tags: dict[str, tuple[str, ...]] = {}  # only images that have tags
        self._newest = _Newest()
        self._lock = threading.RLock()
        self.mutations = 0  # bumped by every upsert/remove (lets derived copies tell they are stale)
        self._rebuild_thread: threading.Thread | None = None
        self._rebuild_result: _Graph | BaseException | None = None
        self._pending: list[tuple] | None = None  # mutations logged while a rebuild runs
        self.rebuilds = 0
        self.last_rebuild_s = 0.0

    def _new_faiss(self) -> faiss.Index:
        idx = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = self.ef_construction
        idx.hnsw.efSearch = self.ef_search
        return idx

    # ------------------------------------------------------------------ mutation
    def upsert(self, image_ids: Sequence[str], vectors: np.ndarray, created_at: Sequence[int] | None = None,
               tags: Sequence[Sequence[str]] | None = None) -> None:
        if len(image_ids) == 0:
            return
        mat, ids, rows, created, tag_lists = _prepare_upsert(self.dim, image_ids, vectors, created_at, tags)
        mat = np.ascontiguousarray(mat[rows])
        with self._lock:
            self._maybe_swap()
            self._apply_upsert(self._g, ids, mat)
            for image_id, c in zip(ids, created, strict=True):
                old = self._created_at.get(image_id)
                if old is not None:
                    self._newest.discard(image_id, old)
                self._created_at[image_id] = c
                self._newest.offer(image_id, c)
            _set_tags(self._tags, ids, tag_lists)
            if self._pending is not None:
                self._pending.append(("up", ids, mat))
            self.mutations += 1
            self._after_mutation()

    @staticmethod
    def _apply_upsert(g: _Graph, ids: list[str], mat: np.ndarray) -> None:
        for image_id in ids:
            g.kill(image_id)
        g.add(ids, mat)

    def remove(self, image_ids: Iterable[str]) -> int:
        with self._lock:
            self._maybe_swap()
            gone = [i for i in dict.fromkeys(image_ids) if i in self._g.slot_of]
            if not gone:
                return 0
            for image_id in gone:
                self._g.kill(image_id)
                self._newest.discard(image_id, self._created_at.pop(image_id))
                self._tags.pop(image_id, None)
            if self._pending is not None:
                self._pending.append(("rm", gone))
            self.mutations += 1
            self._after_mutation()
            return len(gone)

    # ------------------------------------------------------------------ rebuild + hot swap
    def _after_mutation(self) -> None:
        g = self._g
        if self._rebuild_thread is not None or g.dead < self.rebuild_min_dead:
            return
        if g.dead > self.rebuild_ratio * len(g.slot_ids):
            self.rebuild(background=len(g.slot_of) >= self.background_min)

    def rebuild(self, background: bool = False) -> None:
        """Rebuild the graph from the live vectors (drops tombstones). ``background``: build in a thread
        while this graph keeps serving; the new one is swapped in by the next call after it is done
        (or by :meth:`wait_rebuild`)."""
        with self._lock:
            self._maybe_swap()
            if self._rebuild_thread is not None:
                return
            g = self._g
            live = [(s, i) for i, s in g.slot_of.items()]
            live.sort()
            ids = [i for _, i in live]
            slots = np.fromiter((s for s, _ in live), dtype=np.int64, count=len(live))
            mat = g.index.reconstruct_batch(slots) if len(live) else np.zeros((0, self.dim), np.float32)
            if not background:
                t0 = time.perf_counter()
                self._g = self._build(ids, mat)
                self.rebuilds += 1
                self.last_rebuild_s = time.perf_counter() - t0
                return
            self._pending = []
            self._rebuild_result = None

            def work() -> None:
                try:
                    self._rebuild_result = self._build(ids, mat)
                except BaseException as exc:  # reported on swap; the old graph keeps serving
                    self._rebuild_result = exc

            self._rebuild_t0 = time.perf_counter()
            self._rebuild_thread = threading.Thread(target=work, name="hnsw-rebuild", daemon=True)
            self._rebuild_thread.start()

    def _build(self, ids: list[str], mat: np.ndarray, chunk: int = 65_536) -> _Graph:
        g = _Graph(self._new_faiss())
        for lo in range(0, len(ids), chunk):
            g.add(ids[lo:lo + chunk], mat[lo:lo + chunk])
        return g

    @property
    def rebuilding(self) -> bool:
        return self._rebuild_thread is not None

    def wait_rebuild(self, timeout: float | None = None) -> bool:
        """Block until a background rebuild finishes and is swapped in; False on timeout."""
        t = self._rebuild_thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return False
        with self._lock:
            self._maybe_swap()
        return True

    def _maybe_swap(self) -> None:
        t = self._rebuild_thread
        if t is None or t.is_alive():
            return
        with self._lock:
            if self._rebuild_thread is not t:
                return
            result, pending = self._rebuild_result, self._pending or []
            self._rebuild_thread, self._rebuild_result, self._pending = None, None, None
            if isinstance(result, BaseException) or result is None:
                log.error("HNSW rebuild failed, keeping the old graph: %r", result)
                return
            for op in pending:  # replay what happened while the new graph was being built
                if op[0] == "up":
                    self._apply_upsert(result, op[1], op[2])
                else:
                    for image_id in op[1]:
                        result.kill(image_id)
            self._g = result
            self.rebuilds += 1
            self.last_rebuild_s = time.perf_counter() - self._rebuild_t0
            log.info("HNSW index rebuilt in %.1fs (%d images, %d mutations replayed)", self.last_rebuild_s,
                     len(result.slot_of), len(pending))

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._created_at)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._created_at

    def ids(self) -> list[str]:
        return list(self._created_at)

    def vectors(self, image_ids: Sequence[str]) -> dict[str, np.ndarray]:
        self._maybe_swap()
        g = self._g
        known = [i for i in image_ids if i in g.slot_of]
        if not known:
            return {}
        mat = g.index.reconstruct_batch(np.array([g.slot_of[i] for i in known], dtype=np.int64))
        return {i: mat[n].copy() for n, i in enumerate(known)}

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        q = _check_queries(queries, self.dim)
        self._maybe_swap()
        g = self._g
        live = len(g.slot_of)
        if q.shape[0] == 0 or live == 0 or k <= 0:
            return [[] for _ in range(q.shape[0])]
        kk = min(k, live)
        ef = max(self.ef_search, kk + kk // 4)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        bitmap = g.bitmap  # keep a reference for the duration of the search
        if g.dead:
            # Tombstones are skipped inside FAISS; widen the beam so k live results survive the filter.
            params.efSearch = min(len(g.slot_ids), int(ef * len(g.slot_ids) / live) + 1)
            params.sel = faiss.IDSelectorBitmap(bitmap.shape[0], faiss.swig_ptr(bitmap))
        scores, slots = g.index.search(np.ascontiguousarray(q), min(kk, len(g.slot_ids)), params=params)
        slot_ids = g.slot_ids
        out: list[list[Hit]] = []
        for srow, irow in zip(scores.tolist(), slots.tolist(), strict=True):
            row = []
            for s, score in zip(irow, srow, strict=True):
                if s >= 0:
                    image_id = slot_ids[s]
                    if image_id is not None:
                        row.append((image_id, score))
            out.append(row)
        return out

    def stats(self) -> dict:
        g = self._g
        return {"kind": self.kind, "images": len(g.slot_of), "slots": len(g.slot_ids), "tombstones": g.dead,
                "rebuilds": self.rebuilds, "rebuilding": self.rebuilding, "m": self.m,
                "ef_search": self.ef_search, "ef_construction": self.ef_construction}

    # ------------------------------------------------------------------ persistence
    def _params(self) -> dict:
        return {"m": self.m, "ef_construction": self.ef_construction, "ef_search": self.ef_search,
                "rebuild_ratio": self.rebuild_ratio, "rebuild_min_dead": self.rebuild_min_dead,
                "background_min": self.background_min}

    def snapshot(self, path: str | os.PathLike[str], offsets: dict[int, int]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            g = self._g
            meta = orjson.dumps({
                "format": SNAPSHOT_FORMAT, "kind": self.kind, "dim": self.dim, "params": self._params(),
                "slots": len(g.slot_ids),
                "ids": [[s, i, self._created_at[i]] for i, s in g.slot_of.items()],
                "tags": {s: list(t) for s, t in self._tags.items()},
                "offsets": {str(p): o for p, o in offsets.items()},
            })
            blob = faiss.serialize_index(g.index)
        _write_atomically(path, _MAGIC_HNSW, meta, blob)

    @classmethod
    def restore(cls, path: str | os.PathLike[str], dim: int) -> tuple[HNSWImageIndex, dict[int, int]]:
        meta, index = _read_snapshot(path, dim, _MAGIC_HNSW)
        try:
            self = cls(dim, **meta.get("params", {}))
            nslots = int(meta["slots"])
            if index.ntotal != nslots:
                raise StateError(f"{path}: graph holds {index.ntotal} vectors but metadata {nslots} slots")
            index.hnsw.efSearch = self.ef_search
            g = _Graph(index)
            g.slot_ids = [None] * nslots
            g.bitmap = np.zeros(max(1024, (nslots + 7) // 8), dtype=np.uint8)
            for s, sid, created in meta["ids"]:
                if not 0 <= s < nslots or g.slot_ids[s] is not None:
                    raise StateError(f"{path}: bad slot {s} for {sid!r}")
                g.slot_ids[s] = sid
                g.slot_of[sid] = s
                g.bitmap[s >> 3] |= 1 << (s & 7)
                self._created_at[sid] = int(created)
            g.dead = nslots - len(g.slot_of)
            self._tags = _restore_tags(meta, self._created_at, path)
            offsets = {int(p): o for p, o in meta["offsets"].items()}
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"{path}: cannot read snapshot metadata: {exc}") from exc
        self._g = g
        self._newest.reset(self._created_at)
        return self, offsets


_KINDS: dict[str, type[ImageIndex]] = {"flat": ImageIndex, "hnsw": HNSWImageIndex}


def make_index(dim: int, kind: str = "flat", **params) -> ImageIndex:
    """The index of ``kind`` (``flat`` | ``hnsw``); ``params`` go to the HNSW constructor."""
    if kind not in _KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {INDEX_KINDS}")
    return _KINDS[kind](dim, **params)


def restore_index(path: str | os.PathLike[str], dim: int) -> tuple[ImageIndex, dict[int, int]]:
    """Restore a snapshot of either kind (dispatch on its magic)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise StateError(f"{path}: cannot read snapshot: {exc}") from exc
    cls = HNSWImageIndex if head == _MAGIC_HNSW else ImageIndex
    return cls.restore(path, dim)
