"""RecoveryRepair: a changelog partition table recovery waits on while the Kafka client is past it is sought
back, after ``stuck_s`` without progress, and only then (streams/recovery_repair.py)."""

from collections import Counter
from types import SimpleNamespace

from faust.types import TP

from streams.recovery_repair import RecoveryRepair, repair_recovery
from tests.unit.test_offset_guard import Clock

CL = TP("app-users-changelog", 0)
CL1 = TP("app-users-changelog", 1)


def test_progress_or_a_client_not_ahead_is_left_alone():
    clock = Clock()
    r = RecoveryRepair(stuck_s=10, clock=clock)
    assert r.due([(CL, 5, 21, 22)]) == {}
    clock.t = 8
    assert r.due([(CL, 9, 21, 22)]) == {}, "applied 5 -> 9: progress restarts the clock"
    clock.t = 17
    assert r.due([(CL, 9, 21, 22)]) == {}
    clock.t = 30
    assert r.due([(CL, 9, 21, 10)]) == {}, "the client at 10 = applied + 1: still fetching, nothing dropped"
    assert r.due([(CL, 21, 21, 22)]) == {}, "recovered"


def test_stuck_with_the_client_ahead_is_sought_back_once_per_period():
    clock = Clock()
    r = RecoveryRepair(stuck_s=10, clock=clock)
    rows = [(CL, -1, 21, 22), (CL1, 30, 38, 39)]
    assert r.due(rows) == {}
    clock.t = 10
    assert r.due(rows) == {CL: 0, CL1: 31}
    clock.t = 15
    assert r.due(rows) == {}, "the seek gets another period to deliver"
    clock.t = 20
    assert r.due(rows[:1]) == {CL: 0}


def test_inputs_are_not_modified():
    rows = [(CL, -1, 21, 22)]
    RecoveryRepair(stuck_s=0).due(rows)
    assert rows == [(CL, -1, 21, 22)]


class FakeConsumer:
    def __init__(self, positions):
        self.positions, self.seeks = positions, []

    async def position(self, tp):
        if tp not in self.positions:
            raise AssertionError("not assigned")
        return self.positions[tp]

    async def seek(self, tp, offset):
        self.seeks.append((tp, offset))


def app_in_recovery(in_recovery=True, positions=None):
    recovery = SimpleNamespace(in_recovery=in_recovery, active_tps={CL, CL1},
                               active_offsets=Counter({CL: -1, CL1: 38}), active_highwaters=Counter({CL: 21, CL1: 38}))
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery),
                           consumer=FakeConsumer(positions if positions is not None else {CL: 22, CL1: 39}))


async def test_repair_seeks_faust_s_consumer_to_the_next_offset_to_recover():
    clock = Clock()
    r = RecoveryRepair(stuck_s=10, clock=clock)
    app = app_in_recovery()
    assert await repair_recovery(app, r) == 0
    clock.t = 11
    assert await repair_recovery(app, r) == 1
    assert app.consumer.seeks == [(CL, 0)], "CL1 is recovered (38 of 38)"


async def test_no_repair_outside_recovery_or_for_partitions_the_client_cannot_place():
    clock = Clock()
    r = RecoveryRepair(stuck_s=0, clock=clock)
    app = app_in_recovery(in_recovery=False)
    assert await repair_recovery(app, r) == 0 and await repair_recovery(app, r) == 0
    app = app_in_recovery(positions={})
    assert await repair_recovery(app, r) == 0 and await repair_recovery(app, r) == 0
    assert app.consumer.seeks == []
