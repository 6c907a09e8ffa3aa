"""Recommendation-quality checks on planted synthetic streams (prequential: test, then learn).

These can fail: they assert margins, not just that the code runs. One replay is shared by the tests
(module fixture); it runs the model and the baselines through :func:`models.evaluation.run_prequential`.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import RecommenderCore
from models.evaluation import run_prequential, synthetic_stream
from models.synthetic import BehaviourEvent, ImageRecord, SyntheticConfig

pytestmark = pytest.mark.eval

CFG = SyntheticConfig(seed=7, dim=32, n_users=120, n_topics=10, n_initial_images=300, n_new_images=150,
                      n_events=2500, fresh_boost=6.0)


@pytest.fixture(scope="module")
def run():
    stream = synthetic_stream(CFG)
    core = RecommenderCore(dim=CFG.dim, k=20, seed=0)
    report = run_prequential(stream, k=20, core=core)
    return stream, core, report


def test_recall_is_far_above_popularity(run):
    _, _, rep = run
    model = rep.results["model"].recall
    for name in ("most-popular", "recent-popular"):
        assert model >= 2.5 * rep.results[name].recall, rep.to_markdown()
    assert rep.results["model"].mrr >= 2.5 * rep.results["most-popular"].mrr


def test_model_beats_the_strongest_baseline(run):
    _, _, rep = run
    assert rep.lift() is not None and rep.lift() >= 0.25, rep.to_markdown()


def test_new_images_reach_matching_users_within_the_stream(run):
    """Images created during the stream are recommended (and hit) before anyone has engaged with them:
    only their content embedding can bring them to the right users. Baselines cannot do this at all."""
    stream, _, rep = run
    start = CFG.start_ts
    engaged: set[str] = set()
    new_images = {r.image_id for r in stream.records if isinstance(r, ImageRecord) and r.created_at > start}
    flags = []  # per positive test on a new image that nobody had engaged with yet: was it a model hit?
    test_no = 0
    model_flags = rep.results["model"].hit_flags
    for r in stream.records:
        if not isinstance(r, BehaviourEvent):
            continue
        if stream.positive(r):
            if r.image_id in new_images and r.image_id not in engaged:
                flags.append(model_flags[test_no])
            test_no += 1
        if r.action not in ("skip", "hide"):
            engaged.add(r.image_id)
    assert len(flags) >= 30
    assert np.mean(flags) >= 0.15, (np.mean(flags), len(flags))


def test_a_new_image_is_pushed_to_the_users_whose_taste_it_matches(run):
    stream, _, _ = run
    # Learn the whole stream (no recommending: fast) on a fresh core, then add one image close to each
    # user's strongest taste and check that it is pushed to that user and ranked into their top-20.
    core2 = RecommenderCore(dim=CFG.dim, k=20, seed=1)
    states = {}
    for r in stream.records:
        if isinstance(r, ImageRecord):
            core2.apply_images([(r.image_id, r.embedding, r.created_at)])
        else:
            st = states.get(r.user_id) or core2.new_state(r.user_id)
            states[r.user_id], _ = core2.learn(st, image_id=r.image_id, action=r.action, ts=r.ts)
    warm = [s for s in states.values() if not s.is_cold and s.weights.max() > 3]
    assert len(warm) >= 20
    rng = np.random.default_rng(0)
    pushed = hit = 0
    for st in warm[:20]:
        taste = st.interests[int(np.argmax(st.weights))]
        vec = taste + 0.2 * rng.normal(size=CFG.dim).astype(np.float32) / np.sqrt(CFG.dim)
        image_id = f"new-{st.user_id}"
        core2.apply_images([(image_id, vec, core2.now + 1)])
        matches = core2.match_new_images([image_id], warm, min_score=0.5)
        pushed += any(m.user_id == st.user_id for m in matches)
        hit += image_id in {i.image_id for i in core2.recommend([st])[0]}
    assert pushed >= 18 and hit >= 15, (pushed, hit)
