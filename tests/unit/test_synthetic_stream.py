"""Properties of the synthetic stream generator (models/synthetic.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.synthetic import (
    BehaviourEvent,
    ImageRecord,
    SyntheticConfig,
    generate,
    read_stream,
    write_stream,
)

SMALL = SyntheticConfig(seed=3, dim=16, n_users=30, n_topics=6, n_initial_images=80, n_new_images=20, n_events=600)


def _key(records):
    out = []
    for r in records:
        if isinstance(r, ImageRecord):
            out.append(("i", r.image_id, r.created_at, r.topic, r.embedding.tobytes()))
        else:
            out.append(("e", r.user_id, r.image_id, r.action, r.ts))
    return out


def test_same_seed_same_stream_other_seed_other_stream():
    a, b = generate(SMALL), generate(SMALL)
    assert _key(a) == _key(b)
    c = generate(SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    assert _key(a) != _key(c)


def test_time_ordered_and_images_precede_their_events():
    recs = generate(SMALL)
    times = [r.time for r in recs]
    assert times == sorted(times)
    known: set[str] = set()
    for r in recs:
        if isinstance(r, ImageRecord):
            known.add(r.image_id)
        else:
            assert r.image_id in known, "event on an image that has not arrived yet"
    n_img = sum(isinstance(r, ImageRecord) for r in recs)
    assert n_img == SMALL.n_initial_images + SMALL.n_new_images
    assert sum(isinstance(r, BehaviourEvent) for r in recs) == SMALL.n_events


def test_no_user_interacts_twice_with_one_image_and_actions_are_valid():
    seen = set()
    for r in generate(SMALL):
        if isinstance(r, BehaviourEvent):
            assert (r.user_id, r.image_id) not in seen
            seen.add((r.user_id, r.image_id))
            assert r.action in {"view", "click", "like", "save", "share", "skip", "hide"}


def test_planted_structure_topics_are_separable_and_skips_are_off_taste():
    recs = generate(SMALL)
    imgs = [r for r in recs if isinstance(r, ImageRecord)]
    emb = np.stack([r.embedding for r in imgs])
    assert emb.shape[1] == SMALL.dim
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    topic = np.array([r.topic for r in imgs])
    sims = emb @ emb.T
    same = topic[:, None] == topic[None, :]
    np.fill_diagonal(same, False)
    other = topic[:, None] != topic[None, :]
    assert sims[same].mean() > sims[other].mean() + 0.15
    # Positives concentrate on few topics per user; skips/hides are spread over the others.
    by_id = {r.image_id: r.topic for r in imgs}
    pos_topics: dict[str, set[int]] = {}
    for r in recs:
        if isinstance(r, BehaviourEvent) and r.action in {"click", "like", "save", "share"}:
            pos_topics.setdefault(r.user_id, set()).add(by_id[r.image_id])
    assert np.median([len(t) for t in pos_topics.values()]) <= SMALL.tastes_per_user + 2


@pytest.mark.parametrize("bad", [
    {"dim": 1}, {"n_users": 0}, {"n_topics": 1}, {"n_events": -1}, {"n_initial_images": 0},
    {"tastes_per_user": 0}, {"tastes_per_user": 99}, {"off_taste_rate": 1.5}, {"noise_rate": -0.1},
])
def test_rejects_bad_config(bad):
    with pytest.raises(ValueError):
        SyntheticConfig(**{**SMALL.__dict__, **bad})


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_write_read_round_trip(tmp_path, suffix):
    recs = generate(SMALL)
    path = tmp_path / f"stream{suffix}"
    assert write_stream(recs, path) == len(recs)
    back = read_stream(path)
    assert len(back) == len(recs)
    for a, b in zip(recs, back, strict=True):
        assert type(a) is type(b)
        if isinstance(a, ImageRecord):
            assert (a.image_id, a.created_at, a.topic) == (b.image_id, b.created_at, b.topic)
            assert np.allclose(a.embedding, b.embedding, atol=1e-6)
        else:
            assert a == b


def test_generation_does_not_mutate_config_and_embeddings_are_copies():
    cfg = SyntheticConfig(**SMALL.__dict__)
    recs = generate(cfg)
    assert cfg == SMALL
    img = next(r for r in recs if isinstance(r, ImageRecord))
    before = img.embedding.copy()
    img2 = next(r for r in generate(cfg) if isinstance(r, ImageRecord))
    img2.embedding[:] = 0.0
    assert np.array_equal(img.embedding, before)
