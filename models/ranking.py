"""Top-K ranking: multi-source candidates, candidate features, a learned scoring function.

For a batch of users :meth:`Ranker.score_batch` gathers candidates from five sources:

- ``content``: **one** FAISS search holding every interest vector of every warm user in the batch
  (content embeddings: this is also how an image nobody has interacted with yet is found);
- ``covisit``: neighbours of the user's recent positive images in the shared co-visitation counts;
- ``collab``: the best images by collaborative-embedding affinity (:mod:`models.itemvec`);
- ``trending``: the highest decayed-popularity images;
- ``fresh``: the newest images of the catalog.

Images the user has seen or hidden, and images not in the index (deleted), are dropped. Every remaining
candidate ``x`` of user ``u`` gets the feature vector :data:`FEATURES`:

===================  ===============================================================================
``content_max``      ``max_j cos(I_j, x) · (0.5 + 0.5 · w_j / max w)``: strongest matching taste
``content_mean``     ``Σ_j w_j cos(I_j, x) / Σ w``: agreement with the whole taste mix
``negative``         ``cos(n̂_u, x) · |n_u| / (|n_u| + 1)``: closeness to what the user skipped/hid
``covisit``          recency-weighted cosine co-visitation with the user's recent positives
``covisit_last``     the same with the most recent positive only
``covisit_seq``      co-visitation counted only between near neighbours in users' sequences
``trending``         ``1 + ln(1e-4 + pop(x) / max pop) / 9.2`` in [0, 1], short half-life popularity
``trending_long``    the same with a long half-life
``popularity``       ``ln(1 + mass) / 5``: the image's decayed positive mass (co-visitation counts)
``fresh``            ``2^(-age / fresh_half_life)``; ``age``: ``ln(1 + age in days) / 5``
``cold_item``        1 if nobody acted positively on the image yet (its content is all we know)
``user_activity``    ``ln(1 + events) / 7``; ``user_cold``: 1 if the user has no interest vector yet
``collab``           ``u · e_x``, collaborative embeddings; ``u`` is the recency-weighted mean
                     embedding of the user's recent positives
``covisit_rel``      ``covisit / max covisit`` over the user's candidates (relative, per request)
``collab_z``         ``collab`` standardised over the user's candidates
``user_pop_taste``   mean ``popularity`` of the user's recent positives (how mainstream the user is)
``like_rate``        ``(strong positives + 0.5) / (all interactions + 1)`` on the image, decayed: how
                     often an interaction with it is a like/save/share rather than a view or a skip
``engagement``       ``ln(1 + all interactions) / 5``, decayed
``collab_max``       ``max_j e_{r_j} · e_x`` over the user's last 10 positives (item-to-item, learned)
``covisit_long``     ``covisit`` over all of ``recent`` (30) with equal weights: long-term taste
``collab_long``      ``collab`` with a slowly decaying user vector (γ = 0.97): long-term taste
===================  ===============================================================================

and is scored by an :class:`~models.scorer.OnlineScorer` (a linear prior plus an MLP, trained online
by the core from the stream). Without a scorer the linear prior alone is used.

>>> import numpy as np
>>> from models.index import ImageIndex
>>> idx = ImageIndex(2)
>>> idx.upsert(["a", "b"], np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32), created_at=[1, 2])
>>> st = UserState("u", 2, interests=np.array([[1.0, 0.0]], dtype=np.float32), weights=np.ones(1, dtype=np.float32))
>>> [i.image_id for i in Ranker(k=2).recommend([st], idx, Popularity())[0]]
['a', 'b']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .covisit import CoVisitation, CovisQuery
from .index import ImageIndex
from .itemvec import ItemEmbeddings
from .popularity import DecayedCounts, Popularity
from .registry import ItemRegistry
from .scorer import OnlineScorer
from .state import UserState

FEATURES = (
    "content_max", "content_mean", "negative", "covisit", "covisit_last", "covisit_seq", "trending",
    "trending_long", "popularity", "fresh", "age", "cold_item", "user_activity", "user_cold", "collab",
    "covisit_rel", "collab_z", "user_pop_taste", "like_rate", "engagement", "collab_max", "covisit_long", "collab_long",
)
N_FEATURES = len(FEATURES)
F = {name: i for i, name in enumerate(FEATURES)}

#: Starting weights of the scorer's linear part (a sensible hand-set blend before any learning).
PRIOR = {
    "content_max": 1.0, "content_mean": 0.3, "negative": -0.3, "covisit": 1.0, "covisit_last": 0.5,
    "covisit_seq": 0.3, "trending": 0.5, "trending_long": 0.2, "popularity": 0.2, "fresh": 0.1, "collab": 0.5,
}

SOURCES = ("covisit", "content", "collab", "trending", "fresh")

_DAY_MS = 24 * 3600 * 1000.0


def prior_vector() -> np.ndarray:
    return np.array([PRIOR.get(f, 0.0) for f in FEATURES], dtype=np.float32)


@dataclass(frozen=True)
class RecItem:
    image_id: str
    score: float
    source: str  # one of SOURCES

    def to_dict(self) -> dict:
        return {"image_id": self.image_id, "score": round(self.score, 6), "source": self.source}


@dataclass
class Signals:
    """The shared state the ranker reads (all optional except the index and the trending counts)."""

    index: ImageIndex
    popularity: Popularity
    covisit: CoVisitation | None = None
    covisit_seq: CoVisitation | None = None
    popularity_long: DecayedCounts | None = None
    embeddings: ItemEmbeddings | None = None
    engagement_all: DecayedCounts | None = None
    engagement_pos: DecayedCounts | None = None
    registry: ItemRegistry | None = None  # shared by covisit, embeddings and the counters, if given
    now: int = 0
    fresh: list[tuple[str, int]] | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # cache; the owner invalidates it
    pop_max: float = 0.0
    pop_long_max: float = 0.0

    def prepare(self, fresh_pool: int) -> Signals:
        if self.fresh is None:
            self.fresh = self.index.newest(fresh_pool)
        top = self.popularity.top(1)
        self.pop_max = self.popularity.score(top[0][0]) if top else 0.0
        if self.popularity_long is not None:
            self.pop_long_max = self.popularity_long.max()
        return self

    def ensure_vectors(self, ids: list[str]) -> None:
        missing = [i for i in ids if i not in self.vectors]
        if missing:
            self.vectors.update(self.index.vectors(missing))


@dataclass
class UserQuery:
    """Per-user, per-request intermediate results (computed once, reused by candidates and features)."""

    covis: CovisQuery | None = None
    covis_seq: CovisQuery | None = None
    covis_long: CovisQuery | None = None
    uvec: np.ndarray | None = None
    uvec_long: np.ndarray | None = None
    ref: np.ndarray | None = None


@dataclass
class Scored:
    """One user's candidates with their sources, feature rows and scores (before the top-K cut)."""

    state: UserState
    ids: list[str]
    sources: list[str]
    features: np.ndarray
    scores: np.ndarray
    query: UserQuery
    created: np.ndarray | None = None  # created_at per candidate: equal scores go newest first

    def top(self, k: int) -> list[RecItem]:
        s = self.scores
        return [RecItem(self.ids[j], float(s[j]), self.sources[j]) for j in top_k(s, self.ids, k, self.created)]


def group_stats(x: np.ndarray) -> np.ndarray:
    """Per-request statistics the relative features are computed against: (max covisit, mean, std collab)."""
    if x.shape[0] == 0:
        return np.array([0.0, 0.0, 1.0], dtype=np.float32)
    c = x[:, F["collab"]]
    return np.array([x[:, F["covisit"]].max(), c.mean(), c.std()], dtype=np.float32)


def relative(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Fill the relative feature columns of ``x`` in place (and return it)."""
    if ref[0] > 0:
        x[:, F["covisit_rel"]] = x[:, F["covisit"]] / ref[0]
    x[:, F["collab_z"]] = (x[:, F["collab"]] - ref[1]) / max(float(ref[2]), 1e-6)
    return x


def top_k(scores: np.ndarray, ids: list[str], k: int, created: np.ndarray | None = None) -> list[int]:
    """Positions of the ``k`` highest scores, best first; ties go to the newer image (if ``created`` is
    given), then to the smaller id (deterministic)."""
    n = len(ids)
    if n > k > 0:
        kth = np.partition(scores, n - k)[n - k]
        sel = np.flatnonzero(scores >= kth).tolist()
    else:
        sel = list(range(n))
    if created is None:
        return sorted(sel, key=lambda j: (-float(scores[j]), ids[j]))[: max(k, 0)]
    return sorted(sel, key=lambda j: (-float(scores[j]), -float(created[j]), ids[j]))[: max(k, 0)]


def _search(index: ImageIndex, queries: np.ndarray, k: int) -> list:
    """``index.search``, single-threaded for small batches: FAISS's OpenMP threads cost more than they
    save on a few queries, and contend badly with torch's own OpenMP pool in the same process."""
    if queries.shape[0] >= 64:
        return index.search(queries, k)
    import faiss

    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return index.search(queries, k)
    finally:
        faiss.omp_set_num_threads(n)


def _log_pop(raw: np.ndarray, top: float) -> np.ndarray:
    return 1.0 + np.log(1e-4 + raw / top) / 9.2104 if top > 0 else np.zeros_like(raw)


@dataclass
class Ranker:
    k: int = 20
    overfetch: int = 2
    max_exclude_overfetch: int = 100
    fresh_pool: int = 50
    trending_pool: int = 100
    covisit_pool: int = 100
    collab_pool: int = 50
    fresh_half_life_ms: float = _DAY_MS
    scorer: OnlineScorer | None = None
    # Weights of the hand-tuned blend of earlier versions; the scorer (its prior, then what it learns)
    # replaced them. Accepted so existing configurations still construct a Ranker; not used.
    negative_weight: float = 0.3
    popularity_weight: float = 0.05

    # ------------------------------------------------------------------ features
    def user_query(self, st: UserState, sig: Signals) -> UserQuery:
        q = UserQuery()
        if st.recent:
            if sig.covisit is not None:
                q.covis = sig.covisit.query(st.recent)
                q.covis_long = sig.covisit.query(st.recent, items=30, gamma=1.0)
            if sig.covisit_seq is not None:
                q.covis_seq = sig.covisit_seq.query(st.recent)
            if sig.embeddings is not None:
                q.uvec = sig.embeddings.user_vector(st.recent)
                q.uvec_long = sig.embeddings.user_vector(st.recent, gamma=0.97)
        return q

    def features(self, st: UserState, ids: list[str], sig: Signals, uq: UserQuery | None = None) -> np.ndarray:
        """(len(ids), N_FEATURES) feature matrix for ``ids`` (all in the index) for user ``st``.

        Relative features are computed against ``uq.ref`` (statistics of the user's candidate set) or,
        when that is None, against ``ids`` themselves.
        """
        n = len(ids)
        x = np.zeros((n, N_FEATURES), dtype=np.float32)
        if n == 0:
            return x
        uq = uq or self.user_query(st, sig)
        sig.ensure_vectors(ids)
        v = np.stack([sig.vectors[i] for i in ids])
        if not st.is_cold:
            sims = v @ st.interests.T  # (n, m)
            w = st.weights.astype(np.float64)
            wmax = float(w.max()) if w.size else 0.0
            wn = (0.5 + 0.5 * w / wmax) if wmax > 0 else np.ones_like(w)
            x[:, F["content_max"]] = (sims * wn[None, :].astype(np.float32)).max(axis=1)
            wsum = float(w.sum())
            x[:, F["content_mean"]] = sims @ (w / wsum).astype(np.float32) if wsum > 0 else sims.mean(axis=1)
        neg_norm = float(np.linalg.norm(st.negative))
        if neg_norm > 0:
            x[:, F["negative"]] = (v @ (st.negative / neg_norm)) * (neg_norm / (neg_norm + 1.0))
        x[:, F["trending"]] = _log_pop(sig.popularity.scores(ids), sig.pop_max)
        # Everything below is looked up by the shared registry's integer ids, mapped once here.
        reg = sig.registry or (sig.covisit.registry if sig.covisit is not None else None)
        idx = reg.lookup(ids) if reg is not None else None

        def lookup(component) -> np.ndarray:
            return idx if component.registry is reg else component.registry.lookup(ids)

        if uq.covis is not None:
            x[:, F["covisit"]], x[:, F["covisit_last"]] = uq.covis.score_idx(lookup(sig.covisit))
        if uq.covis_long is not None:
            x[:, F["covisit_long"]] = uq.covis_long.score_idx(lookup(sig.covisit))[0]
        if uq.covis_seq is not None:
            x[:, F["covisit_seq"]] = uq.covis_seq.score_idx(lookup(sig.covisit_seq))[0]
        if sig.popularity_long is not None:
            x[:, F["trending_long"]] = _log_pop(sig.popularity_long.scores_idx(lookup(sig.popularity_long)),
                                                sig.pop_long_max)
        if sig.covisit is not None:
            mass = sig.covisit.masses_idx(lookup(sig.covisit))
            x[:, F["popularity"]] = np.log1p(mass) / 5.0
            x[:, F["cold_item"]] = mass <= 0
            if st.recent:
                x[:, F["user_pop_taste"]] = float(np.log1p(sig.covisit.masses(st.recent)).mean() / 5.0)
        if sig.engagement_all is not None and sig.engagement_pos is not None:
            alle = sig.engagement_all.scores_idx(lookup(sig.engagement_all))
            x[:, F["like_rate"]] = (sig.engagement_pos.scores_idx(lookup(sig.engagement_pos)) + 0.5) / (alle + 1.0)
            x[:, F["engagement"]] = np.log1p(alle) / 5.0
        if uq.uvec is not None:
            emb = sig.embeddings
            eidx = lookup(emb)
            x[:, F["collab"]] = emb.affinity_idx(uq.uvec, eidx)
            x[:, F["collab_long"]] = emb.affinity_idx(uq.uvec_long, eidx)
            x[:, F["collab_max"]] = emb.max_affinity_idx(emb._rows(st.recent[-10:]), eidx)
        created = self.created(ids, sig)
        age = np.maximum(0.0, sig.now - created)
        x[:, F["fresh"]] = np.exp2(-age / self.fresh_half_life_ms)
        x[:, F["age"]] = np.log1p(age / _DAY_MS) / 5.0
        x[:, F["user_activity"]] = math.log1p(st.version) / 7.0
        x[:, F["user_cold"]] = 1.0 if st.is_cold else 0.0
        return relative(x, group_stats(x) if uq.ref is None else uq.ref)

    @staticmethod
    def created(ids: list[str], sig: Signals) -> np.ndarray:
        return np.fromiter((sig.index.created_at(i) or 0 for i in ids), dtype=np.float64, count=len(ids))

    def _score(self, x: np.ndarray) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer.score(x)
        return x @ prior_vector()

    # ------------------------------------------------------------------ candidates + ranking
    @staticmethod
    def _query_matrix(states: list[UserState]) -> tuple[np.ndarray, list[tuple[int, int]]]:
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
        self,
        states: list[UserState],
        index: ImageIndex,
        popularity: Popularity,
        k: int | None = None,
        **signals,
    ) -> list[list[RecItem]]:
        """Top-``k`` items for each state, in the same order as ``states`` (``signals``: see :class:`Signals`)."""
        k = self.k if k is None else k
        sig = Signals(index, popularity, **signals)
        if "now" not in signals:  # a clock that does not depend on who is in the batch
            newest = index.newest(1)
            sig.now = max(popularity.now, newest[0][1] if newest else 0)
        return [sc.top(k) for sc in self.score_batch(states, sig, k)]

    def score_batch(self, states: list[UserState], sig: Signals, k: int | None = None) -> list[Scored]:
        """Candidates, features and scores for each state (one batched FAISS search for all of them).

        Every state is validated first (:meth:`UserState.validate`): a state with NaN/Inf, all-zero or
        wrongly shaped vectors raises :class:`~models.errors.InvalidInput` instead of being ranked.
        """
        k = self.k if k is None else k
        if not states:
            return []
        for st in states:
            st.validate()
        sig.prepare(self.fresh_pool)
        queries, spans = self._query_matrix(states)
        # Each user's content pool depends only on that user (k·overfetch + their own exclusions), so a
        # user gets the same list whatever batch they are in; one search serves the largest pool.
        own = [k * self.overfetch + min(len(s.seen) + len(s.hidden), self.max_exclude_overfetch) for s in states]
        hits = _search(sig.index, queries, max(own)) if queries.shape[0] else []
        trending = sig.popularity.top(self.trending_pool)
        out = []
        for st, (lo, hi), k_own in zip(states, spans, own, strict=True):
            uq = self.user_query(st, sig)
            ids, srcs = self.candidates(st, [row[:k_own] for row in hits[lo:hi]], trending, sig, uq)
            x = self.features(st, ids, sig, uq)
            uq.ref = group_stats(x)
            scores = self._score(x) if ids else np.zeros(0, dtype=np.float32)
            out.append(Scored(st, ids, srcs, x, scores, uq, self.created(ids, sig)))
        return out

    def candidates(
        self, st: UserState, hits: list, trending: list, sig: Signals, uq: UserQuery,
    ) -> tuple[list[str], list[str]]:
        """(candidate ids, their source) for one user; seen, hidden and deleted images dropped."""
        excluded = st.excluded()
        source: dict[str, str] = {}
        if uq.covis is not None:
            for i, _ in uq.covis.top(self.covisit_pool, excluded):
                source.setdefault(i, "covisit")
        for row in hits:
            for i, _ in row:
                source.setdefault(i, "content")
        if uq.uvec is not None:
            for i, _ in sig.embeddings.top(uq.uvec, self.collab_pool, excluded):
                source.setdefault(i, "collab")
        for i, _ in trending:
            source.setdefault(i, "trending")
        for i, _ in sig.fresh or ():
            source.setdefault(i, "fresh")
        index = sig.index
        ids = [i for i in source if i not in excluded and i in index]
        return ids, [source[i] for i in ids]
