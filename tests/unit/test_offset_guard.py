"""OffsetGuard: records of a partition are applied strictly in offset order, holes are sought back."""

from types import SimpleNamespace

from faust.types import TP as FaustTP

from streams import faust_fixes
from streams.app import OffsetGuard
from tests.unit.test_faust_fixes import Log  # the partition's records; a missing offset is a marker

TP = FaustTP("t", 1)
OTHER = FaustTP("t", 2)


class Delivered:
    """A delivered message: its partition and offset (weakly referenceable, like Faust's Message)."""

    def __init__(self, tp, offset) -> None:
        self.tp, self.offset = tp, offset


def ev(offset, tp=TP):
    return SimpleNamespace(message=Delivered(tp, offset))


def offsets(events):
    return [e.message.offset for e in events]


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_in_order_records_pass_and_advance():
    g = OffsetGuard()
    g.reset({TP: 10})
    keep, seeks, dropped = g.admit([ev(10), ev(11), ev(12)])
    assert offsets(keep) == [10, 11, 12] and seeks == {} and dropped == 0
    assert g.next[TP] == 13


def test_already_applied_records_are_dropped():
    g = OffsetGuard()
    g.reset({TP: 10})
    g.admit([ev(10), ev(11)])
    keep, _, dropped = g.admit([ev(10), ev(11), ev(12)])
    assert offsets(keep) == [12] and dropped == 2


def test_a_hole_stops_the_partition_and_asks_for_one_seek_back():
    clock = Clock()
    g = OffsetGuard(reseek_s=5, clock=clock)
    g.reset({TP: 110, OTHER: 0})
    keep, seeks, _ = g.admit([ev(111), ev(112), ev(0, OTHER)])
    assert offsets(keep) == [0], "the other partition is unaffected"
    assert seeks == {TP: 110} and g.next[TP] == 110
    # records past the hole that were buffered before the seek arrive again: dropped, no second seek yet
    keep, seeks, _ = g.admit([ev(247), ev(248)])
    assert keep == [] and seeks == {}
    clock.t = 6  # the re-fetch did not come: seek again
    assert g.admit([ev(249)])[1] == {TP: 110}
    keep, seeks, _ = g.admit([ev(110), ev(111)])
    assert offsets(keep) == [110, 111] and seeks == {} and TP not in g.pending


def test_confirmed_real_gap_is_skipped():
    g = OffsetGuard()
    g.reset({TP: 5})
    assert g.admit([ev(7)])[1] == {TP: 5}
    g.skip_to(TP, 7)  # the log has no record at 5 or 6 (e.g. transaction markers)
    assert offsets(g.admit([ev(7), ev(8)])[0]) == [7, 8]


def test_unknown_partition_starts_where_delivery_starts():
    g = OffsetGuard()
    assert offsets(g.admit([ev(3), ev(4)])[0]) == [3, 4]
    assert g.next[TP] == 5


def test_a_seek_that_delivers_nothing_is_repeated_without_waiting_for_a_batch():
    """Faust can drop every re-fetched record (its read offset was raised by a stale fetch drained after
    the seek), so no batch ever arrives to trigger the re-seek: ``overdue`` repeats it on a timer."""
    clock = Clock()
    g = OffsetGuard(reseek_s=5.0, clock=clock)
    g.reset({TP: 10, OTHER: 0})
    _, seeks, _ = g.admit([ev(12)])
    assert seeks == {TP: 10}
    clock.t = 4.0
    assert g.overdue() == {}
    clock.t = 6.0
    assert g.overdue() == {TP: 10}
    assert g.overdue() == {}, "marked as sought again: not repeated before another reseek_s"
    clock.t = 12.0
    assert g.overdue() == {TP: 10}
    keep, seeks, _ = g.admit([ev(10), ev(11)])
    assert offsets(keep) == [10, 11] and seeks == {}
    clock.t = 30.0
    assert g.overdue() == {}, "answered: nothing pending"


def test_records_held_back_at_a_hole_do_not_count_towards_the_commit():
    # The guard holds back everything past a hole; take_events still acks those copies when the batch
    # returns. Counted, they let Faust commit past records nobody applied, and a crash loses them. Seen in
    # the kill -9 test: offset 10 applied and committed, the guard rewound to 10 by a late assignment
    # callback, 11.. held back as "past a hole at 10" — and Faust committed them all.
    from faust.transport.consumer import Consumer

    from streams import faust_fixes
    from tests.unit.test_faust_fixes import fake

    class Msg:  # the attributes Faust's ack reads (hashable, like Faust's Message)
        def __init__(self, offset):
            self.tp, self.offset, self.topic, self.acked, self.generation_id = TP, offset, "t", False, None

    def consumer():
        c = fake(11, [])
        c.app = SimpleNamespace(consumer_generation_id=None, topics=SimpleNamespace(acks_enabled_for=lambda t: True))
        c._unacked_messages, c._n_acked, c._waiting_for_ack = set(), 0, None
        return c

    def batch(*offs):
        return [SimpleNamespace(message=Msg(o)) for o in offs]

    faust_fixes.apply()
    upstream = consumer()
    for e in batch(11, 12, 13):
        faust_fixes.ORIGINAL_ACK(upstream, e.message)
    assert faust_fixes.ORIGINAL_NEW_OFFSET(upstream, TP) == 14, "upstream: held-back acks are committed"

    g = OffsetGuard()
    g.reset({TP: 10})  # the rewound guard
    c = consumer()
    held = batch(11, 12, 13)
    keep, seeks, _ = g.admit(held)
    assert keep == [] and seeks == {TP: 10}
    assert [Consumer.ack(c, e.message) for e in held] == [False, False, False]
    assert all(e.message.acked for e in held)  # released: nothing waits for them
    assert Consumer._new_offset(c, TP) is None, "nothing applied, nothing committed"
    again = batch(10, 11, 12, 13)  # the seek back delivers; 10 is a duplicate (already committed)
    assert offsets(g.admit(again)[0]) == [10, 11, 12, 13]
    for e in again:
        Consumer.ack(c, e.message)
    assert Consumer._new_offset(c, TP) == 14


def test_start_does_not_rewind_a_partition_a_batch_already_started():
    g = OffsetGuard()
    g.start({TP: 10})
    g.admit([ev(10), ev(11)])
    g.start({TP: 10, OTHER: 3})  # the assignment callback's read of the committed offsets, arriving late
    assert g.next == {TP: 12, OTHER: 3}


async def test_records_behind_a_transaction_marker_are_admitted_in_the_same_batch():
    # Seen on the real broker: with the marker only skipped (skip_to), the records after it in the batch
    # stayed held back until a later batch arrived; for the last transaction of a burst, none ever did.
    g = OffsetGuard()
    g.reset({TP: 10, OTHER: 0})
    batch = [ev(10), ev(12), ev(13), ev(15), ev(0, OTHER)]  # markers at 11 and 14
    keep, holes, dropped = await g.admit_checked(batch, Log([10, 12, 13, 15, 16]).first_offset_from)
    assert sorted(offsets(keep)) == [0, 10, 12, 13, 15] and holes == {} and dropped == 0
    assert g.next[TP] == 16 and TP not in g.pending
    assert not any(faust_fixes.is_held_back(e.message) for e in batch), "their acks must count"


async def test_a_hole_with_records_in_it_is_returned_to_be_sought_back():
    g = OffsetGuard()
    g.reset({TP: 10})
    batch = [ev(10), ev(13), ev(14)]
    keep, holes, _ = await g.admit_checked(batch, Log(range(10, 20)).first_offset_from)  # 11, 12 exist
    assert offsets(keep) == [10] and holes == {TP: 11} and g.next[TP] == 11
    assert all(faust_fixes.is_held_back(e.message) for e in batch[1:])


async def test_a_marker_then_a_hole_with_records_stops_at_the_records():
    g = OffsetGuard()
    g.reset({TP: 10})
    batch = [ev(12), ev(15)]
    keep, holes, _ = await g.admit_checked(batch, Log([12, 13, 14, 15]).first_offset_from)  # markers: 10, 11
    assert offsets(keep) == [12] and holes == {TP: 13}
    assert faust_fixes.is_held_back(batch[1].message)


def test_a_held_back_message_never_acked_leaves_no_mark_behind():
    # Marks were id()s: a held-back message whose ack never came (its stream skipped it) left its id, and a
    # later message allocated at the same address had its ack ignored, so its commit waited for good.
    import gc

    gc.collect()
    before = len(faust_fixes._HELD_BACK)
    g = OffsetGuard()
    g.reset({TP: 10})
    held = [ev(11), ev(12)]
    g.admit(held)
    assert all(faust_fixes.is_held_back(e.message) for e in held)
    assert len(faust_fixes._HELD_BACK) == before + 2
    del held
    gc.collect()
    assert len(faust_fixes._HELD_BACK) == before


def test_records_the_assignment_fence_drops_do_not_count_towards_the_commit_and_are_sought_back():
    from streams.app import Pipeline

    clock = Clock()
    pipe = SimpleNamespace(app=SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {TP})),
                           guard=OffsetGuard(reseek_s=5, clock=clock))
    pipe.guard.reset({TP: 5, OTHER: 7})
    batch = [ev(5), ev(7, OTHER), ev(6)]
    assert offsets(Pipeline._owned(pipe, batch)) == [5, 6]
    assert [faust_fixes.is_held_back(e.message) for e in batch] == [False, True, False]
    # OTHER is still this worker's in the guard (the client's assignment read empty for it): if its records
    # do not come back by themselves, the guard seeks back to them
    assert pipe.guard.overdue() == {}
    clock.t = 6
    assert pipe.guard.overdue() == {OTHER: 7}


async def test_overdue_seeks_skip_partitions_not_assigned():
    from streams.app import Pipeline

    clock = Clock()
    seeks = []

    async def seek(tp, offset):
        seeks.append((tp, offset))
    guard = OffsetGuard(reseek_s=5, clock=clock)
    guard.reset({TP: 5, OTHER: 7})
    guard.expect(TP)
    guard.expect(OTHER)
    pipe = SimpleNamespace(guard=guard, app=SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: {TP},
                                                                                        seek=seek)))
    clock.t = 6
    await Pipeline.reseek_overdue(pipe)
    assert seeks == [(TP, 5)]
