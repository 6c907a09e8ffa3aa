"""Image tags: a bounded tag vocabulary, the stream's tag mix, and a user's taste in tags.

Catalog events may carry ``tags`` (DESIGN.md, ``new-images``). The content vector already mixes a
caption's words with its tags; what it cannot say is which tags *this* user keeps acting on positively,
and how that differs from what everybody acts on. Three ranker features read this module
(:mod:`models.ranking`), for a candidate ``x`` with tags ``T(x)`` and user ``u``:

- ``tag_aff``: ``5 · mean_{t ∈ T(x)} p_u(t)``: how much of the user's positive tag mass ``x``'s tags carry;
- ``tag_lift``: ``mean_{t ∈ T(x)} ln((p_u(t) + ε) / (p(t) + ε))``, clipped to ±3: tags the user likes more
  than everybody does (``p``: the stream's decayed positive tag mix, :class:`TagCounts`);
- ``tag_max``: ``3 · max_{t ∈ T(x)} p_u(t)``: the user's share of ``x``'s strongest tag.

``p_u`` is the tag mix of the user's recent positive images (``UserState.recent``), each weighted
:data:`TASTE_DECAY` per step back from the newest, normalised to sum 1 (:func:`taste`). No user state is
added: it is read from the images the state already lists. All three are 0 for an image without tags and
for a user none of whose recent positives has tags.

Tags are normalised (surrounding blanks stripped, case-folded, duplicates dropped) and hashed into
:data:`TAG_BUCKETS` buckets with CRC-32, the same in every process and run, so memory stays bounded
whatever the vocabulary. An image keeps its first :data:`MAX_TAGS` distinct buckets (:func:`tag_row`).

>>> row = tag_row(["Comedy", " comedy", "Drama"])
>>> int((row >= 0).sum()), bool(row[0] == bucket("COMEDY"))
(2, True)
>>> tc = TagCounts(half_life_ms=1e12)
>>> tc.learn(tag_row(["comedy"]), ts=0); tc.learn(tag_row(["comedy", "drama"]), ts=0)
>>> [round(float(s), 3) for s in tc.shares(tag_row(["comedy", "drama", "horror"]))[:3]]
[0.667, 0.333, 0.0]
>>> prof = taste(np.stack([tag_row(["drama"]), tag_row(["comedy"])]))  # comedy is the newest
>>> aff, lift, top = tag_features(prof, np.stack([tag_row(["comedy"]), tag_row(["drama"]), tag_row([])]), tc)
>>> [round(float(a), 2) for a in aff], [round(float(t), 2) for t in top]
([2.63, 2.37, 0.0], [1.58, 1.42, 0.0])
>>> bool(lift[1] > 0 > lift[0])  # drama: more of the user's mix than of everybody's; comedy: less
True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import DimensionMismatch, InvalidInput, StateError

#: Hash buckets of the tag vocabulary (a tag is known by its bucket).
TAG_BUCKETS = 1 << 14
#: Distinct tag buckets kept per image (its first ones).
MAX_TAGS = 8
#: Weight of a recent positive in the user's tag mix, per step back from the newest.
TASTE_DECAY = 0.9
#: Additive smoothing of both shares inside ``tag_lift``'s logarithm.
LIFT_EPS = 0.01
#: ``tag_lift`` is clipped to ±this.
LIFT_CLIP = 3.0

_FORMAT = 1


def normalise_tags(tags: Iterable[str]) -> list[str]:
    """Stripped, case-folded, non-empty, first occurrence kept.

    >>> normalise_tags([" Sky", "sky", "", "Sea "])
    ['sky', 'sea']
    """
    out: dict[str, None] = {}
    for t in tags:
        if not isinstance(t, str):
            raise InvalidInput(f"tags must be strings, got {type(t).__name__}", reason="bad_tags")
        t = t.strip().casefold()
        if t:
            out.setdefault(t, None)
    return list(out)


def bucket(tag: str) -> int:
    """The bucket of one tag (normalised first)."""
    return zlib.crc32(tag.strip().casefold().encode("utf-8")) % TAG_BUCKETS


def tag_row(tags: Iterable[str]) -> np.ndarray:
    """(:data:`MAX_TAGS`,) int32: the distinct buckets of ``tags`` in order, padded with -1."""
    row = np.full(MAX_TAGS, -1, dtype=np.int32)
    n = 0
    for t in normalise_tags(tags):
        b = bucket(t)
        if b not in row[:n]:
            row[n] = b
            n += 1
            if n == MAX_TAGS:
                break
    return row


class TagCounts:
    """The stream's positive tag mix: a decayed count per tag bucket, one per positive interaction with an
    image carrying that tag. Same decay scheme as :class:`~models.popularity.DecayedCounts` (counts stored
    relative to a reference time); only shares are read, and uniform decay does not change them.
    Deterministic: no randomness, no wall-clock time."""

    def __init__(self, half_life_ms: float) -> None:
        if not (math.isfinite(half_life_ms) and half_life_ms > 0):
            raise ValueError("half_life_ms must be positive")
        self.half_life_ms = float(half_life_ms)
        self._v = np.zeros(TAG_BUCKETS, dtype=np.float64)
        self._total: float | None = 0.0  # self._v.sum() since the last change (None: to recompute)
        self._ref_ts = 0
        self._started = False

    def learn(self, row: np.ndarray, ts: int) -> None:
        """Count one positive interaction with an image whose tag row (:func:`tag_row`) is ``row``, at event
        time ``ts`` (ms). A bad row or time raises :class:`InvalidInput` and changes nothing."""
        b = _check_rows(row, one=True)
        b = np.unique(b[b >= 0]).astype(np.int64)  # a tag counts once per image
        if isinstance(ts, bool) or not isinstance(ts, int | np.integer):
            raise InvalidInput(f"ts must be an integer (ms), got {ts!r}", reason="bad_timestamp")
        if b.size == 0:
            return
        if not self._started:
            self._started, self._ref_ts = True, int(ts)
        e = (int(ts) - self._ref_ts) / self.half_life_ms
        if e > 60:  # keep the stored counts in range: rescale to a new reference time
            self._v *= 2.0 ** -e
            self._ref_ts, e = int(ts), 0.0
        self._v[b] += 2.0 ** e
        self._total = None

    def shares(self, rows: np.ndarray) -> np.ndarray:
        """Each bucket's share of all counted tag mass (0 for -1 padding and before anything is counted);
        same shape as ``rows``."""
        return self._shares(_check_rows(rows))

    def total(self) -> float:
        """All counted tag mass (decayed to the reference time; only ratios to it are meaningful)."""
        if self._total is None:  # once per change, not per request (16,384 buckets: ~10 µs)
            self._total = float(self._v.sum())
        return self._total

    def _shares(self, rows: np.ndarray) -> np.ndarray:  # rows already checked
        out = np.zeros(rows.shape, dtype=np.float64)
        ok = rows >= 0
        out[ok] = self._bucket_shares(rows[ok])
        return out

    def _bucket_shares(self, buckets: np.ndarray) -> np.ndarray:
        """The shares of valid buckets (no -1 padding), 0 before anything is counted."""
        total = self.total()
        return self._v[buckets] / total if total > 0 else np.zeros(buckets.shape)

    def to_dict(self) -> dict:
        nz = np.flatnonzero(self._v)
        return {"format": _FORMAT, "buckets": TAG_BUCKETS, "hl": self.half_life_ms, "ref": self._ref_ts,
                "started": self._started, "b": nz.tolist(), "v": self._v[nz].tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> TagCounts:
        try:
            if d.get("format") != _FORMAT or d.get("buckets") != TAG_BUCKETS:
                raise StateError(f"tag counts of another format or bucket count: {d.get('format')!r}, {d.get('buckets')!r}")
            self = cls(float(d["hl"]))
            self._ref_ts, self._started = int(d["ref"]), bool(d["started"])
            b = np.asarray(d["b"], dtype=np.int64)
            v = np.asarray(d["v"], dtype=np.float64)
            if b.shape != v.shape or b.ndim != 1 or (b.size and (b.min() < 0 or b.max() >= TAG_BUCKETS)):
                raise StateError("tag counts: bad buckets")
            if not np.all(np.isfinite(v)) or np.any(v < 0):
                raise StateError("tag counts: counts must be finite and non-negative")
            self._v[b] = v
            self._total = None
        except StateError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StateError(f"corrupt tag counts: {exc}") from exc
        return self


@dataclass(frozen=True)
class TagTaste:
    """A user's tag mix: sorted distinct buckets and their shares (summing to 1), or empty."""

    buckets: np.ndarray
    shares: np.ndarray

    @property
    def empty(self) -> bool:
        return self.buckets.size == 0


def taste(rows: np.ndarray) -> TagTaste:
    """The tag mix of a user's recent positives, oldest first: ``rows`` is (r, MAX_TAGS), their
    :func:`tag_row` s. The newest weighs 1, each one before it :data:`TASTE_DECAY` times the next."""
    rows = _check_rows(rows)
    if rows.ndim != 2:
        raise DimensionMismatch(f"tag rows must have shape (r, {MAX_TAGS}), got {rows.shape}")
    keys, shares, _ = _tastes(rows, np.asarray([rows.shape[0]], dtype=np.int64))
    return TagTaste(keys.astype(np.int32), shares)  # one user: its keys are its buckets


def tag_features(user: TagTaste, rows: np.ndarray, counts: TagCounts | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tag_aff``, ``tag_lift`` and ``tag_max`` (see the module docstring) of candidates whose tag rows are
    ``rows`` (n, MAX_TAGS); ``counts`` None reads as an empty stream mix."""
    rows = _check_rows(rows)
    if rows.ndim != 2:
        raise DimensionMismatch(f"tag rows must have shape (n, {MAX_TAGS}), got {rows.shape}")
    keys = np.asarray(user.buckets, dtype=np.int64)
    return _features(keys, np.asarray(user.shares, dtype=np.float64), np.asarray([not user.empty]), rows,
                     np.asarray([rows.shape[0]], dtype=np.int64), counts)


def tag_features_many(recent: np.ndarray, recent_counts: np.ndarray, rows: np.ndarray, row_counts: np.ndarray,
                      counts: TagCounts | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`tag_features` for a batch of users at once, the same values bit for bit as one call per user.

    ``recent``: every user's recent positives' tag rows stacked in user order (each user's oldest first),
    ``recent_counts[u]`` of them for user ``u``; ``rows``: every user's candidates' tag rows stacked in the
    same user order, ``row_counts[u]`` of them. Returns three (len(rows),) arrays.

    >>> recent = np.stack([tag_row(["sea"]), tag_row(["sky"]), tag_row(["sky"])])  # user 0: sea; user 1: sky, sky
    >>> cands = np.stack([tag_row(["sea"]), tag_row(["sky"]), tag_row(["sea"]), tag_row(["sky"])])
    >>> aff, _, _ = tag_features_many(recent, np.array([1, 2]), cands, np.array([2, 2]), None)
    >>> aff.tolist()
    [5.0, 0.0, 0.0, 5.0]
    """
    recent, rows = _check_rows(recent), _check_rows(rows)
    if recent.ndim != 2 or rows.ndim != 2:
        raise DimensionMismatch(f"tag rows must have shape (n, {MAX_TAGS}), got {recent.shape} and {rows.shape}")
    rc, nc = _check_counts(recent_counts, recent.shape[0]), _check_counts(row_counts, rows.shape[0])
    if rc.shape != nc.shape:
        raise DimensionMismatch(f"{rc.shape[0]} users' recent rows but {nc.shape[0]} users' candidate rows")
    return tag_features_many_unchecked(recent, rc, rows, nc, counts)


def tag_features_many_unchecked(recent: np.ndarray, recent_counts: np.ndarray, rows: np.ndarray,
                                row_counts: np.ndarray, counts: TagCounts | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`tag_features_many` of rows known to be valid (the catalog mirror's) and consistent counts: the
    ranker's per-batch path."""
    keys, shares, has = _tastes(recent, recent_counts)
    return _features(keys, shares, has, rows, row_counts, counts)


def _tastes(recent: np.ndarray, recent_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every user's tag mix in one sorted array: keys ``u · TAG_BUCKETS + bucket`` (int64, ascending, so each
    user's buckets are contiguous and sorted), their shares (each user's summing to 1), and which users have a
    non-empty mix. Per user, the same values bit for bit as computing that user alone: the weights reach
    ``bincount`` in the same order, and each user's total is summed on its own (``np.add.reduceat`` rounds
    differently)."""
    n_users = recent_counts.shape[0]
    has = np.zeros(n_users, dtype=bool)
    flat = recent.reshape(-1)
    ok = flat >= 0
    if not ok.any():
        return np.zeros(0, dtype=np.int64), np.zeros(0), has
    w = np.concatenate([_decay_weights(int(r)) for r in recent_counts.tolist()]) if n_users else np.zeros(0)
    owner = np.repeat(np.arange(n_users, dtype=np.int64), recent_counts * MAX_TAGS)
    keys, inv = np.unique(owner[ok] * TAG_BUCKETS + flat[ok], return_inverse=True)
    mass = np.bincount(inv, weights=np.repeat(w, MAX_TAGS)[ok], minlength=keys.size)
    bounds = np.searchsorted(keys // TAG_BUCKETS, np.arange(n_users + 1))
    has = bounds[1:] > bounds[:-1]
    shares = np.empty_like(mass)
    for u in np.flatnonzero(has).tolist():
        lo, hi = int(bounds[u]), int(bounds[u + 1])
        shares[lo:hi] = mass[lo:hi] / mass[lo:hi].sum()
    return keys, shares, has


def _features(keys: np.ndarray, shares: np.ndarray, has: np.ndarray, rows: np.ndarray, row_counts: np.ndarray,
              counts: TagCounts | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three features of candidate ``rows`` (stacked per user, ``row_counts``) against the mixes of
    :func:`_tastes`; all 0 for the candidates of a user without a mix.

    Only the columns up to the last one any candidate uses are read (the rest are all -1; :func:`tag_row`
    packs tags to the left, so that is as many columns as the most-tagged candidate has tags). Each user's shares are scattered into one dense scratch row of
    ``TAG_BUCKETS + 1`` slots (the last one stays 0: where a -1 pad reads) and gathered by bucket. Sums over a
    row's tags use :func:`_row_sum`, the order NumPy's own sum of an 8-wide row uses, so the values are
    those of the straightforward form bit for bit."""
    n = rows.shape[0]
    zero = np.zeros(n)
    if keys.size == 0 or n == 0:
        return zero, zero.copy(), zero.copy()
    valid = rows >= 0
    used = np.flatnonzero(valid.any(axis=0))
    if used.size == 0:
        return zero, zero.copy(), zero.copy()
    width = int(used[-1]) + 1
    rows, valid = rows[:, :width], valid[:, :width]
    pu = np.zeros(rows.shape)
    scratch = np.zeros(TAG_BUCKETS + 1)
    bounds = np.searchsorted(keys, np.arange(row_counts.shape[0] + 1, dtype=np.int64) * TAG_BUCKETS)
    starts = np.concatenate(([0], np.cumsum(row_counts)))
    for u in np.flatnonzero(has & (row_counts > 0)).tolist():
        b = keys[bounds[u]:bounds[u + 1]] - u * TAG_BUCKETS
        scratch[b] = shares[bounds[u]:bounds[u + 1]]
        lo, hi = int(starts[u]), int(starts[u + 1])
        pu[lo:hi] = scratch[rows[lo:hi]]
        scratch[b] = 0.0
    k = np.maximum(valid.sum(axis=1), 1)
    vb = rows[valid]
    p = counts._bucket_shares(vb) if counts is not None else np.zeros(vb.shape)
    logs = np.zeros(rows.shape)
    logs[valid] = np.log((pu[valid] + LIFT_EPS) / (p + LIFT_EPS))  # only where there is a tag
    aff = _row_sum(pu) / k * 5.0
    lift = np.clip(_row_sum(logs) / k, -LIFT_CLIP, LIFT_CLIP)
    top = pu.max(axis=1) * 3.0
    off = ~np.repeat(has, row_counts)  # no mix: no evidence either way (``tag_lift`` would read every tag as rare)
    if off.any():
        aff[off] = lift[off] = top[off] = 0.0
    return aff, lift, top


def _row_sum(a: np.ndarray) -> np.ndarray:
    """Each row's sum, for rows of at most :data:`MAX_TAGS` (8) entries, as NumPy sums an 8-wide row:
    ``((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))``, missing columns read as 0 (adding 0 is exact).
    Column by column, which is several times faster than a reduction over a short last axis."""
    c = [a[:, j] for j in range(a.shape[1])] + [None] * (8 - a.shape[1])

    def add(x, y):
        return x if y is None else y if x is None else x + y

    out = add(add(add(c[0], c[1]), add(c[2], c[3])), add(add(c[4], c[5]), add(c[6], c[7])))
    return np.zeros(a.shape[0]) if out is None else out


def _check_counts(c: np.ndarray, total: int) -> np.ndarray:
    c = np.asarray(c)
    if c.ndim != 1 or not np.issubdtype(c.dtype, np.integer) or (c.size and c.min() < 0) or int(c.sum()) != total:
        raise InvalidInput(f"row counts must be non-negative integers summing to {total}", reason="bad_tags")
    return c.astype(np.int64, copy=False)


_MAX_RECENT = 1024
_DECAY = TASTE_DECAY ** np.arange(_MAX_RECENT - 1, -1, -1, dtype=np.float64)  # oldest first, newest 1


def _decay_weights(r: int) -> np.ndarray:
    """The weights of ``r`` recent positives, oldest first (the same values as computing them each time)."""
    if r > _MAX_RECENT:
        return TASTE_DECAY ** np.arange(r - 1, -1, -1, dtype=np.float64)
    return _DECAY[_MAX_RECENT - r:]


def _check_rows(rows: np.ndarray, one: bool = False) -> np.ndarray:
    """``rows`` as an integer array whose last axis is :data:`MAX_TAGS` long (exactly one row when ``one``),
    every entry a bucket or the -1 padding; raises :class:`DimensionMismatch` / :class:`InvalidInput`."""
    rows = np.asarray(rows)
    if rows.ndim == 0 or rows.shape[-1] != MAX_TAGS or (one and rows.ndim != 1):
        raise DimensionMismatch(f"tag rows must have {MAX_TAGS} entries each, got shape {rows.shape}")
    if not np.issubdtype(rows.dtype, np.integer):
        raise InvalidInput(f"tag rows must hold integer buckets, got {rows.dtype}", reason="bad_tags")
    if rows.size and (rows.min() < -1 or rows.max() >= TAG_BUCKETS):
        raise InvalidInput(f"tag buckets must lie in [0, {TAG_BUCKETS}) (or -1: none)", reason="bad_tags")
    return rows
