"""Item-to-item co-visitation counted online from the behaviour stream (shared across users).

When a user acts positively on image ``x`` with strength ``a`` and their recent positive images are
``r_1 … r_m`` (most recent last, at most ``window``), every pair ``(r_j, x)`` gains ``a · γ^(m-j)`` in
both directions, so images consumed close together in a user's sequence count more than distant ones.
Counts decay in event time with ``half_life_ms`` (stored relative to a reference time, as in
:mod:`models.popularity`, so an update costs nothing extra), and each image keeps at most
``max_neighbors`` neighbours (the weakest are pruned when a list grows to twice that), so memory is
bounded by ``images × 2 · max_neighbors``.

A user's score for image ``x`` is the recency-weighted sum over their last ``query_items`` positives
``r`` (weights ``query_gamma^age``) of the cosine-normalised count ``c(r, x) / sqrt(n(r) · n(x))``, where
``n`` is an image's own decayed positive mass. Queries are vectorised with NumPy (image ids are mapped to
dense integers internally).

Deterministic: no randomness, no wall-clock time; ties are broken by image id.

>>> cv = CoVisitation(half_life_ms=1e12)
>>> cv.learn([], "a", 1.0, ts=0); cv.learn(["a"], "b", 1.0, ts=1); cv.learn(["a", "b"], "c", 1.0, ts=2)
>>> sorted(cv.neighbors("c"))
['a', 'b']
>>> [i for i, _ in cv.candidates(["a"], n=5)]
['b', 'c']
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence

import numpy as np
import orjson

from .errors import InvalidInput, StateError
from .registry import ItemRegistry, grow

_FORMAT = 1


class CoVisitation:
    def __init__(
        self,
        half_life_ms: float = 30 * 24 * 3600 * 1000.0,
        *,
        window: int = 20,
        gamma: float = 0.9,
        max_neighbors: int = 200,
        query_items: int = 10,
        query_gamma: float = 0.9,
        registry: ItemRegistry | None = None,
    ) -> None:
        if half_life_ms <= 0 or window < 1 or max_neighbors < 1 or query_items < 1:
            raise ValueError("half_life_ms, window, max_neighbors and query_items must be positive")
        if not (0 < gamma <= 1 and 0 < query_gamma <= 1):
            raise ValueError("gamma and query_gamma must be in (0, 1]")
        self.half_life_ms = float(half_life_ms)
        self.window = window
        self.gamma = gamma
        self.max_neighbors = max_neighbors
        self.query_items = query_items
        self.query_gamma = query_gamma
        self._ref_ts = 0
        self._now = 0
        self.registry = registry if registry is not None else ItemRegistry()
        self._mass = np.zeros(64, dtype=np.float64)  # by registry id; 0 = no positive mass
        self._pairs: dict[int, dict[int, float]] = {}
        self._arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cache of _pairs[i] as arrays
        self._started = False

    # ------------------------------------------------------------------ ids
    @property
    def _int(self) -> dict[str, int]:
        return self.registry._int

    @property
    def _names(self) -> list[str]:
        return self.registry._names

    def __len__(self) -> int:
        return int(np.count_nonzero(self._mass))

    def _id(self, image_id: str) -> int:
        i = self.registry.add(image_id)
        if i >= self._mass.shape[0]:
            self._mass = grow(self._mass, i + 1)
        return i

    # ------------------------------------------------------------------ learning
    def _scale(self, ts: int) -> float:
        if not self._started:
            self._started = True
            self._ref_ts = ts
        self._now = max(self._now, ts)
        exponent = (ts - self._ref_ts) / self.half_life_ms
        if exponent > 60:  # rescale everything to keep floats finite
            f = 2.0 ** -exponent
            self._mass *= f
            self._mass[self._mass < 1e-12] = 0.0
            self._pairs = {
                k: {j: c * f for j, c in nb.items() if c * f > 1e-12} for k, nb in self._pairs.items()
            }
            self._arrays.clear()
            self._ref_ts = ts
            exponent = 0.0
        return 2.0 ** exponent

    def learn(self, recent: Sequence[str], image_id: str, weight: float, ts: int) -> None:
        """Count a positive action on ``image_id`` after the user's ``recent`` positives (oldest first)."""
        if not math.isfinite(weight):
            raise InvalidInput("co-visitation weight must be finite", reason="non_finite")
        if weight <= 0:
            return
        s = weight * self._scale(int(ts))
        x = self._id(image_id)
        self._mass[x] += s
        g = 1.0
        for r in reversed(recent[-self.window:]):
            if r == image_id:
                continue
            ri = self._id(r)
            self._add(ri, x, s * g)
            self._add(x, ri, s * g)
            g *= self.gamma

    def _add(self, a: int, b: int, w: float) -> None:
        self._arrays.pop(a, None)
        nb = self._pairs.get(a)
        if nb is None:
            nb = self._pairs[a] = {}
        nb[b] = nb.get(b, 0.0) + w
        if len(nb) >= 2 * self.max_neighbors:
            names = self._names
            keep = heapq.nlargest(self.max_neighbors, nb.items(), key=lambda kv: (kv[1], names[kv[0]]))
            self._pairs[a] = dict(keep)

    def forget(self, image_id: str) -> None:
        """Drop an image (deleted from the catalog); it is never returned again until it gains mass anew."""
        i = self._int.get(image_id)
        if i is not None and i < self._mass.shape[0]:
            self._mass[i] = 0.0
        if i is not None:
            self._pairs.pop(i, None)
            self._arrays.pop(i, None)

    # ------------------------------------------------------------------ queries
    def _decay_now(self) -> float:
        return 2.0 ** (-(self._now - self._ref_ts) / self.half_life_ms)

    def mass(self, image_id: str) -> float:
        """Decayed positive mass of an image at the latest event time (comparable across images)."""
        i = self._int.get(image_id)
        return 0.0 if i is None or i >= self._mass.shape[0] else float(self._mass[i]) * self._decay_now()

    def masses(self, image_ids: Sequence[str]) -> np.ndarray:
        return self.masses_idx(self.registry.lookup(image_ids))

    def masses_idx(self, idx: np.ndarray) -> np.ndarray:
        """Decayed masses by registry id (``-1`` or ids beyond this component's arrays give 0)."""
        ok = (idx >= 0) & (idx < self._mass.shape[0])
        out = np.zeros(idx.shape[0], dtype=np.float64)
        out[ok] = self._mass[idx[ok]]
        return out * self._decay_now()

    def neighbors(self, image_id: str) -> dict[str, float]:
        i = self._int.get(image_id)
        nb = self._pairs.get(i, {}) if i is not None else {}
        return {self._names[j]: c for j, c in nb.items()}

    def query(self, recent: Sequence[str], items: int | None = None, gamma: float | None = None) -> CovisQuery:
        """Scores of every neighbour of the user's recent positives (see the module docstring); ``items``
        and ``gamma`` override ``query_items`` and ``query_gamma`` for this query."""
        tail = recent[-(items or self.query_items):]
        qg = self.query_gamma if gamma is None else gamma
        keys, cnts, owners, gs = [], [], [], []
        mass = self._mass
        g = 1.0
        first = False
        for n, r in enumerate(reversed(tail)):
            ri = self._int.get(r)
            nb = self._pairs.get(ri) if ri is not None else None
            if nb and ri < mass.shape[0] and mass[ri] > 0:
                kc = self._arrays.get(ri)
                if kc is None:
                    kc = self._arrays[ri] = (np.fromiter(nb.keys(), dtype=np.int64, count=len(nb)),
                                             np.fromiter(nb.values(), dtype=np.float64, count=len(nb)))
                keys.append(kc[0])
                cnts.append(kc[1])
                owners.append(ri)
                gs.append(g)
                first = first or n == 0
            g *= qg
        if not keys:
            return CovisQuery(self, np.zeros(0, dtype=np.int64), np.zeros(0), None, None)
        # One vectorised pass over every neighbour list (the same float operations, element by element,
        # as one pass per recent image).
        lens = [k.shape[0] for k in keys]
        k = np.concatenate(keys)
        c = np.concatenate(cnts)
        mk = mass[k]
        v = np.divide(c, np.sqrt(np.repeat(mass[owners], lens) * mk), out=np.zeros_like(c), where=mk > 0)
        last_keys = last_vals = None
        if first:
            last_keys, last_vals = keys[0], v[: lens[0]].copy()
        v *= np.repeat(np.asarray(gs), lens)
        if k.shape[0] * 4 >= mass.shape[0]:
            # Dense enough: one bincount over all ids (linear) instead of sorting (same sums, same order).
            sums = np.bincount(k, weights=v, minlength=mass.shape[0])
            uniq = np.flatnonzero(sums)
            sums = sums[uniq]
        else:
            uniq, inv = np.unique(k, return_inverse=True)
            sums = np.bincount(inv, weights=v, minlength=uniq.shape[0])
        keep = sums > 0
        return CovisQuery(self, uniq[keep], sums[keep], last_keys, last_vals)

    def candidates(self, recent: Sequence[str], n: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Top ``n`` images by score among the neighbours of the user's recent images."""
        return self.query(recent).top(n, set(exclude) | set(recent))

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        names = self._names
        mass = grow(self._mass, len(names))[: len(names)]
        return orjson.dumps({
            "f": _FORMAT, "ref": self._ref_ts, "now": self._now, "started": self._started, "names": names,
            "mass": mass.tolist(),
            "pairs": {str(k): [list(nb.keys()), list(nb.values())] for k, nb in self._pairs.items()},
            "cfg": [self.half_life_ms, self.window, self.gamma, self.max_neighbors, self.query_items, self.query_gamma],
        })

    @classmethod
    def from_bytes(cls, raw: bytes, registry: ItemRegistry | None = None) -> CoVisitation:
        """Restore; with ``registry`` the saved ids are re-mapped into that (shared) registry."""
        try:
            d = orjson.loads(raw)
            if d.get("f") != _FORMAT:
                raise StateError(f"unknown co-visitation format {d.get('f')!r}")
            hl, window, gamma, max_nb, qi, qg = d["cfg"]
            self = cls(hl, window=int(window), gamma=gamma, max_neighbors=int(max_nb), query_items=int(qi),
                       query_gamma=qg, registry=registry)
            self._ref_ts, self._now, self._started = int(d["ref"]), int(d["now"]), bool(d["started"])
            remap = np.asarray([self.registry.add(str(x)) for x in d["names"]], dtype=np.int64)
            self._mass = grow(self._mass, len(self.registry))
            self._mass[remap] = np.asarray(d["mass"], dtype=np.float64)
            rm = remap.tolist()
            self._pairs = {rm[int(k)]: dict(zip((rm[int(j)] for j in ks), (float(c) for c in cs), strict=True))
                           for k, (ks, cs) in d["pairs"].items()}
            return self
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode co-visitation state: {exc}") from exc


class CovisQuery:
    """The result of :meth:`CoVisitation.query` for one user: sorted neighbour ids and their scores."""

    __slots__ = ("_cv", "ids", "scores", "_last_ids", "_last_vals")

    def __init__(self, cv: CoVisitation, ids: np.ndarray, scores: np.ndarray, last_ids, last_vals) -> None:
        self._cv = cv
        self.ids = ids  # sorted dense ints
        self.scores = scores
        self._last_ids = last_ids
        self._last_vals = last_vals

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def top(self, n: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` best (image_id, score), ties broken by image id, excluded images left out."""
        if n <= 0 or not len(self):
            return []
        names, lookup = self._cv._names, self._cv._int
        scores = self.scores
        ex = np.fromiter((lookup.get(i, -1) for i in exclude), dtype=np.int64)
        if ex.size:
            live = ~np.isin(self.ids, ex)
            ids, scores = self.ids[live], scores[live]
        else:
            ids = self.ids
        if ids.shape[0] > n:
            kth = np.partition(scores, ids.shape[0] - n)[ids.shape[0] - n]
            sel = np.flatnonzero(scores >= kth)
        else:
            sel = np.arange(ids.shape[0])
        cand = sorted(((names[int(ids[j])], float(scores[j])) for j in sel), key=lambda kv: (-kv[1], kv[0]))
        return cand[:n]

    def top_idx(self, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """:meth:`top` as registry ids (``exclude``: registry ids), same order: score desc, then image id."""
        if n <= 0 or not len(self):
            return np.zeros(0, dtype=np.int64)
        ids, scores = self.ids, self.scores
        if exclude is not None and exclude.size:
            live = ~np.isin(ids, exclude)
            ids, scores = ids[live], scores[live]
        m = ids.shape[0]
        if m > n:
            kth = np.partition(scores, m - n)[m - n]
            sel = np.flatnonzero(scores >= kth)
        else:
            sel = np.arange(m)
        names = self._cv._names
        order = sorted(sel.tolist(), key=lambda j: (-float(scores[j]), names[int(ids[j])]))[:n]
        return ids[np.asarray(order, dtype=np.int64)]

    def score_many(self, image_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(score, score from the most recent positive alone) for each image id (0 when unrelated)."""
        return self.score_idx(self._cv.registry.lookup(image_ids))

    def score_idx(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score_many` by registry ids."""
        n = q.shape[0]
        full = np.zeros(n, dtype=np.float32)
        last = np.zeros(n, dtype=np.float32)
        if not len(self) or n == 0:
            return full, last
        pos = np.searchsorted(self.ids, q)
        pos = np.minimum(pos, len(self) - 1)
        hit = self.ids[pos] == q
        full[hit] = self.scores[pos[hit]]
        if self._last_ids is not None and self._last_ids.shape[0]:
            order = np.argsort(self._last_ids)
            lk, lv = self._last_ids[order], self._last_vals[order]
            p2 = np.minimum(np.searchsorted(lk, q), lk.shape[0] - 1)
            h2 = lk[p2] == q
            last[h2] = lv[p2[h2]]
        return full, last
