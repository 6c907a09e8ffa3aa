"""The per-worker index replica: restored from its snapshot on restart, rebuilt from the topic when the
snapshot is missing or corrupt, and caught up with what arrived while the worker was down."""

from __future__ import annotations

import asyncio

import pytest

from models.index import restore_index
from tests.conftest import wait_until
from tests.integration.test_pipeline import make_images
from tests.kafka_io import produce, sync_ensure_topics

pytestmark = pytest.mark.integration


def test_replica_snapshot_restore_and_rebuild(make_settings, start_worker):
    s = make_settings(partitions=1, image_partitions=2)
    sync_ensure_topics(s)
    images, _, _ = make_images(60, s.dim, seed=21, tags=True)
    asyncio.run(produce(s, s.topic_images, images[:40]))
    w = start_worker(s, name="first")
    wait_until(lambda: w.metric("reco_index_size") == 40, 30, what="40 images")
    assert w.stop() == 0
    snapshot = s.data_dir / "index.snapshot"
    assert snapshot.exists(), "a stopping worker snapshots its replica"
    # the images' tags went new-images -> catalog topic -> replica -> snapshot, normalised
    assert restore_index(snapshot, s.dim)[0].tags("img-0005") == ("theme1", "photo")

    # restart: restored from the snapshot, then catches up with images published while it was down
    asyncio.run(produce(s, s.topic_images, images[40:50] + [(images[0][0], None)]))
    w = start_worker(s, name="restored")
    wait_until(lambda: w.metric("reco_index_size") == 49, 30, what="snapshot + catch-up (10 new, 1 deleted)")
    assert "restored 40 images" in w.log_path.read_text()
    assert w.metric("reco_events_consumed_total", topic=s.topic_catalog) == 11, "only the tail was read"
    assert w.stop() == 0

    # corrupt snapshot: ignored, the replica is rebuilt from the compacted topic
    snapshot.write_bytes(b"not a snapshot")
    w = start_worker(s, name="corrupt")
    wait_until(lambda: w.metric("reco_index_size") == 49, 30, what="rebuilt after a corrupt snapshot")
    assert "ignoring unreadable index snapshot" in w.log_path.read_text()
    assert w.stop() == 0
    rebuilt = restore_index(snapshot, s.dim)[0]  # from the compacted topic alone: the tags came with it
    assert rebuilt.tags("img-0005") == rebuilt.tags("img-0045") == ("theme1", "photo")

    # missing snapshot: rebuilt as well
    snapshot.unlink()
    w = start_worker(s, name="missing")
    wait_until(lambda: w.metric("reco_index_size") == 49, 30, what="rebuilt without a snapshot")
    assert "rebuilding from" in w.log_path.read_text()
