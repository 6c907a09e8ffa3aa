"""Collaborative item embeddings learned online from the behaviour stream (shared across users).

Each image gets a small vector ``e_x`` (``dim``, default 32) the first time it is involved in a positive
event. A user is represented *without any per-user parameters*, from their state alone, as the
recency-weighted mean of the embeddings of their recent positives::

    u = Σ_j γ^(m-j) e_{r_j} / Σ_j γ^(m-j)          (r_1 … r_m: UserState.recent, most recent last)

and the affinity of user and image is ``u · e_x``. For every engagement the embeddings take one SGD
step on the sampled-softmax loss of the chosen image against negatives (images drawn uniformly from
those with an embedding), which moves the chosen image and the user's recent images towards each other
and the negatives away: an online "bag of recent items → next item" model. A bounded replay ring of
recent (history, image) pairs gives every observation a few more steps; weight decay and the bounded
ring let old structure fade, so it follows drift.

It is a pure NumPy model (one tiny matrix product per update, no autograd needed); everything is
deterministic given ``seed`` and the order of updates.

>>> emb = ItemEmbeddings(dim=4, lr=0.5, negatives=2, replay=0, seed=1)
>>> for _ in range(200):
...     _ = emb.learn(["a"], "b", ["c", "d"])
...     _ = emb.learn(["c"], "d", ["a", "b"])
>>> u = emb.user_vector(["a"])
>>> bool(emb.affinity(u, ["b"])[0] > emb.affinity(u, ["d"])[0])
True
"""


from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

import numpy as np
import orjson

from .errors import InvalidInput, StateError
from .registry import ItemRegistry, grow
from .serial import rng_state, set_rng_state

_FORMAT = 1


class ItemEmbeddings:
    def __init__(
        self,
        dim: int = 64,
        *,
        lr: float = 0.06,
        weight_decay: float = 1e-4,
        gamma: float = 0.8,
        init_scale: float = 1.0,
        negatives: int = 32,
        replay: int = 4,
        replay_size: int = 5000,
        history: int = 30,
        seed: int = 0,
        registry: ItemRegistry | None = None,
    ) -> None:
        if dim < 1 or lr <= 0 or weight_decay < 0 or not 0 < gamma <= 1 or init_scale <= 0:
            raise ValueError("dim, lr, init_scale must be positive, weight_decay >= 0, gamma in (0, 1]")
        if negatives < 1 or replay < 0 or replay_size < 1 or history < 1:
            raise ValueError("negatives, replay_size, history must be positive, replay >= 0")
        self.dim = dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.gamma = gamma
        self.init_scale = init_scale
        self.negatives = negatives
        self.replay = replay
        self.replay_size = replay_size
        self.history = history
        self.seed = seed
        self.registry = registry if registry is not None else ItemRegistry()
        self._rng = np.random.default_rng(seed)
        self._e = np.zeros((64, dim), dtype=np.float32)  # rows by registry id
        self._has = np.zeros(64, dtype=bool)
        self._members: list[int] = []  # registry ids with an embedding, in order of arrival
        self._dirty: list[np.ndarray] = []  # registry ids whose rows changed since _transposed() last ran
        self._replay: list[tuple[tuple[int, ...], int]] = []
        self._replay_pos = 0
        self.updates = 0

    # ------------------------------------------------------------------ ids
    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, image_id: object) -> bool:
        i = self.registry.get(image_id)  # type: ignore[arg-type]
        return i is not None and i < self._has.shape[0] and bool(self._has[i])

    def _id(self, image_id: str) -> int:
        i = self.registry.add(image_id)
        if i >= self._has.shape[0]:
            self._e = grow(self._e, i + 1)
            self._has = grow(self._has, i + 1)
        if not self._has[i]:
            self._has[i] = True
            self._members.append(i)
            self._e[i] = (self.init_scale * self._rng.normal(size=self.dim) / np.sqrt(self.dim)).astype(np.float32)
        return i

    def _known(self, idx: np.ndarray) -> np.ndarray:
        ok = (idx >= 0) & (idx < self._has.shape[0])
        ok[ok] = self._has[idx[ok]]
        return ok

    def add(self, image_id: str) -> None:
        """Give an image an embedding (random, small) if it has none yet."""
        self._id(image_id)

    def forget(self, image_id: str) -> None:
        """A deleted image: its vector is zeroed (it keeps its slot; it can be learned anew)."""
        i = self.registry.get(image_id)
        if i is not None and i < self._has.shape[0]:
            self._e[i] = 0.0
            self._dirty.append(np.array([i], dtype=np.int64))

    # ------------------------------------------------------------------ queries
    def _rows(self, recent: Iterable[str]) -> np.ndarray:
        idx = self.registry.lookup(list(recent))
        return idx[self._known(idx)]

    def _weights(self, rows: np.ndarray, gamma: float | None = None) -> np.ndarray:
        g = self.gamma if gamma is None else gamma
        key = (rows.shape[0], g)
        cache = self.__dict__.setdefault("_wcache", {})
        w = cache.get(key)
        if w is None:
            w = g ** np.arange(rows.shape[0] - 1, -1, -1, dtype=np.float64)
            w = cache[key] = (w / w.sum()).astype(np.float32)
            w.flags.writeable = False
        return w

    def user_vector(self, recent: Sequence[str], gamma: float | None = None) -> np.ndarray:
        """Recency-weighted mean embedding of ``recent`` (oldest first; ``gamma`` overrides the decay)."""
        rows = self._rows(recent[-self.history:])
        if rows.size == 0:
            return np.zeros(self.dim, dtype=np.float32)
        return self._weights(rows, gamma) @ self._e[rows]

    def user_vectors(self, recent: Sequence[str], gammas: Sequence[float | None]) -> list[np.ndarray]:
        """:meth:`user_vector` for several decays at once (the rows are looked up once)."""
        rows = self._rows(recent[-self.history:])
        if rows.size == 0:
            return [np.zeros(self.dim, dtype=np.float32) for _ in gammas]
        e = self._e[rows]
        return [self._weights(rows, g) @ e for g in gammas]

    def affinity(self, user_vec: np.ndarray, image_ids: Sequence[str]) -> np.ndarray:
        """``u · e_x`` for each image (0 for images without an embedding)."""
        return self.affinity_idx(user_vec, self.registry.lookup(image_ids))

    def affinity_idx(self, user_vec: np.ndarray, idx: np.ndarray) -> np.ndarray:
        ok = self._known(idx)
        out = np.zeros(idx.shape[0], dtype=np.float32)
        out[ok] = self._e[idx[ok]] @ np.asarray(user_vec, dtype=np.float32)
        return out

    def max_affinity(self, recent: Sequence[str], image_ids: Sequence[str]) -> np.ndarray:
        """``max_r e_r · e_x`` over ``recent`` for each image (0 where either side has no embedding)."""
        return self.max_affinity_idx(self._rows(recent), self.registry.lookup(image_ids))

    def max_affinity_idx(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        ok = self._known(idx)
        out = np.zeros(idx.shape[0], dtype=np.float32)
        if rows.size and ok.any():
            out[ok] = (self._e[idx[ok]] @ self._e[rows].T).max(axis=1)
        return out

    def top(self, user_vec: np.ndarray, n: int, exclude: Iterable[str] = ()) -> list[tuple[str, float]]:
        """Brute-force top ``n`` images by affinity (one matrix-vector product over all embeddings)."""
        m = len(self._members)
        if m == 0 or n <= 0 or not np.any(user_vec):
            return []
        members = self._members_array()
        s = self._e[members] @ np.asarray(user_vec, dtype=np.float32)
        ex = self.registry.lookup(list(exclude))
        if ex.size:
            s[np.isin(members, ex)] = -np.inf
        take = min(m, n)
        part = np.argpartition(-s, take - 1)[:take] if take < m else np.arange(m)
        part = part[np.isfinite(s[part])]
        names = self.registry.names
        return sorted(((names[int(members[j])], float(s[j])) for j in part), key=lambda kv: (-kv[1], kv[0]))

    def top_idx_batch(self, user_vecs: np.ndarray, n: int, excludes: Sequence[np.ndarray],
                      chunk: int = 64) -> list[np.ndarray]:
        """:meth:`top` for many users at once, as registry ids in the same order (affinity desc, then id):
        one matrix product per ``chunk`` users over all embeddings. ``excludes``: registry ids per user;
        an all-zero user vector gets nothing (as in :meth:`top`)."""
        m = len(self._members)
        out = [np.zeros(0, dtype=np.int64) for _ in range(user_vecs.shape[0])]
        if m == 0 or n <= 0:
            return out
        members = self._members_array()
        pos, emb_t = self._transposed()
        names = self.registry.names
        take = min(m, n)
        uv = np.asarray(user_vecs, dtype=np.float32)
        for lo in range(0, uv.shape[0], chunk):
            s = uv[lo:lo + chunk] @ emb_t  # (users, members)
            for r in range(s.shape[0]):
                ex = excludes[lo + r]
                if ex.size:
                    p = pos[ex[(ex >= 0) & (ex < pos.shape[0])]]
                    s[r, p[p >= 0]] = -np.inf
            part = np.argpartition(-s, take - 1, axis=1)[:, :take] if take < m else None
            for r in range(s.shape[0]):
                if not np.any(uv[lo + r]):
                    continue
                row = s[r]
                cand = part[r] if part is not None else np.arange(m)
                cand = cand[np.isfinite(row[cand])]
                order = sorted(cand.tolist(), key=lambda j: (-float(row[j]), names[int(members[j])]))
                out[lo + r] = members[np.asarray(order, dtype=np.int64)]
        return out

    # ------------------------------------------------------------------ learning
    def learn(self, recent: Sequence[str], image_id: str, negatives: Sequence[str] = ()) -> float:
        """Learn one engagement with ``image_id`` after ``recent`` (oldest first); returns the loss before it.

        One SGD step against ``negatives`` plus ``self.negatives`` images drawn uniformly, then
        ``replay`` steps on earlier (recent, image) pairs drawn from a bounded replay ring, each with
        fresh uniform negatives (every observation is used several times, only the recent past is kept).
        """
        x = self._id(image_id)
        hist = tuple(self._id(r) for r in recent[-self.history:] if r != image_id)
        negs = [self._id(n) for n in negatives if n != image_id]
        loss = self._step(hist, x, negs + self._sample(self.negatives, x))
        if not hist:
            return loss
        if self.replay:
            for _ in range(min(self.replay, len(self._replay))):
                rr, xx = self._replay[int(self._rng.integers(len(self._replay)))]
                self._step(rr, xx, self._sample(self.negatives, xx))
            if len(self._replay) < self.replay_size:
                self._replay.append((hist, x))
            else:
                self._replay[self._replay_pos] = (hist, x)
                self._replay_pos = (self._replay_pos + 1) % self.replay_size
        return loss

    def _transposed(self) -> tuple[np.ndarray, np.ndarray]:
        """(position of each registry id among the members or -1, the members' embeddings transposed
        (dim, members)), kept in step incrementally: new members are appended and rows changed since the
        last call (``_dirty``: SGD steps, forget) are copied again. Rebuilding both from scratch on every
        call was an O(catalog) gather + transpose (12.8 MB at 100k images) per recommend call, which made
        small result slices expensive. Values are copies of ``_e``: results are unchanged."""
        members = self._members_array()
        m = members.shape[0]
        et, n = getattr(self, "_et", None), getattr(self, "_et_n", 0)
        if et is None or getattr(self, "_et_list", None) is not self._members or n > m:
            et = np.empty((self.dim, max(m, 64)), dtype=np.float32)
            et[:, :m] = self._e[members].T
            pos = np.full(max(self._has.shape[0], 1), -1, dtype=np.int64)
            pos[members] = np.arange(m)
            self._et_list, n = self._members, m
            self._dirty = []
        else:
            pos = self._pos
            if pos.shape[0] < self._has.shape[0]:
                pos = np.concatenate([pos, np.full(self._has.shape[0] - pos.shape[0], -1, dtype=np.int64)])
            if n < m:
                if et.shape[1] < m:
                    grown = np.empty((self.dim, max(2 * et.shape[1], m)), dtype=np.float32)
                    grown[:, :n] = et[:, :n]
                    et = grown
                new = members[n:m]
                et[:, n:m] = self._e[new].T
                pos[new] = np.arange(n, m)
            if self._dirty:
                ids = np.unique(np.concatenate(self._dirty))
                p = pos[ids]
                keep = (p >= 0) & (p < n)  # members appended just now were copied whole above
                et[:, p[keep]] = self._e[ids[keep]].T
                self._dirty = []
        self._et, self._et_n, self._pos = et, m, pos
        return pos, et[:, :m]

    def _members_array(self) -> np.ndarray:
        """``_members`` as an array view. Members are only ever appended (or the list is replaced on
        restore), so the array grows in place with amortised doubling: O(new members) per call, not
        O(all members) (the full conversion was 11 % of a worker's model time while the catalog grew)."""
        m = len(self._members)
        buf, n = getattr(self, "_mbuf", None), getattr(self, "_mn", 0)
        if buf is None or getattr(self, "_mlist", None) is not self._members or n > m:
            buf, n, self._mlist = np.asarray(self._members, dtype=np.int64), m, self._members
        elif n < m:
            if buf.shape[0] < m:
                grown = np.empty(max(2 * buf.shape[0], m, 1024), dtype=np.int64)
                grown[:n] = buf[:n]
                buf = grown
            buf[n:m] = self._members[n:m]
            n = m
        self._mbuf, self._mn = buf, n
        return buf[:m]

    def _sample(self, n: int, avoid: int) -> list[int]:
        m = len(self._members)
        if m == 0:
            return []
        picks = self._rng.integers(0, m, size=n)
        js = self._members_array()[picks]
        return js[js != avoid].tolist()

    def _step(self, hist: tuple[int, ...], x: int, negatives: list[int]) -> float:
        if not hist:
            return 0.0
        rows = np.asarray(hist, dtype=np.int64)
        neg = np.asarray(negatives, dtype=np.int64)
        neg = neg[neg != x]
        _, first = np.unique(neg, return_index=True)  # distinct, in order of first appearance
        first.sort()
        c = np.concatenate(([x], neg[first]))
        if c.shape[0] < 2:
            return 0.0
        w = self._weights(rows)
        e = self._e
        u = w @ e[rows]
        ec = e[c]
        logits = ec @ u
        logits -= logits.max()
        p = np.exp(logits)
        p /= p.sum()
        loss = float(-np.log(max(p[0], 1e-12)))
        p[0] -= 1.0  # dL/dlogit
        grad_u = p @ ec
        grad_c = p[:, None] * u[None, :]
        if not (np.all(np.isfinite(grad_u)) and np.all(np.isfinite(grad_c))):
            raise InvalidInput("non-finite embedding gradient", reason="non_finite")
        lr, wd = self.lr, self.weight_decay
        e[c] = ec - lr * (grad_c + wd * ec)  # ``c`` has no duplicates
        er = e[rows]
        e[rows] = er - lr * (w[:, None] * grad_u[None, :] + wd * er)  # ``rows`` has none either
        self._dirty += (c, rows)  # for the transposed copy used by top_idx_batch
        if len(self._dirty) > 50_000:  # learning without queries (a replay): drop the copy, rebuilt on demand
            self._et, self._dirty = None, []
        self.updates += 1
        return loss

    def sample(self, n: int, exclude: Iterable[str] = ()) -> list[str]:
        """Up to ``n`` distinct images with an embedding, uniformly at random, not in ``exclude``."""
        ex = set(exclude)
        names = self.registry.names
        out = list(dict.fromkeys(names[j] for j in self._sample(2 * n + 4, -1)))
        return [i for i in out if i not in ex][:n]

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        names = self.registry.names
        members = self._members
        return orjson.dumps({
            "f": _FORMAT, "cfg": [self.dim, self.lr, self.weight_decay, self.gamma, self.init_scale, self.seed,
                                  self.negatives, self.replay, self.replay_size, self.history],
            "names": [names[i] for i in members],
            "e": base64.b64encode(self._e[members].astype("<f4").tobytes()).decode(),
            "updates": self.updates, "rng": rng_state(self._rng),
            "replay": [[[names[i] for i in r], names[x]] for r, x in self._replay], "replay_pos": self._replay_pos,
        })

    @classmethod
    def from_bytes(cls, raw: bytes, registry: ItemRegistry | None = None) -> ItemEmbeddings:
        """Restore; with ``registry`` the saved ids are re-mapped into that (shared) registry."""
        try:
            d = orjson.loads(raw)
            if d.get("f") != _FORMAT:
                raise StateError(f"unknown embeddings format {d.get('f')!r}")
            dim, lr, wd, gamma, init_scale, seed, neg, rp, rps, hist = d["cfg"]
            self = cls(int(dim), lr=lr, weight_decay=wd, gamma=gamma, init_scale=init_scale, seed=int(seed),
                       negatives=int(neg), replay=int(rp), replay_size=int(rps), history=int(hist),
                       registry=registry)
            reg = self.registry
            members = [reg.add(str(x)) for x in d["names"]]
            self._e = grow(self._e, len(reg))
            self._has = grow(self._has, len(reg))
            mat = np.frombuffer(base64.b64decode(d["e"]), dtype="<f4").reshape(len(members), self.dim)
            if members:
                self._e[members] = mat
                self._has[members] = True
            self._members = members
            self.updates = int(d["updates"])
            set_rng_state(self._rng, d["rng"])
            self._replay = [(tuple(reg.add(str(i)) for i in r), reg.add(str(x))) for r, x in d["replay"]]
            self._replay_pos = int(d["replay_pos"])
            return self
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"cannot decode embeddings state: {exc}") from exc
