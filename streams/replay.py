"""In-process replay of topic records through exactly the worker's code path (no Kafka, no Redis).

Used by tests and fault checks to compute what a clean single run must produce, and by ``reco eval``-style
tooling. Image records take the same route as in a worker: ``parse_image`` -> ``catalog_record`` ->
``parse_catalog`` -> ``RecommenderCore.apply_images``; behaviour records: ``parse_behavior`` ->
``RecommenderCore.learn`` with the record's offset (the dedup guard) -> ``recommend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models import RecommenderCore, UserState
from models.errors import InvalidInput

from .app import build_core
from .schemas import catalog_record, parse_behavior, parse_catalog, parse_image
from .settings import Settings


@dataclass
class Replay:
    s: Settings
    core: RecommenderCore = field(init=False)
    states: dict[str, UserState] = field(default_factory=dict)
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.core = build_core(self.s)

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
        image_id, vec, created = parse_catalog(catalog_record(img, img.embedding, offset), self.s.dim)
        self.core.apply_images([(image_id, vec, created)])

    def behavior(self, key: bytes | None, value: bytes, offset: int) -> UserState | None:
        try:
            b = parse_behavior(value, key=key, max_bytes=self.s.max_event_bytes, max_id_length=self.s.max_id_length,
                               max_future_skew_ms=self.s.max_future_skew_ms)
            state = self.states.get(b.user_id) or self.core.new_state(b.user_id)
            state, _ = self.core.learn(state, image_id=b.image_id, action=b.action, ts=b.ts, dwell_ms=b.dwell_ms,
                                       offset=offset, event_id=b.event_id)
        except InvalidInput as exc:
            self.rejected.append((offset, exc.reason))
            return None
        self.states[b.user_id] = state
        return state

    def recommend_ids(self, user_id: str) -> list[str]:
        return [i.image_id for i in self.core.recommend([self.states[user_id]])[0]]
