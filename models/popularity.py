"""Decayed popularity ("trending") in event time.

Scores are stored relative to a reference time so that decay costs nothing per update:
``score(t) = raw · 2^(-(t - t_ref)/half_life)``; we store ``raw · 2^((t_event - t_ref)/half_life)`` and
only rescale when exponents grow large.

>>> p = Popularity(half_life_ms=1000)
>>> p.learn_one("a", 1.0, ts=0); p.learn_one("b", 1.0, ts=1000); p.learn_one("b", 1.0, ts=1000)
>>> [i for i, _ in p.top(2)]
['b', 'a']
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Container

from .errors import NonFiniteVector


class Popularity:
    """Decayed popularity. ``top`` is exact and cheap: the best ``M`` entries are kept sorted and patched
    on every update (decay is a common factor, so it never reorders them); ``M`` grows on demand.
    ``refresh_every`` is accepted for compatibility and ignored."""

    def __init__(self, half_life_ms: float = 6 * 3600 * 1000.0, refresh_every: int = 1) -> None:
        if half_life_ms <= 0:
            raise ValueError("half_life_ms must be positive")
        if refresh_every < 1:
            raise ValueError("refresh_every must be >= 1")
        self.half_life_ms = float(half_life_ms)
        self.refresh_every = refresh_every
        self._ref_ts = 0
        self._now = 0
        self._scores: dict[str, float] = {}
        self._asc: list[tuple[float, str]] | None = None  # the best M (raw, id), ascending
        self._m = 0
        self._all = False  # the cache holds every item
        self.registry = None  # optional ItemRegistry: then scores are also kept in an array by its ids
        self._arr = None

    def attach(self, registry) -> None:
        """Also keep the scores in an array by ``registry`` id, for :meth:`scores_idx` (vectorised)."""
        import numpy as np

        self.registry = registry
        self._arr = np.zeros(max(64, len(registry)), dtype=np.float64)
        self._refill()

    def _refill(self) -> None:
        from .registry import grow

        ids = [self.registry.add(k) for k in self._scores]
        self._arr = grow(self._arr, len(self.registry))
        self._arr[:] = 0.0
        if ids:
            self._arr[ids] = list(self._scores.values())

    def _set(self, image_id: str, value: float) -> None:
        from .registry import grow

        i = self.registry.add(image_id)
        if i >= self._arr.shape[0]:
            self._arr = grow(self._arr, i + 1)
        self._arr[i] = value

    def __len__(self) -> int:
        return len(self._scores)

    @property
    def now(self) -> int:
        """The latest event time learned."""
        return self._now

    def learn_one(self, image_id: str, weight: float, ts: int) -> None:
        """Add ``weight`` to ``image_id`` at event time ``ts``; a weight <= 0 is ignored.

        Raises :class:`~models.errors.NonFiniteVector` (an :class:`~models.errors.InvalidInput`,
        ``reason="non_finite"``) for a NaN or infinite weight, which would otherwise turn the image's score,
        or the normalisation of ``top``, into garbage; nothing is changed then.
        """
        if not math.isfinite(weight):
            raise NonFiniteVector(f"popularity weight for {image_id!r} must be finite, got {weight!r}")
        if weight <= 0:
            return
        if not self._scores:
            self._ref_ts = ts
        self._now = max(self._now, ts)
        exponent = (ts - self._ref_ts) / self.half_life_ms
        if exponent > 60:  # rescale to keep floats finite
            factor = 2.0 ** -exponent
            self._scores = {k: v * factor for k, v in self._scores.items() if v * factor > 1e-12}
            self._ref_ts = ts
            self._asc = None
            exponent = 0.0
            if self._arr is not None:
                self._refill()
        old = self._scores.get(image_id)
        new = (old or 0.0) + weight * 2.0 ** exponent
        self._scores[image_id] = new
        if self._arr is not None:
            self._set(image_id, new)
        self._patch(image_id, old, new)

    def _patch(self, image_id: str, old: float | None, new: float) -> None:
        asc = self._asc
        if asc is None:
            return
        if old is not None:
            j = bisect.bisect_left(asc, (old, image_id))
            if j < len(asc) and asc[j] == (old, image_id):
                del asc[j]
                bisect.insort(asc, (new, image_id))
                return
        if self._all and len(asc) < self._m:
            bisect.insort(asc, (new, image_id))
            return
        if (new, image_id) > asc[0]:
            bisect.insort(asc, (new, image_id))
            del asc[0]
        self._all = False

    def forget(self, image_id: str) -> None:
        old = self._scores.pop(image_id, None)
        if old is not None and self._arr is not None:
            self._set(image_id, 0.0)
        if old is not None and self._asc is not None:
            j = bisect.bisect_left(self._asc, (old, image_id))
            if j < len(self._asc) and self._asc[j] == (old, image_id):
                self._asc = None  # the next best one is unknown: rebuild on demand

    def score(self, image_id: str, ts: int | None = None) -> float:
        t = self._now if ts is None else ts
        return self._scores.get(image_id, 0.0) * 2.0 ** (-(t - self._ref_ts) / self.half_life_ms)

    def scores(self, image_ids) -> "np.ndarray":
        """Decayed scores of many images at the latest event time (0 for unknown ones)."""
        import numpy as np

        f = 2.0 ** (-(self._now - self._ref_ts) / self.half_life_ms)
        get = self._scores.get
        return np.fromiter((get(i, 0.0) for i in image_ids), dtype=np.float64, count=len(image_ids)) * f

    def scores_idx(self, idx) -> "np.ndarray":
        """:meth:`scores` by ids of the attached registry (``-1``: unknown, 0)."""
        import numpy as np

        f = 2.0 ** (-(self._now - self._ref_ts) / self.half_life_ms)
        ok = (idx >= 0) & (idx < self._arr.shape[0])
        out = np.zeros(idx.shape[0], dtype=np.float64)
        out[ok] = self._arr[idx[ok]]
        return out * f

    def top_ids(self, n: int) -> list[str]:
        """The ids of :meth:`top` ``(n)``, without the normalised scores."""
        if n <= 0 or not self._scores:
            return []
        if self._asc is None or (self._m < n and not self._all):
            return [k for k, _ in self.top(n)]
        return [k for _, k in self._asc[: -n - 1: -1]] if n < len(self._asc) else [k for _, k in reversed(self._asc)]

    def max_score(self) -> float:
        """``score`` of the top image (0 when there is none)."""
        if not self._scores:
            return 0.0
        if self._asc is None:
            self.top(1)
        return self._asc[-1][0] * 2.0 ** (-(self._now - self._ref_ts) / self.half_life_ms)

    def top(self, n: int, exclude: Container[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` highest decayed scores (ties broken by id for determinism), normalised to (0, 1]."""
        if n <= 0 or not self._scores:
            return []
        m = n + _len(exclude)
        if self._asc is None or (self._m < m and not self._all):
            self._m = max(m, 2 * self._m, 64)
            best = heapq.nlargest(self._m, ((v, k) for k, v in self._scores.items()))
            self._asc = best[::-1]
            self._all = len(best) == len(self._scores)
        best = []
        for v, k in reversed(self._asc):
            if k not in exclude:
                best.append((k, v))
                if len(best) >= n:
                    break
        if not best:
            return []
        top = best[0][1]
        return [(k, v / top if top > 0 and math.isfinite(top) else 0.0) for k, v in best]


def _len(c: Container[str]) -> int:
    try:
        return len(c)  # type: ignore[arg-type]
    except TypeError:
        return 0


class DecayedCounts:
    """Array-backed decayed counts by :class:`~models.registry.ItemRegistry` id (vectorised lookups).

    Same decay scheme as :class:`Popularity` (scores stored relative to a reference time).

    >>> c = DecayedCounts(half_life_ms=1000)
    >>> c.learn("a", 1.0, ts=0); c.learn("b", 2.0, ts=1000)
    >>> [round(float(x), 3) for x in c.scores(["a", "b", "zz"])]
    [0.5, 2.0, 0.0]
    """

    def __init__(self, half_life_ms: float, registry=None) -> None:
        import numpy as np

        from .registry import ItemRegistry

        if half_life_ms <= 0:
            raise ValueError("half_life_ms must be positive")
        self.half_life_ms = float(half_life_ms)
        self.registry = registry if registry is not None else ItemRegistry()
        self._v = np.zeros(64, dtype=np.float64)
        self._vmax: float | None = 0.0  # cached max of _v (None: recompute)
        self._ref_ts = 0
        self._now = 0
        self._started = False

    def learn(self, image_id: str, weight: float, ts: int) -> None:
        if not math.isfinite(weight) or weight <= 0:
            return
        from .registry import grow

        if not self._started:
            self._started, self._ref_ts = True, ts
        self._now = max(self._now, ts)
        e = (ts - self._ref_ts) / self.half_life_ms
        if e > 60:
            self._v *= 2.0 ** -e
            self._vmax = None
            self._ref_ts, e = ts, 0.0
        i = self.registry.add(image_id)
        if i >= self._v.shape[0]:
            self._v = grow(self._v, i + 1)
        self._v[i] += weight * 2.0 ** e
        if self._vmax is not None and self._v[i] > self._vmax:
            self._vmax = float(self._v[i])

    def advance(self, ts: int) -> None:
        """Move the event-time clock to ``ts`` (if later) without counting anything: scores decay to it."""
        self._now = max(self._now, ts)

    def forget(self, image_id: str) -> None:
        i = self.registry.get(image_id)
        if i is not None and i < self._v.shape[0]:
            self._v[i] = 0.0
            self._vmax = None

    def scores(self, image_ids) -> "np.ndarray":
        return self.scores_idx(self.registry.lookup(image_ids))

    def scores_idx(self, idx) -> "np.ndarray":
        import numpy as np

        ok = (idx >= 0) & (idx < self._v.shape[0])
        out = np.zeros(idx.shape[0], dtype=np.float64)
        out[ok] = self._v[idx[ok]]
        return out * 2.0 ** (-(self._now - self._ref_ts) / self.half_life_ms)

    def max(self) -> float:
        if self._vmax is None:
            self._vmax = float(self._v.max(initial=0.0))
        return self._vmax * 2.0 ** (-(self._now - self._ref_ts) / self.half_life_ms)

    def to_dict(self) -> dict:
        names = self.registry.names
        n = min(len(names), self._v.shape[0])
        nz = [i for i in range(n) if self._v[i] > 0]
        return {"hl": self.half_life_ms, "ref": self._ref_ts, "now": self._now, "started": self._started,
                "names": [names[i] for i in nz], "v": [float(self._v[i]) for i in nz]}

    @classmethod
    def from_dict(cls, d: dict, registry=None) -> "DecayedCounts":
        from .registry import grow

        self = cls(float(d["hl"]), registry)
        self._ref_ts, self._now, self._started = int(d["ref"]), int(d["now"]), bool(d["started"])
        ids = [self.registry.add(str(x)) for x in d["names"]]
        self._v = grow(self._v, len(self.registry))
        self._vmax = None
        for i, v in zip(ids, d["v"], strict=True):
            self._v[i] = float(v)
        return self
