"""Per-user state kept in the worker's changelogged table.

A :class:`UserState` is a plain value: the interest model returns an updated copy rather than mutating
the one it was given. ``to_bytes``/``from_bytes`` give an exact round trip (float32 vectors travel as
raw little-endian bytes, base64 inside orjson), so a restarted worker recovers bit-identical state.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from .errors import StateError

STATE_FORMAT = 1


def _enc(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<f4").tobytes()).decode()


def _dec(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape).astype(np.float32)


@dataclass(frozen=True)
class UserState:
    """What the worker knows about one user.

    - ``interests``: (m, dim) unit vectors, one per taste cluster, with ``weights`` (m,) (decayed evidence).
    - ``negative``: (dim,) decayed sum of skipped/hidden image vectors (not normalised; its norm is evidence).
    - ``seen``: recent interacted image ids, oldest first, bounded; never recommended again while in here.
    - ``hidden``: images the user hid, bounded; also never recommended.
    - ``recent``: the user's recent positive images, oldest first, bounded (the co-visitation query).
    - ``last_offset``: highest input offset applied (the dedup guard for redelivered events).
    - ``event_ids``: recent event ids applied (dedup for producer retries that got new offsets).
    - ``version``: count of applied events; ``updated_ts``: event time (ms) of the last one.
    """

    user_id: str
    dim: int
    interests: np.ndarray = field(default=None)  # type: ignore[assignment]
    weights: np.ndarray = field(default=None)  # type: ignore[assignment]
    negative: np.ndarray = field(default=None)  # type: ignore[assignment]
    seen: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()
    event_ids: tuple[str, ...] = ()
    last_offset: int = -1
    version: int = 0
    updated_ts: int = 0
    recent: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.interests is None:
            object.__setattr__(self, "interests", np.zeros((0, self.dim), dtype=np.float32))
        if self.weights is None:
            object.__setattr__(self, "weights", np.zeros((0,), dtype=np.float32))
        if self.negative is None:
            object.__setattr__(self, "negative", np.zeros((self.dim,), dtype=np.float32))

    @property
    def is_cold(self) -> bool:
        return self.interests.shape[0] == 0

    def excluded(self) -> set[str]:
        return set(self.seen) | set(self.hidden)

    def evolve(self, **changes: object) -> UserState:
        return replace(self, **changes)

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        return {
            "f": STATE_FORMAT, "u": self.user_id, "d": self.dim, "m": int(self.interests.shape[0]),
            "i": _enc(self.interests), "w": _enc(self.weights), "n": _enc(self.negative),
            "s": list(self.seen), "h": list(self.hidden), "r": list(self.recent), "e": list(self.event_ids),
            "o": self.last_offset, "v": self.version, "t": self.updated_ts,
        }

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> UserState:
        if d.get("f") != STATE_FORMAT:
            raise StateError(f"unknown user-state format {d.get('f')!r}")
        dim, m = int(d["d"]), int(d["m"])
        return cls(
            user_id=d["u"], dim=dim, interests=_dec(d["i"], (m, dim)), weights=_dec(d["w"], (m,)),
            negative=_dec(d["n"], (dim,)), seen=tuple(d["s"]), hidden=tuple(d["h"]), recent=tuple(d.get("r", ())),
            event_ids=tuple(d["e"]),
            last_offset=int(d["o"]), version=int(d["v"]), updated_ts=int(d["t"]),
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        try:
            return cls.from_dict(orjson.loads(raw))
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode user state: {exc}") from exc

    def same_as(self, other: UserState) -> bool:
        """Exact equality, vectors compared bit for bit (dataclass ``==`` cannot compare arrays)."""
        return self.to_bytes() == other.to_bytes()
