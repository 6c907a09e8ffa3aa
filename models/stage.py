"""Popularity by user stage: what users engage with at the same point of their own history.

Users early in their history act on different images than long-time users do (an onboarding flow shows
every newcomer similar starting sets; tastes widen later). :class:`StagePopularity` keeps one decayed
count per *stage* and image. A user's stage is a bucket of how many events they had before the event
(:data:`STAGE_EDGES`). Every interaction counts, skips too: what it predicts is being acted on at that
stage. Two ranker features read it:

- ``stage_pop``: the candidate's count in the user's stage divided by that stage's largest count;
- ``stage_near``: the same over the user's stage and the two next to it (a user near a stage edge).

:meth:`StagePopularity.top_near` lists the images with the most ``stage_near`` counts: the ranker's
``stage`` candidate source (what users at this point of their history act on, whether or not it is
trending overall).

All stages share one event-time clock, so a stage nobody reached lately decays like the others.
Deterministic: no randomness, no wall-clock time.

>>> sp = StagePopularity(half_life_ms=1e12)
>>> sp.learn(0, "a", ts=0); sp.learn(1, "a", ts=0); sp.learn(3, "b", ts=0); sp.learn(40, "c", ts=0)
>>> sp.stage(0), sp.stage(4), sp.stage(5), sp.stage(10_000)
(0, 0, 1, 10)
>>> own, near = sp.relative(2, sp.registry.lookup(["a", "b", "c", "unknown"]))
>>> own.tolist(), near.tolist()
([1.0, 0.5, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0])
>>> names = sp.registry.names
>>> [names[i] for i in sp.top_near(2, 5)], [names[i] for i in sp.top_near(40, 5)]
(['a', 'b'], ['c'])
"""

from __future__ import annotations

import bisect

import numpy as np

from .errors import InvalidInput, StateError
from .popularity import DecayedCounts
from .registry import ItemRegistry

#: Lower edges of the stages, in events the user had before the event (11 stages; the last is open).
STAGE_EDGES = (0, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300)

_FORMAT = 1
_TOP_MIN = 64  # smallest best-first list kept per stage


class _NearTop:
    """The best ``cap`` images of one stage's near range (summed counts, each stage scaled by ``factors``),
    as ascending ``(value, -registry id)`` pairs; ``full`` when it holds every image with counts there.

    Invariant: it equals what :meth:`StagePopularity._build` would build now. Counts only grow between
    rebuilds (a forget or a moved decay reference drops the list), so an image outside it can only enter by
    gaining a count, which :meth:`add` sees; uniform decay changes no order.
    """

    __slots__ = ("refs", "factors", "cap", "full", "asc", "values")

    def __init__(self, refs: tuple[int, ...], factors: list[float], cap: int, full: bool,
                 asc: list[tuple[float, int]], values: dict[int, float]) -> None:
        self.refs, self.factors, self.cap, self.full, self.asc, self.values = refs, factors, cap, full, asc, values

    def add(self, i: int, value: float) -> None:
        old = self.values.get(i)
        if old is not None:
            del self.asc[bisect.bisect_left(self.asc, (old, -i))]
        elif not self.full and (value, -i) < self.asc[0]:
            return  # still below the list: the list stays exact
        bisect.insort(self.asc, (value, -i))
        self.values[i] = value
        if len(self.asc) > self.cap:
            _, j = self.asc.pop(0)
            del self.values[-j]
            self.full = False


class StagePopularity:
    def __init__(self, half_life_ms: float = 30 * 24 * 3600 * 1000.0, registry: ItemRegistry | None = None) -> None:
        self.registry = registry if registry is not None else ItemRegistry()
        self.counts = [DecayedCounts(half_life_ms, self.registry) for _ in STAGE_EDGES]  # validates half_life_ms
        self._tops: dict[int, _NearTop] = {}  # derived from counts: never serialised, rebuilt on demand

    @staticmethod
    def stage(events: int) -> int:
        """The stage of a user who had ``events`` events (a non-negative int)."""
        if isinstance(events, bool) or not isinstance(events, (int, np.integer)) or events < 0:
            raise InvalidInput(f"events must be a non-negative int, got {events!r}", reason="invalid_stage")
        return bisect.bisect_right(STAGE_EDGES, int(events)) - 1

    def _near(self, g: int) -> range:
        """Stage ``g`` and the two next to it (``stage_near``'s range; one at the first and the last)."""
        return range(max(0, g - 1), min(len(self.counts), g + 2))

    def learn(self, events: int, image_id: str, ts: int) -> None:
        """One interaction with ``image_id`` at event time ``ts`` by a user who had ``events`` events.

        1. count it at the user's stage (which may move that stage's decay reference);
        2. patch the best-first lists that sum that stage (:meth:`_patch`);
        3. move every stage's event-time clock to ``ts`` (uniform decay: no list's order changes).
        """
        s = self.stage(events)
        self.counts[s].learn(image_id, 1.0, ts)
        self._patch(s, self.registry.get(image_id))
        for c in self.counts:
            c.advance(ts)

    def forget(self, image_id: str) -> None:
        for c in self.counts:
            c.forget(image_id)
        i = self.registry.get(image_id)
        for g in [g for g, top in self._tops.items() if i in top.values]:
            del self._tops[g]  # the next best one is unknown: rebuilt on demand

    def relative(self, events: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``stage_pop``, ``stage_near``) of registry ids ``idx`` for a user who had ``events`` events;
        ids without counts (or ``-1``) score 0. ``idx`` is not modified."""
        s = self.stage(events)
        own = np.zeros(idx.shape[0], dtype=np.float64)
        near = np.zeros(idx.shape[0], dtype=np.float64)
        near_max = 0.0
        for j in self._near(s):
            c = self.counts[j]
            m = c.max()
            if m <= 0:
                continue
            v = c.scores_idx(idx)
            if j == s:
                own = v / m
            near += v
            near_max += m
        if near_max > 0:
            near /= near_max
        return own, near

    def top_near(self, events: int, n: int) -> np.ndarray:
        """Registry ids of the (at most) ``n`` images with the highest counts over the stage of a user who
        had ``events`` events and the two stages next to it (the order of ``stage_near``), best first; only
        images with counts there. Ties go to the lower registry id (deterministic).

        Served from a best-first list per stage that :meth:`learn` keeps exact (see :class:`_NearTop`), so
        a request costs O(n) rather than a pass over the catalog; the list is rebuilt from the counts when
        it is missing, too short, or its stages' decay references moved."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise InvalidInput(f"n must be a non-negative int, got {n!r}", reason="invalid_pool")
        g = self.stage(events)
        top = self._tops.get(g)
        if top is None or top.refs != self._refs(g) or top.cap < n or (len(top.asc) < n and not top.full):
            top = self._tops[g] = self._build(g, max(2 * int(n), _TOP_MIN))
        return np.fromiter((-i for _, i in top.asc[:-int(n) - 1:-1]), dtype=np.int64,
                           count=min(int(n), len(top.asc)))

    # -------------------------------------------------------------- the per-stage best-first lists

    def _refs(self, g: int) -> tuple[int, ...]:
        return tuple(self.counts[j]._ref_ts for j in self._near(g))

    def _factors(self, refs: tuple[int, ...]) -> list[float]:
        """Each near stage's stored counts times its factor are on one scale (the latest reference's)."""
        top, hl = max(refs), self.counts[0].half_life_ms
        return [2.0 ** ((r - top) / hl) for r in refs]

    def _value(self, g: int, factors: list[float], i: int) -> float:
        # The same sum, in the same order, as _build's array expression: bit-identical values.
        t = 0.0
        for j, f in zip(self._near(g), factors, strict=True):
            v = self.counts[j]._v
            t += (float(v[i]) if i < v.shape[0] else 0.0) * f
        return t

    def _build(self, g: int, cap: int) -> _NearTop:
        refs = self._refs(g)
        factors = self._factors(refs)
        near = [self.counts[j]._v for j in self._near(g)]
        total = np.zeros(max(v.shape[0] for v in near), dtype=np.float64)
        for v, f in zip(near, factors, strict=True):
            total[:v.shape[0]] += v * f
        live = np.flatnonzero(total > 0)
        full = live.size <= cap
        if not full:
            # Keep every id tied with the cap-th best, then order by (count desc, id asc) and cut at cap.
            kth = np.partition(total[live], live.size - cap)[live.size - cap]
            live = live[total[live] >= kth]
            live = live[np.lexsort((live, -total[live]))[:cap]]
        asc = sorted(zip(total[live].tolist(), (-live).tolist()))
        return _NearTop(refs, factors, cap, full, asc, {-j: v for v, j in asc})

    def _patch(self, s: int, i: int) -> None:
        """Step 2 of :meth:`learn`: registry id ``i`` gained a count at stage ``s``; every list that sums
        stage ``s`` takes its new value, or is dropped when a stage's decay reference moved."""
        for g in self._near(s):  # the stages whose near range holds s are s - 1, s and s + 1
            top = self._tops.get(g)
            if top is None:
                continue
            if top.refs != self._refs(g):
                del self._tops[g]
                continue
            top.add(i, self._value(g, top.factors, i))

    def to_dict(self) -> dict:
        return {"format": _FORMAT, "edges": list(STAGE_EDGES), "stages": [c.to_dict() for c in self.counts]}

    @classmethod
    def from_dict(cls, d: dict, registry: ItemRegistry | None = None) -> StagePopularity:
        reg = registry if registry is not None else ItemRegistry()
        try:
            if d.get("format") != _FORMAT or tuple(d["edges"]) != STAGE_EDGES:
                raise StateError(f"stage popularity of another format or stages: {d.get('format')!r}, {d.get('edges')!r}")
            stages = [DecayedCounts.from_dict(x, reg) for x in d["stages"]]
        except StateError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt stage popularity: {exc}") from exc
        if len(stages) != len(STAGE_EDGES):
            raise StateError(f"stage popularity has {len(stages)} stages, expected {len(STAGE_EDGES)}")
        # Invariant (``learn`` advances every stage): one half-life and one event-time clock for all stages.
        if len({c.half_life_ms for c in stages}) != 1 or len({c._now for c in stages}) != 1:
            raise StateError("stage popularity stages disagree on the half-life or the event-time clock")
        sp = cls(stages[0].half_life_ms, reg)
        sp.counts = stages
        return sp
