"""Benchmark harness: the project's pipeline against a floor and a naive pipeline, side by side, on the
real local broker and Redis.

``python -m streams.bench`` (or ``reco bench``) runs, in one process tree and one run:

``floor``
    no Faust: a raw aiokafka consumer → orjson parse → a per-user taste vector in a dict → **one** batched
    FAISS search per poll → **one** pipelined Redis write (the project's own compare-and-set script) →
    offset commit. What Python + Kafka + FAISS + Redis can do here at all.
``naive``
    a small separate Faust app that does the same per event: one FAISS search and one awaited Redis write
    per event (the design the project's batch pipeline replaces).
``project``
    the real ``reco worker`` (``python -m streams.cli worker``) as a subprocess with ``RECO_*`` settings:
    user table with changelog, the full model (interest update, co-visitation, online scorer, ranking),
    one Redis pipeline and the recommendations topic per batch, the index replica.

All three read the same catalog: one index snapshot (``RECO_INDEX_KIND``, cached under ``.cache/bench``)
that the floor and naive workers load and the project's worker restores as its replica. For each pipeline:

1. **max sustained rate**: N behaviour events are pre-loaded into a fresh topic, the pipeline is started,
   and the drain rate is the slope of the group's committed offsets between 10 % and 90 % of N
   (the pipeline's start-up is not in it). CPU % (user+sys of the pipeline process over that window) and
   peak RSS come from psutil.
2. **latency at 10 / 50 / 90 % of that rate**: events are offered at a fixed rate for ``level_s`` seconds;
   a few "probe" users (each gets at most one event every ``2·probes/probe_rate`` seconds, so that event is
   the trigger of its own result) are timestamped at produce, and Redis keyspace notifications on their keys
   give the wall time the result landed: event → Redis latency p50/p95/p99. The lag (end − committed) is
   sampled at the start and end of a level: "sustained" means it did not grow by more than one second of
   input.
3. (project only) **new image → searchable**: images are produced to ``new-images`` one at a time and the
   worker's ``/ready`` index size is polled until it includes each.

Plus, in-process on the same catalog: search latency and recall@K against exact search for both index kinds,
and insert rate / single-image upsert latency.

``python -m streams.bench scale`` measures the scale curves (10k → 1M images, 10k → 1M users; memory per
image and per user) and writes ``docs/img/scale.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("RECO_CACHE_DIR", ROOT / ".cache")) / "bench"
#: variants of the project's worker, for before/after comparisons in one run
PROJECT_VARIANTS = {
    "project": {},
    "project-whole": {"RECO_BATCH_SLICE_S": "3600"},  # results published once per batch (before slicing)
    "project-flat": {"RECO_INDEX_KIND": "flat"},  # the exact index (before the HNSW kind)
    "project-fine": {"RECO_BATCH_SLICE_S": "0.03"},  # smaller result slices (latency vs per-slice overhead)
    "project-w50": {"RECO_BATCH_WITHIN_S": "0.05"},  # the wait to fill a batch before it was cut to 0.01 s
}
OTHER_VARIANTS = tuple(v for v in PROJECT_VARIANTS if v != "project")
#: every pipeline the harness runs; the position seeds its event stream, so new ones go at the end
PIPELINES = ("floor", "naive", "project", "floor+core", "naive+core", *OTHER_VARIANTS)
DEFAULT_PIPELINES = ("floor", "naive", "project", "floor+core")
ACTIONS_POS = ("view", "click", "like", "save", "share")
ACTION_P = (0.3, 0.3, 0.2, 0.1, 0.1)


# ============================================================================================ configuration
@dataclass
class BenchConfig:
    images: int = 100_000
    dim: int = 128
    users: int = 10_000
    themes: int = 256
    warmup_events: int = 2_000  # drained first (start-up, imports, first-batch costs); sizes the real drain
    drain_s: float = 20.0  # aim for a drain of about this long (N = 1.5 × warm-up rate × drain_s)
    min_events: int = 2_000
    max_events: int = 100_000
    preload_max_s: float = 5.0  # the pipeline is paused (SIGSTOP) while N events are pre-loaded
    index_kind: str = "hnsw"
    k: int = 20
    partitions: int = 4
    batch_max: int = 500
    levels: tuple[float, ...] = (0.1, 0.5, 0.9)
    level_rate: float | None = None  # 100 % for the levels (events/s); None = each pipeline's own drain rate
    level_s: float = 12.0
    probe_rate: float = 40.0  # probe events per second during a level
    probes: int = 200  # probe users
    new_images: int = 20
    pipelines: tuple[str, ...] = DEFAULT_PIPELINES
    drain_timeout_s: float = 240.0
    seed: int = 7
    bootstrap: str | None = None
    redis_url: str | None = None
    work_dir: str | None = None
    out: str | None = None
    search_queries: int = 500
    model_bench: bool = True  # time the project's RecommenderCore in-process (learn, recommend)
    profile_dir: str | None = None  # py-spy the pipelines during the drain (collapsed stacks per pipeline)
    profile_idle: bool = False  # include idle (waiting) stacks in the profiles
    project_env: dict[str, str] = field(default_factory=dict)

    def tag(self) -> str:
        return f"g2-{self.index_kind}-{self.images}-{self.dim}-{self.themes}-{self.seed}"


# ============================================================================================ synthetic data
LATENT = 24  # intrinsic dimension of the synthetic embeddings


def _latent_basis(dim: int, themes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng((seed, 12345))
    basis = rng.normal(size=(LATENT, dim)).astype(np.float32) / math.sqrt(LATENT)
    centres = rng.normal(size=(themes, LATENT)).astype(np.float32)
    return basis, centres


def embed(latent: np.ndarray, dim: int, themes: int, seed: int, rng: np.random.Generator) -> np.ndarray:
    basis, _ = _latent_basis(dim, themes, seed)
    x = latent @ basis + 0.1 * rng.normal(size=(latent.shape[0], dim)).astype(np.float32) * math.sqrt(LATENT / dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def catalog_chunks(n: int, dim: int, themes: int, seed: int, chunk: int = 50_000,
                   start: int = 0) -> Iterator[tuple[list[str], np.ndarray, list[int]]]:
    """Synthetic embeddings shaped like real ones: low intrinsic dimension (a 24-d latent space mapped
    into ``dim`` dimensions, plus a little ambient noise) and theme clusters (image j belongs to theme
    ``j % themes``; cosine ≈ 0.75 within a theme, ≈ 0 across). Generated chunk by chunk, so 1M images never
    need more than one chunk in float64.

    (Isotropic Gaussian clusters in 128-d — every point of a cluster equidistant from the others — are a
    known failure case of HNSW's neighbour pruning: at 100k such points a third of the nodes were
    unreachable. Real embeddings do not look like that.)
    """
    _, centres = _latent_basis(dim, themes, seed)
    for lo in range(start, start + n, chunk):
        hi = min(start + n, lo + chunk)
        rng = np.random.default_rng((seed, lo))
        j = np.arange(lo, hi)
        z = centres[j % themes] + 0.6 * rng.normal(size=(hi - lo, LATENT)).astype(np.float32)
        yield [f"img-{x:07d}" for x in j.tolist()], embed(z, dim, themes, seed, rng), (1_700_000_000_000 + j).tolist()


def taste_queries(n: int, dim: int, themes: int, seed: int) -> np.ndarray:
    """Queries like users' taste vectors: near a theme centre, in the latent space."""
    rng = np.random.default_rng((seed, 777))
    _, centres = _latent_basis(dim, themes, seed)
    z = centres[rng.integers(themes, size=n)] + 0.3 * rng.normal(size=(n, LATENT)).astype(np.float32)
    return embed(z, dim, themes, seed, rng)


class EventSource:
    """Behaviour events with planted tastes (each user likes one or two themes)."""

    def __init__(self, cfg: BenchConfig, seed_offset: int = 0) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed + 1000 + seed_offset)
        self.likes = self.rng.integers(0, cfg.themes, size=(cfg.users, 2))
        self.n_likes = self.rng.integers(1, 3, size=cfg.users)
        self.per_theme = -(-cfg.images // cfg.themes)
        self.seq = 0

    def image_of(self, theme: int) -> int:
        j = int(self.rng.integers(self.per_theme)) * self.cfg.themes + theme
        return j if j < self.cfg.images else theme

    def next(self, now_ms: int, user: str | None = None, event_id: str | None = None) -> tuple[bytes, bytes]:
        r = self.rng
        u = int(r.integers(self.cfg.users))
        liked = r.random() < 0.8
        theme = int(self.likes[u, int(r.integers(self.n_likes[u]))]) if liked else int(r.integers(self.cfg.themes))
        j = self.image_of(theme)
        if liked:
            action = ACTIONS_POS[int(np.searchsorted(np.cumsum(ACTION_P), r.random()))]
        else:
            action = ("view", "skip", "skip", "skip", "hide")[int(r.integers(5))]
        self.seq += 1
        user = user or f"user-{u:06d}"
        ev = {"user_id": user, "image_id": f"img-{j:07d}", "action": action, "ts": now_ms,
              "event_id": event_id or f"b{self.seq}"}
        return user.encode(), orjson.dumps(ev)


# ============================================================================================ catalog / index
def build_snapshot(cfg: BenchConfig, log: Callable[[str], None] = print) -> Path:
    """The catalog index for ``cfg`` as a snapshot file, built once and cached."""
    from models.index import make_index

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"index-{cfg.tag()}.snapshot"
    if path.exists():
        return path
    t0 = time.perf_counter()
    idx = make_index(cfg.dim, cfg.index_kind)
    done = 0
    for ids, mat, created in catalog_chunks(cfg.images, cfg.dim, cfg.themes, cfg.seed):
        idx.upsert(ids, mat, created_at=created)
        done += len(ids)
        log(f"  building {cfg.index_kind} index: {done}/{cfg.images} images ({time.perf_counter() - t0:.0f}s)")
    idx.snapshot(path, {})
    log(f"  built {cfg.index_kind} index of {cfg.images} images in {time.perf_counter() - t0:.1f}s -> {path}")
    return path


def index_microbench(cfg: BenchConfig, snapshot: Path) -> dict:
    """Search latency + recall@K vs exact for flat and the configured kind; insert rate; upsert latency."""
    import faiss

    from models.index import make_index, restore_index

    faiss.omp_set_num_threads(1)
    idx, _ = restore_index(snapshot, cfg.dim)
    exact = make_index(cfg.dim, "flat") if idx.kind != "flat" else idx
    if exact is not idx:
        for ids, mat, created in catalog_chunks(cfg.images, cfg.dim, cfg.themes, cfg.seed):
            exact.upsert(ids, mat, created_at=created)
    q = taste_queries(cfg.search_queries, cfg.dim, cfg.themes, cfg.seed)
    out: dict = {"queries": len(q), "k": cfg.k, "kinds": {}}
    truth = None
    pairs = [("flat", exact)] + ([(idx.kind, idx)] if exact is not idx else [])
    for name, ix in pairs:
        t0 = time.perf_counter()
        res = ix.search(q, cfg.k)
        dt = time.perf_counter() - t0
        ids = [[h[0] for h in row] for row in res]
        if name == "flat":
            truth = ids
        rec = sum(len(set(a) & set(b)) for a, b in zip(ids, truth, strict=True)) / max(1, sum(map(len, truth)))
        t1 = time.perf_counter()
        ix.search(q, 140)  # what the ranker asks for (2k + exclusions)
        dt140 = time.perf_counter() - t1
        out["kinds"][name] = {"search_us_per_query": dt / len(q) * 1e6, "search140_us_per_query": dt140 / len(q) * 1e6,
                              f"recall@{cfg.k}": rec}
    # inserts: batches of 256 new images, then single-image upserts (time until searchable in-process)
    new = catalog_chunks(2_560, cfg.dim, cfg.themes, cfg.seed + 99, chunk=256, start=cfg.images)
    t0 = time.perf_counter()
    n = 0
    for ids, mat, created in new:
        idx.upsert(ids, mat, created_at=created)
        n += len(ids)
    rate = n / (time.perf_counter() - t0)
    singles = []
    for ids, mat, created in catalog_chunks(50, cfg.dim, cfg.themes, cfg.seed + 98, chunk=1, start=cfg.images + 10_000):
        t1 = time.perf_counter()
        idx.upsert(ids, mat, created_at=created)
        hit = idx.search(mat, 1)[0][0][0]
        singles.append(time.perf_counter() - t1)
        assert hit == ids[0] or ids[0] in idx
    out["insert_per_s"] = rate
    out["single_upsert_ms_p50"] = float(np.percentile(singles, 50) * 1e3)
    out["single_upsert_ms_max"] = float(max(singles) * 1e3)
    out["index_kind"] = idx.kind
    return out


def model_microbench(cfg: BenchConfig, snapshot: Path, events: int = 2_000) -> dict:
    """The project's RecommenderCore in-process on the same catalog: learn µs/event and recommend µs/user
    at a full batch (500 users) and at a small one (10 users) — the model-only ceiling of any pipeline."""
    import faiss

    from models.index import restore_index

    from .app import build_core
    from .settings import Settings

    faiss.omp_set_num_threads(1)
    core = build_core(Settings(dim=cfg.dim, k=cfg.k, encoder="none"))
    core.index, _ = restore_index(snapshot, cfg.dim)
    src = EventSource(cfg, seed_offset=9)
    states: dict = {}
    now = int(time.time() * 1000)

    def learn(n: int) -> float:
        evs = [orjson.loads(src.next(now)[1]) for _ in range(n)]
        t0 = time.perf_counter()
        for e in evs:
            u = e["user_id"]
            states[u], _ = core.learn(states.get(u) or core.new_state(u), image_id=e["image_id"], action=e["action"],
                                      ts=e["ts"], event_id=e["event_id"])
        return (time.perf_counter() - t0) / n

    learn(events)  # warm-up: cold users, first training steps, imports
    learn_s = learn(events)
    users = list(states.values())
    out = {"learn_us_per_event": learn_s * 1e6}
    for size, reps in ((500, 2), (10, 30)):
        t0 = time.perf_counter()
        for r in range(reps):
            core.recommend(users[r * size:(r + 1) * size])
        out[f"recommend_us_per_user_batch{size}"] = (time.perf_counter() - t0) / (size * reps) * 1e6
    out["ceiling_events_per_s"] = 1e6 / (out["learn_us_per_event"] + out["recommend_us_per_user_batch500"])
    return out


def model_batch_bench(cfg: BenchConfig, batch: int = 200, warm_batches: int = 10, batches: int = 15) -> dict:
    """The project's RecommenderCore in-process in the worker's pattern (no Kafka, no Redis): per batch of
    ``batch`` events, ``learn`` each event, then one ``recommend`` for the batch's users. Wall and CPU
    (process) time per event over ``batches`` batches after ``warm_batches``; torch/FAISS are imported
    before the timed window. ``scorer_groups``: training groups the scorer received in the window."""
    import faiss
    import torch

    from models.index import restore_index

    from .app import build_core
    from .settings import Settings

    faiss.omp_set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch's lazy imports, outside the window
    core = build_core(Settings(dim=cfg.dim, k=cfg.k, encoder="none", index_kind=cfg.index_kind))
    core.index, _ = restore_index(build_snapshot(cfg), cfg.dim)
    src = EventSource(cfg, seed_offset=9)
    states: dict = {}
    now = int(time.time() * 1000)

    def one() -> tuple[float, float, float]:
        evs = [orjson.loads(src.next(now)[1]) for _ in range(batch)]
        t0, c0 = time.perf_counter(), time.process_time()
        for e in evs:
            u = e["user_id"]
            states[u], _ = core.learn(states.get(u) or core.new_state(u), image_id=e["image_id"],
                                      action=e["action"], ts=e["ts"], event_id=e["event_id"])
        t1 = time.perf_counter()
        core.recommend([states[u] for u in dict.fromkeys(e["user_id"] for e in evs)])
        return t1 - t0, time.perf_counter() - t1, time.process_time() - c0

    for _ in range(warm_batches):
        one()
    g0 = core.scorer.groups_seen
    learn_s = rec_s = cpu_s = 0.0
    for _ in range(batches):
        a, b, c = one()
        learn_s, rec_s, cpu_s = learn_s + a, rec_s + b, cpu_s + c
    n = batch * batches
    return {"images": cfg.images, "dim": cfg.dim, "users": cfg.users, "index_kind": cfg.index_kind, "batch": batch,
            "warm_batches": warm_batches, "batches": batches, "us_per_event": (learn_s + rec_s) / n * 1e6,
            "cpu_us_per_event": cpu_s / n * 1e6, "learn_us_per_event": learn_s / n * 1e6,
            "recommend_us_per_event": rec_s / n * 1e6, "scorer_groups": core.scorer.groups_seen - g0,
            "events": n, "load_avg": os.getloadavg()}


# ============================================================================================ worker processes
def _free_port() -> int:
    from .localstack import free_port

    return free_port()


def _redis_db(url: str) -> int:
    import redis

    return int(redis.Redis.from_url(url).connection_pool.connection_kwargs.get("db", 0) or 0)


def _worker_cfg(env_name: str = "RECO_BENCH_WORKER") -> dict:
    return json.loads(os.environ[env_name])


def _taste_update(vec: np.ndarray | None, img: np.ndarray, action: str) -> np.ndarray:
    a = {"view": 0.3, "click": 1.0, "like": 2.0, "save": 3.0, "share": 3.0, "skip": -0.5, "hide": -2.0}[action]
    v = img * a if vec is None else vec * 0.9 + img * a
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else img


def _payload(user: str, hits: list, trigger: dict, now: int, version: int) -> bytes:
    return orjson.dumps({"schema": 1, "user_id": user, "items": [
        {"image_id": i, "score": round(s, 6), "source": "content"} for i, s in hits],
        "generated_at": now, "trigger": trigger, "model_version": "bench", "rec_id": uuid.uuid4().hex,
        "version": version})


class _Model:
    """What the floor and naive workers compute per user: ``none`` = a taste vector (EMA of the images
    acted on) and its top-K by FAISS; ``core`` = the project's own RecommenderCore (learn + recommend),
    with states in a plain dict (no table, no changelog, no output topic)."""

    def __init__(self, wc: dict, index) -> None:
        self.kind = wc.get("model", "none")
        self.index = index
        self.k = wc["k"]
        self.users: dict = {}
        self.version = 0
        if self.kind == "core":
            from .app import build_core
            from .settings import Settings

            self.core = build_core(Settings(dim=wc["dim"], k=wc["k"], index_kind=index.kind, encoder="none"))
            self.core.index = index

    def learn(self, e: dict) -> None:
        u = e["user_id"]
        if self.kind == "core":
            st = self.users.get(u) or self.core.new_state(u)
            self.users[u], _ = self.core.learn(st, image_id=e["image_id"], action=e["action"], ts=e["ts"],
                                               event_id=e.get("event_id"))
            return
        v = self.index.vectors([e["image_id"]]).get(e["image_id"])
        if v is not None:
            self.users[u] = _taste_update(self.users.get(u), v, e["action"])

    def recommend(self, users: list[str]) -> list[tuple[str, list]]:
        """(user, [(image_id, score), ...]) for each user that has something to recommend."""
        if self.kind == "core":
            recs = self.core.recommend([self.users[u] for u in users])
            return [(u, [(i.image_id, i.score) for i in items]) for u, items in zip(users, recs, strict=True)]
        warm = [u for u in users if u in self.users]
        if not warm:
            return []
        return list(zip(warm, self.index.search(np.stack([self.users[u] for u in warm]), self.k), strict=True))

    def next_version(self) -> int:
        self.version = max(self.version + 1, time.time_ns() // 1000)
        return self.version


async def floor_worker(wc: dict) -> None:
    """The floor: raw aiokafka + batched FAISS search + pipelined Redis writes, no Faust."""
    import faiss
    from aiokafka import AIOKafkaConsumer

    from models.index import restore_index

    from .redis_store import RecWrite, RedisRecStore

    faiss.omp_set_num_threads(1)
    index, _ = restore_index(wc["snapshot"], wc["dim"])
    model = _Model(wc, index)
    store = RedisRecStore(wc["redis_url"], prefix=wc["prefix"])
    c = AIOKafkaConsumer(wc["topic"], bootstrap_servers=wc["bootstrap"], group_id=wc["group"],
                         enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=wc["batch_max"],
                         fetch_max_bytes=16 * 1024 * 1024)
    await c.start()
    Path(wc["ready_file"]).write_text("ready")
    from aiokafka.structs import OffsetAndMetadata

    in_flight: asyncio.Task | None = None  # the previous batch's Redis pipeline, overlapped with this batch
    in_flight_offsets: dict = {}
    done: dict = {}  # offsets whose results are in Redis: safe to commit
    last_commit = time.monotonic()
    try:
        while True:
            batches = await c.getmany(timeout_ms=100, max_records=wc["batch_max"])
            offsets = {}
            trig: dict[str, dict] = {}
            for tp, recs in batches.items():
                for r in recs:
                    e = orjson.loads(r.value)
                    model.learn(e)
                    trig[e["user_id"]] = {"event_id": e["event_id"], "ts": e["ts"]}
                if recs:
                    offsets[tp] = recs[-1].offset + 1
            now = int(time.time() * 1000)
            writes = []
            for u, hits in model.recommend(list(trig)):
                v = model.next_version()
                writes.append(RecWrite(u, v, now, _payload(u, hits, trig[u], now, v)))
            if in_flight is not None:
                await in_flight
                done.update(in_flight_offsets)
                in_flight = None
            if writes or offsets:
                in_flight = asyncio.ensure_future(store.write(writes))
                in_flight_offsets = offsets
            if done and time.monotonic() - last_commit >= 0.5:  # commit like Faust: every 0.5 s
                await c.commit({tp: OffsetAndMetadata(o, "") for tp, o in done.items()})
                done = {}
                last_commit = time.monotonic()
    finally:
        await c.stop()


def naive_worker(wc: dict) -> None:
    """The naive Faust pipeline: per event one search and one awaited Redis write."""
    import faiss
    import faust

    from models.index import restore_index

    from .redis_store import RecWrite, RedisRecStore

    faiss.omp_set_num_threads(1)
    index, _ = restore_index(wc["snapshot"], wc["dim"])
    app = faust.App(wc["group"], broker=f"kafka://{wc['bootstrap']}", store="memory://", web_enabled=False,
                    key_serializer="raw", value_serializer="raw", consumer_auto_offset_reset="earliest",
                    broker_commit_interval=0.5, topic_partitions=wc["partitions"], logging_config=None,
                    datadir=wc["data_dir"])
    topic = app.topic(wc["topic"], key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    model = _Model(wc, index)
    store_box: dict = {}

    @app.agent(topic)
    async def naive(stream):
        store = store_box.setdefault("s", RedisRecStore(wc["redis_url"], prefix=wc["prefix"]))
        async for value in stream:
            e = orjson.loads(value)
            model.learn(e)
            now = int(time.time() * 1000)
            trig = {"event_id": e["event_id"], "ts": e["ts"]}
            for u, hits in model.recommend([e["user_id"]]):  # one search per event
                v = model.next_version()
                await store.write([RecWrite(u, v, now, _payload(u, hits, trig, now, v))])  # one write per event

    @app.task
    async def ready():
        Path(wc["ready_file"]).write_text("ready")

    faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


class Proc:
    """A pipeline subprocess with psutil sampling and a SIGTERM→SIGKILL stop."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        import psutil

        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                                     stdout=self._log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0

    def cpu_s(self) -> float:
        try:
            t = self.ps.cpu_times()
            return t.user + t.system
        except Exception:
            return float("nan")

    def sample_rss(self) -> int:
        with contextlib.suppress(Exception):
            self.peak_rss = max(self.peak_rss, self.ps.memory_info().rss)
        return self.peak_rss

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# ============================================================================================ measurement
def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


@dataclass
class Level:
    fraction: float
    offered_per_s: float
    achieved_per_s: float
    probes: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    lag_start: int
    lag_end: int
    sustained: bool
    cpu_us_per_event: float = float("nan")  # pipeline process CPU time / events it committed in the level
    cpu_pct: float = float("nan")  # pipeline process CPU over the level
    load1: float = float("nan")  # machine load average at the end of the level (shared 2-core box)
    bench_cpu_pct: float = float("nan")  # the load generator (this process) over the level
    broker_cpu_pct: float = float("nan")  # the Kafka broker (when the harness started it) over the level
    lag_mid: int = -1
    mean_batch: float = float("nan")  # project only: events per processed batch (worker metrics)
    worker_p99_ms: float = float("nan")  # project only: reco_event_to_redis_seconds p99 (bucket bound)
    loop_p99_ms: float = float("nan")  # project only: reco_event_loop_delay_seconds p99 (bucket bound)
    loop_max_ms: float = float("nan")  # project only: the highest loop-delay bucket bound with a sample in it


@dataclass
class Row:
    name: str
    events: int = 0
    rate: float = float("nan")  # max sustained events/s (drain slope)
    drained: bool = False
    cpu_pct: float = float("nan")
    rss_mb: float = float("nan")
    startup_s: float = float("nan")
    cpu_us_per_event: float = float("nan")  # during the drain: CPU time of the pipeline process per event
    load1: float = float("nan")  # machine load average after the drain
    levels: list[Level] = field(default_factory=list)
    new_image_ms: list[float] = field(default_factory=list)  # idle: after the input lag drained
    new_image_load_ms: list[float] = field(default_factory=list)  # during an extra 50 % level with uploads
    new_image_load_level: dict = field(default_factory=dict)  # that level's own figures
    new_image_hops_ms: dict = field(default_factory=dict)  # worker histograms: mean ms per hop (idle run)
    error: str | None = None

    def level(self, fraction: float) -> Level | None:
        return next((lv for lv in self.levels if abs(lv.fraction - fraction) < 1e-9), None)


class Harness:
    def __init__(self, cfg: BenchConfig, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.log = log
        self.run_tag = uuid.uuid4().hex[:6]
        self.stack: list = []

    # ------------------------------------------------------------------ stack
    def start_stack(self, work: Path) -> None:
        from .localstack import KafkaBroker, RedisServer

        if not self.cfg.bootstrap:
            self.log("starting a local Kafka broker ...")
            b = KafkaBroker(work / "kafka").start(timeout=120)
            self.stack.append(b)
            self.cfg.bootstrap = b.bootstrap
        if not self.cfg.redis_url:
            r = RedisServer(work / "redis").start()
            self.stack.append(r)
            self.cfg.redis_url = r.url

    def _broker_cpu(self) -> float:
        from .localstack import KafkaBroker

        b = next((x for x in self.stack if isinstance(x, KafkaBroker)), None)
        return _cpu_of(b.proc.pid if b is not None and b.proc is not None else None)

    def stop_stack(self) -> None:
        for s in reversed(self.stack):
            with contextlib.suppress(Exception):
                s.stop()

    # ------------------------------------------------------------------ kafka helpers
    async def _clients(self):
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient

        prod = AIOKafkaProducer(bootstrap_servers=self.cfg.bootstrap, linger_ms=5, acks=1,
                                max_batch_size=256 * 1024, max_request_size=8 * 1024 * 1024)
        admin = AIOKafkaAdminClient(bootstrap_servers=self.cfg.bootstrap)
        cons = AIOKafkaConsumer(bootstrap_servers=self.cfg.bootstrap, enable_auto_commit=False)
        await prod.start()
        await admin.start()
        await cons.start()
        return prod, admin, cons

    async def create_topics(self, admin, names: dict[str, int]) -> None:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(n, p, 1) for n, p in names.items()])
        await asyncio.sleep(0.5)

    async def lag(self, admin, cons, group: str, topic: str) -> tuple[int, int]:
        """(committed, end) summed over the topic's partitions."""
        from aiokafka import TopicPartition

        from .kafka import partitions_of

        tps = getattr(self, "_tps", {}).get(topic)
        if tps is None:
            tps = [TopicPartition(topic, p) for p in await partitions_of(cons, topic)]
            self.__dict__.setdefault("_tps", {})[topic] = tps
        from aiokafka.errors import KafkaError

        ends = await cons.end_offsets(tps)
        try:
            got = await admin.list_consumer_group_offsets(group, partitions=tps)
        except KafkaError:  # e.g. the offsets topic of a fresh broker is still being created
            return 0, sum(ends.values())
        committed = sum(max(0, m.offset) for m in got.values() if m is not None)
        return committed, sum(ends.values())

    async def preload(self, prod, topic: str, n: int, src: EventSource, max_s: float | None = None) -> tuple[int, float]:
        """Produce ``n`` events as fast as possible (stopping early after ``max_s``); returns (sent, rate)."""
        t0 = time.perf_counter()
        now = int(time.time() * 1000)
        futs = []
        sent = 0
        for j in range(n):
            k, v = src.next(now)
            futs.append(await prod.send(topic, key=k, value=v))
            sent += 1
            if j % 5000 == 4999:
                await prod.flush()
                if max_s is not None and time.perf_counter() - t0 > max_s:
                    break
        await prod.flush()
        for f in futs:
            await f
        return sent, sent / (time.perf_counter() - t0)

    async def wait_committed(self, admin, cons, group: str, topic: str, target: int, proc: Proc, timeout: float,
                             base: int = 0) -> list[tuple[float, int, float]]:
        """Sample (t, committed − base, cpu seconds) every 0.25 s until ``target`` is committed."""
        samples: list[tuple[float, int, float]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.tail()}")
            committed, _end = await self.lag(admin, cons, group, topic)
            samples.append((time.monotonic(), committed - base, proc.cpu_s()))
            proc.sample_rss()
            if committed >= target:
                break
            await asyncio.sleep(0.25)
        return samples

    def _spy(self, proc: Proc, name: str) -> subprocess.Popen | None:
        cfg = self.cfg
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
        if not cfg.profile_dir or not exe:
            return None
        Path(cfg.profile_dir).mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([exe, "record", "-p", str(proc.proc.pid), "-r", "50", "-f", "raw", "-o",
                                 str(Path(cfg.profile_dir) / f"{name.replace('+', '-')}.txt"), "--nonblocking"]
                                + (["--idle"] if cfg.profile_idle else []),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # ------------------------------------------------------------------ one pipeline
    def _start(self, name: str, topics: dict, work: Path, snapshot: Path) -> tuple[Proc, Callable[[], bool], str, dict]:
        cfg = self.cfg
        data = work / name.replace("+", "-")
        data.mkdir(parents=True, exist_ok=True)
        ready_file = data / "ready"
        group = f"bench-{self.run_tag}-{name.replace('+', '-')}"
        prefix = f"rec:{self.run_tag}:{name}:"
        wc = {"snapshot": str(snapshot), "dim": cfg.dim, "k": cfg.k, "redis_url": cfg.redis_url, "prefix": prefix,
              "topic": topics["behavior"], "bootstrap": cfg.bootstrap, "group": group, "batch_max": cfg.batch_max,
              "ready_file": str(ready_file), "partitions": cfg.partitions, "data_dir": str(data / "faust")}
        if name not in PROJECT_VARIANTS:
            base, _, model = name.partition("+")
            wc["model"] = model or "none"
            env = {"RECO_BENCH_WORKER": json.dumps(wc)}
            cmd = [sys.executable, "-m", "streams.bench", f"_{base}-worker"]
            proc = Proc(name, cmd, env, work / f"{name.replace('+', '-')}.log")
            return proc, ready_file.exists, prefix, {"group": group}
        shutil.copy(snapshot, data / "index.snapshot")
        port = _free_port()
        env = {
            "RECO_KAFKA_BOOTSTRAP": cfg.bootstrap, "RECO_REDIS_URL": cfg.redis_url, "RECO_APP_ID": group,
            "RECO_TOPIC_BEHAVIOR": topics["behavior"], "RECO_TOPIC_IMAGES": topics["images"],
            "RECO_TOPIC_CATALOG": topics["catalog"], "RECO_TOPIC_RECOMMENDATIONS": topics["recs"],
            "RECO_TOPIC_DEAD_LETTERS": topics["dlq"], "RECO_PARTITIONS": str(cfg.partitions),
            "RECO_IMAGE_PARTITIONS": "2", "RECO_DIM": str(cfg.dim), "RECO_K": str(cfg.k), "RECO_ENCODER": "none",
            "RECO_INDEX_KIND": cfg.index_kind, "RECO_DATA_DIR": str(data), "RECO_WEB_PORT": str(port),
            "RECO_LOG_LEVEL": "WARNING", "RECO_REDIS_KEY_PREFIX": prefix, "RECO_BATCH_MAX": str(cfg.batch_max),
            **cfg.project_env, **PROJECT_VARIANTS[name],
        }
        proc = Proc(name, [sys.executable, "-m", "streams.cli", "worker"], env, work / f"{name}.log")

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                    return bool(orjson.loads(r.read()).get("ready"))
            except OSError:
                return False

        return proc, ready, prefix, {"group": group, "port": port}

    async def run_pipeline(self, name: str, work: Path, snapshot: Path, clients) -> Row:
        cfg = self.cfg
        prod, admin, cons = clients
        row = Row(name)
        t = f"bench-{self.run_tag}-{name.replace('+', '-')}"
        topics = {"behavior": f"{t}-ub", "images": f"{t}-img", "catalog": f"{t}-cat", "recs": f"{t}-recs",
                  "dlq": f"{t}-dlq"}
        parts = {topics["behavior"]: cfg.partitions}
        if name in PROJECT_VARIANTS:
            parts.update({topics["images"]: 2, topics["catalog"]: 2, topics["recs"]: cfg.partitions, topics["dlq"]: 1})
        await self.create_topics(admin, parts)
        src = EventSource(cfg, seed_offset=PIPELINES.index(name))
        t_start = time.monotonic()
        proc, is_ready, prefix, info = self._start(name, topics, work, snapshot)
        group = info["group"]
        spy = None
        try:
            while not is_ready():
                if time.monotonic() - t_start > 180 or not proc.alive():
                    raise RuntimeError(f"{name} not ready:\n{proc.tail()}")
                await asyncio.sleep(0.2)
            row.startup_s = time.monotonic() - t_start
            # warm-up: the first events pay for the group join, imports, caches; they also size the drain
            w, _ = await self.preload(prod, topics["behavior"], cfg.warmup_events, src)
            t_w = time.monotonic()
            await self.wait_committed(admin, cons, group, topics["behavior"], w, proc, cfg.drain_timeout_s)
            r0 = w / max(1e-3, time.monotonic() - t_w)
            n = int(min(cfg.max_events, max(cfg.min_events, 1.5 * r0 * cfg.drain_s)))
            # pre-load N events with the pipeline paused (SIGSTOP), then measure how fast it drains them
            proc.ps.suspend()
            try:
                n, produced = await self.preload(prod, topics["behavior"], n, src, max_s=cfg.preload_max_s)
            finally:
                proc.ps.resume()
            row.events = n
            self.log(f"[{name}] ready after {row.startup_s:.1f}s; warm-up {w} events at ~{r0:,.0f}/s; pre-loaded "
                     f"{n} events ({produced:,.0f}/s) while paused; draining ...")
            spy = self._spy(proc, name)
            samples = [(time.monotonic(), 0, proc.cpu_s())]  # resumed: the drain starts now
            samples += await self.wait_committed(admin, cons, group, topics["behavior"], w + n, proc,
                                                 cfg.drain_timeout_s, base=w)
            row.drained = bool(samples) and samples[-1][1] >= n
            row.rate, row.cpu_pct = _drain_rate(samples, n)
            row.cpu_us_per_event = row.cpu_pct / 100 / row.rate * 1e6 if row.rate > 0 else float("nan")
            row.load1 = os.getloadavg()[0]
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(30)
                spy = None
            self.log(f"[{name}] drain: {row.rate:,.0f} events/s, cpu {row.cpu_pct:.0f}% = "
                     f"{row.cpu_us_per_event:,.0f} us/event, load {row.load1:.1f}"
                     + ("" if row.drained else f" (NOT drained within {cfg.drain_timeout_s:.0f}s)"))
            if row.drained and math.isfinite(row.rate) and row.rate > 0:
                for f in cfg.levels:
                    spy = self._spy(proc, f"{name}-{int(f * 100)}pct")
                    lv = await self.offered_level(prod, admin, cons, group, topics["behavior"], prefix, f,
                                                  cfg.level_rate or row.rate, src, proc, info.get("port"))
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            spy.wait(30)
                        spy = None
                    row.levels.append(lv)
                    self.log(f"[{name}] {f:.0%} load ({lv.offered_per_s:,.0f}/s offered, {lv.achieved_per_s:,.0f}/s "
                             f"sent): p50 {lv.p50_ms:.1f} p95 {lv.p95_ms:.1f} p99 {lv.p99_ms:.1f} ms, lag "
                             f"{lv.lag_start}->{lv.lag_end}{'' if lv.sustained else ' GROWING'}; cpu {lv.cpu_pct:.0f}% "
                             f"{lv.cpu_us_per_event:,.0f} us/event, load {lv.load1:.1f} (load generator "
                             f"{lv.bench_cpu_pct:.0f}%, broker {lv.broker_cpu_pct:.0f}%)"
                             + (f"; worker: {lv.mean_batch:.0f} events/batch, p99 <= {lv.worker_p99_ms:.0f} ms, "
                                f"loop delay p99 <= {lv.loop_p99_ms:.0f} ms, max <= {lv.loop_max_ms:.0f} ms"
                                if math.isfinite(lv.mean_batch) else ""))
            if name in PROJECT_VARIANTS and cfg.new_images:
                # idle: first let the worker catch up with what the 90 % level left queued
                c, e = await self.wait_drained(admin, cons, group, topics["behavior"])
                m0 = _scrape(info["port"])
                row.new_image_ms = await self.new_images(prod, topics["images"], info["port"])
                m1 = _scrape(info["port"])
                for hop in ("reco_image_to_catalog_seconds", "reco_image_searchable_seconds"):
                    n = m1.get(hop + "_count", 0) - m0.get(hop + "_count", 0)
                    if n > 0:
                        row.new_image_hops_ms[hop] = 1e3 * (m1.get(hop + "_sum", 0) - m0.get(hop + "_sum", 0)) / n
                self.log(f"[{name}] idle (input lag {e - c}): new image searchable after p50 "
                         f"{_pct(row.new_image_ms, 50):.0f} ms, max {max(row.new_image_ms, default=float('nan')):.0f} ms; "
                         f"worker means: upload->catalog "
                         f"{row.new_image_hops_ms.get('reco_image_to_catalog_seconds', float('nan')):.0f} ms, "
                         f"upload->index {row.new_image_hops_ms.get('reco_image_searchable_seconds', float('nan')):.0f} ms")
                # and under load: one more 50 % level with an upload every second (each upload also pushes
                # refreshed results to the users it matches, so this level carries more work than the pure one)
                await self.wait_drained(admin, cons, group, topics["behavior"])
                lv, row.new_image_load_ms = await asyncio.gather(
                    self.offered_level(prod, admin, cons, group, topics["behavior"], prefix, 0.5,
                                       cfg.level_rate or row.rate, src, proc, info.get("port")),
                    self.new_images(prod, topics["images"], info["port"], start=cfg.images + 60_000, delay_s=1.0))
                row.new_image_load_level = asdict(lv)
                self.log(f"[{name}] 50% load + an upload a second: new image searchable after p50 "
                         f"{_pct(row.new_image_load_ms, 50):.0f} ms, max {max(row.new_image_load_ms):.0f} ms; events "
                         f"p50/p99 {lv.p50_ms:.0f}/{lv.p99_ms:.0f} ms{'' if lv.sustained else ' (NOT sustained)'}")
            row.rss_mb = proc.sample_rss() / 2**20
        except Exception as exc:
            row.error = f"{type(exc).__name__}: {exc}"[:2000]
            self.log(f"[{name}] FAILED: {row.error}")
        finally:
            if spy is not None:
                spy.kill()
            proc.stop()
        return row

    async def offered_level(self, prod, admin, cons, group, topic, prefix, fraction, max_rate, src, proc,
                            port: int | None = None) -> Level:
        """Offer ``fraction·max_rate`` events/s for ``level_s``; probes measure event→Redis latency."""
        import redis.asyncio as aredis

        cfg = self.cfg
        rate = max(1.0, fraction * max_rate)
        probe_rate = min(cfg.probe_rate, rate / 2)
        client = aredis.Redis.from_url(cfg.redis_url)
        with contextlib.suppress(Exception):
            await client.config_set("notify-keyspace-events", "Kh")
        pubsub = client.pubsub()
        db = _redis_db(cfg.redis_url)
        await pubsub.psubscribe(f"__keyspace@{db}__:{prefix}probe-*")
        sent_at: dict[str, float] = {}
        lat: list[float] = []
        reader = aredis.Redis.from_url(cfg.redis_url)
        stop = asyncio.Event()

        async def listen() -> None:
            while not stop.is_set():
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if msg is None:
                    continue
                t_seen = time.time()
                key = msg["channel"].decode().split(":", 1)[1]
                raw = await reader.hget(key, "payload")
                if not raw:
                    continue
                eid = orjson.loads(raw).get("trigger", {}).get("event_id")
                t0 = sent_at.pop(eid, None)
                if t0 is not None:
                    lat.append((t_seen - t0) * 1e3)

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0.2)
        m0 = _scrape(port)
        c0, e0 = await self.lag(admin, cons, group, topic)
        lag_start = e0 - c0
        cpu0, me0, br0 = proc.cpu_s(), _cpu_of(os.getpid()), self._broker_cpu()
        t0 = time.monotonic()
        sent = probes = 0
        warm = 1.0  # seconds before probes count
        next_probe = t0 + warm
        probe_gap = 1.0 / probe_rate
        probe_user = 0
        lag_mid = None
        while True:
            now = time.monotonic()
            el = now - t0
            if el >= cfg.level_s:
                break
            if lag_mid is None and el >= cfg.level_s / 2:
                cm, em = await self.lag(admin, cons, group, topic)
                lag_mid = em - cm
            due = int(rate * el) - sent
            now_ms = int(time.time() * 1000)
            for _ in range(max(0, due)):
                if time.monotonic() >= next_probe:
                    user = f"probe-{probe_user % cfg.probes:04d}"
                    probe_user += 1
                    eid = f"probe-{uuid.uuid4().hex[:12]}"
                    k, v = src.next(now_ms, user=user, event_id=eid)
                    sent_at[eid] = time.time()
                    probes += 1
                    next_probe += probe_gap
                else:
                    k, v = src.next(now_ms)
                await prod.send(topic, key=k, value=v)
                sent += 1
            proc.sample_rss()
            await asyncio.sleep(0.005)
        await prod.flush()
        achieved = sent / (time.monotonic() - t0)
        c1, e1 = await self.lag(admin, cons, group, topic)
        lag_end = e1 - c1
        cpu1, t1 = proc.cpu_s(), time.monotonic()
        cpu_per_event = (cpu1 - cpu0) / max(1, c1 - c0) * 1e6
        cpu_pct = (cpu1 - cpu0) / (t1 - t0) * 100
        bench_cpu = (_cpu_of(os.getpid()) - me0) / (t1 - t0) * 100
        broker_cpu = (self._broker_cpu() - br0) / (t1 - t0) * 100
        # let the tail drain (and late probes land) before the next level
        t_end = time.monotonic()
        while time.monotonic() - t_end < 30:
            c, e = await self.lag(admin, cons, group, topic)
            if e - c <= 0 and not sent_at:
                break
            if e - c <= 0 and time.monotonic() - t_end > 3:
                break
            await asyncio.sleep(0.25)
        stop.set()
        await listener
        m1 = _scrape(port)
        await pubsub.aclose()
        await client.aclose()
        await reader.aclose()
        # sustained: at most ~1 s of input queued at the end of the level (+0.5 s: commits trail processing by
        # up to the commit interval); lag_mid is kept for the record
        sustained = lag_end <= rate * 1.5 + 100
        mean_batch, wp99, loop_p99, loop_max = _metrics_delta(m0, m1)
        return Level(fraction, rate, achieved, len(lat), _pct(lat, 50), _pct(lat, 95), _pct(lat, 99),
                     lag_start, lag_end, sustained, cpu_per_event, cpu_pct, os.getloadavg()[0], bench_cpu,
                     broker_cpu, lag_mid if lag_mid is not None else -1, mean_batch, wp99, loop_p99, loop_max)

    async def wait_drained(self, admin, cons, group: str, topic: str, timeout_s: float = 120.0) -> tuple[int, int]:
        """Wait (bounded) until the group has no input lag; returns the last (committed, end)."""
        deadline = time.monotonic() + timeout_s
        while True:
            c, e = await self.lag(admin, cons, group, topic)
            if e - c <= 0 or time.monotonic() > deadline:
                return c, e
            await asyncio.sleep(0.5)

    async def new_images(self, prod, topic: str, port: int, start: int | None = None,
                         delay_s: float = 0.1) -> list[float]:
        def size() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=5) as r:
                    return int(orjson.loads(r.read())["index_size"])
            except OSError:
                return -1

        cfg = self.cfg
        out = []
        base = size()
        for n, (ids, mat, created) in enumerate(catalog_chunks(cfg.new_images, cfg.dim, cfg.themes, cfg.seed + 77,
                                                                chunk=1, start=start or cfg.images + 50_000)):
            rec = {"image_id": ids[0], "embedding": [round(float(x), 6) for x in mat[0]], "created_at": created[0]}
            t0 = time.perf_counter()
            await prod.send_and_wait(topic, key=ids[0].encode(), value=orjson.dumps(rec))
            while size() < base + n + 1:
                if time.perf_counter() - t0 > 30:
                    break
                await asyncio.sleep(0.01)
            out.append((time.perf_counter() - t0) * 1e3)
            await asyncio.sleep(delay_s)
        return out

    # ------------------------------------------------------------------ everything
    async def run_all(self, work: Path, snapshot: Path) -> list[Row]:
        clients = await self._clients()
        rows = []
        try:
            for name in self.cfg.pipelines:
                snap = snapshot
                kind = PROJECT_VARIANTS.get(name, {}).get("RECO_INDEX_KIND")
                if kind and kind != self.cfg.index_kind:
                    snap = build_snapshot(BenchConfig(**{**asdict(self.cfg), "index_kind": kind}), self.log)
                rows.append(await self.run_pipeline(name, work, snap, clients))
        finally:
            prod, admin, cons = clients
            await prod.stop()
            await admin.close()
            await cons.stop()
        return rows


def _cpu_of(pid: int | None) -> float:
    import psutil

    if not pid:
        return float("nan")
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except Exception:
        return float("nan")


def _scrape(port: int | None) -> dict[str, float]:
    """The worker's batch-size and event→Redis histogram samples (project only)."""
    if not port:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith(("reco_batch_size_", "reco_event_to_redis_seconds_", "reco_image_",
                            "reco_event_loop_delay_seconds_")):
            head, _, value = line.rpartition(" ")
            out[head] = float(value)
    return out


def _buckets(d: dict, name: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of histogram ``name``'s buckets in ``d``, ascending."""
    return sorted((float("inf") if 'le="+Inf"' in k else float(k.split('le="')[1].split('"')[0]), v)
                  for k, v in d.items() if k.startswith(f"{name}_bucket"))


def _metrics_delta(m0: dict, m1: dict) -> tuple[float, float, float, float]:
    """Over a level, from the worker's histograms: (mean batch, event->Redis p99 ms, loop-delay p99 ms, the
    highest loop-delay bucket bound with a sample, ms); percentiles are bucket upper bounds."""
    nan = float("nan")
    if not m0 or not m1:
        return nan, nan, nan, nan
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    n = d.get("reco_batch_size_count", 0.0)
    mean_batch = d.get("reco_batch_size_sum", 0.0) / n if n else nan

    def p99(buckets: list[tuple[float, float]]) -> float:
        total = buckets[-1][1] if buckets else 0
        return next((le for le, c in buckets if total and c >= 0.99 * total), nan) * 1e3

    loop = _buckets(d, "reco_event_loop_delay_seconds")
    loop_max = next((le for le, c in loop if c >= loop[-1][1]), nan) * 1e3 if loop and loop[-1][1] else nan
    return mean_batch, p99(_buckets(d, "reco_event_to_redis_seconds")), p99(loop), loop_max


def _drain_rate(samples: list[tuple[float, int, float]], n: int) -> tuple[float, float]:
    """Slope of committed offsets between 10 % and 90 % of ``n`` (or over what was done), and the CPU %
    of the pipeline process over the same window."""
    if len(samples) < 2:
        return float("nan"), float("nan")
    lo = next((s for s in samples if s[1] >= 0.1 * n), None)
    hi = next((s for s in samples if s[1] >= 0.9 * n), None)
    if lo is None or hi is None or hi is lo:  # too fast for the sampling: use the whole drain
        lo, hi = samples[0], samples[-1]
    dt = hi[0] - lo[0]
    if dt <= 0:
        return float("nan"), float("nan")
    return (hi[1] - lo[1]) / dt, (hi[2] - lo[2]) / dt * 100


# ============================================================================================ report
def format_report(cfg: BenchConfig, rows: list[Row], micro: dict | None, model: dict | None = None) -> str:
    by = {r.name: r for r in rows}
    lines = [f"images={cfg.images} dim={cfg.dim} users={cfg.users} index={cfg.index_kind} k={cfg.k} "
             f"partitions={cfg.partitions} batch_max={cfg.batch_max} cores={os.cpu_count()} "
             f"load1={os.getloadavg()[0]:.1f}", ""]
    head = f"{'pipeline':<10} {'events/s':>9} {'cpu%':>5} {'cpu us/ev':>9} {'rss MB':>7} "
    for f in cfg.levels:
        head += f"| {f'p50/p95/p99 ms @{f:.0%}':>24} "
    head += "| sustained | new img ms"
    lines.append(head)
    lines.append("-" * len(head))
    for r in rows:
        s = f"{r.name:<10} {r.rate:>9,.0f} {r.cpu_pct:>5.0f} {r.cpu_us_per_event:>9,.0f} {r.rss_mb:>7.0f} "
        for f in cfg.levels:
            lv = r.level(f)
            s += f"| {(f'{lv.p50_ms:.0f}/{lv.p95_ms:.0f}/{lv.p99_ms:.0f}' if lv else '-'):>24} "
        sus = "/".join(("yes" if lv.sustained else "NO") for lv in r.levels) or "-"
        s += f"| {sus:>9} | "
        s += f"{_pct(r.new_image_ms, 50):.0f} (max {max(r.new_image_ms):.0f})" if r.new_image_ms else "-"
        if r.new_image_load_ms:
            s += f"; +50 % load {_pct(r.new_image_load_ms, 50):.0f} (max {max(r.new_image_load_ms):.0f})"
        if r.error:
            s += f"  ERROR {r.error.splitlines()[0][:120]}"
        lines.append(s)
    p = by.get("project")
    if p:
        for other in ("naive", "floor", "naive+core", "floor+core", *OTHER_VARIANTS):
            o = by.get(other)
            if o and o.rate > 0 and p.rate > 0:
                lines.append(f"project / {other:<10} = {p.rate / o.rate:6.2f}")
    if micro:
        lines.append("")
        lines.append(f"index ({micro['queries']} clustered queries, k={micro['k']}, 1 FAISS thread):")
        for kind, m in micro["kinds"].items():
            rk = next(v for key, v in m.items() if key.startswith("recall@"))
            lines.append(f"  {kind:<5} search {m['search_us_per_query']:8.0f} us/query (k=140: "
                         f"{m['search140_us_per_query']:.0f}), recall@{micro['k']} {rk:.3f}")
        lines.append(f"  {micro['index_kind']} insert {micro['insert_per_s']:,.0f} images/s (batches of 256); "
                     f"one image upsert+searchable p50 {micro['single_upsert_ms_p50']:.1f} ms, "
                     f"max {micro['single_upsert_ms_max']:.1f} ms")
    if model:
        lines.append("")
        lines.append("model (the project's RecommenderCore in-process, same catalog, one core):")
        for kind, m in model.items():
            lines.append(f"  {kind:<5} index: learn {m['learn_us_per_event']:,.0f} us/event; recommend "
                         f"{m['recommend_us_per_user_batch500']:,.0f} us/user at 500 users/batch, "
                         f"{m['recommend_us_per_user_batch10']:,.0f} us/user at 10 -> model-only ceiling "
                         f"~{m['ceiling_events_per_s']:,.0f} events/s")
    return "\n".join(lines)


def run_bench(cfg: BenchConfig | None = None, log: Callable[[str], None] | None = None, **overrides) -> dict:
    """Run the side-by-side benchmark; prints progress and the table, returns everything as a dict."""
    cfg = cfg or BenchConfig()
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    log = log or (lambda m: print(m, flush=True))
    bad = [p for p in cfg.pipelines if p not in PIPELINES]
    if bad:
        raise ValueError(f"unknown pipelines {bad}; choose from {PIPELINES}")
    own_work = cfg.work_dir is None
    work = Path(cfg.work_dir or tempfile.mkdtemp(prefix="reco-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    h = Harness(cfg, log)
    try:
        h.start_stack(work)
        snapshot = build_snapshot(cfg, log)
        micro = None
        if cfg.search_queries:
            log("index micro-benchmark (search latency, recall, inserts) ...")
            micro = index_microbench(cfg, snapshot)
        model = None
        if cfg.model_bench:
            model = {}
            kinds = [cfg.index_kind] + (["flat"] if cfg.index_kind != "flat" else [])
            for kind in kinds:  # the same model on the exact index too: what the approximate index buys
                log(f"model micro-benchmark (the project's RecommenderCore in-process, {kind} index) ...")
                kcfg = BenchConfig(**{**asdict(cfg), "index_kind": kind})
                model[kind] = model_microbench(kcfg, build_snapshot(kcfg, log))
        rows = asyncio.run(h.run_all(work, snapshot))
    finally:
        h.stop_stack()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    report = format_report(cfg, rows, micro, model)
    print(report, flush=True)
    result = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("project_env",)},
              "rows": [asdict(r) for r in rows], "index": micro, "model": model, "report": report,
              "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=2, default=str))
    return result


# ============================================================================================ scale curves
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _index_bytes(idx) -> int:
    """Accounted memory of an index: the FAISS structure (its serialised size) + the Python id maps."""
    import faiss

    fa = idx._g.index if hasattr(idx, "_g") else idx._index
    total = int(faiss.serialize_index(fa).nbytes)
    maps = [idx._created_at] + ([idx._g.slot_of, idx._g.slot_ids] if hasattr(idx, "_g") else [idx._int_of, idx._str_of])
    total += sum(sys.getsizeof(m) for m in maps)
    total += sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in idx._created_at.items())
    return total


def _typical_states(dim: int, seed: int = 3) -> dict[str, bytes]:
    """UserState bytes of a typical user (~30 events) and a heavy one (seen/hidden windows full)."""
    from models import InterestModel

    rng = np.random.default_rng(seed)
    model = InterestModel(dim=dim)
    out = {}
    for name, n in (("typical", 30), ("heavy", 700)):
        st = model.new_state("user-000000")
        for j in range(n):
            v = rng.normal(size=dim).astype(np.float32)
            v /= np.linalg.norm(v)
            act = ("view", "click", "like", "skip", "hide")[j % 5]
            st = model.learn_one(st, image_id=f"img-{int(rng.integers(10**7)):07d}", action=act, ts=1_000 + j,
                                 vector=v, offset=j, event_id=uuid.uuid4().hex)
        out[name] = st.to_bytes()
    return out


def run_scale(images: tuple[int, ...] = (10_000, 100_000, 1_000_000), users: tuple[int, ...] = (10_000, 100_000, 1_000_000),
              dim: int = 128, kinds: tuple[str, ...] = ("flat", "hnsw"), queries: int = 200, k: int = 20,
              hnsw_budget_s: float = 900.0, png: str | None = str(ROOT / "docs" / "img" / "scale.png"),
              out: str | None = None, log: Callable[[str], None] | None = None) -> dict:
    """Scale curves at ``dim``: per index kind and catalog size, build (insert) rate, memory per image,
    search latency (batch of ``queries``), recall@k vs exact; per user count, UserState bytes and in-table
    memory per user; finally the RSS of the largest catalog + the largest user table together."""
    import gc

    import faiss

    from models.index import make_index

    faiss.omp_set_num_threads(1)
    log = log or (lambda m: print(m, flush=True))
    themes = 1024
    q = taste_queries(queries, dim, themes, 5)
    img_rows: list[dict] = []
    keep = None
    for n in images:
        truth = None
        for kind in kinds:
            gc.collect()
            base = _rss()
            idx = make_index(dim, kind)
            t0 = time.perf_counter()
            built = 0
            partial = False
            for ids, mat, created in catalog_chunks(n, dim, themes, 5, chunk=25_000):
                idx.upsert(ids, mat, created_at=created)
                built += len(ids)
                if kind != "flat" and time.perf_counter() - t0 > hnsw_budget_s and built < n:
                    partial = True
                    break
            build_s = time.perf_counter() - t0
            mem = _rss() - base
            accounted = _index_bytes(idx)
            t1 = time.perf_counter()
            res = idx.search(q, k)
            search_us = (time.perf_counter() - t1) / queries * 1e6
            ids_res = [[h[0] for h in r] for r in res]
            if kind == "flat":
                truth = ids_res
            rec = float("nan")
            if truth is not None and not partial:
                rec = sum(len(set(a) & set(b)) for a, b in zip(ids_res, truth, strict=True)) / (queries * k)
            singles = []
            for sid, smat, screated in catalog_chunks(20, dim, themes, 6, chunk=1, start=n + 1_000_000):
                t2 = time.perf_counter()
                idx.upsert(sid, smat, created_at=screated)
                singles.append(time.perf_counter() - t2)
            row = {"kind": kind, "images": n, "built": built, "partial": partial, "build_s": build_s,
                   "insert_per_s": built / build_s, "bytes_per_image": accounted / max(1, built),
                   "rss_bytes_per_image": mem / max(1, built),
                   "search_us_per_query": search_us, f"recall@{k}": rec,
                   "single_upsert_ms_p50": float(np.percentile(singles, 50) * 1e3)}
            img_rows.append(row)
            log(f"  {kind:<5} {n:>9,} images{' (PARTIAL: ' + str(built) + ')' if partial else ''}: build "
                f"{build_s:7.1f}s ({row['insert_per_s']:,.0f}/s), {row['bytes_per_image']:,.0f} B/image "
                f"(RSS delta {row['rss_bytes_per_image']:,.0f}), search "
                f"{search_us:8.0f} us/query, recall@{k} {rec:.3f}, single upsert {row['single_upsert_ms_p50']:.2f} ms")
            if n == max(images) and kind == kinds[-1]:
                keep = idx  # keep the largest catalog alive for the combined memory measurement
            else:
                del idx
            gc.collect()
    states = _typical_states(dim)
    user_rows = []
    table: dict[bytes, bytes] = {}
    template = states["typical"]
    for u in users:
        gc.collect()
        table.clear()
        gc.collect()
        base = _rss()
        for j in range(u):
            uid = f"user-{j:06d}".encode() if j < 10**6 else f"user-{j}".encode()
            table[uid] = template.replace(b"user-000000", uid, 1)
        mem = _rss() - base
        accounted = sys.getsizeof(table) + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in table.items())
        user_rows.append({"users": u, "state_bytes": len(template), "heavy_state_bytes": len(states["heavy"]),
                          "table_bytes_per_user": accounted / u, "rss_bytes_per_user": mem / u})
        log(f"  {u:>9,} users: UserState {len(template):,} B (heavy user {len(states['heavy']):,} B), "
            f"in-table {accounted / u:,.0f} B/user (RSS delta {mem / u:,.0f}), {accounted / 2**20:,.0f} MiB")
    combined = {"images": max(images), "users": max(users), "index_kind": kinds[-1], "rss_gib": _rss() / 2**30}
    log(f"  process RSS with {max(images):,} images ({kinds[-1]}) + {max(users):,} users in the table: "
        f"{combined['rss_gib']:.2f} GiB")
    del keep
    table.clear()
    result = {"dim": dim, "k": k, "queries": queries, "images": img_rows, "users": user_rows, "combined": combined}
    if png:
        plot_scale(result, png)
        log(f"  plot -> {png} ({Path(png).stat().st_size / 1024:.0f} KiB)")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return result


def worker_memory(images: int = 1_000_000, users: int = 1_000_000, dim: int = 128, learn_events: int = 40_000,
                  batch: int = 200, log: Callable[[str], None] | None = None, out: str | None = None) -> dict:
    """RSS of the worker's own data structures at ``images`` + ``users``, in one process with the worker's
    imports (Faust, aiokafka, torch, FAISS, the app module):

    1. ``build_core`` exactly as the worker (``RECO_INDEX_KIND=hnsw``), images applied through
       ``RecommenderCore.apply_images`` in chunks (HNSW index + the catalog mirror + registry);
    2. ``learn_events`` events of up to 20k returning users learned in the worker's batch pattern (learn
       each, one ``recommend`` per batch), so the shared signals (co-visitation, popularity, item embeddings, the torch scorer and its replay
       ring, the served-candidate memories) exist and are sized for the catalog;
    3. ``users`` user states as the Faust table holds them (``bytes`` key -> ``UserState.to_bytes()``, a
       typical user of ~30 events), in a dict like Faust's in-memory store.

    Not included: Faust's own runtime buffers (a running worker with 100k images and 10k users measured
    ~1.1 GB RSS in the full benchmark, which this also covers for the parts it shares)."""
    import gc
    import resource

    import faiss
    import torch

    from . import app as _app  # noqa: F401  (the worker's imports: Faust, aiokafka, ...)
    from .app import build_core
    from .settings import Settings

    log = log or (lambda m: print(m, flush=True))
    faiss.omp_set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    gc.collect()
    steps: dict[str, float] = {"imports_gib": _rss() / 2**30}
    log(f"  worker imports: RSS {steps['imports_gib']:.2f} GiB")
    core = build_core(Settings(dim=dim, encoder="none", index_kind="hnsw"))
    t0 = time.perf_counter()
    for ids, mat, created in catalog_chunks(images, dim, 1024, 5, chunk=25_000):
        core.apply_images(list(zip(ids, mat, created, strict=True)))
    gc.collect()
    steps["images_gib"] = _rss() / 2**30
    log(f"  + {images:,} images via apply_images ({time.perf_counter() - t0:.0f} s): RSS {steps['images_gib']:.2f} GiB")
    # Learning phase on a working set of returning users (at most 20k), so the scorer trains (its torch
    # module, Adam state and replay ring exist) and the served-candidate memories fill as in a live worker.
    cfg = BenchConfig(images=images, dim=dim, users=min(users, 20_000))
    src = EventSource(cfg, seed_offset=11)
    states: dict = {}
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for _ in range(max(1, learn_events // batch)):
        evs = [orjson.loads(src.next(now)[1]) for _ in range(batch)]
        for e in evs:
            u = e["user_id"]
            states[u], _ = core.learn(states.get(u) or core.new_state(u), image_id=e["image_id"],
                                      action=e["action"], ts=e["ts"], event_id=e["event_id"])
        core.recommend([states[u] for u in dict.fromkeys(e["user_id"] for e in evs)])
    gc.collect()
    steps["learned_gib"] = _rss() / 2**30
    log(f"  + {learn_events:,} events learned ({time.perf_counter() - t0:.0f} s, {core.scorer.steps} scorer steps, "
        f"{len(core.embeddings._e) if hasattr(core.embeddings, '_e') else '?'} embedding rows): "
        f"RSS {steps['learned_gib']:.2f} GiB")
    template = _typical_states(dim)["typical"]
    table: dict[bytes, bytes] = {}
    for j in range(users):
        uid = f"user-{j:06d}".encode() if j < 10**6 else f"user-{j}".encode()
        table[uid] = template.replace(b"user-000000", uid, 1)
    gc.collect()
    steps["users_gib"] = _rss() / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    log(f"  + {users:,} user states ({len(template):,} B each, format 2): RSS {steps['users_gib']:.2f} GiB "
        f"(peak {peak:.2f} GiB)")
    res = {"images": images, "users": users, "dim": dim, "learn_events": learn_events, "state_bytes": len(template),
           **steps, "peak_gib": peak, "load_avg": os.getloadavg()}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=2))
    return res


def plot_scale(result: dict, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.8))
    kinds = sorted({r["kind"] for r in result["images"]})
    for kind in kinds:
        rs = [r for r in result["images"] if r["kind"] == kind]
        x = [r["built"] for r in rs]
        ax[0].plot(x, [r["search_us_per_query"] for r in rs], "o-", label=kind)
        ax[1].plot(x, [r["insert_per_s"] for r in rs], "o-", label=kind)
        ax[2].plot(x, [r["bytes_per_image"] for r in rs], "o-", label=kind)
    us = result["users"]
    ax[3].plot([r["users"] for r in us], [r["table_bytes_per_user"] for r in us], "o-", label="in table")
    ax[3].plot([r["users"] for r in us], [r["state_bytes"] for r in us], "s--", label="UserState bytes (typical)")
    titles = ("search µs/query (1 thread)", "inserts/s (batches)", "memory B/image", "memory B/user")
    for a, t in zip(ax, titles, strict=True):
        a.set_xscale("log")
        a.set_title(t, fontsize=10)
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax[0].set_yscale("log")
    ax[1].set_yscale("log")
    ax[2].set_ylim(bottom=0)
    ax[3].set_ylim(bottom=0)
    ax[0].set_xlabel("images")
    ax[1].set_xlabel("images")
    ax[2].set_xlabel("images")
    ax[3].set_xlabel("users")
    fig.suptitle(f"scale at d={result['dim']}", fontsize=11)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=72)
    plt.close(fig)


# ============================================================================================ command line
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(float(x)) for x in text.split(",") if x)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_floor-worker"]:
        asyncio.run(floor_worker(_worker_cfg()))
        return 0
    if argv[:1] == ["_naive-worker"]:
        sys.argv = [sys.argv[0], "worker"]
        naive_worker(_worker_cfg())
        return 0
    p = argparse.ArgumentParser(prog="python -m streams.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    d = BenchConfig()
    p.add_argument("--images", type=int, default=d.images)
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--warmup-events", type=int, default=d.warmup_events)
    p.add_argument("--drain-s", type=float, default=d.drain_s, help="target drain duration (sizes N)")
    p.add_argument("--max-events", type=int, default=d.max_events)
    p.add_argument("--index-kind", default=d.index_kind, choices=("flat", "hnsw"))
    p.add_argument("--level-s", type=float, default=d.level_s)
    p.add_argument("--level-rate", type=float, default=None,
                   help="events/s that the levels are fractions of (default: each pipeline's own drain rate)")
    p.add_argument("--pipelines", default=",".join(d.pipelines))
    p.add_argument("--batch-max", type=int, default=d.batch_max)
    p.add_argument("--new-images", type=int, default=d.new_images)
    p.add_argument("--bootstrap", default=None, help="Kafka bootstrap (default: start a local broker)")
    p.add_argument("--redis-url", default=None, help="Redis URL (default: start a local redis-server)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--profile-dir", default=None, help="py-spy each pipeline during its drain (collapsed stacks)")
    p.add_argument("--search-queries", type=int, default=d.search_queries, help="0 = skip the index micro-benchmark")
    mb = sub.add_parser("model", help="the model alone in the worker's batch pattern (learn each event, one "
                                      "recommend per batch): wall and CPU us/event")
    mb.add_argument("--images", type=int, default=d.images)
    mb.add_argument("--dim", type=int, default=d.dim)
    mb.add_argument("--users", type=int, default=d.users)
    mb.add_argument("--index-kind", default=d.index_kind, choices=("flat", "hnsw"))
    mb.add_argument("--batch", type=int, default=200)
    mb.add_argument("--warm-batches", type=int, default=10)
    mb.add_argument("--batches", type=int, default=15)
    mb.add_argument("--out", default=None)
    sc = sub.add_parser("scale", help="scale curves (images and users) and docs/img/scale.png")
    sc.add_argument("--images", default="10000,100000,1000000")
    sc.add_argument("--users", default="10000,100000,1000000")
    sc.add_argument("--dim", type=int, default=128)
    sc.add_argument("--kinds", default="flat,hnsw")
    sc.add_argument("--hnsw-budget-s", type=float, default=900.0)
    sc.add_argument("--png", default=str(ROOT / "docs" / "img" / "scale.png"))
    sc.add_argument("--out", default=None)
    me = sub.add_parser("memory", help="RSS of the worker's data structures at N images + M users (one process, "
                                       "the worker's imports, core built as the worker builds it)")
    me.add_argument("--images", type=int, default=1_000_000)
    me.add_argument("--users", type=int, default=1_000_000)
    me.add_argument("--dim", type=int, default=128)
    me.add_argument("--learn-events", type=int, default=40_000)
    me.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.cmd == "memory":
        worker_memory(a.images, a.users, a.dim, a.learn_events, out=a.out)
        return 0
    if a.cmd == "model":
        res = model_batch_bench(BenchConfig(images=a.images, dim=a.dim, users=a.users, index_kind=a.index_kind),
                                batch=a.batch, warm_batches=a.warm_batches, batches=a.batches)
        print(f"model: {res['us_per_event']:,.0f} us/event wall, {res['cpu_us_per_event']:,.0f} CPU "
              f"(learn {res['learn_us_per_event']:,.0f}, recommend {res['recommend_us_per_event']:,.0f}); "
              f"{res['scorer_groups']} scorer groups / {res['events']} events; load {res['load_avg']}")
        if a.out:
            Path(a.out).parent.mkdir(parents=True, exist_ok=True)
            Path(a.out).write_text(json.dumps(res, indent=2))
        return 0
    if a.cmd == "scale":
        run_scale(images=_ints(a.images), users=_ints(a.users), dim=a.dim, kinds=tuple(a.kinds.split(",")),
                  hnsw_budget_s=a.hnsw_budget_s, png=a.png or None, out=a.out)
        return 0
    res = run_bench(BenchConfig(images=a.images, dim=a.dim, users=a.users, warmup_events=a.warmup_events,
                                drain_s=a.drain_s, max_events=a.max_events, index_kind=a.index_kind, level_s=a.level_s,
                                pipelines=tuple(a.pipelines.split(",")), batch_max=a.batch_max,
                                new_images=a.new_images, bootstrap=a.bootstrap, redis_url=a.redis_url, out=a.out,
                                profile_dir=a.profile_dir, search_queries=a.search_queries,
                                level_rate=a.level_rate))
    return 1 if any(r["error"] for r in res["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
