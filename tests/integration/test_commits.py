"""The worker's commits on the real broker, where what Faust delivers has holes (streams/faust_fixes.py, 6:
a hole is read from the log before the commit moves past it). Transaction markers are offsets no consumer
receives: the commit must move past them, also when the worker resumes at one after a restart. Records
the fetcher dropped are in the log: the commit must wait for them, and they must be fetched again."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka import client_kwargs
from tests.conftest import wait_until
from tests.integration.test_pipeline import make_events, make_images
from tests.kafka_io import committed_offset, produce, sync_ensure_topics

pytestmark = pytest.mark.integration


async def produce_in_transactions(s, records, per_transaction: int, txn_id: str) -> list[int]:
    """Send ``records`` to partition 0 of the behaviour topic, ``per_transaction`` per committed transaction
    (each commit writes a marker after them); returns their offsets."""
    prod = AIOKafkaProducer(**client_kwargs(s), transactional_id=txn_id)
    await prod.start()
    offsets = []
    try:
        for i in range(0, len(records), per_transaction):
            async with prod.transaction():
                futs = [await prod.send(s.topic_behavior, key=k, value=v, partition=0)
                        for k, v in records[i:i + per_transaction]]
            offsets += [(await f).offset for f in futs]
    finally:
        await prod.stop()
    return offsets


def test_commits_move_past_transaction_markers_across_a_restart(make_settings, start_worker):
    s = make_settings(partitions=1, commit_interval_s=0.2)
    sync_ensure_topics(s)
    images, theme_of, _ = make_images(40, s.dim, seed=7)
    asyncio.run(produce(s, s.topic_images, images))
    users = [f"x{i}" for i in range(6)]
    events, _ = make_events(users, theme_of, 60, seed=8)

    w = start_worker(s)
    first = asyncio.run(produce_in_transactions(s, events[:30], 5, f"{s.app_id}-txn"))
    assert first[5] == first[4] + 2, "a transaction's commit marker takes an offset"
    wait_until(lambda: committed_offset(s) == first[-1] + 1, 30,
               what=f"the commit past the first markers (at {committed_offset(s)}; records at {first})")
    assert w.stop() == 0  # resumes at first[-1] + 1: the last transaction's marker

    w2 = start_worker(s, name="restarted")
    second = asyncio.run(produce_in_transactions(s, events[30:], 5, f"{s.app_id}-txn"))
    assert second[0] == first[-1] + 2
    wait_until(lambda: committed_offset(s) == second[-1] + 1, 30,
               what=f"the restarted worker's commit past the marker it resumed at ({first[-1] + 1}; at "
                    f"{committed_offset(s)}; records at {second})")
    assert w2.metric("reco_commit_holes_total", verdict="gap") >= 1
    assert w2.metric("reco_events_consumed_total", topic=s.topic_behavior) == 30


def test_new_images_the_fetcher_dropped_are_fetched_again_before_the_commit_passes_them(make_settings,
                                                                                      start_worker):
    # With Faust's own gap bookkeeping the jump was booked as a gap and committed: the dropped images were
    # lost for good (never indexed). Not booked but never re-fetched, the commit would wait forever.
    s = make_settings(fault_injection="drop_fetched_images")
    sync_ensure_topics(s)
    images, _, _ = make_images(30, s.dim, seed=9)
    w = start_worker(s)
    asyncio.run(produce(s, s.topic_images, images[:1]))
    wait_until(lambda: w.metric("reco_index_size") == 1, 30, what="the first image indexed")
    asyncio.run(produce(s, s.topic_images, images[1:]))  # the first fetch of two or more: all but its last dropped
    wait_until(lambda: "fault injection: dropped" in w.log_path.read_text(errors="replace"), 30,
               what="the failpoint")
    wait_until(lambda: w.metric("reco_index_size") == 30, 40, what="every image indexed, the dropped ones too")
    wait_until(lambda: committed_offset(s, s.topic_images) == 30, 30, what="the images' commit at the end")
    assert w.metric("reco_commit_holes_total", verdict="records") >= 2  # read, then read again and sought
