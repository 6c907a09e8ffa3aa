"""Baseline recommenders for the prequential evaluation (not used by the workers).

They see exactly what the model sees, in the same loop: the catalog records and every behaviour event,
after being asked for a user's top-K (test, then learn). They learn only from *positive* events (what
the evaluation asks them to predict) and never recommend an image the user already interacted with.

- :class:`MostPopular`: all-time count of positive events.
- :class:`RecentPopular`: the same count decayed in event time with a half-life ("trending").
- :class:`ItemKNN`: item co-occurrence kNN. Two images co-occur when one user acted positively on both
  within ``window`` consecutive positives; a user's candidates are the neighbours of their last
  ``query_items`` positives, scored by ``Σ cooc(r, x) / sqrt(n(r) · n(x))`` (cosine-normalised), with
  popularity filling any empty slots.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque

from .synthetic import BehaviourEvent, ImageRecord


class Baseline:
    name = "baseline"

    def __init__(self, learn_from: str = "positive") -> None:
        if learn_from not in ("positive", "all"):
            raise ValueError("learn_from must be 'positive' or 'all'")
        self.learn_from = learn_from
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.catalog: set[str] = set()

    def add_images(self, records: list[ImageRecord]) -> None:
        for r in records:
            self.catalog.add(r.image_id)

    def remove_images(self, image_ids: list[str]) -> None:
        self.catalog.difference_update(image_ids)

    def learn(self, ev: BehaviourEvent, positive: bool) -> None:
        self.seen[ev.user_id].add(ev.image_id)
        self.catalog.add(ev.image_id)
        if positive or self.learn_from == "all":
            self._learn_positive(ev)

    def _learn_positive(self, ev: BehaviourEvent) -> None:
        raise NotImplementedError

    def recommend(self, user_id: str, k: int) -> list[str]:
        raise NotImplementedError


class _Counter:
    """Decayed counts with a lazily maintained top list (half_life None = no decay)."""

    def __init__(self, half_life_ms: float | None) -> None:
        self.half_life_ms = half_life_ms
        self.ref = None
        self.scores: dict[str, float] = {}
        self._top: list[str] | None = None

    def add(self, item: str, ts: int, w: float = 1.0) -> None:
        if self.half_life_ms is None:
            self.scores[item] = self.scores.get(item, 0.0) + w
        else:
            if self.ref is None:
                self.ref = ts
            e = (ts - self.ref) / self.half_life_ms
            if e > 60:
                f = 2.0 ** -e
                self.scores = {k: v * f for k, v in self.scores.items()}
                self.ref, e = ts, 0.0
            self.scores[item] = self.scores.get(item, 0.0) + w * 2.0 ** e
        self._top = None

    def top(self, n: int, exclude: set[str], catalog: set[str]) -> list[str]:
        if self._top is None or len(self._top) < n + len(exclude):
            m = max(4 * n, n + len(exclude) + 64)
            self._top = [k for k, _ in heapq.nlargest(m, self.scores.items(), key=lambda kv: (kv[1], kv[0]))]
        out = []
        for i in self._top:
            if i not in exclude and i in catalog:
                out.append(i)
                if len(out) >= n:
                    break
        return out


class MostPopular(Baseline):
    name = "most-popular"

    def __init__(self, learn_from: str = "positive") -> None:
        super().__init__(learn_from)
        self.counts = _Counter(None)

    def _learn_positive(self, ev: BehaviourEvent) -> None:
        self.counts.add(ev.image_id, ev.ts)

    def recommend(self, user_id: str, k: int) -> list[str]:
        return self.counts.top(k, self.seen.get(user_id, set()), self.catalog)


class RecentPopular(MostPopular):
    name = "recent-popular"

    def __init__(self, half_life_ms: float = 7 * 24 * 3600 * 1000.0, learn_from: str = "positive") -> None:
        super().__init__(learn_from)
        self.counts = _Counter(half_life_ms)


class ItemKNN(Baseline):
    name = "item-knn"

    def __init__(
        self, window: int = 20, query_items: int = 10, recency_gamma: float = 0.9, learn_from: str = "positive",
    ) -> None:
        super().__init__(learn_from)
        self.window = window
        self.query_items = query_items
        self.gamma = recency_gamma
        self.cooc: dict[str, dict[str, float]] = defaultdict(dict)
        self.n: dict[str, float] = defaultdict(float)
        self.recent: dict[str, deque[str]] = defaultdict(lambda: deque(maxlen=max(window, query_items)))
        self.pop = _Counter(None)

    def _learn_positive(self, ev: BehaviourEvent) -> None:
        x = ev.image_id
        hist = self.recent[ev.user_id]
        self.n[x] += 1.0
        for r in list(hist)[-self.window:]:
            if r != x:
                self.cooc[r][x] = self.cooc[r].get(x, 0.0) + 1.0
                self.cooc[x][r] = self.cooc[x].get(r, 0.0) + 1.0
        hist.append(x)
        self.pop.add(x, ev.ts)

    def recommend(self, user_id: str, k: int) -> list[str]:
        seen = self.seen.get(user_id, set())
        hist = list(self.recent.get(user_id, ()))[-self.query_items:]
        acc: dict[str, float] = {}
        g = 1.0
        for r in reversed(hist):
            nr = self.n[r]
            for x, c in self.cooc.get(r, {}).items():
                if x not in seen:
                    acc[x] = acc.get(x, 0.0) + g * c / math.sqrt(nr * self.n[x])
            g *= self.gamma
        best = [i for i, _ in heapq.nlargest(k, acc.items(), key=lambda kv: (kv[1], kv[0])) if i in self.catalog]
        if len(best) < k:
            best += self.pop.top(k - len(best), seen | set(best), self.catalog)
        return best
