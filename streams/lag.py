"""Consumer lag: per topic/partition end offset, committed offset and lag, for the worker group and for
every index replica (each replica commits its catalog position under ``<app_id>-index-<worker_id>``)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from .kafka import client_kwargs, partitions_of, stop_consumer
from .settings import Settings

STALE_REPLICA_S = 300


@dataclass(frozen=True)
class PartitionLag:
    group: str
    kind: str  # "workers" | "index-replica"
    topic: str
    partition: int
    end_offset: int
    committed: int | None  # None: the group has not committed on this partition yet
    committed_at: int | None = None  # epoch s of an index replica's last position commit

    @property
    def stale(self) -> bool:
        """An index replica that has not reported for 5 minutes (its worker is gone or its data dir was lost)."""
        return self.kind == "index-replica" and (self.committed_at is None
                                                 or time.time() - self.committed_at > STALE_REPLICA_S)

    @property
    def lag(self) -> int:
        return self.end_offset - (self.committed or 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "lag": self.lag, "stale": self.stale}


class LagMonitor:
    """Long-lived admin + consumer pair (the worker's gauge timer and the CLI share it)."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self._admin = AIOKafkaAdminClient(**client_kwargs(s))
        self._consumer = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False)
        self._started = False

    async def start(self) -> None:
        if not self._started:
            await self._admin.start()
            await self._consumer.start()
            self._started = True

    async def close(self) -> None:
        if self._started:
            await self._admin.close()
            await stop_consumer(self._consumer)
            self._started = False

    async def _tps(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, p) for p in await partitions_of(self._consumer, topic, timeout_s=3.0)]

    async def group_lag(self, group: str, kind: str, topics: list[str]) -> list[PartitionLag]:
        await self.start()
        tps = [tp for t in topics for tp in await self._tps(t)]
        if not tps:
            return []
        ends = await self._consumer.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        out = []
        for tp in tps:
            meta = committed.get(tp)
            off = meta.offset if meta is not None and meta.offset >= 0 else None
            stamp = meta.metadata if meta is not None else ""
            at = int(stamp) if stamp and stamp.isdigit() else None
            out.append(PartitionLag(group, kind, tp.topic, tp.partition, ends[tp], off, at))
        return out

    async def start_offsets(self, group: str, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Where ``group`` resumes each partition: its committed offset, else the log start (earliest)."""
        await self.start()
        committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        out = {}
        missing = []
        for tp in tps:
            meta = committed.get(tp)
            if meta is not None and meta.offset >= 0:
                out[tp] = meta.offset
            else:
                missing.append(tp)
        if missing:
            out.update(await self._consumer.beginning_offsets(missing))
        return out

    async def first_offset_from(self, tp: TopicPartition, offset: int, timeout_s: float = 5.0) -> int | None:
        """The offset of the first record at or after ``offset`` in the log (None: none within the timeout).
        Tells a real gap in a partition (transaction markers) from a record a consumer failed to deliver; read
        as Faust's consumer reads (``read_uncommitted``: records of aborted transactions are delivered too)."""
        c = AIOKafkaConsumer(**client_kwargs(self.s), enable_auto_commit=False, isolation_level="read_uncommitted")
        await c.start()
        try:
            c.assign([tp])
            c.seek(tp, offset)
            batch = await c.getmany(tp, timeout_ms=int(timeout_s * 1000), max_records=1)
            records = batch.get(tp) or []
            return records[0].offset if records else None
        finally:
            await stop_consumer(c)

    async def replica_groups(self) -> list[str]:
        await self.start()
        prefix = f"{self.s.app_id}-index-"
        groups = await self._admin.list_consumer_groups()
        return sorted(g[0] for g in groups if g[0].startswith(prefix))

    async def report(self) -> list[PartitionLag]:
        s = self.s
        rows = await self.group_lag(s.app_id, "workers", [s.topic_behavior, s.topic_images])
        for g in await self.replica_groups():
            rows += await self.group_lag(g, "index-replica", [s.topic_catalog])
        return rows


async def lag_report(s: Settings) -> list[PartitionLag]:
    mon = LagMonitor(s)
    try:
        return await asyncio.wait_for(mon.report(), 30)
    finally:
        await mon.close()
