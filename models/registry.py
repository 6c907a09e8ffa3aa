"""Dense integer ids for image ids, shared by the core's learned components.

Co-visitation counts, item embeddings and engagement counters all index NumPy arrays by the same dense
integer, so a request maps its candidate ids to integers once and every feature is then a vectorised
lookup. Ids are assigned in order of first appearance (deterministic given the event order) and never
reused; a deleted image keeps its slot (its rows are zeroed by the components).

>>> reg = ItemRegistry()
>>> reg.add("a"), reg.add("b"), reg.add("a")
(0, 1, 0)
>>> reg.lookup(["b", "zz", "a"]).tolist()
[1, -1, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .tags import MAX_TAGS, tag_row


class ItemRegistry:
    def __init__(self) -> None:
        self._int: dict[str, int] = {}
        self._names: list[str] = []

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._int

    def add(self, image_id: str) -> int:
        i = self._int.get(image_id)
        if i is None:
            i = self._int[image_id] = len(self._names)
            self._names.append(image_id)
        return i

    def get(self, image_id: str) -> int | None:
        return self._int.get(image_id)

    def name(self, i: int) -> str:
        return self._names[i]

    @property
    def names(self) -> list[str]:
        return self._names

    def lookup(self, image_ids: Sequence[str]) -> np.ndarray:
        """Integer ids (``-1`` for unknown images), one Python-level dict lookup per id."""
        get = self._int.get
        return np.fromiter((get(i, -1) for i in image_ids), dtype=np.int64, count=len(image_ids))


def grow(arr: np.ndarray, n: int, fill=0) -> np.ndarray:
    """``arr`` (rows indexed by registry id) with at least ``n`` rows, new rows ``fill``, capacity doubling."""
    if arr.shape[0] >= n:
        return arr
    cap = max(64, arr.shape[0])
    while cap < n:
        cap *= 2
    out = np.full((cap,) + arr.shape[1:], fill, dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


class CatalogMirror:
    """A dense copy of the catalog by registry id: unit vectors, ``created_at``, tag rows and liveness.

    The index answers nearest-neighbour searches; the ranker also needs the vector and age of a few
    hundred arbitrary candidates per user, which this mirror serves with one NumPy gather instead of a
    Python-level lookup per image. The core keeps it in step with the index (``apply_images``), and
    rebuilds it when the index object is swapped or was mutated behind the core's back (``synced`` is
    the index's ``mutations`` counter this mirror reflects).

    >>> reg = ItemRegistry()
    >>> m = CatalogMirror(2, reg)
    >>> m.upsert(["a", "b", "a"], np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), [1, 2, 3])
    >>> m.vec[reg.lookup(["a"])].tolist(), m.created[reg.lookup(["a", "b"])].tolist()
    ([[0.0, 1.0]], [3, 2])
    >>> m.remove(["b"]); m.known(reg.lookup(["a", "b", "zz"])).tolist()
    [True, False, False]
    >>> m.upsert(["c"], np.array([[1.0, 1.0]]), [7]); m.created_stats()  # live: a (3) and c (7)
    (5.0, 2.0)
    >>> m.remove(["c"]); m.created_stats()
    (3.0, 0.0)
    """

    def __init__(self, dim: int, registry: ItemRegistry) -> None:
        self.dim = dim
        self.registry = registry
        self.vec = np.zeros((64, dim), dtype=np.float32)
        self.alive = np.zeros(64, dtype=bool)
        self.created = np.zeros(64, dtype=np.int64)
        self.tag_rows = np.full((64, MAX_TAGS), -1, dtype=np.int32)  # models.tags.tag_row of each image
        self.synced = -1
        self.changes = 0  # bumped by every upsert/remove: the key of the cached creation-time statistics
        self._created_stats: tuple[int, float, float] = (-1, 0.0, 0.0)

    def _fit(self, n: int) -> None:
        if n > self.alive.shape[0]:
            self.vec = grow(self.vec, n)
            self.alive = grow(self.alive, n)
            self.created = grow(self.created, n)
            self.tag_rows = grow(self.tag_rows, n, fill=-1)

    def upsert(self, image_ids: Sequence[str], mat: np.ndarray, created: Sequence[int],
               tags: Sequence[Sequence[str]] | None = None) -> None:
        """Store (normalised exactly as the index stores them); the last row wins for a repeated id.
        ``tags``: one list per id (none: no tags)."""
        from .vectors import as_unit_matrix

        if len(image_ids) == 0:
            return
        mat = as_unit_matrix(mat, self.dim)
        last = {image_id: row for row, image_id in enumerate(image_ids)}
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        idx = np.fromiter((self.registry.add(i) for i in last), dtype=np.int64, count=len(last))
        self._fit(len(self.registry))
        self.vec[idx] = mat[rows]
        self.created[idx] = np.asarray(created, dtype=np.int64)[rows]
        if tags is None:
            self.tag_rows[idx] = -1
        else:
            self.tag_rows[idx] = np.stack([tag_row(tags[r]) for r in rows.tolist()])
        self.alive[idx] = True
        self.changes += 1

    def remove(self, image_ids: Sequence[str]) -> None:
        idx = self.registry.lookup(list(image_ids))
        idx = idx[(idx >= 0) & (idx < self.alive.shape[0])]
        self.alive[idx] = False
        self.changes += 1

    def rebuild(self, index) -> None:
        """Copy everything from ``index`` (an :class:`~models.index.ImageIndex`)."""
        self.alive[:] = False
        self.changes += 1
        self.synced = getattr(index, "mutations", -1)
        ids = index.ids()
        if not ids:
            return
        vecs = index.vectors(ids)
        ids = [i for i in ids if i in vecs]
        if ids:
            self.upsert(ids, np.stack([vecs[i] for i in ids]), [index.created_at(i) or 0 for i in ids],
                        [index.tags(i) for i in ids])

    def created_stats(self) -> tuple[float, float]:
        """Mean and standard deviation of the live images' ``created_at`` (ms; (0, 0) for an empty
        catalog): the catalog's own time scale. O(catalog) once per change (~5 ms at 1M images; a worker
        changes the catalog once per catalog batch), cached until the next change."""
        if self._created_stats[0] != self.changes:
            c = self.created[self.alive].astype(np.float64)
            self._created_stats = (self.changes, float(c.mean()) if c.size else 0.0,
                                   float(c.std()) if c.size else 0.0)
        return self._created_stats[1], self._created_stats[2]

    def known(self, idx: np.ndarray) -> np.ndarray:
        """Which registry ids are live catalog images."""
        ok = (idx >= 0) & (idx < self.alive.shape[0])
        ok[ok] = self.alive[idx[ok]]
        return ok
