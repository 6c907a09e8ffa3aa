"""Top-K ranking: multi-source candidates, candidate features, a learned scoring function.

For a batch of users :meth:`Ranker.score_batch` gathers candidates from seven sources:

- ``content``: **one** FAISS search holding every interest vector of every warm user in the batch
  (content embeddings: this is also how an image nobody has interacted with yet is found);
- ``covisit``: neighbours of the user's recent positive images in the shared co-visitation counts;
- ``collab``: the best images by collaborative-embedding affinity (:mod:`models.itemvec`);
- ``linear``: the best images by the item-to-item linear model (:mod:`models.ease`);
- ``trending``: the highest decayed-popularity images;
- ``fresh``: the newest images of the catalog;
- ``stage``: the images most acted on by users at the same stage of their history as the user and the
  two stages next to it (:meth:`models.stage.StagePopularity.top_near`).

An image found by several sources is labelled with the first of them in :data:`SOURCES`. Images the user
has seen or hidden, and images not in the index (deleted), are dropped. Every remaining
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
``linear``           the item-to-item linear model's score (:mod:`models.ease`, EASE over the most
                     active images) from the user's whole interaction history, recent ones weighted up
``linear_z``         ``linear`` standardised over the user's candidates
``session``          co-visitation within sessions (every interaction, skips too, against the other
                     images of the same session) with the images of the user's latest session
``session_last``     the same with the last image of that session only
``stage_pop``        the image's interactions by users at the same stage of their history (how many
                     events they had before: 0–4, 5–9, 10–19, …, 300+), relative to the stage's
                     best image, decayed (:mod:`models.stage`)
``stage_near``       the same over the user's stage and the two next to it
``age_taste``        how long ago the user's recent positives were created (mean), over the catalog's
                     mean age: whether the user likes what is new or what is old
``age_z``            the image's ``created_at`` minus that mean, over the spread of the positives'
                     creation times plus 0.15 of the catalog's; both clipped to ±5, both 0 without positives
``tag_aff``          how much of the user's recent positives' tag mix the image's tags carry
``tag_lift``         how much more the user likes the image's tags than the stream's positives do (log ratio)
``tag_max``          the user's share of the image's strongest tag; all three 0 without tags
                     (:mod:`models.tags`)
===================  ===============================================================================

and is scored by an :class:`~models.scorer.OnlineScorer` (a linear prior plus an MLP, trained online
by the core from the stream; the core uses the mean of two, a :class:`~models.scorer.ScorerEnsemble`).
Without a scorer the linear prior alone is used.

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
from dataclasses import dataclass

import numpy as np

from .covisit import CoVisitation, CovisQuery
from .ease import ItemLinear
from .index import ImageIndex
from .itemvec import ItemEmbeddings
from .popularity import DecayedCounts, Popularity
from .registry import CatalogMirror, ItemRegistry
from .scorer import Scorer
from .stage import StagePopularity
from .state import UserState
from .tags import TagCounts, tag_features_many_unchecked

FEATURES = (
    "content_max", "content_mean", "negative", "covisit", "covisit_last", "covisit_seq", "trending",
    "trending_long", "popularity", "fresh", "age", "cold_item", "user_activity", "user_cold", "collab",
    "covisit_rel", "collab_z", "user_pop_taste", "like_rate", "engagement", "collab_max", "covisit_long", "collab_long",
    "linear", "linear_z", "session", "session_last", "stage_pop", "stage_near", "age_taste", "age_z",
    "tag_aff", "tag_lift", "tag_max",
)
N_FEATURES = len(FEATURES)
F = {name: i for i, name in enumerate(FEATURES)}

#: Starting weights of the scorer's linear part (a sensible hand-set blend before any learning).
PRIOR = {
    "content_max": 1.0, "content_mean": 0.3, "negative": -0.3, "covisit": 1.0, "covisit_last": 0.5,
    "covisit_seq": 0.3, "trending": 0.5, "trending_long": 0.2, "popularity": 0.2, "fresh": 0.1, "collab": 0.5,
}

#: Candidate sources, in the order that labels an image several of them found. Append only: a candidate's
#: source is stored as its position here.
SOURCES = ("covisit", "content", "collab", "linear", "trending", "fresh", "stage")

_DAY_MS = 24 * 3600 * 1000.0
#: ``age_z`` divides by the spread of the user's positives' creation times plus this fraction of the
#: catalog's spread (one positive, or several of one time, has no spread of its own).
AGE_SPREAD_FLOOR = 0.15
#: ``age_taste`` and ``age_z`` are clipped to ±this.
AGE_CLIP = 5.0


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
    """The shared state the ranker reads (all optional except the index and the trending counts).

    ``mirror`` is a dense copy of the catalog by ``registry`` id (vectors, created_at, liveness); the core
    passes the one it keeps in step with the index. Without one, :meth:`prepare` copies the index into a
    new mirror (fine for tests and one-off calls, O(catalog) per call).
    """

    index: ImageIndex
    popularity: Popularity
    covisit: CoVisitation | None = None
    covisit_seq: CoVisitation | None = None
    covisit_session: CoVisitation | None = None
    stage_pop: StagePopularity | None = None
    tag_counts: TagCounts | None = None  # the stream's positive tag mix (``tag_lift``'s reference)
    popularity_long: DecayedCounts | None = None
    embeddings: ItemEmbeddings | None = None
    engagement_all: DecayedCounts | None = None
    engagement_pos: DecayedCounts | None = None
    linear: ItemLinear | None = None
    registry: ItemRegistry | None = None  # shared by covisit, embeddings and the counters, if given
    now: int = 0
    fresh: list[tuple[str, int]] | None = None
    mirror: CatalogMirror | None = None
    pop_max: float = 0.0
    pop_long_max: float = 0.0
    created_mean: float = 0.0  # the live catalog's created_at mean and spread (ms): its time scale
    created_std: float = 0.0

    def prepare(self, fresh_pool: int) -> Signals:
        if self.registry is None:
            self.registry = self.covisit.registry if self.covisit is not None else ItemRegistry()
        if self.mirror is None or self.mirror.registry is not self.registry:
            self.mirror = CatalogMirror(self.index.dim, self.registry)
            self.mirror.rebuild(self.index)
        if self.fresh is None:
            self.fresh = self.index.newest(fresh_pool)
        if hasattr(self.popularity, "max_score"):
            self.pop_max = self.popularity.max_score()
        else:
            top = self.popularity.top(1)
            self.pop_max = self.popularity.score(top[0][0]) if top else 0.0
        if self.popularity_long is not None:
            self.pop_long_max = self.popularity_long.max()
        self.created_mean, self.created_std = self.mirror.created_stats()
        return self

    def idx_for(self, component, idx: np.ndarray) -> np.ndarray:
        """``idx`` (ids of :attr:`registry`) as ids of ``component``'s own registry."""
        if component.registry is self.registry:
            return idx
        names = self.registry.names
        return component.registry.lookup([names[i] for i in idx.tolist()])

    def idx_from(self, component, idx: np.ndarray) -> np.ndarray:
        """``idx`` (ids of ``component``'s own registry) as ids of :attr:`registry`; the inverse of
        :meth:`idx_for`."""
        if component.registry is self.registry:
            return idx
        names = component.registry.names
        return self.registry.lookup([names[i] for i in idx.tolist()])


@dataclass
class UserQuery:
    """Per-user, per-request intermediate results (computed once, reused by candidates and features)."""

    covis: CovisQuery | None = None
    covis_seq: CovisQuery | None = None
    covis_long: CovisQuery | None = None
    covis_session: CovisQuery | None = None
    uvec: np.ndarray | None = None
    uvec_long: np.ndarray | None = None
    lin: tuple[np.ndarray, np.ndarray] | None = None  # ItemLinear.user_weights of the user's history
    ref: np.ndarray | None = None


class Scored:
    """One user's candidates (registry ids ``idx``) with their sources, feature rows and scores (before
    the top-K cut). ``ids`` and ``sources`` (strings) are materialised on first use."""

    __slots__ = ("state", "idx", "src", "features", "scores", "query", "created", "registry", "_ids")

    def __init__(self, state: UserState, idx: np.ndarray, src: np.ndarray, features: np.ndarray,
                 scores: np.ndarray, query: UserQuery, created: np.ndarray, registry: ItemRegistry) -> None:
        self.state = state
        self.idx = idx
        self.src = src  # positions in SOURCES
        self.features = features
        self.scores = scores
        self.query = query
        self.created = created  # created_at per candidate: equal scores go newest first
        self.registry = registry
        self._ids: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            names = self.registry.names
            self._ids = [names[i] for i in self.idx.tolist()]
        return self._ids

    @property
    def sources(self) -> list[str]:
        return [SOURCES[c] for c in self.src.tolist()]

    def position(self, image_id: str) -> int:
        """Position of ``image_id`` among the candidates, -1 if it is not one."""
        i = self.registry.get(image_id)
        if i is None:
            return -1
        hit = np.flatnonzero(self.idx == i)
        return int(hit[0]) if hit.size else -1

    def top(self, k: int) -> list[RecItem]:
        s, idx, names = self.scores, self.idx, self.registry.names
        n = idx.shape[0]
        if n > k > 0:
            kth = np.partition(s, n - k)[n - k]
            sel = np.flatnonzero(s >= kth).tolist()
        else:
            sel = list(range(n))
        c = self.created
        order = sorted(sel, key=lambda j: (-float(s[j]), -float(c[j]), names[idx[j]]))[: max(k, 0)]
        return [RecItem(names[idx[j]], float(s[j]), SOURCES[self.src[j]]) for j in order]


def group_stats(x: np.ndarray) -> np.ndarray:
    """Per-request statistics the relative features are computed against: (max covisit, mean and std of
    collab, mean and std of linear)."""
    if x.shape[0] == 0:
        return np.array([0.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32)
    c, lin = x[:, F["collab"]], x[:, F["linear"]]
    return np.array([x[:, F["covisit"]].max(), c.mean(), c.std(), lin.mean(), lin.std()], dtype=np.float32)


def group_stats_many(x: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`group_stats` of every segment ``x[starts[u]:starts[u] + counts[u]]`` at once, (users, 5)."""
    out = np.tile(np.array([0.0, 0.0, 1.0, 0.0, 1.0], dtype=np.float32), (counts.shape[0], 1))
    nz = counts > 0
    if not nz.any():
        return out
    st, cn = starts[nz], counts[nz]
    cov = x[:, F["covisit"]]
    out[nz, 0] = np.maximum.reduceat(cov, st)
    for col, at in ((F["collab"], 1), (F["linear"], 3)):
        v = x[:, col].astype(np.float64)
        mean = np.add.reduceat(v, st) / cn
        dev = v - np.repeat(mean, cn)
        out[nz, at] = mean
        out[nz, at + 1] = np.sqrt(np.add.reduceat(dev * dev, st) / cn)
    return out


def relative(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Fill the relative feature columns of ``x`` in place (and return it)."""
    if ref[0] > 0:
        x[:, F["covisit_rel"]] = x[:, F["covisit"]] / ref[0]
    x[:, F["collab_z"]] = (x[:, F["collab"]] - ref[1]) / max(float(ref[2]), 1e-6)
    x[:, F["linear_z"]] = (x[:, F["linear"]] - ref[3]) / max(float(ref[4]), 1e-6)
    return x


def relative_many(x: np.ndarray, refs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """:func:`relative` for consecutive segments of ``counts`` rows, segment ``u`` against ``refs[u]``."""
    r = np.repeat(refs, counts, axis=0)
    cov = x[:, F["covisit"]]
    np.divide(cov, r[:, 0], out=x[:, F["covisit_rel"]], where=r[:, 0] > 0)
    x[:, F["collab_z"]] = (x[:, F["collab"]] - r[:, 1]) / np.maximum(r[:, 2], 1e-6)
    x[:, F["linear_z"]] = (x[:, F["linear"]] - r[:, 3]) / np.maximum(r[:, 4], 1e-6)
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


_BLAS = None


def one_blas_thread():
    """A context in which NumPy's BLAS runs on one thread. The batched products here (tens of thousands
    of candidate rows times a few dozen columns) are too small for BLAS threads to pay off: on a shared
    2-core box they made the ranker 2x slower (threads spinning against FAISS, torch and each other)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController().select(user_api="blas")
    return _BLAS.limit(limits=1)


def _log_pop(raw: np.ndarray, top: float) -> np.ndarray:
    return 1.0 + np.log(1e-4 + raw / top) / 9.2104 if top > 0 else np.zeros_like(raw)


_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class Ranker:
    k: int = 20
    overfetch: int = 2
    max_exclude_overfetch: int = 100
    fresh_pool: int = 50
    trending_pool: int = 100
    covisit_pool: int = 100
    collab_pool: int = 50
    linear_pool: int = 50
    stage_pool: int = 100
    fresh_half_life_ms: float = _DAY_MS
    scorer: Scorer | None = None
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
                q.uvec, q.uvec_long = sig.embeddings.user_vectors(st.recent, (None, 0.97))
        if sig.covisit_session is not None and st.session:
            q.covis_session = sig.covisit_session.query(st.session_items)
        if st.seen and sig.linear is not None and sig.linear.refits:
            q.lin = sig.linear.user_weights(st.seen)
        return q

    def features(self, st: UserState, ids: list[str], sig: Signals, uq: UserQuery | None = None) -> np.ndarray:
        """(len(ids), N_FEATURES) feature matrix for ``ids`` (all in the index) for user ``st``.

        Relative features are computed against ``uq.ref`` (statistics of the user's candidate set) or,
        when that is None, against ``ids`` themselves.
        """
        sig.prepare(self.fresh_pool)
        uq = uq or self.user_query(st, sig)
        idx = sig.registry.lookup(ids)
        x = self.features_many([st], [idx], sig, [uq])
        return relative(x, group_stats(x) if uq.ref is None else uq.ref)

    def features_many(self, states: list[UserState], cands: list[np.ndarray], sig: Signals,
                      uqs: list[UserQuery]) -> np.ndarray:
        """Feature rows of every user's candidates (registry ids ``cands[u]``, live images), stacked in
        user order; the relative columns are left at zero (see :func:`relative_many`). One gather per
        catalog array for the whole batch; only what depends on one user's own taste is done per user."""
        counts = np.fromiter((c.shape[0] for c in cands), dtype=np.int64, count=len(cands))
        n = int(counts.sum())
        x = np.zeros((n, N_FEATURES), dtype=np.float32)
        if n == 0:
            return x
        idx = np.concatenate(cands)
        starts = np.zeros(len(cands), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        mir, reg = sig.mirror, sig.registry
        v = mir.vec[idx]  # (n, dim) unit vectors
        if getattr(sig.popularity, "registry", None) is reg:
            x[:, F["trending"]] = _log_pop(sig.popularity.scores_idx(idx), sig.pop_max)
        else:
            names = reg.names
            x[:, F["trending"]] = _log_pop(sig.popularity.scores([names[i] for i in idx.tolist()]), sig.pop_max)
        if sig.popularity_long is not None:
            x[:, F["trending_long"]] = _log_pop(sig.popularity_long.scores_idx(sig.idx_for(sig.popularity_long, idx)),
                                                sig.pop_long_max)
        if sig.covisit is not None:
            mass = sig.covisit.masses_idx(sig.idx_for(sig.covisit, idx))
            x[:, F["popularity"]] = np.log1p(mass) / 5.0
            x[:, F["cold_item"]] = mass <= 0
        if sig.engagement_all is not None and sig.engagement_pos is not None:
            alle = sig.engagement_all.scores_idx(sig.idx_for(sig.engagement_all, idx))
            pos = sig.engagement_pos.scores_idx(sig.idx_for(sig.engagement_pos, idx))
            x[:, F["like_rate"]] = (pos + 0.5) / (alle + 1.0)
            x[:, F["engagement"]] = np.log1p(alle) / 5.0
        created = mir.created[idx].astype(np.float64)
        age = np.maximum(0.0, sig.now - created)
        x[:, F["fresh"]] = np.exp2(-age / self.fresh_half_life_ms)
        x[:, F["age"]] = np.log1p(age / _DAY_MS) / 5.0
        x[:, F["user_activity"]] = np.repeat(
            np.fromiter((math.log1p(st.version) / 7.0 for st in states), dtype=np.float64, count=len(states)), counts)
        x[:, F["user_cold"]] = np.repeat(
            np.fromiter((1.0 if st.is_cold else 0.0 for st in states), dtype=np.float64, count=len(states)), counts)
        emb = sig.embeddings
        e = eidx = None
        if emb is not None and any(uq.uvec is not None for uq in uqs):
            eidx = sig.idx_for(emb, idx)
            ok = emb._known(eidx)
            e = np.zeros((n, emb.dim), dtype=np.float32)
            e[ok] = emb._e[eidx[ok]]
        recent_live = [_EMPTY] * len(states)  # per user: registry ids of its recent positives still live
        for u, (st, uq) in enumerate(zip(states, uqs, strict=True)):
            lo, hi = int(starts[u]), int(starts[u] + counts[u])
            if lo == hi:
                continue
            xu, iu = x[lo:hi], idx[lo:hi]
            # Content and negative features from one product with a few per-user directions: the interests
            # pre-scaled by their weight factor (max), their weighted mean (mean), the negative direction.
            m = 0 if st.is_cold else st.interests.shape[0]
            dirs = []
            if m:
                w = st.weights.astype(np.float64)
                wmax = float(w.max()) if w.size else 0.0
                wn = (0.5 + 0.5 * w / wmax) if wmax > 0 else np.ones_like(w)
                wsum = float(w.sum())
                mix = (w / wsum) if wsum > 0 else np.full(m, 1.0 / m)
                dirs += [st.interests * wn[:, None].astype(np.float32), (mix @ st.interests)[None, :]]
            neg_norm = float(np.linalg.norm(st.negative))
            if neg_norm > 0:
                dirs.append((st.negative * (1.0 / (neg_norm + 1.0)))[None, :])
            if dirs:
                sims = v[lo:hi] @ np.vstack(dirs).astype(np.float32).T
                if m:
                    xu[:, F["content_max"]] = sims[:, :m].max(axis=1)
                    xu[:, F["content_mean"]] = sims[:, m]
                if neg_norm > 0:
                    xu[:, F["negative"]] = sims[:, -1]
            if uq.covis is not None:
                xu[:, F["covisit"]], xu[:, F["covisit_last"]] = uq.covis.score_idx(sig.idx_for(sig.covisit, iu))
            if uq.covis_long is not None:
                xu[:, F["covisit_long"]] = uq.covis_long.score_idx(sig.idx_for(sig.covisit, iu))[0]
            if uq.covis_session is not None:
                xu[:, F["session"]], xu[:, F["session_last"]] = uq.covis_session.score_idx(
                    sig.idx_for(sig.covisit_session, iu))
            if sig.stage_pop is not None:
                xu[:, F["stage_pop"]], xu[:, F["stage_near"]] = sig.stage_pop.relative(
                    st.version, sig.idx_for(sig.stage_pop, iu))
            if uq.covis_seq is not None:
                xu[:, F["covisit_seq"]] = uq.covis_seq.score_idx(sig.idx_for(sig.covisit_seq, iu))[0]
            if sig.covisit is not None and st.recent:
                xu[:, F["user_pop_taste"]] = float(np.log1p(sig.covisit.masses(st.recent)).mean() / 5.0)
            if st.recent:
                ridx = sig.registry.lookup(st.recent)
                ridx = ridx[mir.known(ridx)]  # the user's recent positives still in the catalog, oldest first
                xu[:, F["age_taste"]], xu[:, F["age_z"]] = self._age_taste(ridx, sig, created[lo:hi])
                recent_live[u] = ridx
            if uq.lin is not None:
                xu[:, F["linear"]] = sig.linear.scores_idx(st.seen, sig.idx_for(sig.linear, iu), uq.lin)
            if uq.uvec is not None:
                eu = e[lo:hi]
                rows = emb._rows(st.recent[-10:])
                dirs = [uq.uvec, uq.uvec_long] + ([emb._e[rows]] if rows.size else [])
                a = eu @ np.vstack(dirs).astype(np.float32).T
                xu[:, F["collab"]] = a[:, 0]
                xu[:, F["collab_long"]] = a[:, 1]
                if rows.size:  # images without an embedding have an all-zero row: 0, as before
                    xu[:, F["collab_max"]] = a[:, 2:].max(axis=1)
        # The tag features of the whole batch at once (the same values bit for bit as one user at a time; the
        # work over candidates' rows done once per batch); the mirror's rows are valid: the unchecked form.
        rc = np.fromiter((r.shape[0] for r in recent_live), dtype=np.int64, count=len(states))
        x[:, F["tag_aff"]], x[:, F["tag_lift"]], x[:, F["tag_max"]] = tag_features_many_unchecked(
            mir.tag_rows[np.concatenate(recent_live)], rc, mir.tag_rows[idx], counts, sig.tag_counts)
        return x

    @staticmethod
    def _age_taste(ridx: np.ndarray, sig: Signals, created: np.ndarray) -> tuple[float, np.ndarray]:
        """``age_taste`` and the ``age_z`` column of one user's candidates (their creation times ``created``,
        ms) from the registry ids ``ridx`` of the user's recent positives that are live images; both 0 when
        there are none. Both are measured in the catalog's own time scale (the mean age and the spread of its
        images' creation times), so they mean the same for movies released over decades and for images
        uploaded over days."""
        if not ridx.size:
            return 0.0, np.zeros(created.shape[0])
        theirs = sig.mirror.created[ridx].astype(np.float64)
        mean = float(theirs.mean())
        age_taste = min(AGE_CLIP, max(0.0, sig.now - mean) / max(1.0, sig.now - sig.created_mean))
        spread = float(theirs.std()) + AGE_SPREAD_FLOOR * sig.created_std + 1.0
        return age_taste, np.clip((created - mean) / spread, -AGE_CLIP, AGE_CLIP)

    @staticmethod
    def created(ids: list[str], sig: Signals) -> np.ndarray:
        if sig.mirror is None or sig.registry is None:
            return np.fromiter((sig.index.created_at(i) or 0 for i in ids), dtype=np.float64, count=len(ids))
        idx = sig.registry.lookup(ids)
        out = np.zeros(len(ids), dtype=np.float64)
        ok = sig.mirror.known(idx)
        out[ok] = sig.mirror.created[idx[ok]]
        return out

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
        """Candidates, features and scores for each state: one batched FAISS search, one collaborative
        top-N product, one feature gather and one scorer call for the whole batch.

        Every state is validated first (:meth:`UserState.validate`): a state with NaN/Inf, all-zero or
        wrongly shaped vectors raises :class:`~models.errors.InvalidInput` instead of being ranked.
        """
        k = self.k if k is None else k
        if not states:
            return []
        for st in states:
            st.validate()
        with one_blas_thread():
            return self._score_batch(states, sig, k)

    def _score_batch(self, states: list[UserState], sig: Signals, k: int) -> list[Scored]:
        sig.prepare(self.fresh_pool)
        reg = sig.registry
        queries, spans = self._query_matrix(states)
        # Each user's content pool depends only on that user (k·overfetch + their own exclusions), so a
        # user gets the same list whatever batch they are in; one search serves the largest pool.
        own = [k * self.overfetch + min(len(s.seen) + len(s.hidden), self.max_exclude_overfetch) for s in states]
        hits = _search(sig.index, queries, max(own)) if queries.shape[0] else []
        trending = reg.lookup(sig.popularity.top_ids(self.trending_pool) if hasattr(sig.popularity, "top_ids")
                              else [i for i, _ in sig.popularity.top(self.trending_pool)])
        fresh = reg.lookup([i for i, _ in sig.fresh or ()])
        stage_cands = [_EMPTY] * len(states)  # one top list per stage in the batch, shared by its users
        if sig.stage_pop is not None and self.stage_pool > 0:
            by_stage: dict[int, np.ndarray] = {}
            for u, st in enumerate(states):
                s = sig.stage_pop.stage(st.version)
                if s not in by_stage:
                    by_stage[s] = sig.idx_from(sig.stage_pop, sig.stage_pop.top_near(st.version, self.stage_pool))
                stage_cands[u] = by_stage[s]
        uqs = [self.user_query(st, sig) for st in states]
        excl = [reg.lookup(list(st.excluded())) for st in states]
        collab: list[np.ndarray] = [_EMPTY] * len(states)
        if sig.embeddings is not None:
            with_u = [u for u, uq in enumerate(uqs) if uq.uvec is not None]
            if with_u:
                tops = sig.embeddings.top_idx_batch(
                    np.stack([uqs[u].uvec for u in with_u]), self.collab_pool,
                    [sig.idx_for(sig.embeddings, excl[u]) for u in with_u])
                for u, t in zip(with_u, tops, strict=True):
                    collab[u] = sig.idx_from(sig.embeddings, t)
        get = reg._int.get
        cands, srcs = [], []
        for u, (st, (lo, hi), k_own) in enumerate(zip(states, spans, own, strict=True)):
            uq = uqs[u]
            cov = _EMPTY
            if uq.covis is not None:
                cov = sig.idx_from(sig.covisit, uq.covis.top_idx(self.covisit_pool, sig.idx_for(sig.covisit, excl[u])))
            content = [get(i, -1) for row in hits[lo:hi] for i, _ in row[:k_own]]
            lin = _EMPTY
            if uq.lin is not None and self.linear_pool > 0:
                lin = sig.idx_from(sig.linear, sig.linear.top_idx(
                    st.seen, self.linear_pool, sig.idx_for(sig.linear, excl[u]), uq.lin))
            parts = (cov, np.asarray(content, dtype=np.int64), collab[u], lin, trending, fresh, stage_cands[u])
            allc = np.concatenate(parts)
            code = np.repeat(np.arange(len(SOURCES), dtype=np.int8), [p.shape[0] for p in parts])
            _, first = np.unique(allc, return_index=True)
            first.sort()  # first appearance wins the source, in SOURCES order
            c, cc = allc[first], code[first]
            keep = sig.mirror.known(c)
            if excl[u].size:
                keep &= ~np.isin(c, excl[u])
            cands.append(c[keep])
            srcs.append(cc[keep])
        x = self.features_many(states, cands, sig, uqs)
        counts = np.fromiter((c.shape[0] for c in cands), dtype=np.int64, count=len(cands))
        starts = np.zeros(len(cands), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        refs = group_stats_many(x, starts, counts)
        relative_many(x, refs, counts)
        scores = self._score(x) if x.shape[0] else np.zeros(0, dtype=np.float32)
        created = sig.mirror.created[np.concatenate(cands)] if x.shape[0] else np.zeros(0, dtype=np.int64)
        out = []
        for u, st in enumerate(states):
            lo, hi = int(starts[u]), int(starts[u] + counts[u])
            uqs[u].ref = refs[u]
            out.append(Scored(st, cands[u], srcs[u], x[lo:hi], scores[lo:hi], uqs[u], created[lo:hi], reg))
        return out
