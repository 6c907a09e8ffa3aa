"""The online interest model: how one behaviour event changes a user's state.

Verbs follow river's style: ``learn_one`` takes one observation and returns the updated state (a new
value; the input state and vector are never modified).

Rules (all in event time, never wall-clock time, so a replay gives identical results):

1. Every interest weight and the negative vector decay by ``0.5 ** (dt / half_life)`` since the user's
   previous event.
2. A positive action (view, click, like, save, share) with strength ``a`` moves the closest interest
   towards the image vector: ``v <- normalise(w·v + a·x)``, ``w <- w + a``. When no interest is closer
   than ``new_interest_below`` (cosine) and fewer than ``max_interests`` exist, it starts a new interest.
3. A negative action (skip, hide) adds ``|a|·x`` to the negative vector; ``hide`` also records the image
   in ``hidden``.
4. Every interacted image joins ``seen`` (bounded FIFO), so it is not recommended again; a positive one
   also joins ``recent`` (bounded FIFO of positives, the query of the co-visitation source).
5. An event whose image is unknown to the catalog still counts as seen, but cannot move vectors.
6. Sessions: an event at most ``session_gap_ms`` from the user's previous one continues the user's
   session (``session`` grows by one), any other starts a new one (``session`` = 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError, DimensionMismatch, InvalidInput, NonFiniteVector, ZeroVector
from .state import UserState

ACTIONS = ("view", "click", "like", "save", "share", "skip", "hide")

DEFAULT_ACTION_WEIGHTS: dict[str, float] = {
    "view": 0.3, "click": 1.0, "like": 2.0, "save": 3.0, "share": 3.0, "skip": -0.5, "hide": -2.0,
}


def _bounded(items: tuple[str, ...], new: str, cap: int) -> tuple[str, ...]:
    if new in items:
        items = tuple(i for i in items if i != new)
    items = items + (new,)
    return items[-cap:] if len(items) > cap else items


@dataclass
class InterestModel:
    dim: int
    max_interests: int = 3
    new_interest_below: float = 0.35
    half_life_ms: float = 7 * 24 * 3600 * 1000.0
    seen_cap: int = 500
    hidden_cap: int = 500
    event_id_cap: int = 256
    recent_cap: int = 30
    session_gap_ms: float = 60_000.0
    action_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_ACTION_WEIGHTS))

    def __post_init__(self) -> None:
        # Checked once here, so a bad configuration fails at start-up, not halfway through an event
        # after some shared counters were already updated.
        if self.dim < 1 or self.max_interests < 1 or min(self.seen_cap, self.hidden_cap, self.event_id_cap,
                                                          self.recent_cap) < 1:
            raise ConfigError("dim, max_interests and the caps must be positive")
        if not self.half_life_ms > 0 or not math.isfinite(self.half_life_ms):
            raise ConfigError(f"half_life_ms must be positive and finite, got {self.half_life_ms!r}")
        if not self.session_gap_ms >= 0 or not math.isfinite(self.session_gap_ms):
            raise ConfigError(f"session_gap_ms must be >= 0 and finite, got {self.session_gap_ms!r}")
        unknown = set(self.action_weights) ^ set(ACTIONS)
        if unknown:
            raise ConfigError(f"action_weights must cover exactly {ACTIONS}; differs in {sorted(unknown)}")
        for action, w in self.action_weights.items():
            if not isinstance(w, (int, float)) or not math.isfinite(w) or w == 0:
                raise ConfigError(f"action weight of {action!r} must be a finite non-zero number, got {w!r}")
            if (w < 0) != (action in ("skip", "hide")):
                raise ConfigError(f"action weight of {action!r} has the wrong sign: {w!r}")

    def new_state(self, user_id: str) -> UserState:
        return UserState(user_id=user_id, dim=self.dim)

    def strength(self, action: str, dwell_ms: int | None = None) -> float:
        try:
            a = self.action_weights[action]
        except KeyError:
            raise InvalidInput(f"unknown action {action!r}", reason="unknown_action") from None
        if action == "view" and dwell_ms is not None and dwell_ms > 0:
            # Longer looks count more, saturating at 3x a plain view after ~10 s.
            a *= 1.0 + 2.0 * min(dwell_ms, 10_000) / 10_000
        return a

    def learn_one(
        self,
        state: UserState,
        *,
        image_id: str,
        action: str,
        ts: int,
        vector: np.ndarray | None,
        dwell_ms: int | None = None,
        offset: int | None = None,
        event_id: str | None = None,
    ) -> UserState:
        """Apply one event; returns the new state. ``vector`` is the image's unit vector or None if unknown.

        Raises :class:`InvalidInput` for an unknown action, and for a bad ``vector``: wrong shape
        (:class:`DimensionMismatch`), NaN/Inf (:class:`NonFiniteVector`) or all zeros (:class:`ZeroVector`).
        """
        a = self.strength(action, dwell_ms)
        if vector is not None:
            vector = np.asarray(vector, dtype=np.float32)
            if vector.shape != (self.dim,):
                raise DimensionMismatch(f"image vector shape {vector.shape} != ({self.dim},)")
            if not np.all(np.isfinite(vector)):
                raise NonFiniteVector(f"image {image_id!r}: vector contains NaN or Inf")
            if not vector.any():
                raise ZeroVector(f"image {image_id!r}: vector is all zeros")

        dt = max(0, ts - state.updated_ts) if state.updated_ts else 0
        decay = np.float32(0.5 ** (dt / self.half_life_ms)) if dt else np.float32(1.0)
        interests = state.interests.copy()
        weights = state.weights * decay
        negative = state.negative * decay
        hidden = state.hidden
        recent = state.recent

        if vector is not None and a > 0:
            if interests.shape[0]:
                sims = interests @ vector
                j = int(np.argmax(sims))
                best = float(sims[j])
            else:
                j, best = -1, -1.0
            if j < 0 or (best < self.new_interest_below and interests.shape[0] < self.max_interests):
                interests = np.vstack([interests, vector[None, :]]).astype(np.float32)
                weights = np.append(weights, np.float32(a)).astype(np.float32)
            else:
                moved = weights[j] * interests[j] + a * vector
                norm = float(np.linalg.norm(moved))
                if norm > 0:
                    interests[j] = moved / norm
                weights[j] = weights[j] + a
            recent = _bounded(recent, image_id, self.recent_cap)
        elif vector is not None and a < 0:
            negative = negative + np.float32(-a) * vector
        if action == "hide":
            hidden = _bounded(hidden, image_id, self.hidden_cap)
            recent = tuple(r for r in recent if r != image_id)

        seen = _bounded(state.seen, image_id, self.seen_cap)
        session = min(state.session + 1 if self.in_session(state, ts) else 1, len(seen))
        return state.evolve(
            interests=interests.astype(np.float32), weights=weights.astype(np.float32),
            negative=negative.astype(np.float32), hidden=hidden, recent=recent,
            seen=seen, session=session,
            event_ids=_bounded(state.event_ids, event_id, self.event_id_cap) if event_id else state.event_ids,
            last_offset=max(state.last_offset, offset) if offset is not None else state.last_offset,
            version=state.version + 1, updated_ts=max(ts, state.updated_ts),
        )

    def in_session(self, state: UserState, ts: int) -> bool:
        """Whether an event at ``ts`` continues the session of ``state`` (rule 6)."""
        return bool(state.session) and abs(ts - state.updated_ts) <= self.session_gap_ms

    def session_items(self, state: UserState, ts: int) -> tuple[str, ...]:
        """The images an event at ``ts`` shares a session with (oldest first; empty for a new session)."""
        return state.session_items if self.in_session(state, ts) else ()

    @staticmethod
    def already_applied(state: UserState, *, offset: int | None, event_id: str | None) -> bool:
        """True for a redelivered event: offset at or below the last applied one, or a known event_id."""
        if offset is not None and offset <= state.last_offset:
            return True
        return bool(event_id) and event_id in state.event_ids
