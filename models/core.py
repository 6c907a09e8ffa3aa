"""``RecommenderCore``: the one object both the Kafka workers and the offline replay/evaluation drive.

It owns the image index and every piece of state *shared across users*: trending counts, item-to-item
co-visitation, the online-learned scorer of the ranker, and small bounded memories used to train it
(the last list shown to each user, their latest skips). User states live outside (in the worker's table,
or a dict in a replay) and are passed in and returned, never held.

What one positive event does (``learn``), in this order, all from the state *before* the event:

1. build a training group for the scorer: the features of the image acted on, and of every other
   candidate served for this state (the set scored by the last ``recommend`` for this user, if that
   was computed from exactly this state), plus images the user skipped or hid since their last positive;
   the scorer trains to put the chosen image first among them (one step every ``batch_groups`` groups);
   the collaborative item embeddings take a step on every engagement (:mod:`models.itemvec`);
2. count co-visitation (every engagement weighs 1) between the image and the user's recent engaged
   images, popularity (weighted by the action's strength) and engagement statistics; every interaction
   (skips too) with the user's history before it goes to the item-to-item linear model (:mod:`models.ease`),
   and is counted as a session co-visit with the other images of the user's current session (rule 6 of
   :mod:`models.interest`);
3. update the user's interest vectors / recent / seen sets (:mod:`models.interest`).

Everything is deterministic given ``seed`` and the order of calls: the only randomness is a NumPy
generator owned by the core, and the only clock is event time (``ts``; ``now`` is the largest event or
image time seen).

**Shards and replayable mode.** Everything learned and shared across users (the list
:data:`SHARD_FIELDS`) can be swapped as one :class:`Shard`: :meth:`new_shard` makes an empty one configured
like the core was at construction, ``with core.use_shard(shard):`` makes it the one learned and read.
A worker in replayable mode keeps one shard per input partition, learned in offset order. With
``replayable=True`` nothing that ``recommend`` does changes what is learned (training groups are always
the candidates computed from the state before the event, never the last list served, whose timing depends
on batching), so a shard is a pure function of its partition's events in offset order, and results a pure
function of (user state, shard, catalog). ``learn(..., shared=False)`` applies an event to the user state
only, for events the shard has already learned (a shard rebuilt from the log ahead of the user table).

>>> import numpy as np
>>> core = RecommenderCore(dim=2, k=2)
>>> core.apply_images([("a", np.array([1.0, 0.0]), 1), ("b", np.array([0.0, 1.0]), 2), ("c", np.array([0.8, 0.6]), 3)])
>>> st, applied = core.learn(core.new_state("u"), image_id="a", action="like", ts=10)
>>> [item.image_id for item in core.recommend([st])[0]]
['c', 'b']
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import orjson

from .covisit import CoVisitation
from .ease import ItemLinear
from .serial import rng_state, set_rng_state
from .errors import ConfigError, StateError
from .index import ImageIndex
from .interest import InterestModel
from .itemvec import ItemEmbeddings
from .popularity import DecayedCounts, Popularity
from .registry import CatalogMirror, ItemRegistry
from .ranking import N_FEATURES, Ranker, RecItem, Signals, group_stats, one_blas_thread, prior_vector, relative
from .scorer import Scorer, ScorerEnsemble, scorer_from_bytes
from .stage import StagePopularity
from .tags import TagCounts
from .state import UserState
from .vectors import as_unit_vector

MODEL_VERSION = "interest-mi3/covisit3/collab1/linear1/stage1/tags1/ranker-online9"


#: The core's attributes learned from behaviour and shared across users: one :class:`Shard`.
SHARD_FIELDS = (
    "popularity", "popularity_long", "engagement_all", "engagement_pos", "covisit", "covisit_seq", "covisit_session",
    "stage_pop", "tag_counts", "embeddings",
    "item_linear", "scorer", "_rng", "_now", "_served", "_served_ids", "_skipped",
)


@dataclass
class Shard:
    """One set of shared learned state (see :data:`SHARD_FIELDS`), swapped in by :meth:`RecommenderCore.use_shard`.

    ``watermark`` is for the caller: the highest input offset this shard has learned (-1: none)."""

    fields: dict
    watermark: int = -1
    users: set = field(default_factory=set)


@dataclass
class PushMatch:
    user_id: str
    image_id: str
    score: float


def refresh_batches(states: list[UserState], size: int) -> list[list[UserState]]:
    """The canonical batching of a full refresh: users sorted by id, ``size`` at a time. A worker and a
    replay that rank in the same batches get bit-identical scores (batched BLAS/FAISS products can round
    differently for different batch shapes)."""
    ordered = sorted(states, key=lambda st: st.user_id)
    return [ordered[i:i + size] for i in range(0, len(ordered), max(1, size))]


class _LRU(OrderedDict):
    def __init__(self, cap: int = 0) -> None:  # the default lets copy/deepcopy rebuild it (cap is restored)
        super().__init__()
        self.cap = cap

    def put(self, key, value) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


class RecommenderCore:
    model_version = MODEL_VERSION

    def __init__(
        self,
        dim: int,
        k: int = 20,
        *,
        index: ImageIndex | None = None,
        interest: InterestModel | None = None,
        ranker: Ranker | None = None,
        popularity: Popularity | None = None,
        covisit: CoVisitation | None = None,
        covisit_seq: CoVisitation | None = None,
        popularity_long: DecayedCounts | None = None,
        scorer: Scorer | None = None,
        embeddings: ItemEmbeddings | None = None,
        item_linear: ItemLinear | None = None,
        seed: int = 0,
        learn_ranker: bool = True,
        max_negatives: int = 512,
        scorer_members: int = 2,
        train_min_strength: float = 1.0,
        memory_users: int = 100_000,
        served_users: int = 2048,
        served_ids_users: int = 50_000,
        replayable: bool = False,
    ) -> None:
        self.dim = dim
        self.k = k
        # Components given by the caller are used as they are, even when empty: ``is None``, never ``or``
        # (an empty ImageIndex/Popularity is falsy through ``__len__``).
        self._index: ImageIndex | None = None
        self.registry = ItemRegistry()  # dense ids shared by the array-backed components below
        self.mirror = CatalogMirror(dim, self.registry)
        self.index = index if index is not None else ImageIndex(dim)  # the setter checks the dim
        self.interest = interest if interest is not None else InterestModel(dim=dim)
        if self.interest.dim != dim:
            raise ConfigError(f"interest model dim {self.interest.dim} != core dim {dim}")
        self.ranker = ranker if ranker is not None else Ranker(k=k)
        self.popularity = popularity if popularity is not None else Popularity()
        reg = self.registry
        self.popularity.attach(reg)
        self.popularity_long = popularity_long if popularity_long is not None else DecayedCounts(
            7 * 24 * 3600e3, reg)
        self.engagement_all = DecayedCounts(30 * 24 * 3600e3, reg)
        self.engagement_pos = DecayedCounts(30 * 24 * 3600e3, reg)
        self.covisit = covisit if covisit is not None else CoVisitation(registry=reg)
        self.covisit_seq = covisit_seq if covisit_seq is not None else CoVisitation(
            window=3, gamma=0.5, query_items=3, registry=reg)
        # Every interaction (skips too) counted against the last 10 other images of the same session, equal
        # weights. 30 cost the demo's worker 11 % of its throughput (293 -> 261 events/s at 300/s offered,
        # p95 <= 2.5 s instead of <= 0.5 s) for +0.0015 recall@20 on the ml-100k tuning window.
        self.covisit_session = CoVisitation(window=10, gamma=1.0, query_items=10, query_gamma=1.0, registry=reg)
        # Interactions per stage of the user's history (models/stage.py; its default 30-day half-life, as engagement).
        self.stage_pop = StagePopularity(registry=reg)
        # The stream's positive tag mix (models/tags.py), against which tag_lift measures a user's; 30 days.
        self.tag_counts = TagCounts(30 * 24 * 3600e3)
        self.embeddings = embeddings if embeddings is not None else ItemEmbeddings(seed=seed, registry=reg)
        self.item_linear = item_linear if item_linear is not None else ItemLinear(registry=reg)
        if self.item_linear.registry is not reg and not len(self.item_linear):
            self.item_linear.attach(reg)  # a configured but empty model (build_core): ids shared with the ranker
        if scorer is None:
            # Two scorers averaged (models/scorer.py, ScorerEnsemble): on the whole of ml-100k recall@20
            # 0.3742 -> 0.3776 (seed 0), 0.3736 -> 0.3766 (seed 1), for 4 % of the replay's throughput.
            scorer = self.ranker.scorer if self.ranker.scorer is not None else ScorerEnsemble(
                N_FEATURES, members=scorer_members, prior=prior_vector(), seed=seed, max_group=max_negatives + 8,
            )
        if scorer.n_features != N_FEATURES:
            raise ConfigError(f"scorer takes {scorer.n_features} features, the ranker makes {N_FEATURES}")
        self.scorer = scorer
        self.ranker.scorer = scorer
        self.seed = seed
        self.learn_ranker = learn_ranker
        self.max_negatives = max_negatives
        self.train_min_strength = train_min_strength
        self._rng = np.random.default_rng(seed)
        self._now = 0
        self._served: _LRU = _LRU(served_users)  # user -> last scored candidate set (training negatives)
        # user -> registry ids of the last candidate set scored (compact: ~1 KB a user), kept for longer
        self._served_ids: _LRU = _LRU(served_ids_users)
        self._skipped: _LRU = _LRU(memory_users)  # user -> ids of recent skips/hides
        self.replayable = replayable
        # An empty shard configured like this one, before anything is learned (the registry stays shared).
        self._blank = self._copy_fields(self._current_fields())
        self._active: Shard | None = None

    # ------------------------------------------------------------------ shards
    def _current_fields(self) -> dict:
        return {name: getattr(self, name) for name in SHARD_FIELDS}

    def _copy_fields(self, fields: dict) -> dict:
        return copy.deepcopy(fields, memo={id(self.registry): self.registry})

    def new_shard(self) -> Shard:
        """An empty shard (nothing learned), configured like this core's components at construction."""
        return Shard(self._copy_fields(self._blank))

    @contextmanager
    def use_shard(self, shard: Shard) -> Iterator[Shard]:
        """Learn into and rank from ``shard`` inside the block; the core's own state is back afterwards."""
        if self._active is not None:
            raise RuntimeError("use_shard blocks do not nest")
        own = self._current_fields()
        self._set_fields(shard.fields)
        self._active = shard
        try:
            yield shard
        finally:
            shard.fields = self._current_fields()  # ints (``_now``) were rebound, not mutated
            self._set_fields(own)
            self._active = None

    def _set_fields(self, fields: dict) -> None:
        for name in SHARD_FIELDS:
            setattr(self, name, fields[name])
        if self.popularity.registry is not self.registry:
            self.popularity.attach(self.registry)
        self.ranker.scorer = self.scorer

    # ------------------------------------------------------------------ catalog
    @property
    def index(self) -> ImageIndex:
        return self._index

    @index.setter
    def index(self, value: ImageIndex) -> None:
        """The index may be swapped (a restored replica); caches derived from the old one are dropped."""
        if value.dim != self.dim:
            raise ConfigError(f"index dim {value.dim} != core dim {self.dim}")
        self._index = value
        self._fresh: list[tuple[str, int]] | None = None
        self.mirror.rebuild(value)
        if hasattr(self, "_served"):
            self._served.clear()
            self._served_ids.clear()

    def apply_images(self, upserts: Iterable[tuple], deletes: Iterable[str] = ()) -> None:
        """Batch upsert ``(image_id, vector, created_at)`` or ``(image_id, vector, created_at, tags)`` and
        delete image ids; vectors and tags are validated here (the index keeps the tags normalised)."""
        ups = [u if len(u) == 4 else (*u, ()) for u in upserts]
        if ups:
            mat = np.stack([as_unit_vector(u[1], self.dim) for u in ups])
            self._sync_mirror()
            ids = [u[0] for u in ups]
            self.index.upsert(ids, mat, created_at=[u[2] for u in ups], tags=[u[3] for u in ups])
            self.mirror.upsert(ids, mat, [u[2] for u in ups], [self.index.tags(i) for i in ids])
            self.mirror.synced = self.index.mutations
            self._fresh = None
        dels = list(deletes)
        if dels:
            self._sync_mirror()
            self.index.remove(dels)
            for d in dels:
                self.popularity.forget(d)
                self.popularity_long.forget(d)
                self.engagement_all.forget(d)
                self.engagement_pos.forget(d)
                self.covisit.forget(d)
                self.covisit_seq.forget(d)
                self.covisit_session.forget(d)
                self.stage_pop.forget(d)
                self.embeddings.forget(d)
                self.item_linear.forget(d)
            self.mirror.remove(dels)
            self.mirror.synced = self.index.mutations
            self._fresh = None

    def _sync_mirror(self) -> None:
        """Rebuild the catalog mirror if the index was changed other than through :meth:`apply_images`."""
        if self.mirror.synced != self.index.mutations:
            self.mirror.rebuild(self.index)
            self._fresh = None

    def _fresh_list(self) -> list[tuple[str, int]]:
        if self._fresh is None:
            self._fresh = self.index.newest(self.ranker.fresh_pool)
        return self._fresh

    @property
    def now(self) -> int:
        """Event-time clock: the largest event ``ts`` learned so far (or newest image time if larger)."""
        fresh = self._fresh_list()
        return max(self._now, fresh[0][1] if fresh else 0)

    def signals(self, now: int | None = None) -> Signals:
        """The shared state the ranker reads, as of ``now`` (default: :attr:`now`)."""
        self._sync_mirror()
        return Signals(
            self.index, self.popularity, covisit=self.covisit, covisit_seq=self.covisit_seq,
            covisit_session=self.covisit_session, stage_pop=self.stage_pop, tag_counts=self.tag_counts,
            popularity_long=self.popularity_long, embeddings=self.embeddings, linear=self.item_linear,
            engagement_all=self.engagement_all, engagement_pos=self.engagement_pos, registry=self.registry, now=self.now if now is None else now, fresh=self._fresh_list(), mirror=self.mirror,
        )

    # ------------------------------------------------------------------ behaviour
    def new_state(self, user_id: str) -> UserState:
        return self.interest.new_state(user_id)

    def learn(
        self,
        state: UserState,
        *,
        image_id: str,
        action: str,
        ts: int,
        dwell_ms: int | None = None,
        offset: int | None = None,
        event_id: str | None = None,
        shared: bool = True,
    ) -> tuple[UserState, bool]:
        """Apply one behaviour event unless it was already applied; returns (state, applied).

        ``shared=False``: update the user's state only, not the shared signals (which already learned it)."""
        if self.interest.already_applied(state, offset=offset, event_id=event_id):
            return state, False
        strength = self.interest.strength(action, dwell_ms)  # validates the action first
        self._sync_mirror()
        i = self.registry.get(image_id)
        vec = self.mirror.vec[i].copy() if i is not None and self.mirror.known(np.array([i]))[0] else None
        new = self.interest.learn_one(
            state, image_id=image_id, action=action, ts=ts, vector=vec,
            dwell_ms=dwell_ms, offset=offset, event_id=event_id,
        )  # validates the vector and the rest before any shared state changes
        if not shared:
            return new, True
        if vec is not None:
            if self.learn_ranker:
                self._train(state, image_id, strength, ts)
            self.engagement_all.learn(image_id, 1.0, ts)
            self.covisit_session.learn(self.interest.session_items(state, ts), image_id, 1.0, ts)
            self.stage_pop.learn(state.version, image_id, ts)  # the stage the user was in when acting
            self.item_linear.learn(state.seen, image_id, ts)  # every interaction, with the history before it
            if strength >= self.train_min_strength:
                self.engagement_pos.learn(image_id, 1.0, ts)
                self.tag_counts.learn(self.mirror.tag_rows[i], ts)
            if strength > 0:
                # Co-visitation counts visits: every engagement weighs 1, whatever its strength.
                self.covisit.learn(state.recent, image_id, 1.0, ts)
                self.covisit_seq.learn(state.recent, image_id, 1.0, ts)
                self.popularity.learn_one(image_id, strength, ts)
                self.popularity_long.learn(image_id, strength, ts)
                self.embeddings.learn(state.recent, image_id)
        self._now = max(self._now, int(ts))
        return new, True

    def _train(self, state: UserState, image_id: str, strength: float, ts: int) -> None:
        with one_blas_thread():
            self._train_group(state, image_id, strength, ts)

    def _train_group(self, state: UserState, image_id: str, strength: float, ts: int) -> None:
        if strength < 0:
            prev = self._skipped.get(state.user_id, ())
            self._skipped.put(state.user_id, (prev + (image_id,))[-4:])
            return
        if strength < self.train_min_strength:
            return
        # The candidates the user chose among, from the state before this event (``state``):
        # 1. what ``recommend`` scored for exactly this state (the usual case: a list was computed after the
        #    user's previous event, then the user acted): its feature rows are reused as they are;
        # 2. else the last candidate set served to this user (an older state: e.g. a second event of the
        #    user in one batch, or after a view; that list is what the user was actually shown), with
        #    feature rows computed now from ``state`` (one vectorised pass, no candidate generation);
        # 3. else (nothing served to this user recently: replays, catch-up) the candidates the ranker would
        #    serve for ``state``, computed the same way as ``recommend``.
        #    In replayable mode always 3: what was served depends on when results were computed (batching).
        skipped = sorted(set(self._skipped.pop(state.user_id, ())) - {image_id})  # since the last positive
        cached = None if self.replayable else self._served.pop(state.user_id, None)
        sig = None
        if cached is not None and cached.state.version == state.version and cached.state.updated_ts == state.updated_ts:
            feats, j, uq, cids = cached.features, cached.position(image_id), cached.query, cached.idx
        else:
            sig = self.signals(max(self._now, int(ts))).prepare(self.ranker.fresh_pool)
            ids = None if self.replayable else self._served_ids.get(state.user_id)
            iid = self.registry.get(image_id)
            if ids is not None:
                ids = ids.astype(np.int64)
                keep = self.mirror.known(ids)
                excl = self.registry.lookup(list(state.excluded()))
                if excl.size:
                    keep &= ~np.isin(ids, excl)
                ids = ids[keep]
                hit = np.flatnonzero(ids == iid) if iid is not None else ids[:0]
                if not hit.size:
                    return
                j = int(hit[0])
                uq = self.ranker.user_query(state, sig)
                feats, cids = self.ranker.features_many([state], [ids], sig, [uq]), ids
                uq.ref = group_stats(feats)
                relative(feats, uq.ref)
            else:
                sc = self.ranker.score_batch([state], sig, self.k)[0]
                feats, j, uq, cids = sc.features, sc.position(image_id), sc.query, sc.idx
        if j < 0:
            # Only when the chosen image was among the candidates: the scorer ranks candidates, and a
            # positive the retrieval missed looks unlike every candidate (training on it would teach the
            # scorer to favour "retrieved by nothing", which never helps at serving time).
            return
        rows = np.delete(np.arange(feats.shape[0]), j)
        if rows.shape[0] > self.max_negatives:
            pick = self._rng.choice(rows.shape[0], size=self.max_negatives, replace=False)
            rows = rows[np.sort(pick)]
        extra = []
        if skipped:  # recently skipped/hidden images that are not candidates already: more negatives
            present = set(cids.tolist())
            extra = [i for i in skipped if i in self.index and self.registry.get(i) not in present]
        if rows.shape[0] or extra:
            parts = [feats[j:j + 1], feats[rows]]
            if extra:
                sig = sig or self.signals(max(self._now, int(ts)))
                parts.append(self.ranker.features(state, extra, sig, uq))
            self.scorer.observe(np.vstack(parts))

    def recommend(self, states: list[UserState], k: int | None = None) -> list[list[RecItem]]:
        k = k or self.k
        scored = self.ranker.score_batch(states, self.signals(), k)
        if self.learn_ranker and not self.replayable:
            for sc in scored:
                self._served.put(sc.state.user_id, sc)
                self._served_ids.put(sc.state.user_id, sc.idx.astype(np.int32))
        return [sc.top(k) for sc in scored]

    # ------------------------------------------------------------------ push on new images
    def match_new_images(
        self, image_ids: list[str], states: list[UserState], min_score: float = 0.5,
    ) -> list[PushMatch]:
        """Users (among ``states``) for whom some new image scores at least ``min_score`` on a taste vector.

        One matrix product (users' interests × new images); a user appears once, with their best new image
        among those they have not seen or hidden (an image's score is its best cosine over the user's
        interests; ties go to the earlier id in ``image_ids``). Images not in the index are ignored.
        """
        vecs = self.index.vectors(image_ids)
        warm = [s for s in states if not s.is_cold]
        if not vecs or not warm:
            return []
        ids = list(vecs)
        img = np.stack([vecs[i] for i in ids])
        rows = np.vstack([s.interests for s in warm])
        owner = np.repeat(np.arange(len(warm)), [s.interests.shape[0] for s in warm])
        sims = rows @ img.T
        out: list[PushMatch] = []
        for u, st in enumerate(warm):
            per_image = sims[owner == u].max(axis=0)
            excluded = st.excluded()
            allowed = np.fromiter((i not in excluded for i in ids), dtype=bool, count=len(ids))
            if not allowed.any():
                continue
            # The best image the user may still receive: seen/hidden ones are skipped, not a reason to drop
            # the user when another new image also matches.
            j = int(np.argmax(np.where(allowed, per_image, -np.inf)))
            best = float(per_image[j])
            if best >= min_score:
                out.append(PushMatch(st.user_id, ids[j], best))
        return out

    # ------------------------------------------------------------------ shared state persistence
    def shared_state_bytes(self) -> bytes:
        """Everything learned and shared across users (co-visitation, embeddings, scorer, popularity), so a
        restarted worker can continue where it was; the index has its own snapshot. The small per-user
        memories used for training (last served candidates, recent skips) are not included."""
        return orjson.dumps({
            "v": self.model_version, "now": self._now, "rng": rng_state(self._rng),
            "covisit": self.covisit.to_bytes().decode(), "covisit_seq": self.covisit_seq.to_bytes().decode(),
            "covisit_session": self.covisit_session.to_bytes().decode(), "stage_pop": self.stage_pop.to_dict(),
            "tag_counts": self.tag_counts.to_dict(),
            "embeddings": self.embeddings.to_bytes().decode(), "item_linear": self.item_linear.to_bytes().decode(),
            "scorer": self.scorer.to_bytes().decode(),
            "popularity": _pop_to(self.popularity), "popularity_long": self.popularity_long.to_dict(),
            "engagement_all": self.engagement_all.to_dict(), "engagement_pos": self.engagement_pos.to_dict(),
            "registry": self.registry.names,
        })

    def load_shared_state(self, raw: bytes) -> None:
        try:
            d = orjson.loads(raw)
        except Exception as exc:
            raise StateError(f"cannot decode shared state: {exc}") from exc
        if d.get("v") != self.model_version:
            raise StateError(f"shared state of model {d.get('v')!r}, this is {self.model_version!r}")
        reg = ItemRegistry()
        for name in d["registry"]:
            reg.add(str(name))  # same ids as when saved
        self.registry = reg
        self.mirror = CatalogMirror(self.dim, reg)
        self.mirror.rebuild(self.index)
        self.covisit = CoVisitation.from_bytes(d["covisit"].encode(), reg)
        self.covisit_seq = CoVisitation.from_bytes(d["covisit_seq"].encode(), reg)
        self.covisit_session = CoVisitation.from_bytes(d["covisit_session"].encode(), reg)
        self.stage_pop = StagePopularity.from_dict(d["stage_pop"], reg)
        self.tag_counts = TagCounts.from_dict(d["tag_counts"])
        self.embeddings = ItemEmbeddings.from_bytes(d["embeddings"].encode(), reg)
        self.item_linear = ItemLinear.from_bytes(d["item_linear"].encode(), reg)
        self.scorer = scorer_from_bytes(d["scorer"].encode())
        self.popularity = _pop_from(d["popularity"])
        self.popularity.attach(reg)
        self.popularity_long = DecayedCounts.from_dict(d["popularity_long"], reg)
        self.engagement_all = DecayedCounts.from_dict(d["engagement_all"], reg)
        self.engagement_pos = DecayedCounts.from_dict(d["engagement_pos"], reg)
        self.ranker.scorer = self.scorer
        set_rng_state(self._rng, d["rng"])
        self._now = int(d["now"])
        self._served.clear()
        self._served_ids.clear()
        self._skipped.clear()


def _pop_to(p: Popularity) -> dict:
    return {"hl": p.half_life_ms, "re": p.refresh_every, "ref": p._ref_ts, "now": p._now, "s": p._scores}


def _pop_from(d: dict) -> Popularity:
    p = Popularity(half_life_ms=float(d["hl"]), refresh_every=int(d["re"]))
    p._ref_ts, p._now = int(d["ref"]), int(d["now"])
    p._scores = {str(k): float(v) for k, v in d["s"].items()}
    return p
