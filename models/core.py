"""``RecommenderCore``: the one object both the Kafka workers and the offline replay/evaluation drive.

It owns the image index, trending counts, the interest model and the ranker; user states live outside
(in the worker's table, or a dict in a replay) and are passed in and returned, never held.

>>> import numpy as np
>>> core = RecommenderCore(dim=2, k=2)
>>> core.apply_images([("a", np.array([1.0, 0.0]), 1), ("b", np.array([0.0, 1.0]), 2), ("c", np.array([0.8, 0.6]), 3)])
>>> st, applied = core.learn(core.new_state("u"), image_id="a", action="like", ts=10)
>>> [item.image_id for item in core.recommend([st])[0]]
['c', 'b']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .index import ImageIndex
from .interest import InterestModel
from .popularity import Popularity
from .ranking import Ranker, RecItem
from .state import UserState
from .vectors import as_unit_vector

MODEL_VERSION = "interest-mi3/ranker-blend1"


@dataclass
class PushMatch:
    user_id: str
    image_id: str
    score: float


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
    ) -> None:
        self.dim = dim
        self.k = k
        self.index = index or ImageIndex(dim)
        if self.index.dim != dim:
            raise ConfigError(f"index dim {self.index.dim} != core dim {dim}")
        self.interest = interest or InterestModel(dim=dim)
        self.ranker = ranker or Ranker(k=k)
        self.popularity = popularity or Popularity()

    # ------------------------------------------------------------------ catalog
    def apply_images(self, upserts: Iterable[tuple[str, np.ndarray, int]], deletes: Iterable[str] = ()) -> None:
        """Batch upsert (image_id, vector, created_at) and delete image ids; vectors are validated here."""
        ups = list(upserts)
        if ups:
            mat = np.stack([as_unit_vector(v, self.dim) for _, v, _ in ups])
            self.index.upsert([i for i, _, _ in ups], mat, created_at=[c for _, _, c in ups])
        dels = list(deletes)
        if dels:
            self.index.remove(dels)
            for d in dels:
                self.popularity.forget(d)

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
    ) -> tuple[UserState, bool]:
        """Apply one behaviour event unless it was already applied; returns (state, applied)."""
        if self.interest.already_applied(state, offset=offset, event_id=event_id):
            return state, False
        vec = self.index.vectors([image_id]).get(image_id)
        new = self.interest.learn_one(
            state, image_id=image_id, action=action, ts=ts, vector=vec,
            dwell_ms=dwell_ms, offset=offset, event_id=event_id,
        )
        strength = self.interest.strength(action, dwell_ms)
        if strength > 0 and vec is not None:
            self.popularity.learn_one(image_id, strength, ts)
        return new, True

    def recommend(self, states: list[UserState], k: int | None = None) -> list[list[RecItem]]:
        return self.ranker.recommend(states, self.index, self.popularity, k or self.k)

    # ------------------------------------------------------------------ push on new images
    def match_new_images(
        self, image_ids: list[str], states: list[UserState], min_score: float = 0.5,
    ) -> list[PushMatch]:
        """Users (among ``states``) for whom some new image scores at least ``min_score`` on a taste vector.

        One matrix product (users' interests × new images); a user appears once, with their best image.
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
            block = sims[owner == u]
            j = int(np.argmax(block.max(axis=0)))
            best = float(block[:, j].max())
            if best >= min_score and ids[j] not in st.excluded():
                out.append(PushMatch(st.user_id, ids[j], best))
        return out
