"""The Faust consumer commit-offset fix, on Faust's own ``Consumer._new_offset`` code."""

from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from streams import faust_fixes

TP = ("t", 0)


def fake(committed, acked, gaps=()):
    tree = IntervalTree()
    for lo, hi in gaps:
        tree.addi(lo, hi)
    c = SimpleNamespace(_acked=defaultdict(list), _acked_index=defaultdict(set), _gap=defaultdict(IntervalTree),
                        _committed_offset=defaultdict(lambda: None))
    c._acked[TP] = list(acked)
    c._acked_index[TP] = set(acked)
    c._committed_offset[TP] = committed
    c._gap[TP] = tree
    return c


@pytest.fixture(scope="module")
def patched():
    faust_fixes.apply()
    return Consumer._new_offset


def test_upstream_commits_past_a_one_message_hole():
    # offset 220 (the committed offset, i.e. the next one to read) was never acked; 221..223 were.
    # Faust 0.15.x would commit 224 and the record at 220 would never be processed.
    assert faust_fixes.ORIGINAL_NEW_OFFSET(fake(220, [221, 222, 223]), TP) == 224
    assert faust_fixes._head_gap(fake(220, [221, 222, 223]), TP)


def test_patched_new_offset_refuses_to_commit_past_the_hole(patched):
    assert patched(fake(220, [221, 222, 223]), TP) is None


def test_patched_new_offset_commits_contiguous_acks(patched):
    assert patched(fake(220, [220, 221, 222]), TP) == 223


def test_known_gap_fills_the_hole(patched):
    # a transaction marker at 220 is a known gap, not a lost record
    assert patched(fake(220, [221, 222], gaps=[(220, 221)]), TP) == 223


def test_first_commit_without_a_committed_offset_is_unchanged(patched):
    assert patched(fake(None, [5, 6, 7]), TP) == 8


def test_stale_generation_ack_does_not_count_towards_the_commit(patched):
    consumer = fake(None, [])
    consumer.app = SimpleNamespace(consumer_generation_id=7)
    consumer._unacked_messages = set()
    class Msg:
        generation_id, acked, tp, offset, topic = 6, False, TP, 60, "t"
    old = Msg()
    consumer._unacked_messages.add(old)
    assert Consumer.ack(consumer, old) is False
    assert old.acked and old not in consumer._unacked_messages
    assert consumer._acked[TP] == [], "a skipped message of an old generation must not advance the commit"
