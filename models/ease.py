"""An item-to-item linear model (EASE, Steck 2019) over the catalog's most active images, refit online.

Co-occurrence counts cannot tell *which* of a user's images explains a candidate: two images that are
popular with the same crowd both look similar to everything that crowd touched. EASE learns a weight
matrix ``B`` (zero diagonal) that reconstructs each user's interaction vector from the rest of it,

    B = argmin ||X - X B||² + λ ||B||²,  diag(B) = 0   →   P = (G + λI)⁻¹,  B_ij = -P_ij / P_jj

where ``G = XᵀX`` is the item Gram matrix (``G_ij``: users who interacted with both; ``G_ii``: with ``i``).
Its weights can be negative ("explaining away"), which co-visitation counts cannot express.

Online form, bounded for a catalog of any size:

1. **Head.** Only the ``head`` most active images get a slot (a row and a column of ``G``); an image
   outside it is scored 0. While slots are free an image takes one at its first interaction; once the
   head is full, images waiting outside with at least ``min_count`` interactions since the last refit,
   and more than the weakest head images have in total (decayed ``G_ii``), replace them at the refit.
2. **Counts.** Every interaction (any action: a skip shows what the user was shown and chose to judge)
   of a user with head image ``x`` adds 1 to ``G_xx`` and to ``G_xh``, ``G_hx`` for every head image
   ``h`` in the user's history (``UserState.seen``, the last ``history`` interactions).
3. **Refit.** Every ``refit_every`` interactions, ``G`` is decayed by ``2^(-Δt / half_life)`` (event time)
   and ``B`` is recomputed from the occupied slots (one ``O(head³)`` solve, in float64: ~0.1 s at 1,024,
   ~0.5–1 s at 2,048 on one core). Inline (the default) it is deterministic: no randomness, no wall-clock
   time, the same sequence of calls gives the same ``B``. With ``background=True`` (the worker's default
   mode) the solve runs on a thread of its own on a snapshot of ``G`` and the new ``B`` is installed by
   the first call after it finished, so the event loop never waits for it; which events are scored with
   the old ``B`` then depends on timing (not used in replayable mode). Slots that changed while a solve
   was running (an image deleted, a new one admitted) get no weights from it.
4. **Score.** For a user with history ``s_1 … s_m`` (oldest first) the score of image ``x`` is
   ``Σ_j w_j B[s_j, x]`` with ``w_j = floor + recency^(m - j)``: the whole history counts, the latest
   interactions most.

Memory: at most ``2 · head²`` float32 (G and B: 8 MB at the default 1,024, 32 MB at 2,048), growing with the number of
images admitted.

>>> lin = ItemLinear(head=8, lam=1.0, refit_every=6, min_count=1)
>>> for user in ("u1", "u2", "u3"):
...     hist = []
...     for item in ("a", "b", "c") if user != "u3" else ("a", "b"):
...         lin.learn(hist, item, ts=0)
...         hist.append(item)
>>> lin.refits
1
>>> s = lin.scores(["a", "b"], ["c", "unknown"])  # c went with a and b; an unknown image scores 0
>>> bool(s[0] > 0), float(s[1])
(True, 0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson

from .errors import StateError
from .registry import ItemRegistry, grow

_FORMAT = 1
_DAY_MS = 24 * 3600 * 1000.0


class ItemLinear:
    def __init__(
        self,
        head: int = 1024,
        *,
        lam: float = 200.0,
        refit_every: int = 2000,
        min_count: int = 2,
        half_life_ms: float = 60 * _DAY_MS,
        history: int = 500,
        recency: float = 0.9,
        floor: float = 0.5,
        background: bool = False,
        registry: ItemRegistry | None = None,
    ) -> None:
        if head < 2 or lam <= 0 or refit_every < 1 or min_count < 1 or half_life_ms <= 0 or history < 1:
            raise ValueError("head >= 2; lam, refit_every, min_count, half_life_ms, history must be positive")
        if not (0 < recency <= 1 and floor >= 0):
            raise ValueError("recency must be in (0, 1], floor >= 0")
        self.head = head
        self.lam = float(lam)
        self.refit_every = refit_every
        self.min_count = min_count
        self.half_life_ms = float(half_life_ms)
        self.history = history
        self.recency = recency
        self.floor = floor
        self.background = background
        self._future = None  # background mode: the solve in flight (occupied slots, Future of B)
        self._changed: set[int] = set()  # slots admitted/evicted while it runs
        self.registry = registry if registry is not None else ItemRegistry()
        self._slot = np.full(64, -1, dtype=np.int32)  # registry id -> slot, -1 = not in the head
        self._item = np.full(head, -1, dtype=np.int64)  # slot -> registry id, -1 = free
        self._free: list[int] = list(range(head - 1, -1, -1))  # a stack: the lowest free slot is taken first
        # G grows with the head's occupancy (slots are taken lowest first), up to head x head; B has the
        # size G had at its last refit, and slots beyond it are not covered until the next.
        self._g = np.zeros((min(head, 64),) * 2, dtype=np.float32)
        self._b: np.ndarray | None = None
        self._waiting: dict[int, int] = {}  # registry id -> interactions since the last refit (not in the head)
        self._since = 0
        self._last_ts: int | None = None  # event time of the last decay
        self._now = 0
        self.refits = 0
        self.shifted_refits = 0  # refits whose counts were not positive definite (see _solve)

    def attach(self, registry: ItemRegistry) -> None:
        """Use ``registry``'s ids (the core's, shared with the ranker's other components); only while empty."""
        if registry is self.registry:
            return
        if len(self) or self._waiting or self.refits:
            raise ValueError("attach a registry before anything is learned")
        self.registry = registry
        self._slot = np.full(64, -1, dtype=np.int32)

    # ------------------------------------------------------------------ slots
    def _id(self, image_id: str) -> int:
        """The registry id of ``image_id`` (added if new), with room for it in the id -> slot array."""
        i = self.registry.add(image_id)
        if i >= self._slot.shape[0]:
            self._slot = grow(self._slot, i + 1, fill=-1)
        return i

    def _slots(self, ids: Sequence[str]) -> np.ndarray:
        """Slot of each of ``ids``, -1 for ids unknown or outside the head."""
        idx = self.registry.lookup(list(ids))
        return self._slots_idx(idx)

    def _slots_idx(self, idx: np.ndarray) -> np.ndarray:
        ok = (idx >= 0) & (idx < self._slot.shape[0])
        s = np.full(idx.shape[0], -1, dtype=np.int32)
        s[ok] = self._slot[idx[ok]]
        return s

    def _admit(self, i: int) -> int:
        slot = self._free.pop()
        cap = self._g.shape[0]
        if slot >= cap:
            self._g = _grown(self._g, min(self.head, max(2 * cap, slot + 1)))
        self._slot[i] = slot
        self._item[slot] = i
        self._waiting.pop(i, None)
        if self._future is not None:
            self._changed.add(slot)
        return slot

    def _evict(self, slot: int) -> None:
        self._slot[self._item[slot]] = -1
        self._item[slot] = -1
        self._g[slot, :] = 0.0
        self._g[:, slot] = 0.0
        if self._b is not None and slot < self._b.shape[0]:
            self._b[slot, :] = 0.0
            self._b[:, slot] = 0.0
        self._free.append(slot)
        if self._future is not None:
            self._changed.add(slot)

    def __len__(self) -> int:
        """Images in the head."""
        return self.head - len(self._free)

    def __contains__(self, image_id: str) -> bool:
        return bool(self._slots([image_id])[0] >= 0)

    # ------------------------------------------------------------------ learning
    def learn(self, history: Sequence[str], image_id: str, ts: int) -> None:
        """Count one interaction with ``image_id`` by a user whose earlier interactions are ``history``
        (oldest first; the user's ``seen``)."""
        ts = int(ts)
        self._poll()
        self._now = max(self._now, ts)
        if self._last_ts is None:
            self._last_ts = ts
        i = self._id(image_id)
        x = int(self._slot[i])
        if x < 0:
            if self._free:
                x = self._admit(i)
            else:
                self._waiting[i] = self._waiting.get(i, 0) + 1
        if x >= 0:
            h = self._slots(history[-self.history:])
            h = np.unique(h[(h >= 0) & (h != x)])
            self._g[x, x] += 1.0
            if h.size:
                self._g[x, h] += 1.0
                self._g[h, x] += 1.0
        self._since += 1
        if self._since >= self.refit_every and self._future is None:
            self.refit()

    def refit(self) -> None:
        """Decay, rotate the head (waiting images replace weaker ones), recompute ``B`` (steps 1 and 3);
        in background mode the solve is started on the refit thread and installed by :meth:`_poll`."""
        if self._future is not None:
            self._wait()
        self._since = 0
        if self._last_ts is not None and self._now > self._last_ts:
            f = np.float32(2.0 ** (-(self._now - self._last_ts) / self.half_life_ms))
            self._g *= f
        self._last_ts = self._now
        self._rotate()
        self._waiting.clear()
        occ = np.flatnonzero(self._item >= 0)
        a = self._g[np.ix_(occ, occ)].astype(np.float64)  # a copy: G keeps counting meanwhile
        if self.background:
            self._changed = set()
            self._future = (occ, _executor().submit(_solve, a, self.lam))
        else:
            self._install(occ, *_solve(a, self.lam))

    def _install(self, occ: np.ndarray, bb: np.ndarray, shifted: bool) -> None:
        self.shifted_refits += int(shifted)
        b = np.zeros(self._g.shape, dtype=np.float32)
        if occ.size:
            b[np.ix_(occ, occ)] = bb
        if self._changed:
            ch = np.fromiter(self._changed, dtype=np.int64)
            b[ch, :] = 0.0
            b[:, ch] = 0.0
            self._changed = set()
        self._b = b
        self.refits += 1

    def _poll(self) -> None:
        """Background mode: install a finished solve."""
        if self._future is not None and self._future[1].done():
            self._wait()

    def _wait(self) -> None:
        occ, fut = self._future
        bb, shifted = fut.result()
        self._future = None
        self._install(occ, bb, shifted)

    def _rotate(self) -> None:
        if not self._waiting:
            return
        # Waiting images by interactions since the last refit (ties: smaller registry id), strongest first.
        waiting = sorted(((n, i) for i, n in self._waiting.items() if n >= self.min_count), key=lambda t: (-t[0], t[1]))
        for n, i in waiting:
            if not self._free:
                mass = np.diag(self._g)
                weakest = int(np.argmin(mass))
                if mass[weakest] >= n:
                    break  # every later one is weaker still
                self._evict(weakest)
            # Its interactions so far count as its mass (pairs are counted from now on): a newcomer is not
            # the "weakest" that the next waiting image displaces.
            self._g[(slot := self._admit(i)), slot] = float(n)

    def forget(self, image_id: str) -> None:
        """Drop a deleted image from the head (and from the waiting list)."""
        i = self.registry.get(image_id)
        if i is None:
            return
        self._waiting.pop(i, None)
        if i < self._slot.shape[0] and self._slot[i] >= 0:
            self._evict(int(self._slot[i]))

    # ------------------------------------------------------------------ scoring
    def user_weights(self, history: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(slots, weights) of the user's history that is in the head (step 4)."""
        self._poll()
        hist = list(history[-self.history:])
        m = len(hist)
        s = self._slots(hist)
        w = self.floor + self.recency ** np.arange(m - 1, -1, -1, dtype=np.float64)
        keep = s >= 0
        return s[keep], w[keep].astype(np.float32)

    def scores_idx(self, history: Sequence[str], idx: np.ndarray, weights=None) -> np.ndarray:
        """Scores of registry ids ``idx`` for a user with ``history`` (0 outside the head or before the
        first refit). ``weights``: the result of :meth:`user_weights`, if already computed."""
        out = np.zeros(idx.shape[0], dtype=np.float32)
        if self._b is None or idx.shape[0] == 0:
            return out
        s, w = weights if weights is not None else self.user_weights(history)
        nb = self._b.shape[0]
        s, w = s[s < nb], w[s < nb]
        if s.size == 0:
            return out
        c = self._slots_idx(np.asarray(idx, dtype=np.int64))
        ok = (c >= 0) & (c < nb)
        if ok.any():
            out[ok] = w @ self._b[np.ix_(s, c[ok])]
        return out

    def scores(self, history: Sequence[str], image_ids: Sequence[str]) -> np.ndarray:
        return self.scores_idx(history, self.registry.lookup(list(image_ids)))

    def top_idx(self, history: Sequence[str], n: int, exclude: np.ndarray, weights=None) -> np.ndarray:
        """Registry ids of the ``n`` best-scoring head images (score > 0) for the user, best first (ties:
        smaller slot), not in ``exclude`` (registry ids)."""
        if self._b is None or n <= 0:
            return np.zeros(0, dtype=np.int64)
        s, w = weights if weights is not None else self.user_weights(history)
        nb = self._b.shape[0]
        s, w = s[s < nb], w[s < nb]
        if s.size == 0:
            return np.zeros(0, dtype=np.int64)
        sc = w @ self._b[s]
        sc[self._item[:nb] < 0] = -np.inf
        ex = self._slots_idx(np.asarray(exclude, dtype=np.int64))
        sc[ex[(ex >= 0) & (ex < nb)]] = -np.inf
        sc[s] = -np.inf
        n = min(n, sc.shape[0])
        part = np.argpartition(-sc, n - 1)[:n]
        part = part[sc[part] > 0]
        order = part[np.lexsort((part, -sc[part]))]
        return self._item[order].astype(np.int64)

    # ------------------------------------------------------------------ persistence
    def __deepcopy__(self, memo):
        """Copies (shards) never share a solve in flight: it is finished and installed first."""
        import copy

        if self._future is not None:
            self._wait()
        new = object.__new__(ItemLinear)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            setattr(new, k, copy.deepcopy(v, memo))
        return new

    def to_bytes(self) -> bytes:
        """The state, with a solve in flight (background mode) finished and installed first."""
        import base64

        if self._future is not None:
            self._wait()

        def enc(a: np.ndarray) -> str:
            return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()

        occ = np.flatnonzero(self._item >= 0)
        nb = 0 if self._b is None else self._b.shape[0]
        return orjson.dumps({
            "f": _FORMAT,
            "cfg": [self.head, self.lam, self.refit_every, self.min_count, self.half_life_ms, self.history,
                    self.recency, self.floor, self.background],
            "items": [self.registry.names[int(i)] for i in self._item[occ]], "slots": occ.tolist(),
            "free": self._free,
            "g": enc(self._g[np.ix_(occ, occ)].astype("<f4")),
            "b": None if self._b is None else enc(self._b[np.ix_(occ[occ < nb], occ[occ < nb])].astype("<f4")),
            "nb": None if self._b is None else int(self._b.shape[0]),
            "waiting": [[self.registry.names[i], n] for i, n in self._waiting.items()],
            "since": self._since, "last_ts": self._last_ts, "now": self._now, "refits": self.refits,
            "shifted": self.shifted_refits,
        })

    @classmethod
    def from_bytes(cls, raw: bytes, registry: ItemRegistry | None = None) -> ItemLinear:
        import base64

        try:
            d = orjson.loads(raw)
            if d.get("f") != _FORMAT:
                raise StateError(f"unknown item-linear format {d.get('f')!r}")
            head, lam, every, mc, hl, hist, rec, floor, bg = d["cfg"]
            self = cls(int(head), lam=lam, refit_every=int(every), min_count=int(mc), half_life_ms=hl,
                       history=int(hist), recency=rec, floor=floor, background=bool(bg), registry=registry)
            slots = np.asarray(d["slots"], dtype=np.int64)
            for name, slot in zip(d["items"], slots.tolist(), strict=True):
                i = self._id(name)
                self._slot[i] = slot
                self._item[slot] = i
            self._free = [int(x) for x in d["free"]]
            k = slots.shape[0]
            self._g = _grown(self._g, min(self.head, max(self._g.shape[0], int(slots.max(initial=-1)) + 1)))
            self._g[np.ix_(slots, slots)] = np.frombuffer(base64.b64decode(d["g"]), dtype="<f4").reshape(k, k)
            if d["b"] is not None:
                nb = int(d["nb"])
                self._b = np.zeros((nb, nb), dtype=np.float32)
                sb = slots[slots < nb]
                self._b[np.ix_(sb, sb)] = np.frombuffer(base64.b64decode(d["b"]), dtype="<f4").reshape(sb.size, sb.size)
            self._waiting = {self._id(name): int(n) for name, n in d["waiting"]}
            self._since, self._last_ts, self._now, self.refits = (int(d["since"]), d["last_ts"], int(d["now"]),
                                                                  int(d["refits"]))
            self.shifted_refits = int(d["shifted"])
            if len(self._free) + k != self.head:
                raise StateError("item-linear state: slots and free list do not add up")
            return self
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode item-linear state: {exc}") from exc


def _solve(a: np.ndarray, lam: float) -> tuple[np.ndarray, bool]:
    """EASE's closed form for the Gram block ``a`` (float64, modified in place): B = -P / diag(P), diag 0;
    and whether the diagonal had to be shifted."""
    if a.shape[0] == 0:
        return np.zeros((0, 0), dtype=np.float32), False
    a[np.diag_indices_from(a)] += lam
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        # Not positive definite. The counts are a true Gram matrix XᵀX (positive semi-definite) only when
        # every pair is counted (a history cut at ``history``, images admitted to the head late, repeated
        # interactions and decay make it approximate), so shift the diagonal until every row is dominated
        # by it (Gershgorin: then positive definite, and the solve is stable).
        off = np.abs(a).sum(axis=1) - np.abs(np.diag(a))
        a[np.diag_indices_from(a)] += np.maximum(0.0, off - np.diag(a)).max() + lam
        shifted = True
    else:
        shifted = False
    p = np.linalg.inv(a)
    bb = -p / np.diag(p)[None, :]
    np.fill_diagonal(bb, 0.0)
    return bb.astype(np.float32), shifted


_EXECUTOR = None


def _executor():
    """One thread for every background refit of the process (LAPACK releases the GIL while it solves)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        _EXECUTOR = ThreadPoolExecutor(max_workers=1, thread_name_prefix="item-linear-refit")
    return _EXECUTOR


def _grown(g: np.ndarray, n: int) -> np.ndarray:
    """The square matrix ``g`` zero-padded to ``n`` x ``n``."""
    if g.shape[0] >= n:
        return g
    out = np.zeros((n, n), dtype=g.dtype)
    out[: g.shape[0], : g.shape[0]] = g
    return out
