"""In-process replay of topic records through exactly the worker's code path (no Kafka, no Redis).

Used by tests and fault checks to compute what a clean single run must produce, and by ``reco eval``-style
tooling. Image records take the same route as in a worker: ``parse_image`` -> ``catalog_record`` ->
``parse_catalog`` -> ``RecommenderCore.apply_images``; behaviour records: ``parse_behavior`` ->
``RecommenderCore.learn`` with the record's offset (the dedup guard) -> ``recommend``.

With ``RECO_REPLAYABLE`` set, behaviour records need their partition: each partition learns into its own
shard, in the order given (give each partition's records in offset order), and :meth:`Replay.final_results`
computes what a replayable worker publishes once every partition has gone quiet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models import RecommenderCore, Shard, UserState, refresh_batches
from models.errors import InvalidInput

from .app import build_core
from .schemas import catalog_record, parse_catalog, parse_image
from .settings import Settings
from .shards import learn_record


@dataclass
class Replay:
    s: Settings
    core: RecommenderCore = field(init=False)
    states: dict[str, UserState] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    shards: dict[int, Shard] = field(default_factory=dict)  # replayable mode: by partition

    def __post_init__(self) -> None:
        self.core = build_core(self.s, deterministic=True)

    def image(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        try:
            img = parse_image(value, key=key, dim=self.s.dim, max_bytes=self.s.max_image_bytes,
                              max_id_length=self.s.max_id_length, max_future_skew_ms=self.s.max_future_skew_ms)
        except InvalidInput as exc:
            self.rejected.append((offset, exc.reason))
            return
        if img is None:
            self.core.apply_images([], [key.decode()])
            return
        if img.embedding is None:
            raise ValueError("replay needs images with embeddings (no encoder here)")
        self.core.apply_images([parse_catalog(catalog_record(img, img.embedding, offset), self.s.dim)])

    def behavior(self, key: bytes | None, value: bytes, offset: int, partition: int | None = None) -> UserState | None:
        if not self.s.replayable:
            return learn_record(self.core, self.s, self.states, None, key, value, offset, self.rejected)
        if partition is None:
            raise ValueError("replayable mode: behaviour records need their partition")
        shard = self.shards.get(partition)
        if shard is None:
            shard = self.shards[partition] = self.core.new_shard()
        with self.core.use_shard(shard):
            return learn_record(self.core, self.s, self.states, shard, key, value, offset, self.rejected)

    def final_results(self) -> dict[str, list[str]]:
        """Replayable mode: every user's result after the quiet refresh of their partition (image ids)."""
        out: dict[str, list[str]] = {}
        for _, shard in sorted(self.shards.items()):
            states = [self.states[u] for u in shard.users]
            with self.core.use_shard(shard):
                for chunk in refresh_batches(states, self.s.batch_max):
                    for st, items in zip(chunk, self.core.recommend(chunk), strict=True):
                        out[st.user_id] = [i.image_id for i in items]
        return out

    def recommend_ids(self, user_id: str) -> list[str]:
        return [i.image_id for i in self.core.recommend([self.states[user_id]])[0]]
