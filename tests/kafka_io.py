"""Small real-Kafka helpers for tests: produce records, read a topic to its end."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.kafka import client_kwargs, ensure_topics, partitions_of, stop_consumer
from streams.lag import LagMonitor
from streams.settings import Settings


async def produce(s: Settings, topic: str, records, partition: int | None = None) -> list[tuple[int, int]]:
    """Send (key, value) pairs in order; returns (partition, offset) per record."""
    prod = AIOKafkaProducer(**client_kwargs(s), acks="all", enable_idempotence=True, linger_ms=2)
    await prod.start()
    try:
        futs = [await prod.send(topic, key=k, value=v, partition=partition) for k, v in records]
        metas = [await f for f in futs]
        return [(m.partition, m.offset) for m in metas]
    finally:
        await prod.stop()


async def read_all(s: Settings, topic: str, timeout: float = 20.0) -> list:
    """Every record currently in ``topic`` (all partitions, from the beginning to the end offsets)."""
    c = AIOKafkaConsumer(**client_kwargs(s), enable_auto_commit=False, auto_offset_reset="earliest")
    await c.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(c, topic)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any([await c.position(tp) < ends[tp] for tp in tps]):
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end")
            batch = await c.getmany(timeout_ms=500)
            for recs in batch.values():
                out.extend(recs)
        return out
    finally:
        await stop_consumer(c)


def sync_ensure_topics(s: Settings) -> None:
    asyncio.run(ensure_topics(s))


def committed_offset(s: Settings, topic: str | None = None, partition: int = 0) -> int:
    """Where the worker group resumes ``topic`` (default: behaviour) ``partition``: its committed offset, else
    the log start (0 before any commit)."""
    async def read() -> int:
        monitor = LagMonitor(s)
        try:
            tp = TopicPartition(topic or s.topic_behavior, partition)
            return (await monitor.start_offsets(s.app_id, [tp]))[tp]
        finally:
            await monitor.close()
    return asyncio.run(read())
