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

import heapq
import math
from collections.abc import Container


class Popularity:
    def __init__(self, half_life_ms: float = 6 * 3600 * 1000.0) -> None:
        if half_life_ms <= 0:
            raise ValueError("half_life_ms must be positive")
        self.half_life_ms = float(half_life_ms)
        self._ref_ts = 0
        self._now = 0
        self._scores: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._scores)

    def learn_one(self, image_id: str, weight: float, ts: int) -> None:
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
            exponent = 0.0
        self._scores[image_id] = self._scores.get(image_id, 0.0) + weight * 2.0 ** exponent

    def forget(self, image_id: str) -> None:
        self._scores.pop(image_id, None)

    def score(self, image_id: str, ts: int | None = None) -> float:
        t = self._now if ts is None else ts
        return self._scores.get(image_id, 0.0) * 2.0 ** (-(t - self._ref_ts) / self.half_life_ms)

    def top(self, n: int, exclude: Container[str] = ()) -> list[tuple[str, float]]:
        """The ``n`` highest decayed scores (ties broken by id for determinism), normalised to (0, 1]."""
        if n <= 0 or not self._scores:
            return []
        best = heapq.nlargest(n + _len(exclude), self._scores.items(), key=lambda kv: (kv[1], kv[0]))
        best = [(k, v) for k, v in best if k not in exclude][:n]
        if not best:
            return []
        top = best[0][1]
        return [(k, v / top if top > 0 and math.isfinite(top) else 0.0) for k, v in best]


def _len(c: Container[str]) -> int:
    try:
        return len(c)  # type: ignore[arg-type]
    except TypeError:
        return 0
