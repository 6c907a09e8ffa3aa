"""A seeded synthetic image/behaviour stream with planted structure, for tests, demos and evaluation.

What is planted (all of it driven by one ``numpy.random.Generator`` seeded from :class:`SyntheticConfig`):

- ``n_topics`` latent topics, each a random unit direction in ``dim``-d space. An image belongs to one
  topic; its content embedding is ``normalise(topic_centre + noise · N(0, I/dim))`` (``noise`` is the
  ratio of the noise norm to the centre's), so with the default 1.5 two images of one topic have cosine
  ≈ 0.3 and images of different topics ≈ 0 ± 1/√dim.
- Images have a popularity (log-normal "quality"), so some images of a topic are much more liked than
  others; a recently created image gets a freshness boost that fades with ``fresh_half_life_ms``.
- ``n_initial_images`` exist at the start; ``n_new_images`` more arrive at uniformly random times over
  the stream (``image`` records interleaved with the events, always before any event on that image).
- Every user has ``tastes_per_user`` topics with Dirichlet weights. Tastes drift: with probability
  ``drift_per_session`` at the start of a session, the weakest taste is replaced by a new random topic.
- Users act in sessions (activity is skewed: a few users are much more active). In a session the user
  picks one taste per step and interacts positively with an image of that topic chosen by popularity ×
  freshness (``view``/``click``/``like``/``save``/``share``), never twice with the same image. With
  probability ``off_taste_rate`` the user is instead shown a popular image of another topic and
  ``skip``s it (or ``hide``s it with ``hide_rate``).
- ``noise_rate``: a positive interaction with a globally popular image regardless of taste.

:func:`generate` returns the records in time order; :func:`write_stream`/:func:`read_stream` store them
as JSONL (one record per line) or CSV (embeddings as space-separated floats).

>>> recs = generate(SyntheticConfig(n_users=20, n_initial_images=50, n_new_images=10, n_events=200, dim=8))
>>> sum(isinstance(r, ImageRecord) for r in recs), sum(isinstance(r, BehaviourEvent) for r in recs)
(60, 200)
>>> all(a.time <= b.time for a, b in zip(recs, recs[1:]))
True
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

POSITIVE_ACTIONS = frozenset({"click", "like", "save", "share"})
NEGATIVE_ACTIONS = frozenset({"skip", "hide"})

#: Probabilities of the positive actions (view counts as weak positive but is not a "hit" target).
_POS_ACTIONS = ("view", "click", "like", "save", "share")
_POS_PROBS = (0.25, 0.35, 0.25, 0.10, 0.05)


@dataclass(frozen=True)
class ImageRecord:
    """A catalog record as on the ``new-images`` topic (``embedding`` is a float32 array)."""

    image_id: str
    embedding: np.ndarray = field(compare=False)
    created_at: int
    topic: int = -1  # ground truth, for tests only; never given to a model

    @property
    def time(self) -> int:
        return self.created_at

    def to_dict(self) -> dict:
        return {
            "type": "image", "image_id": self.image_id, "created_at": self.created_at,
            "embedding": [round(float(x), 6) for x in self.embedding], "topic": self.topic,
        }


@dataclass(frozen=True)
class BehaviourEvent:
    """A behaviour event as on the ``user-behavior`` topic, plus an optional explicit rating."""

    user_id: str
    image_id: str
    action: str
    ts: int
    rating: float | None = None

    @property
    def time(self) -> int:
        return self.ts

    def to_dict(self) -> dict:
        d = {"type": "event", "user_id": self.user_id, "image_id": self.image_id, "action": self.action, "ts": self.ts}
        if self.rating is not None:
            d["rating"] = self.rating
        return d


Record = ImageRecord | BehaviourEvent


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    dim: int = 64
    n_users: int = 500
    n_topics: int = 24
    n_initial_images: int = 1500
    n_new_images: int = 500
    n_events: int = 30_000
    tastes_per_user: int = 3
    noise: float = 1.5
    popularity_sigma: float = 1.0
    activity_sigma: float = 1.0
    session_length: float = 8.0
    drift_per_session: float = 0.08
    off_taste_rate: float = 0.15
    hide_rate: float = 0.2
    noise_rate: float = 0.05
    fresh_boost: float = 4.0
    fresh_half_life_ms: float = 12 * 3600 * 1000.0
    start_ts: int = 1_700_000_000_000
    mean_gap_ms: float = 30_000.0

    def __post_init__(self) -> None:
        if self.dim < 2 or self.n_users < 1 or self.n_topics < 2 or self.n_events < 0:
            raise ValueError("dim>=2, n_users>=1, n_topics>=2 and n_events>=0 are required")
        if self.n_initial_images < 1 or self.n_new_images < 0:
            raise ValueError("need at least one initial image")
        if not 1 <= self.tastes_per_user <= self.n_topics:
            raise ValueError("tastes_per_user must be in [1, n_topics]")
        for name in ("off_taste_rate", "hide_rate", "noise_rate", "drift_per_session"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability")


def _unit(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=-1, keepdims=True)).astype(np.float32)


def generate(config: SyntheticConfig | None = None) -> list[Record]:
    """The whole stream, time ordered (an image record precedes every event that refers to it)."""
    return list(iter_stream(config or SyntheticConfig()))


def iter_stream(cfg: SyntheticConfig) -> Iterator[Record]:
    rng = np.random.default_rng(cfg.seed)
    centres = _unit(rng.normal(size=(cfg.n_topics, cfg.dim)))
    n_img = cfg.n_initial_images + cfg.n_new_images
    topic = rng.integers(0, cfg.n_topics, size=n_img)
    emb = _unit(centres[topic] + cfg.noise * rng.normal(size=(n_img, cfg.dim)) / math.sqrt(cfg.dim))
    quality = np.exp(cfg.popularity_sigma * rng.normal(size=n_img))
    span = cfg.n_events * cfg.mean_gap_ms
    created = np.empty(n_img, dtype=np.int64)
    created[: cfg.n_initial_images] = cfg.start_ts - rng.integers(0, 7 * 24 * 3600 * 1000, size=cfg.n_initial_images)
    created[cfg.n_initial_images:] = cfg.start_ts + np.sort(rng.uniform(0, span, size=cfg.n_new_images)).astype(np.int64)
    order = np.argsort(created, kind="stable")
    ids = [f"img{i:06d}" for i in range(n_img)]

    activity = np.exp(cfg.activity_sigma * rng.normal(size=cfg.n_users))
    activity /= activity.sum()
    tastes = np.stack([rng.choice(cfg.n_topics, size=cfg.tastes_per_user, replace=False) for _ in range(cfg.n_users)])
    weights = rng.dirichlet(np.ones(cfg.tastes_per_user), size=cfg.n_users)
    seen = np.zeros((cfg.n_users, n_img), dtype=bool)
    released = np.zeros(n_img, dtype=bool)
    next_img = 0
    ts = float(cfg.start_ts)
    emitted = 0
    misses = 0

    def release_until(t: float) -> Iterator[ImageRecord]:
        nonlocal next_img
        while next_img < n_img and created[order[next_img]] <= t:
            i = int(order[next_img])
            released[i] = True
            next_img += 1
            yield ImageRecord(ids[i], emb[i].copy(), int(created[i]), int(topic[i]))

    yield from release_until(ts)
    while emitted < cfg.n_events:
        u = int(rng.choice(cfg.n_users, p=activity))
        choices = np.setdiff1d(np.arange(cfg.n_topics), tastes[u])
        if rng.random() < cfg.drift_per_session and choices.size:
            weak = int(np.argmin(weights[u]))
            tastes[u, weak] = int(rng.choice(choices))
            weights[u, weak] = float(np.max(weights[u]))
            weights[u] /= weights[u].sum()
        n_steps = 1 + int(rng.poisson(cfg.session_length - 1))
        for _ in range(n_steps):
            if emitted >= cfg.n_events:
                break
            ts += float(rng.exponential(cfg.mean_gap_ms))
            yield from release_until(ts)
            r = rng.random()
            avail = released & ~seen[u]
            if r < cfg.off_taste_rate:
                mask = avail & ~np.isin(topic, tastes[u])
                action_kind = "neg"
            elif r < cfg.off_taste_rate + cfg.noise_rate:
                mask = avail
                action_kind = "pos"
            else:
                t_ = int(tastes[u, rng.choice(cfg.tastes_per_user, p=weights[u])])
                mask = avail & (topic == t_)
                action_kind = "pos"
            cand = np.flatnonzero(mask)
            if cand.size == 0:
                misses += 1
                if misses > 100 * cfg.n_users + 10_000:
                    raise ValueError("the configuration cannot produce more events (users have seen everything)")
                continue
            misses = 0
            age = np.maximum(0.0, ts - created[cand])
            p = quality[cand] * (1.0 + cfg.fresh_boost * np.exp2(-age / cfg.fresh_half_life_ms))
            i = int(rng.choice(cand, p=p / p.sum()))
            seen[u, i] = True
            if action_kind == "neg":
                action = "hide" if rng.random() < cfg.hide_rate else "skip"
            else:
                action = _POS_ACTIONS[int(rng.choice(len(_POS_ACTIONS), p=_POS_PROBS))]
            emitted += 1
            yield BehaviourEvent(f"u{u:05d}", ids[i], action, int(ts))
    # Images created after the last event are still part of the stream (the catalog is complete).
    yield from release_until(float("inf"))


# ---------------------------------------------------------------------------------------------- files
def _record_from_dict(d: dict) -> Record:
    kind = d.get("type")
    if kind == "image":
        return ImageRecord(
            str(d["image_id"]), np.asarray(d["embedding"], dtype=np.float32), int(d["created_at"]),
            int(d.get("topic", -1)),
        )
    if kind == "event":
        rating = d.get("rating")
        return BehaviourEvent(
            str(d["user_id"]), str(d["image_id"]), str(d["action"]), int(d["ts"]),
            None if rating in (None, "") else float(rating),
        )
    raise ValueError(f"unknown record type {kind!r}")


_CSV_FIELDS = ("type", "image_id", "user_id", "action", "ts", "created_at", "rating", "topic", "embedding")


def write_stream(records: Iterable[Record], path: str | Path) -> int:
    """Write records to ``path`` (``.jsonl`` or ``.csv`` by suffix); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    if path.suffix == ".csv":
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
            w.writeheader()
            for r in records:
                d = r.to_dict()
                if "embedding" in d:
                    d["embedding"] = " ".join(repr(x) for x in d["embedding"])
                w.writerow(d)
                n += 1
        return n
    with open(path, "wb") as fh:
        for r in records:
            fh.write(orjson.dumps(r.to_dict()) + b"\n")
            n += 1
    return n


def read_stream(path: str | Path) -> list[Record]:
    """Read a stream written by :func:`write_stream` (JSONL or CSV)."""
    path = Path(path)
    out: list[Record] = []
    if path.suffix == ".csv":
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                d: dict = {k: v for k, v in row.items() if v not in (None, "")}
                if d.get("type") == "image":
                    d["embedding"] = [float(x) for x in d["embedding"].split()]
                out.append(_record_from_dict(d))
        return out
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                out.append(_record_from_dict(orjson.loads(line)))
    return out


def config_dict(cfg: SyntheticConfig) -> dict:
    return asdict(cfg)
