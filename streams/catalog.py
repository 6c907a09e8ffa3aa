"""The per-worker index replica.

Every worker reads **all** partitions of the compacted ``image-catalog`` topic (validated, embedded images
written by the catalog agent; tombstone = delete) into its own :class:`~models.ImageIndex`, because each
user may be recommended any image while users are partitioned across workers.

Replica protocol:

1. On start, restore ``<data_dir>/index.snapshot`` (index + the next offset to read per partition); when it
   is missing or unreadable, start empty from the beginning of the topic (rebuild).
2. Read until the end offsets seen at start-up; only then is the replica ``ready`` (the behaviour agent waits
   for it, so a restarted worker never learns from events against a half-loaded catalog).
3. Then tail the topic: each poll is applied as **one** batch (one FAISS add, one batched removal), then
   ``on_applied(new_image_ids)`` runs (push refresh to matching users) for the images the index did not
   hold before (not for catalog records sent again).
4. Every ``snapshot_interval_s`` and on stop, snapshot index + offsets atomically. About once a second,
   commit the applied position under the group ``<app_id>-index-<worker_id>`` (commit only, no group
   membership) so ``reco lag`` can show each replica's lag. The snapshot file, not that commit, is where a
   restart resumes from.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from models import RecommenderCore, StateError
from models.errors import InvalidInput

from . import metrics
from .kafka import client_kwargs, partitions_of, stop_consumer
from .schemas import parse_catalog
from .settings import Settings

log = logging.getLogger(__name__)

OnApplied = Callable[[list[str]], Awaitable[None]]


def replica_group(app_id: str, worker_id: str) -> str:
    return f"{app_id}-index-{worker_id}"


class IndexReplica:
    def __init__(self, settings: Settings, core: RecommenderCore, worker_id: str,
                 on_applied: OnApplied | None = None) -> None:
        self.s = settings
        self.core = core
        self.worker_id = worker_id
        self.on_applied = on_applied
        self.snapshot_path = Path(settings.data_dir) / "index.snapshot"
        self.ready = asyncio.Event()
        self.restored_from_snapshot = False
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._positions: dict[int, int] = {}
        self._last_snapshot = 0.0
        self._last_commit = 0.0
        self._committed: dict[int, int] = {}
        self._dirty = False

    async def start(self) -> None:
        c = AIOKafkaConsumer(
            **client_kwargs(self.s), group_id=replica_group(self.s.app_id, self.worker_id),
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
            max_poll_records=self.s.image_batch_max, fetch_max_bytes=16 * 1024 * 1024,
        )
        await c.start()
        self._consumer = c
        parts = await partitions_of(c, self.s.topic_catalog)
        if not parts:
            raise RuntimeError(f"topic {self.s.topic_catalog} does not exist")
        self._tps = [TopicPartition(self.s.topic_catalog, p) for p in parts]
        c.assign(self._tps)
        offsets = self._restore()
        for tp in self._tps:
            if tp.partition in offsets:
                c.seek(tp, offsets[tp.partition])
            else:
                await c.seek_to_beginning(tp)
        for tp in self._tps:
            self._positions[tp.partition] = await c.position(tp)

    def _restore(self) -> dict[int, int]:
        if not self.snapshot_path.exists():
            log.info("no index snapshot at %s: rebuilding from %s", self.snapshot_path, self.s.topic_catalog)
            return {}
        try:
            index, offsets = type(self.core.index).restore(self.snapshot_path, self.core.dim)
        except StateError as exc:
            log.warning("ignoring unreadable index snapshot (%s): rebuilding from the topic", exc)
            return {}
        self.core.index = index
        self.restored_from_snapshot = True
        metrics.INDEX_SIZE.set(len(index))
        log.info("restored %d images from %s at offsets %s", len(index), self.snapshot_path, offsets)
        return offsets

    async def catch_up(self, timeout_s: float = 600.0) -> None:
        """Apply everything up to the end offsets as of now; then mark the replica ready."""
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self._tps)
        deadline = time.monotonic() + timeout_s
        while any(self._positions[tp.partition] < ends[tp] for tp in self._tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"index replica did not catch up within {timeout_s}s")
            await self.poll_once(timeout_ms=200, push=False)
        self.ready.set()
        await self.snapshot()
        log.info("index replica ready: %d images", len(self.core.index))

    async def poll_once(self, timeout_ms: int = 200, push: bool = True) -> int:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=self.s.image_batch_max)
        upserts: dict[str, tuple] = {}
        uploaded: dict[str, int] = {}  # image -> its record's timestamp (ms; the upload's, see the catalog agent)
        deletes: set[str] = set()
        n = 0
        for tp, records in batches.items():
            for rec in records:
                n += 1
                key = rec.key.decode() if rec.key else None
                if rec.value is None:
                    if key:
                        deletes.add(key)
                        upserts.pop(key, None)
                        uploaded.pop(key, None)
                    continue
                try:
                    image_id, vec, created, tags = parse_catalog(rec.value, self.core.dim)
                except (InvalidInput, ValueError, KeyError, TypeError) as exc:
                    metrics.DEAD_LETTERS.labels(self.s.topic_catalog, "corrupt_catalog_record").inc()
                    log.error("skipping corrupt catalog record %s/%d@%d: %r", tp.topic, tp.partition, rec.offset, exc)
                    continue
                deletes.discard(image_id)
                upserts[image_id] = (image_id, vec, created, tags)
                uploaded[image_id] = rec.timestamp
            if records:
                self._positions[tp.partition] = records[-1].offset + 1
        if n:
            metrics.EVENTS_CONSUMED.labels(self.s.topic_catalog).inc(n)
            # images this replica did not have: a record sent again (the new-images agent reprocesses its
            # batch after a restart or a seek back) changes nobody's recommendations, so it is not pushed
            new_ids = [image_id for image_id in upserts if image_id not in self.core.index]
            self.core.apply_images(upserts.values(), deletes)
            if push:  # tailing (not the start-up catch-up): upload -> searchable here, per image added
                now = time.time() * 1000
                for ts in uploaded.values():
                    if ts > 0:
                        metrics.IMAGE_SEARCHABLE.observe(max(0.0, now - ts) / 1000)
            self._dirty = True
            metrics.INDEX_SIZE.set(len(self.core.index))
            if push and self.on_applied is not None and new_ids:
                await self.on_applied(new_ids)
        return n

    async def lag(self) -> int:
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self._tps)
        return sum(max(0, ends[tp] - self._positions[tp.partition]) for tp in self._tps)

    async def snapshot(self) -> None:
        if self._consumer is None:
            return
        offsets = dict(self._positions)
        if self._dirty or not self.snapshot_path.exists():
            await asyncio.get_running_loop().run_in_executor(None, self.core.index.snapshot, self.snapshot_path, offsets)
            self._dirty = False
        self._last_snapshot = time.monotonic()
        await self.commit_position()

    async def commit_position(self) -> None:
        """Publish the applied position for lag reporting (not a checkpoint: the snapshot is)."""
        self._last_commit = time.monotonic()
        if self._consumer is None or self._positions == self._committed:
            return
        offsets = dict(self._positions)
        try:
            stamp = str(int(time.time()))  # lets `reco lag` tell a live replica from one left behind
            await self._consumer.commit({TopicPartition(self.s.topic_catalog, p): OffsetAndMetadata(o, stamp)
                                         for p, o in offsets.items()})
            self._committed = offsets
        except Exception as exc:  # reporting only
            log.warning("could not commit replica position: %r", exc)

    async def run(self) -> None:
        """Tail the catalog forever (steps 3 and 4)."""
        while True:
            await self.poll_once()
            now = time.monotonic()
            if now - self._last_snapshot > self.s.snapshot_interval_s:
                await self.snapshot()
            elif now - self._last_commit > 1.0:
                await self.commit_position()

    async def stop(self) -> None:
        if self._consumer is not None:
            try:
                await self.snapshot()
            finally:
                await stop_consumer(self._consumer)
                self._consumer = None
