"""Demo traffic: publishes a catalog of images and a stream of behaviour events with planted tastes.

Images belong to ``topics`` themes; each theme has a centre vector (``--embeddings``) or a caption
vocabulary (text encoder mode). Each user likes one or two themes: they mostly interact with images of
those themes (view/click/like/save/share) and skip/hide others. So a working recommender visibly learns:
after a few events a user's list is dominated by their themes.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer

from .kafka import client_kwargs
from .settings import Settings

THEMES = {
    "cats": ["a cat sleeping on a sofa", "kitten playing with yarn", "tabby cat in the sun", "cat portrait"],
    "mountains": ["snowy mountain peak", "alpine lake under mountains", "hiking trail in the alps", "rocky ridge"],
    "food": ["bowl of ramen", "fresh pizza from the oven", "chocolate cake slice", "sushi platter"],
    "cars": ["red sports car on a track", "vintage car in a garage", "electric car charging", "race car"],
    "beach": ["sunset over the beach", "palm trees and turquoise water", "surfer riding a wave", "sand dunes"],
    "city": ["city skyline at night", "busy street in tokyo", "new york taxi", "bridge over a river in a city"],
}


@dataclass
class TrafficStats:
    images: int = 0
    events: int = 0
    seconds: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class TrafficGenerator:
    def __init__(self, s: Settings, *, n_images: int = 300, n_users: int = 50, embeddings: bool = True,
                 seed: int = 7) -> None:
        self.s = s
        self.rng = np.random.default_rng(seed)
        self.embeddings = embeddings
        self.themes = list(THEMES)
        centres = self.rng.normal(size=(len(self.themes), s.dim))
        self.centres = centres / np.linalg.norm(centres, axis=1, keepdims=True)
        self.images: list[tuple[str, int]] = []  # (image_id, theme)
        self.n_images = n_images
        self.users = [f"user-{u:04d}" for u in range(n_users)]
        self.user_themes = {u: self.rng.choice(len(self.themes), size=int(self.rng.integers(1, 3)), replace=False)
                            for u in self.users}

    def image_record(self, n: int) -> tuple[bytes, bytes]:
        theme = n % len(self.themes)
        image_id = f"img-{n:06d}"
        rec: dict = {"image_id": image_id, "created_at": int(time.time() * 1000), "url": f"https://example.invalid/{image_id}.jpg"}
        name = self.themes[theme]
        rec["tags"] = [name]
        rec["caption"] = str(self.rng.choice(THEMES[name]))
        if self.embeddings:
            v = self.centres[theme] + 0.35 * self.rng.normal(size=self.s.dim) / np.sqrt(self.s.dim) * 3
            rec["embedding"] = [round(float(x), 6) for x in v]
        self.images.append((image_id, theme))
        return image_id.encode(), orjson.dumps(rec)

    def behavior_record(self) -> tuple[bytes, bytes]:
        user = self.users[int(self.rng.integers(len(self.users)))]
        liked = self.user_themes[user]
        image_id, theme = self.images[int(self.rng.integers(len(self.images)))]
        if theme in liked:
            action = str(self.rng.choice(["view", "click", "like", "save", "share"], p=[0.3, 0.3, 0.2, 0.1, 0.1]))
        else:
            action = str(self.rng.choice(["view", "skip", "hide"], p=[0.2, 0.6, 0.2]))
        ev = {"user_id": user, "image_id": image_id, "action": action, "ts": int(time.time() * 1000),
              "event_id": uuid.uuid4().hex}
        if action == "view":
            ev["dwell_ms"] = int(self.rng.integers(200, 8000))
        return user.encode(), orjson.dumps(ev)

    async def run(self, *, events: int = 2000, rate: float = 500.0,
                  on_progress: Callable[[TrafficStats], None] | None = None) -> TrafficStats:
        """Publish the catalog, then ``events`` behaviour events at about ``rate`` events/s (0 = as fast as possible)."""
        prod = AIOKafkaProducer(**client_kwargs(self.s), linger_ms=5, acks="all", enable_idempotence=True)
        await prod.start()
        stats = TrafficStats()
        t0 = time.monotonic()
        try:
            for n in range(len(self.images), self.n_images):
                k, v = self.image_record(n)
                await prod.send(self.s.topic_images, key=k, value=v)
                stats.images += 1
            await prod.flush()
            for n in range(events):
                k, v = self.behavior_record()
                await prod.send(self.s.topic_behavior, key=k, value=v)
                stats.events += 1
                if rate > 0:
                    ahead = (n + 1) / rate - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                if on_progress is not None and n % 100 == 99:
                    stats.seconds = time.monotonic() - t0
                    on_progress(stats)
            await prod.flush()
        finally:
            await prod.stop()
        stats.seconds = time.monotonic() - t0
        return stats
