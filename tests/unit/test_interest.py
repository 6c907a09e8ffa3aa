"""InterestModel.learn_one: how one behaviour event changes a user's state (public behaviour only)."""

from __future__ import annotations

import numpy as np
import pytest

from models import ACTIONS, DimensionMismatch, InterestModel, InvalidInput, UserState
from models.errors import ConfigError
from models.interest import DEFAULT_ACTION_WEIGHTS

DIM = 16
HOUR = 3_600_000


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def best_cos(st: UserState, v: np.ndarray) -> float:
    return max(cos(i, v) for i in st.interests)


@pytest.fixture
def model() -> InterestModel:
    return InterestModel(dim=DIM, max_interests=3, half_life_ms=24 * HOUR)


def test_actions_are_the_documented_ones() -> None:
    assert set(ACTIONS) == {"view", "click", "like", "save", "share", "skip", "hide"}


def test_first_positive_event_makes_the_user_warm(model, basis) -> None:
    st0 = model.new_state("u")
    assert st0.is_cold and st0.user_id == "u"
    st = model.learn_one(st0, image_id="a", action="like", ts=1_000, vector=basis(0))
    assert not st.is_cold
    assert best_cos(st, basis(0)) == pytest.approx(1.0, abs=1e-6)
    assert st.seen == ("a",) and st.version == 1 and st.updated_ts == 1_000
    assert st0.is_cold and st0.version == 0, "the input state is a value: unchanged"


def test_similar_positive_moves_interest_towards_the_image(model, basis) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="like", ts=1, vector=basis(0))
    near = (basis(0) + 0.5 * basis(1)) / np.linalg.norm(basis(0) + 0.5 * basis(1))
    before = best_cos(st, basis(1))
    st2 = model.learn_one(st, image_id="b", action="like", ts=2, vector=near)
    assert st2.interests.shape[0] == st.interests.shape[0], "a similar image refines, not adds, an interest"
    assert best_cos(st2, basis(1)) > before + 0.05
    assert float(st2.weights.sum()) > float(st.weights.sum())
    np.testing.assert_allclose(np.linalg.norm(st2.interests, axis=1), 1.0, atol=1e-5)


def test_stronger_actions_pull_harder(model, basis) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="like", ts=1, vector=basis(0))
    near = (basis(0) + 0.8 * basis(1)) / np.linalg.norm(basis(0) + 0.8 * basis(1))
    pulls = {a: best_cos(model.learn_one(st, image_id="b", action=a, ts=2, vector=near), basis(1))
             for a in ("view", "click", "save")}
    assert pulls["view"] < pulls["click"] < pulls["save"]


def test_dwell_time_strengthens_views_and_saturates(model) -> None:
    s = [model.strength("view", d) for d in (None, 0, 2_000, 10_000, 60_000)]
    assert s[0] == s[1] < s[2] < s[3] == s[4]
    assert model.strength("like", 60_000) == model.strength("like")


def test_distinct_tastes_become_separate_interests_up_to_the_cap(model, basis) -> None:
    st = model.new_state("u")
    for j in range(3):  # three orthogonal tastes: one interest each
        st = model.learn_one(st, image_id=f"i{j}", action="like", ts=1 + j, vector=basis(j))
    assert st.interests.shape == (3, DIM) and st.weights.shape == (3,)
    for j in range(3):
        assert best_cos(st, basis(j)) > 0.99
    for j in (3, 4):  # beyond the cap: still bounded, but the new taste must leave a trace
        st = model.learn_one(st, image_id=f"i{j}", action="like", ts=1 + j, vector=basis(j))
        assert st.interests.shape == (3, DIM) and st.weights.shape == (3,)
        assert best_cos(st, basis(j)) > 0.3
    np.testing.assert_allclose(np.linalg.norm(st.interests, axis=1), 1.0, atol=1e-5)


def test_negative_actions_do_not_create_interests(model, basis) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="skip", ts=1, vector=basis(0))
    assert st.is_cold
    assert cos(st.negative, basis(0)) == pytest.approx(1.0, abs=1e-6)
    st2 = model.learn_one(st, image_id="b", action="hide", ts=2, vector=basis(0))
    assert float(np.linalg.norm(st2.negative)) > float(np.linalg.norm(st.negative))
    assert st2.hidden == ("b",) and "a" not in st2.hidden
    assert st2.excluded() == {"a", "b"}


def test_unknown_image_counts_as_seen_only(model, basis) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="like", ts=1, vector=basis(0))
    st2 = model.learn_one(st, image_id="ghost", action="like", ts=2, vector=None)
    assert "ghost" in st2.seen and st2.version == st.version + 1
    np.testing.assert_array_equal(st2.interests, st.interests)
    np.testing.assert_array_equal(st2.weights, st.weights)


def test_seen_is_a_bounded_fifo(basis) -> None:
    model = InterestModel(dim=DIM, seen_cap=3)
    st = model.new_state("u")
    for iid in ("a", "b", "c", "a", "d"):
        st = model.learn_one(st, image_id=iid, action="view", ts=1, vector=None)
    assert st.seen == ("c", "a", "d")


def test_sessions_are_runs_of_events_at_most_the_gap_apart(basis) -> None:
    """Rule 6: an event within ``session_gap_ms`` of the previous one continues the session (skips too);
    a longer pause starts a new one. ``session_items`` are the images of the latest session."""
    model = InterestModel(dim=DIM, session_gap_ms=60_000)
    st = model.new_state("u")
    assert st.session == 0 and st.session_items == () and model.session_items(st, 0) == ()
    for iid, ts, action in (("a", 0, "like"), ("b", 30_000, "skip"), ("c", 90_000, "view"),
                            ("d", 500_000, "like"), ("e", 510_000, "like")):
        assert model.session_items(st, ts) == (("a", "b") if iid == "c" else ("a",) if iid == "b"
                                               else ("d",) if iid == "e" else ())
        st = model.learn_one(st, image_id=iid, action=action, ts=ts, vector=basis(0))
    assert st.session == 2 and st.session_items == ("d", "e")
    assert model.in_session(st, 570_000) and not model.in_session(st, 570_001)
    # An out-of-order event close to the last one belongs to the session; one far before it does not.
    assert model.in_session(st, 460_000) and not model.in_session(st, 400_000)


def test_session_never_outgrows_seen(basis) -> None:
    model = InterestModel(dim=DIM, seen_cap=3)
    st = model.new_state("u")
    for n, iid in enumerate(("a", "b", "a", "c", "d", "e")):
        st = model.learn_one(st, image_id=iid, action="view", ts=n, vector=None)
        assert st.session <= len(st.seen)
    assert st.session == 3 and st.session_items == ("c", "d", "e")


def test_event_ids_and_offsets_are_recorded(model) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="view", ts=1, vector=None,
                         offset=41, event_id="e1")
    assert st.last_offset == 41 and "e1" in st.event_ids
    assert model.already_applied(st, offset=41, event_id=None)
    assert model.already_applied(st, offset=3, event_id=None)
    assert model.already_applied(st, offset=None, event_id="e1")
    assert model.already_applied(st, offset=99, event_id="e1")
    assert not model.already_applied(st, offset=42, event_id="e2")
    assert not model.already_applied(st, offset=None, event_id=None)


def test_event_id_memory_is_bounded() -> None:
    model = InterestModel(dim=DIM, event_id_cap=4)
    st = model.new_state("u")
    for n in range(10):
        st = model.learn_one(st, image_id="a", action="view", ts=1, vector=None, event_id=f"e{n}")
    assert len(st.event_ids) == 4 and "e9" in st.event_ids and "e0" not in st.event_ids


def test_weights_decay_in_event_time(model, basis) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="like", ts=1_000, vector=basis(0))
    w0 = float(st.weights[0])
    # A view of an unknown image one half-life later only ages the evidence.
    later = model.learn_one(st, image_id="x", action="view", ts=1_000 + 24 * HOUR, vector=None)
    assert float(later.weights[0]) == pytest.approx(w0 / 2, rel=1e-4)
    # Replaying the same events gives the same result (no wall clock involved).
    again = model.learn_one(st, image_id="x", action="view", ts=1_000 + 24 * HOUR, vector=None)
    assert later.same_as(again)


def test_out_of_order_event_does_not_move_time_backwards(model, basis) -> None:
    st = model.learn_one(model.new_state("u"), image_id="a", action="like", ts=10_000, vector=basis(0))
    st2 = model.learn_one(st, image_id="b", action="view", ts=5_000, vector=None)
    assert st2.updated_ts == 10_000
    assert float(st2.weights[0]) == pytest.approx(float(st.weights[0]))


def test_recent_taste_outweighs_old_taste(model, basis) -> None:
    st = model.new_state("u")
    st = model.learn_one(st, image_id="old", action="like", ts=1, vector=basis(0))
    st = model.learn_one(st, image_id="new", action="like", ts=1 + 24 * HOUR * 10, vector=basis(1))
    w = {j: float(st.weights[int(np.argmax(st.interests @ basis(j)))]) for j in (0, 1)}
    assert w[1] > 100 * w[0]


def test_unknown_action_is_invalid_input(model, basis) -> None:
    with pytest.raises(InvalidInput) as exc:
        model.learn_one(model.new_state("u"), image_id="a", action="purchase", ts=1, vector=basis(0))
    assert exc.value.reason == "unknown_action"


def test_wrong_vector_dimension_is_rejected(model) -> None:
    for n in (DIM - 1, DIM + 1):
        with pytest.raises(DimensionMismatch):
            model.learn_one(model.new_state("u"), image_id="a", action="like", ts=1, vector=np.ones(n) / n**0.5)


@pytest.mark.parametrize("kwargs", [
    {"action_weights": {**DEFAULT_ACTION_WEIGHTS, "like": float("nan")}},
    {"action_weights": {**DEFAULT_ACTION_WEIGHTS, "like": float("inf")}},
    {"action_weights": {**DEFAULT_ACTION_WEIGHTS, "like": 0.0}},
    {"action_weights": {**DEFAULT_ACTION_WEIGHTS, "skip": 1.0}},   # a skip must be negative
    {"action_weights": {**DEFAULT_ACTION_WEIGHTS, "like": -1.0}},  # a like must be positive
    {"action_weights": {k: v for k, v in DEFAULT_ACTION_WEIGHTS.items() if k != "save"}},
    {"action_weights": {**DEFAULT_ACTION_WEIGHTS, "poke": 1.0}},
    {"half_life_ms": 0.0}, {"half_life_ms": float("inf")}, {"max_interests": 0}, {"seen_cap": 0},
    {"session_gap_ms": -1.0}, {"session_gap_ms": float("inf")}, {"session_gap_ms": float("nan")},
])
def test_bad_configuration_fails_at_construction(kwargs) -> None:
    """A bad configuration is a ConfigError when the model is built, never a failure halfway through an event."""
    with pytest.raises(ConfigError):
        InterestModel(dim=DIM, **kwargs)
