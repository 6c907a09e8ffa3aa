"""Per-user state kept in the worker's changelogged table.

A :class:`UserState` is a plain value: the interest model returns an updated copy rather than mutating
the one it was given. ``to_bytes``/``from_bytes`` give an exact round trip, so a restarted worker
recovers bit-identical state.

Two encodings; :meth:`UserState.from_bytes` reads both, :meth:`UserState.to_bytes` writes format 2:

- format 1 (:meth:`UserState.to_dict`): JSON, float32 vectors as base64 of their little-endian bytes.
  Readable, and what changelogs written before format 2 hold.
- format 2 (binary, ~⅓ smaller: 1M users is the largest memory item of a worker, see
  ``docs/performance.md``)::

      b"\0US\2"                                  magic (a JSON state starts with "{")
      <IHqqqIB                                    dim, m, last_offset, version, updated_ts, number of event
                                                  ids, event-id coding (0: JSON list, 1: packed 32-hex ids)
      float32 interests (m*dim), weights (m), negative (dim), little-endian, raw
      event ids: n*16 bytes (coding 1) or nothing (coding 0)
      orjson: [user_id, seen, hidden, recent, event ids (coding 0) or [], session]; hidden and recent are
      given as positions in seen when all their ids are in it (the usual case: every interaction enters
      seen); ``session`` is absent in states written before it existed (read as 0)

  Event ids that are all 32 lowercase hex digits (``uuid4().hex``, what the producers send) are packed
  to 16 bytes each. (A full string table over all id lists saved a little more but made encoding 2–8x slower.)
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass, field, replace

import numpy as np
import orjson

from .errors import DimensionMismatch, InvalidInput, NonFiniteVector, StateError, ZeroVector

STATE_FORMAT = 1  # the JSON encoding (to_dict / from_dict)
BINARY_FORMAT = 2  # what to_bytes writes
_MAGIC = b"\x00US\x02"
_HEAD = struct.Struct("<IHqqqIB")
_HEX32 = re.compile(r"(?:[0-9a-f]{32})*")


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


def _session(value: object) -> int:
    """A stored session count: a non-negative int (not a bool); anything else is a StateError."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise StateError(f"user state: bad session count {value!r}")


def _from_seen(items: list, seen: list[str]) -> list[str]:
    """``hidden``/``recent`` of format 2: ids, or (when all of them are in ``seen``) positions in ``seen``."""
    if items and not isinstance(items[0], str):
        n = len(seen)
        if not all(type(i) is int and 0 <= i < n for i in items):
            raise StateError("binary user state: bad position in seen")
        return [seen[i] for i in items]
    if not all(isinstance(x, str) for x in items):
        raise StateError("binary user state: malformed id list")
    return items


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
    - ``session``: how many of the last ``seen`` images belong to the user's current session (events at
      most the interest model's ``session_gap_ms`` apart); :attr:`session_items` lists them.

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
    session: int = 0

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
    def session_items(self) -> tuple[str, ...]:
        """The images of the user's current (latest) session, oldest first."""
        n = min(max(self.session, 0), len(self.seen))
        return self.seen[-n:] if n else ()

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
            "o": self.last_offset, "v": self.version, "t": self.updated_ts, "q": self.session,
        }

    def to_bytes(self) -> bytes:
        """Format 2 (binary, see the module docstring)."""
        ev = self.event_ids
        joined = "".join(ev)
        packed = all(len(e) == 32 for e in ev) and _HEX32.fullmatch(joined) is not None
        m = int(self.interests.shape[0])
        seen, hidden, recent = self.seen, self.hidden, self.recent
        if seen and (hidden or recent):
            pos = {x: i for i, x in enumerate(seen)}
            get = pos.get
            for name, seq in (("hidden", hidden), ("recent", recent)):
                ix = [get(x) for x in seq]
                if None not in ix:  # all in seen (the usual case): positions in seen, not the ids again
                    if name == "hidden":
                        hidden = ix
                    else:
                        recent = ix
        return b"".join((
            _MAGIC,
            _HEAD.pack(self.dim, m, self.last_offset, self.version, self.updated_ts, len(ev), 1 if packed else 0),
            np.ascontiguousarray(self.interests, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.weights, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.negative, dtype="<f4").tobytes(),
            bytes.fromhex(joined) if packed else b"",
            orjson.dumps((self.user_id, seen, hidden, recent, () if packed else ev, self.session)),
        ))

    @classmethod
    def from_dict(cls, d: dict) -> UserState:
        if d.get("f") != STATE_FORMAT:
            raise StateError(f"unknown user-state format {d.get('f')!r}")
        dim, m = int(d["d"]), int(d["m"])
        return cls(
            user_id=d["u"], dim=dim, interests=_dec(d["i"], (m, dim)), weights=_dec(d["w"], (m,)),
            negative=_dec(d["n"], (dim,)), seen=tuple(d["s"]), hidden=tuple(d["h"]), recent=tuple(d.get("r", ())),
            event_ids=tuple(d["e"]),
            last_offset=int(d["o"]), version=int(d["v"]), updated_ts=int(d["t"]), session=_session(d.get("q", 0)),
        )

    @classmethod
    def _from_binary(cls, raw: bytes) -> UserState:
        pos = len(_MAGIC)
        dim, m, off, ver, ts, ne, packed = _HEAD.unpack_from(raw, pos)
        pos += _HEAD.size
        if packed not in (0, 1):
            raise StateError(f"bad binary user-state header (event-id coding {packed})")
        n = 4 * (m * dim + m + dim) + (16 * ne if packed else 0)
        if pos + n > len(raw):
            raise StateError("user state is truncated")
        f = np.frombuffer(raw, dtype="<f4", count=m * dim + m + dim, offset=pos).astype(np.float32)
        hexes = raw[pos + n - 16 * ne:pos + n].hex() if packed else ""
        strings = orjson.loads(raw[pos + n:])
        if not (isinstance(strings, list) and len(strings) in (5, 6) and isinstance(strings[0], str)
                and all(isinstance(x, list) for x in strings[1:5])
                and all(isinstance(y, str) for j in (1, 4) for y in strings[j])):
            raise StateError("binary user state: malformed id section")
        user_id, seen, hidden, recent, events = strings[:5]
        session = _session(strings[5]) if len(strings) == 6 else 0
        hidden, recent = _from_seen(hidden, seen), _from_seen(recent, seen)
        if packed:
            if events:
                raise StateError("binary user state: event ids both packed and listed")
            events = [hexes[32 * j:32 * j + 32] for j in range(ne)]
        elif len(events) != ne:
            raise StateError("binary user state: event-id count does not match its header")
        return cls(
            user_id=user_id, dim=dim, interests=f[:m * dim].reshape(m, dim), weights=f[m * dim:m * dim + m],
            negative=f[m * dim + m:], seen=tuple(seen), hidden=tuple(hidden), recent=tuple(recent),
            event_ids=tuple(events), last_offset=off, version=ver, updated_ts=ts, session=session,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserState:
        """Either format (binary format 2, or the JSON of format 1)."""
        try:
            if raw[:len(_MAGIC)] == _MAGIC:
                return cls._from_binary(bytes(raw))
            return cls.from_dict(orjson.loads(raw))
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode user state: {exc}") from exc

    def same_as(self, other: UserState) -> bool:
        """Exact equality, vectors compared bit for bit (dataclass ``==`` cannot compare arrays)."""
        return self.to_bytes() == other.to_bytes()
