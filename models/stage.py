"""Popularity by user stage: what users engage with at the same point of their own history.

Users early in their history act on different images than long-time users do (an onboarding flow shows
every newcomer similar starting sets; tastes widen later). :class:`StagePopularity` keeps one decayed
count per *stage* and image. A user's stage is a bucket of how many events they had before the event
(:data:`STAGE_EDGES`). Every interaction counts, skips too: what it predicts is being acted on at that
stage. Two ranker features read it:

- ``stage_pop``: the candidate's count in the user's stage divided by that stage's largest count;
- ``stage_near``: the same over the user's stage and the two next to it (a user near a stage edge).

All stages share one event-time clock, so a stage nobody reached lately decays like the others.
Deterministic: no randomness, no wall-clock time.

>>> sp = StagePopularity(half_life_ms=1e12)
>>> sp.learn(0, "a", ts=0); sp.learn(1, "a", ts=0); sp.learn(3, "b", ts=0); sp.learn(40, "c", ts=0)
>>> sp.stage(0), sp.stage(4), sp.stage(5), sp.stage(10_000)
(0, 0, 1, 10)
>>> own, near = sp.relative(2, sp.registry.lookup(["a", "b", "c", "unknown"]))
>>> own.tolist(), near.tolist()
([1.0, 0.5, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0])
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


class StagePopularity:
    def __init__(self, half_life_ms: float = 30 * 24 * 3600 * 1000.0, registry: ItemRegistry | None = None) -> None:
        self.registry = registry if registry is not None else ItemRegistry()
        self.counts = [DecayedCounts(half_life_ms, self.registry) for _ in STAGE_EDGES]  # validates half_life_ms

    @staticmethod
    def stage(events: int) -> int:
        """The stage of a user who had ``events`` events (a non-negative int)."""
        if isinstance(events, bool) or not isinstance(events, (int, np.integer)) or events < 0:
            raise InvalidInput(f"events must be a non-negative int, got {events!r}", reason="invalid_stage")
        return bisect.bisect_right(STAGE_EDGES, int(events)) - 1

    def learn(self, events: int, image_id: str, ts: int) -> None:
        """One interaction with ``image_id`` at event time ``ts`` by a user who had ``events`` events."""
        s = self.stage(events)
        self.counts[s].learn(image_id, 1.0, ts)
        for c in self.counts:
            c.advance(ts)

    def forget(self, image_id: str) -> None:
        for c in self.counts:
            c.forget(image_id)

    def relative(self, events: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(``stage_pop``, ``stage_near``) of registry ids ``idx`` for a user who had ``events`` events;
        ids without counts (or ``-1``) score 0. ``idx`` is not modified."""
        s = self.stage(events)
        own = np.zeros(idx.shape[0], dtype=np.float64)
        near = np.zeros(idx.shape[0], dtype=np.float64)
        near_max = 0.0
        for j in range(max(0, s - 1), min(len(self.counts), s + 2)):
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
