"""Top-K ranking: batched candidate retrieval from the index, seen/hidden filtering, cold-start fallback.

For a batch of users the ranker issues **one** FAISS search holding every interest vector of every warm
user, then scores each candidate ``x`` for user ``u`` as::

    content(u, x) = max_j  cos(I_j, x) · (0.5 + 0.5 · w_j / max(w))      # strongest matching taste
    score(u, x)   = content − λ_neg · cos(n̂_u, x) · conf(n_u) + λ_pop · trending(x)

and fills the remaining slots (or every slot for a cold user) alternately from trending and fresh
images. Images the user has seen or hidden, and images not in the index (deleted), are never returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .index import ImageIndex
from .popularity import Popularity
from .state import UserState


@dataclass(frozen=True)
class RecItem:
    image_id: str
    score: float
    source: str  # "content" | "trending" | "fresh"

    def to_dict(self) -> dict:
        return {"image_id": self.image_id, "score": round(self.score, 6), "source": self.source}


@dataclass
class Ranker:
    k: int = 20
    negative_weight: float = 0.3
    popularity_weight: float = 0.05
    overfetch: int = 2
    max_exclude_overfetch: int = 500
    fresh_pool: int = 200

    def _query_matrix(self, states: list[UserState]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        rows, spans = [], []
        start = 0
        for st in states:
            m = st.interests.shape[0]
            rows.append(st.interests)
            spans.append((start, start + m))
            start += m
        dim = states[0].dim if states else 0
        mat = np.vstack(rows).astype(np.float32) if start else np.zeros((0, dim), dtype=np.float32)
        return mat, spans

    def recommend(
        self, states: list[UserState], index: ImageIndex, popularity: Popularity, k: int | None = None,
    ) -> list[list[RecItem]]:
        """Top-``k`` items for each state, in the same order as ``states``."""
        k = self.k if k is None else k
        if not states:
            return []
        queries, spans = self._query_matrix(states)
        max_excl = max((len(s.seen) + len(s.hidden) for s in states), default=0)
        k_search = k * self.overfetch + min(max_excl, self.max_exclude_overfetch)
        hits = index.search(queries, k_search) if queries.shape[0] else []
        trending = popularity.top(k + max_excl)
        fresh = index.newest(self.fresh_pool)
        out = []
        for st, (lo, hi) in zip(states, spans, strict=True):
            out.append(self._rank_one(st, hits[lo:hi], index, popularity, trending, fresh, k))
        return out

    def _rank_one(self, st, hits, index, popularity, trending, fresh, k) -> list[RecItem]:
        excluded = st.excluded()
        scored: dict[str, float] = {}
        if hits:
            w = st.weights
            wn = 0.5 + 0.5 * (w / float(w.max())) if w.size and float(w.max()) > 0 else np.ones_like(w)
            neg_norm = float(np.linalg.norm(st.negative))
            conf = neg_norm / (neg_norm + 1.0)
            neg_dir = st.negative / neg_norm if neg_norm > 0 else None
            cand_ids = {iid for row in hits for iid, _ in row if iid not in excluded}
            best: dict[str, float] = {}
            for j, row in enumerate(hits):
                for iid, sim in row:
                    if iid in cand_ids:
                        s = sim * float(wn[j])
                        if s > best.get(iid, -np.inf):
                            best[iid] = s
            if best and neg_dir is not None:
                ids = list(best)
                vecs = index.vectors(ids)
                for iid in ids:
                    best[iid] -= self.negative_weight * conf * float(vecs[iid] @ neg_dir)
            for iid, s in best.items():
                scored[iid] = s + self.popularity_weight * popularity.score(iid)
        ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        items = [RecItem(i, s, "content") for i, s in ranked]
        if len(items) < k:
            items += self._fallback(excluded | {i.image_id for i in items}, index, trending, fresh, k - len(items))
        return items

    @staticmethod
    def _fallback(excluded, index, trending, fresh, n) -> list[RecItem]:
        """Alternate trending and fresh images (skipping excluded/deleted ones) until ``n`` are found."""
        out: list[RecItem] = []
        taken = set(excluded)
        t_iter = ((i, s, "trending") for i, s in trending)
        newest_ts = fresh[0][1] if fresh else 0
        f_iter = ((i, 1.0 / (1.0 + max(0, newest_ts - ts) / 3.6e6), "fresh") for i, ts in fresh)
        sources = [t_iter, f_iter]
        while len(out) < n and sources:
            for src in list(sources):
                for iid, s, name in src:
                    if iid not in taken and iid in index:
                        taken.add(iid)
                        out.append(RecItem(iid, float(s), name))
                        break
                else:
                    sources.remove(src)
                if len(out) >= n:
                    break
        return out
