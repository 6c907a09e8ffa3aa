"""Replayable mode in the core: shards learned per partition in offset order give results that do not
depend on batching, on when results were computed, or on how partitions interleave."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from models import RecommenderCore, UserState, refresh_batches
from models.ranking import N_FEATURES
from models.synthetic import BehaviourEvent, ImageRecord, SyntheticConfig, generate

CFG = SyntheticConfig(seed=5, dim=16, n_users=30, n_topics=5, n_initial_images=80, n_new_images=0, n_events=900)
PARTITIONS = 3


def _stream():
    images, events = [], []
    for r in generate(CFG):
        (images if isinstance(r, ImageRecord) else events).append(r)
    parts: dict[int, list[BehaviourEvent]] = {p: [] for p in range(PARTITIONS)}
    for ev in events:  # a user's events all go to one partition, in order (like keyed Kafka records)
        parts[zlib.crc32(ev.user_id.encode()) % PARTITIONS].append(ev)
    return images, parts


def _run(order_seed: int, recommend_p: float, replayable: bool = True):
    """Learn every partition's events in offset order, partitions interleaved at random (``order_seed``),
    with results computed at random points in between (they must not influence learning)."""
    images, parts = _stream()
    core = RecommenderCore(dim=CFG.dim, k=8, seed=3, replayable=replayable)
    core.apply_images([(r.image_id, r.embedding, r.created_at) for r in images])
    shards = {p: core.new_shard() for p in parts}
    states: dict[str, UserState] = {}
    pos = dict.fromkeys(parts, 0)
    rng = np.random.default_rng(order_seed)
    while any(pos[p] < len(parts[p]) for p in parts):
        p = int(rng.choice([q for q in parts if pos[q] < len(parts[q])]))
        n = int(rng.integers(1, 40))  # a "batch" of this partition
        with core.use_shard(shards[p]):
            for offset in range(pos[p], min(pos[p] + n, len(parts[p]))):
                ev = parts[p][offset]
                st = states.get(ev.user_id) or core.new_state(ev.user_id)
                states[ev.user_id], _ = core.learn(st, image_id=ev.image_id, action=ev.action, ts=ev.ts, offset=offset)
                shards[p].users.add(ev.user_id)
            if rng.random() < recommend_p:
                core.recommend([states[u] for u in sorted(shards[p].users)][:7])
        pos[p] = min(pos[p] + n, len(parts[p]))
    final = {}
    for p in sorted(shards):
        with core.use_shard(shards[p]):
            for chunk in refresh_batches([states[u] for u in shards[p].users], 10):
                for st, items in zip(chunk, core.recommend(chunk), strict=True):
                    final[st.user_id] = [(i.image_id, i.score) for i in items]
    return core, shards, states, final


def test_results_do_not_depend_on_interleaving_batching_or_serving():
    _, shards_a, states_a, final_a = _run(order_seed=1, recommend_p=0.9)
    _, shards_b, states_b, final_b = _run(order_seed=2, recommend_p=0.1)
    assert final_a == final_b  # item for item, score for score
    assert all(states_a[u].same_as(states_b[u]) for u in states_a)
    assert sum(s.fields["scorer"].steps for s in shards_a.values()) > 0  # the ranker did learn
    assert any(s.fields["covisit"]._pairs for s in shards_a.values())


def test_default_mode_learns_from_what_was_served():
    # The counterpart: without replayable mode the training groups use the lists served, so the scorer
    # (and the results) depend on when results were computed.
    _, shards_a, _, _ = _run(order_seed=1, recommend_p=0.9, replayable=False)
    _, shards_b, _, _ = _run(order_seed=1, recommend_p=0.0, replayable=False)
    x = np.random.default_rng(0).normal(size=(16, N_FEATURES)).astype(np.float32)
    wa = [s.fields["scorer"].score(x) for _, s in sorted(shards_a.items())]
    wb = [s.fields["scorer"].score(x) for _, s in sorted(shards_b.items())]
    assert any(not np.array_equal(a, b) for a, b in zip(wa, wb, strict=True))


def test_use_shard_swaps_and_restores_the_shared_state():
    core, shards, states, _ = _run(order_seed=1, recommend_p=0.2)
    own = core.shared_state_bytes()
    assert core.covisit is not shards[0].fields["covisit"]
    with core.use_shard(shards[0]):
        assert core.covisit is shards[0].fields["covisit"] and core.ranker.scorer is core.scorer
        inside = core.shared_state_bytes()
        with pytest.raises(RuntimeError):
            with core.use_shard(shards[1]):
                pass
    assert core.shared_state_bytes() == own != inside
    fresh = core.new_shard()
    assert fresh.watermark == -1 and not fresh.users
    assert fresh.fields["popularity"].half_life_ms == core.popularity.half_life_ms
    assert fresh.fields["scorer"].steps == 0 and not fresh.fields["covisit"]._pairs
    assert fresh.fields["covisit"].registry is core.registry  # ids stay shared with the catalog mirror


def test_state_only_learning_leaves_the_shard_untouched():
    core, shards, states, _ = _run(order_seed=1, recommend_p=0.2)
    user = sorted(shards[0].users)[0]
    st = states[user]
    image = next(i for i in core.index.ids() if i not in st.excluded())
    with core.use_shard(shards[0]):
        before = core.shared_state_bytes()
        only, applied = core.learn(st, image_id=image, action="like", ts=st.updated_ts + 1, offset=10_000,
                                   shared=False)
        assert applied and core.shared_state_bytes() == before
        full, _ = core.learn(st, image_id=image, action="like", ts=st.updated_ts + 1, offset=10_000)
        assert core.shared_state_bytes() != before
    assert only.same_as(full)  # the user's side is the same either way
