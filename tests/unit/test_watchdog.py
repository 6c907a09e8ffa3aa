"""The watchdog's rules with a fake clock (the real-process test is in tests/chaos), and the fault tests'
stand-in for the orchestrator that restarts a worker the watchdog stopped."""

from types import SimpleNamespace

import pytest

from streams.watchdog import EXIT_STALLED, Watchdog
from tests.chaos.workload import wait_processed_as_orchestrated


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make(limit=10.0):
    clock = Clock()
    exits = []
    return Watchdog(limit, exit_fn=exits.append, clock=clock), clock, exits


def test_healthy_worker_is_not_stalled():
    w, clock, _ = make()
    for _ in range(30):
        clock.t += 1
        w.beat_loop()
        w.start_batch()
        w.end_batch()
        assert w.stalled() is None


def test_blocked_loop_is_stalled():
    w, clock, _ = make()
    clock.t += 11
    assert "event loop blocked" in w.stalled()


def test_batch_without_progress_is_stalled_but_retries_count_as_progress():
    w, clock, _ = make()
    w.start_batch()
    for _ in range(5):
        clock.t += 5
        w.beat_loop()
        w.beat_batch()  # e.g. a Redis retry
        assert w.stalled() is None
    clock.t += 11
    w.beat_loop()
    assert "without progress" in w.stalled()


def test_pending_input_without_batches_is_stalled():
    w, clock, _ = make()
    clock.t += 100
    w.beat_loop()
    w.input_pending(True)
    assert w.stalled() is None
    clock.t += 11
    w.beat_loop()
    assert "no batch started" in w.stalled()
    w.start_batch()
    assert w.stalled() is None


def test_no_pending_input_means_idle_is_fine():
    w, clock, _ = make()
    w.input_pending(True)
    w.input_pending(False)
    clock.t += 100
    w.beat_loop()
    assert w.stalled() is None


def test_thread_exits_with_the_stall_code():
    import time

    exits = []
    w = Watchdog(0.5, exit_fn=exits.append)
    w.loop_beat -= 10
    w.start()
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.1)
    w.stop()
    assert exits == [EXIT_STALLED]


# ----------------------------------------------------------------------------------------------------------
# The fault tests' stand-in for the orchestrator (tests/chaos/workload.py), with fakes for the worker
# process and the workload, and a fake clock that each sleep advances.
class FakeWorker:
    def __init__(self, codes):
        self.codes = list(codes)  # what proc.poll() returns, one per call; the last one repeats
        self.proc = SimpleNamespace(poll=self._poll)
        self.s = SimpleNamespace(stall_timeout_s=60.0)

    def _poll(self):
        return self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]

    def tail(self, n=60):
        return "No event received for active tp"


class FakeWorkload:
    """Processed at the ``done_after``-th check (never when None)."""

    def __init__(self, done_after):
        self.done_after, self.waits = done_after, 0

    def processed(self):
        def done():
            self.waits += 1
            return self.done_after is not None and self.waits >= self.done_after
        return done


def _run(first, later=(None,), done_after=3, timeout=120.0, clock=None):
    clock = clock or Clock()
    started = []

    def start_worker(s, name):
        started.append((s, name))
        return FakeWorker(later)

    def sleep(dt):
        clock.t += dt

    w = FakeWorker(first)
    wl = FakeWorkload(done_after)
    return w, wait_processed_as_orchestrated(wl, w, start_worker, timeout, clock=clock, sleep=sleep), started, wl, clock


def test_orchestrated_wait_leaves_a_healthy_worker_alone():
    w, out, started, wl, _ = _run([None])
    assert out is w and started == [] and wl.waits == 3


def test_orchestrated_wait_restarts_a_worker_its_watchdog_stopped_once_with_the_same_settings():
    with pytest.warns(UserWarning, match="watchdog exit 71"):
        w, out, started, wl, _ = _run([None, EXIT_STALLED])
    assert out is not w and len(started) == 1 and started[0][0] is w.s


@pytest.mark.filterwarnings("ignore:watchdog exit")
@pytest.mark.parametrize("first,later,code", [([70], [None], 70), ([EXIT_STALLED], [EXIT_STALLED], EXIT_STALLED),
                                              ([0], [None], 0)], ids=["crash", "second-stall", "clean-exit"])
def test_orchestrated_wait_fails_on_any_other_exit_or_a_second_stall(first, later, code):
    with pytest.raises(AssertionError, match=f"worker exited with {code}"):
        _run(first, later, done_after=50)


def test_orchestrated_wait_times_out_and_a_restart_extends_it_by_the_stall_timeout():
    clock = Clock()
    with pytest.raises(AssertionError, match="timed out"):
        _run([None], done_after=None, timeout=20.0, clock=clock)
    assert clock.t - 1000.0 == pytest.approx(20.0, abs=5.0)
    clock = Clock()
    with pytest.raises(AssertionError, match="timed out"), pytest.warns(UserWarning, match="watchdog exit"):
        _run([EXIT_STALLED], done_after=None, timeout=20.0, clock=clock)
    assert clock.t - 1000.0 == pytest.approx(80.0, abs=5.0)
