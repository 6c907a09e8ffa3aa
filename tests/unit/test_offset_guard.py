"""OffsetGuard: records of a partition are applied strictly in offset order, holes are sought back."""

from types import SimpleNamespace

from streams.app import OffsetGuard

TP = ("t", 1)
OTHER = ("t", 2)


def ev(offset, tp=TP):
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


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
