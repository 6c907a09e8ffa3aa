"""UserState: exact to_bytes/from_bytes round trip, corrupt bytes -> StateError, value semantics."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from models import InterestModel, StateError, UserState

DIM = 16


def assert_identical(a: UserState, b: UserState) -> None:
    """Field by field, arrays bit for bit (not via to_bytes, which is what is under test)."""
    for name in ("interests", "weights", "negative"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32, name
        assert x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
    for name in ("user_id", "dim", "seen", "hidden", "event_ids", "last_offset", "version", "updated_ts",
                 "session"):
        assert getattr(a, name) == getattr(b, name), name
    assert a.is_cold == b.is_cold


def learned(unit_rows, n: int = 25, user: str = "user-1") -> UserState:
    model = InterestModel(dim=DIM, max_interests=3)
    vecs = unit_rows(n, DIM, 4)
    st = model.new_state(user)
    actions = ("view", "like", "skip", "hide", "save", "click")
    for j in range(n):
        st = model.learn_one(st, image_id=f"img{j}", action=actions[j % len(actions)], ts=10_000 + 600_000 * j,
                             vector=vecs[j], dwell_ms=1_500 * j, offset=100 + j, event_id=f"ev-{j}")
    return st


def test_cold_state_round_trip() -> None:
    st = UserState("u", DIM)
    assert st.is_cold and st.interests.shape == (0, DIM) and st.weights.shape == (0,)
    assert st.negative.shape == (DIM,) and not st.negative.any()
    back = UserState.from_bytes(st.to_bytes())
    assert_identical(st, back)


def test_learned_state_round_trip_is_exact(unit_rows) -> None:
    st = learned(unit_rows)
    assert not st.is_cold and st.hidden and st.seen and st.event_ids and st.negative.any()
    raw = st.to_bytes()
    back = UserState.from_bytes(raw)
    assert_identical(st, back)
    assert back.to_bytes() == raw
    assert back.same_as(st)


def test_round_trip_preserves_awkward_floats_bit_for_bit() -> None:
    interests = np.array([[-0.0, np.float32(1e-45), np.nextafter(np.float32(1), np.float32(0))] + [0.0] * (DIM - 3)],
                         dtype=np.float32)
    st = UserState("ü-ñ/ 𝄞", DIM, interests=interests, weights=np.array([np.float32(1) / 3], dtype=np.float32),
                   negative=np.full(DIM, np.float32(-2.5e-39), dtype=np.float32),
                   seen=("a", "b"), hidden=("b",), event_ids=("x",), last_offset=2**40, version=7, updated_ts=2**50)
    back = UserState.from_bytes(st.to_bytes())
    assert_identical(st, back)
    assert np.signbit(back.interests[0, 0])


def test_round_trip_arrays_are_writable_copies(unit_rows) -> None:
    st = learned(unit_rows, 5)
    raw = st.to_bytes()
    back = UserState.from_bytes(raw)
    back.interests[0, 0] = 42.0  # must not raise (read-only buffer) nor affect later decodes
    assert UserState.from_bytes(raw).interests[0, 0] != 42.0


def test_same_as_detects_differences(unit_rows) -> None:
    st = learned(unit_rows, 5)
    assert st.same_as(UserState.from_bytes(st.to_bytes()))
    assert not st.same_as(st.evolve(version=st.version + 1))
    assert not st.same_as(st.evolve(seen=st.seen + ("z",)))


@pytest.mark.parametrize("raw", [
    b"", b"not json", b"[]", b"null", b'{"f": 1}', b'{"f": 999}',
])
def test_corrupt_bytes_raise_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        UserState.from_bytes(raw)


def test_inconsistent_shapes_raise_state_error(unit_rows) -> None:
    d = learned(unit_rows, 5).to_dict()  # format 1 (JSON)
    for key, value in (("m", d["m"] + 1), ("d", DIM + 1), ("i", "AAAA"), ("i", "!!not base64!!")):
        broken = dict(d, **{key: value})
        with pytest.raises(StateError):
            UserState.from_bytes(orjson.dumps(broken))


def test_session_round_trips_and_older_states_read_as_no_session(unit_rows) -> None:
    st = learned(unit_rows).evolve(session=3)
    assert st.session_items == st.seen[-3:]
    for raw in (st.to_bytes(), orjson.dumps(st.to_dict())):
        assert UserState.from_bytes(raw).session == 3
    # Written before sessions existed: binary with a five-element id section, JSON without "q".
    raw = st.to_bytes()
    assert raw.endswith(b",3]")
    old = UserState.from_bytes(raw[:-3] + b"]")
    assert old.session == 0 and old.session_items == () and old.seen == st.seen
    d = st.to_dict()
    del d["q"]
    assert UserState.from_bytes(orjson.dumps(d)).session == 0


@pytest.mark.parametrize("bad", [-1, "3", 3.5, [3], True])
def test_a_bad_session_count_is_a_state_error(unit_rows, bad) -> None:
    st = learned(unit_rows).evolve(session=3)
    with pytest.raises(StateError):
        UserState.from_bytes(st.to_bytes()[:-3] + b"," + orjson.dumps(bad) + b"]")
    with pytest.raises(StateError):
        UserState.from_bytes(orjson.dumps({**st.to_dict(), "q": bad}))


def test_json_format_1_still_decodes_to_the_same_state(unit_rows) -> None:
    """Changelogs written before the binary format hold JSON states: they restore bit for bit."""
    st = learned(unit_rows)
    old = orjson.dumps(st.to_dict())
    assert old[:1] == b"{" and st.to_bytes()[:4] == b"\x00US\x02"
    back = UserState.from_bytes(old)
    assert_identical(st, back)
    assert back.recent == st.recent and back.to_bytes() == st.to_bytes()


def test_binary_format_is_smaller_and_packs_hex_event_ids(unit_rows) -> None:
    import uuid

    st = learned(unit_rows, 40)
    ids = tuple(uuid.UUID(int=j).hex for j in range(len(st.event_ids)))
    hexed = st.evolve(event_ids=ids)
    assert len(hexed.to_bytes()) < 0.75 * len(orjson.dumps(hexed.to_dict()))
    assert len(hexed.to_bytes()) < len(st.to_bytes()) + 16 * len(ids)  # 16 bytes per id, not 32+
    for s in (st, hexed, st.evolve(event_ids=ids[:-1] + ("ABCDEF" * 5 + "ab",)), st.evolve(event_ids=()),
              st.evolve(recent=st.recent + ("not-in-seen",)), st.evolve(hidden=("x", "y")), st.evolve(seen=()),
              st.evolve(event_ids=("a" * 16, "b" * 48)), st.evolve(event_ids=("c" * 31, "d" * 33))):
        back = UserState.from_bytes(s.to_bytes())
        assert_identical(s, back)
        assert back.recent == s.recent


@pytest.mark.parametrize("mutate", ["coding", "count", "listed", "ids", "trailing", "short", "position"])
def test_corrupt_binary_states_raise_state_error(unit_rows, mutate: str) -> None:
    import struct
    import uuid

    st = learned(unit_rows, 6)
    if mutate in ("listed", "count"):
        st = st.evolve(event_ids=tuple(uuid.UUID(int=j).hex for j in range(len(st.event_ids))))
    raw = bytearray(st.to_bytes())
    head = struct.Struct("<IHqqqIB")
    fields = list(head.unpack_from(raw, 4))
    if mutate == "coding":
        fields[6] = 7
    elif mutate == "count":
        fields[5] += 1_000  # more packed ids than bytes
    head.pack_into(raw, 4, *fields)
    dim, m, ne, packed = fields[0], fields[1], fields[5], fields[6] == 1
    start = 4 + head.size + 4 * (m * dim + m + dim) + (16 * ne if packed else 0)  # the orjson id section
    if mutate == "listed":  # packed ids and a listed one
        raw = raw[:raw.rindex(b"[]")] + b'["x"]]'
    elif mutate == "ids":
        raw = raw[:start] + b'["u", [1], [], [], []]'
    elif mutate == "position":  # hidden/recent as a position past the end of seen
        doc = orjson.loads(bytes(raw[start:]))
        doc[3] = [len(doc[1])]
        raw = raw[:start] + orjson.dumps(doc)
    elif mutate == "trailing":
        raw += b"x"
    elif mutate == "short":
        raw = raw[: 4 + head.size + 10]
    with pytest.raises(StateError):
        UserState.from_bytes(bytes(raw))


def test_truncated_bytes_raise_state_error(unit_rows) -> None:
    raw = learned(unit_rows, 5).to_bytes()
    for cut in (1, len(raw) // 2, len(raw) - 1):
        with pytest.raises(StateError):
            UserState.from_bytes(raw[:cut])


def test_excluded_is_seen_and_hidden() -> None:
    st = UserState("u", DIM, seen=("a", "b"), hidden=("c", "a"))
    assert st.excluded() == {"a", "b", "c"}


def test_evolve_returns_a_new_value(unit_rows) -> None:
    st = learned(unit_rows, 5)
    raw = st.to_bytes()
    new = st.evolve(version=999, seen=("x",))
    assert new.version == 999 and new.seen == ("x",)
    assert st.to_bytes() == raw
    with pytest.raises(AttributeError):
        st.version = 3  # type: ignore[misc]


def test_stored_non_finite_or_zero_interest_raises_state_error(unit_rows) -> None:
    """A stored state whose vectors fail validation is reported like any corrupt state (the worker restarts it)."""
    st = learned(unit_rows, 5)
    first = st.interests[0]
    for row in (np.r_[np.nan, first[1:]], np.r_[-np.inf, first[1:]], np.zeros(DIM)):
        interests = st.interests.copy()
        interests[0] = row
        d = st.to_dict()
        d["i"] = base64.b64encode(interests.astype("<f4").tobytes()).decode()
        with pytest.raises(StateError):
            UserState.from_bytes(orjson.dumps(d))


def test_vectors_are_held_as_float32_and_round_trip_exactly() -> None:
    interests = np.eye(DIM)[:2]  # float64 in: held as the float32 that to_bytes() writes
    st = UserState("u", DIM, interests=interests, weights=[1.0, 2.0])
    assert st.interests.dtype == st.weights.dtype == st.negative.dtype == np.float32
    assert_identical(st, UserState.from_bytes(st.to_bytes()))


def test_ranker_rejects_a_state_changed_in_place(unit_rows) -> None:
    from models import ImageIndex, NonFiniteVector, Popularity, Ranker

    idx = ImageIndex(DIM)
    idx.upsert([f"i{j}" for j in range(4)], unit_rows(4, DIM, 1), created_at=[1, 2, 3, 4])
    st = learned(unit_rows, 5)
    st.negative[0] = np.nan  # arrays are mutable: validated again before ranking
    with pytest.raises(NonFiniteVector):
        Ranker(k=2).recommend([st], idx, Popularity())
