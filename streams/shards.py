"""Replayable mode (``RECO_REPLAYABLE=true``): shared signals per input partition, so that results equal a
clean replay of the input item for item, whatever crashes, restarts and rebalances happened.

In the default mode a worker learns one set of shared signals (trending, co-visitation, item embeddings,
the online ranker) from all its partitions, in batch order, in memory; a restart or rebalance changes what
it learned from and in which order, so results after a fault are fresh and valid but not those of a replay.
In replayable mode each behaviour partition has its own :class:`~models.Shard`, a pure function of that
partition's records in offset order (the core runs with ``replayable=True``), and results are refreshed
from the final shard when the partition goes quiet.

Protocol (the invariants are asserted in :meth:`Pipeline._process_replayable` or enforced here):

1. A partition's shard is built when a batch first holds one of its records after this worker was
   assigned it (a revocation drops the shard: another worker may learn the partition meanwhile). An empty
   shard learns the partition from its first record up to the end offset as of now, in offset order, with
   in-memory user states, through the same parse/learn code as live processing (:func:`rebuild_shard`).
   Its ``watermark`` is then the last offset read.
2. Live records are applied per partition in offset order. A record at or below the watermark updates
   the user's state only (the shard learned it in step 1 — possibly before the user table did, when a
   crash came between the two); a record above it updates both and raises the watermark. So each record
   reaches the shard exactly once. A record above the watermark cannot already be in the user table by
   offset (asserted): the table only holds what some shard learned first.
3. Results computed while a partition is busy are provisional (they use the shard as of the batch's end,
   which depends on batching). When a partition has had no record for ``refresh_quiet_s``, every user of
   the partition gets a result recomputed from the final shard, in the canonical batching
   (:func:`models.refresh_batches`) that :class:`streams.replay.Replay` reproduces.

Exactness assumes the catalog does not change under the events (the images an event refers to are indexed
before it is processed, as on a caught-up replica) and that the behaviour topic still holds every record
of the partition (the rebuild reads it from the beginning; with a retention that deleted old records the
shard is rebuilt from what is left). Costs: a rebuild reads and relearns the whole partition on every
assignment, the learn path computes training candidates for every positive event, and a quiet partition
refreshes all of its users.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from models import RecommenderCore, Shard, UserState
from models.errors import InvalidInput

from .kafka import client_kwargs, stop_consumer
from .schemas import parse_behavior
from .settings import Settings

log = logging.getLogger(__name__)


def learn_record(core: RecommenderCore, s: Settings, states: dict[str, UserState], shard: Shard | None,
                 key: bytes | None, value: bytes | None, offset: int,
                 rejected: list[tuple[int, str]] | None = None) -> UserState | None:
    """Parse and learn one behaviour record exactly as a live worker does (``core`` using ``shard``, if
    one is given: step 1); an invalid record is skipped (the live worker dead-letters it) and, with
    ``rejected``, listed there with its reason. Returns the new state, or None for an invalid record."""
    try:
        b = parse_behavior(value, key=key, max_bytes=s.max_event_bytes, max_id_length=s.max_id_length,
                           max_future_skew_ms=s.max_future_skew_ms)
        st = states.get(b.user_id) or core.new_state(b.user_id)
        st, _ = core.learn(st, image_id=b.image_id, action=b.action, ts=b.ts, dwell_ms=b.dwell_ms,
                           offset=offset, event_id=b.event_id)
    except InvalidInput as exc:
        if rejected is not None:
            rejected.append((offset, exc.reason))
        return None
    finally:
        if shard is not None:
            shard.watermark = max(shard.watermark, offset)
    states[b.user_id] = st
    if shard is not None:
        shard.users.add(b.user_id)
    return st


async def rebuild_shard(core: RecommenderCore, s: Settings, tp: TopicPartition,
                        beat: Callable[[], None] = lambda: None, attempts: int = 20) -> Shard:
    """A shard that has learned partition ``tp`` from its first record to the current end offset; broker
    errors (e.g. right after a broker restart) are retried with capped exponential backoff."""
    for attempt in range(attempts):
        try:
            return await _rebuild(core, s, tp, beat)
        except (KafkaError, OSError, asyncio.TimeoutError) as exc:
            if attempt == attempts - 1:
                raise
            delay = min(5.0, 0.2 * 2 ** attempt)
            log.warning("replayable: rebuilding the shard of %s/%d failed (%r); retrying in %.1fs",
                        tp.topic, tp.partition, exc, delay)
            beat()
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _rebuild(core: RecommenderCore, s: Settings, tp: TopicPartition, beat: Callable[[], None]) -> Shard:
    t0 = time.monotonic()
    shard = core.new_shard()
    consumer = AIOKafkaConsumer(**client_kwargs(s), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level="read_committed")
    await consumer.start()
    states: dict[str, UserState] = {}
    n = 0
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        while await consumer.position(tp) < end:
            batches = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
            with core.use_shard(shard):
                for rec in batches.get(tp, []):
                    if rec.offset >= end:
                        break
                    learn_record(core, s, states, shard, rec.key, rec.value, rec.offset)
                    n += 1
            beat()
        shard.watermark = max(shard.watermark, end - 1)
    finally:
        await stop_consumer(consumer)
    log.info("replayable: rebuilt the shard of %s/%d from %d records (%d users) up to offset %d in %.2fs",
             tp.topic, tp.partition, n, len(shard.users), shard.watermark, time.monotonic() - t0)
    return shard
