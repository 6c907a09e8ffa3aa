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

from .errors import DimensionMismatch, InvalidInput, NonFiniteVector, StateError, ZeroVector

STATE_FORMAT = 1


def _enc(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr, dtype="<f4").tobytes()).decode()


def _dec(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(shape).astype(np.float32)


def _float32(value: object, name: str, user_id: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"user state {user_id!r}: {name} is not an array of numbers: {exc}",
                           reason="bad_state") from None


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

    The vectors are held as float32 and validated on construction (so also by ``evolve`` and
    ``from_bytes``): wrong shapes raise :class:`~models.errors.DimensionMismatch`, NaN/Inf
    :class:`~models.errors.NonFiniteVector`, an all-zero interest :class:`~models.errors.ZeroVector`
    (``from_bytes`` reports any of them as :class:`~models.errors.StateError`). ``UserState(user_id, dim)``
    is the cold state: no interests, an all-zero negative vector.
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
        # Held as float32, exactly what to_bytes() writes (no copy when they already are float32).
        for name in ("interests", "weights", "negative"):
            object.__setattr__(self, name, _float32(getattr(self, name), name, self.user_id))
        self.validate()

    def validate(self) -> None:
        """Reject vectors no model could have produced, so a bad state can neither be ranked nor persisted.

        ``interests`` must be (m, dim), finite and with no all-zero row (every interest is a direction);
        ``weights`` (m,) and finite; ``negative`` (dim,) and finite (all zeros is the empty negative).
        Raises :class:`DimensionMismatch`, :class:`NonFiniteVector` or :class:`ZeroVector`.

        Runs on construction; the ranker runs it again before ranking (arrays can be changed in place).
        """
        who = f"user state {self.user_id!r}"
        m = self.interests.shape[0] if self.interests.ndim == 2 else -1
        if self.interests.ndim != 2 or self.interests.shape[1] != self.dim:
            raise DimensionMismatch(f"{who}: interests must have shape (m, {self.dim}), got {self.interests.shape}")
        if self.weights.shape != (m,):
            raise DimensionMismatch(f"{who}: weights must have shape ({m},) (one per interest), got {self.weights.shape}")
        if self.negative.shape != (self.dim,):
            raise DimensionMismatch(f"{who}: negative must have shape ({self.dim},), got {self.negative.shape}")
        for name in ("interests", "weights", "negative"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise NonFiniteVector(f"{who}: NaN or Inf in {name}")
        if m and not np.all(self.interests.any(axis=1)):
            raise ZeroVector(f"{who}: an interest vector is all zeros")

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
