"""The index replica pushes only images its index did not hold (streams/catalog.py, step 3), with a fake
consumer at the seam where the replica polls the catalog topic."""

from types import SimpleNamespace

import numpy as np
from aiokafka import TopicPartition

from models import RecommenderCore
from streams.catalog import IndexReplica
from streams.schemas import catalog_record

DIM = 8
TP = TopicPartition("cat", 0)


def record(offset, image_id, seed, tags=()):
    vec = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    image = SimpleNamespace(image_id=image_id, created_at=1_700_000_000_000, caption="", tags=tags, url=None)
    return SimpleNamespace(key=image_id.encode(), value=catalog_record(image, vec, offset), offset=offset,
                           timestamp=0)


class Catalog:
    def __init__(self, polls) -> None:
        self.polls = list(polls)

    async def getmany(self, timeout_ms, max_records):
        return {TP: self.polls.pop(0)} if self.polls else {}


async def test_only_images_new_to_the_index_are_pushed():
    pushed = []

    async def on_applied(ids):
        pushed.append(ids)

    s = SimpleNamespace(data_dir="/nonexistent", topic_catalog="cat", image_batch_max=100)
    replica = IndexReplica(s, RecommenderCore(dim=DIM, k=3), "w0", on_applied=on_applied)
    replica._consumer = Catalog([[record(0, "a", 1), record(1, "b", 2)],
                                 [record(2, "a", 1), record(3, "c", 3)],  # "a" sent again
                                 [record(4, "b", 2)]])
    for _ in range(3):
        await replica.poll_once()
    assert pushed == [["a", "b"], ["c"]]
    assert len(replica.core.index) == 3


async def test_tags_of_catalog_records_reach_the_index_and_a_bad_record_is_skipped():
    import orjson

    from streams import metrics

    s = SimpleNamespace(data_dir="/nonexistent", topic_catalog="cat", image_batch_max=100)
    replica = IndexReplica(s, RecommenderCore(dim=DIM, k=3), "w0")
    bad = record(2, "c", 3, tags=("x",))
    bad.value = orjson.dumps({**orjson.loads(bad.value), "tags": "not a list"})
    counted = metrics.DEAD_LETTERS.labels("cat", "corrupt_catalog_record")._value.get()
    replica._consumer = Catalog([[record(0, "a", 1, tags=("Sky", "sea")), record(1, "b", 2), bad],
                                 [record(3, "a", 1)]])  # "a" again, now without tags
    await replica.poll_once()
    core = replica.core
    assert core.index.tags("a") == ("sky", "sea") and core.index.tags("b") == () and "c" not in core.index
    assert (core.mirror.tag_rows[core.registry.get("a")] >= 0).sum() == 2
    assert metrics.DEAD_LETTERS.labels("cat", "corrupt_catalog_record")._value.get() == counted + 1
    await replica.poll_once()
    assert core.index.tags("a") == () and (core.mirror.tag_rows[core.registry.get("a")] == -1).all()
