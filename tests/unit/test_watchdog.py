"""The watchdog's rules with a fake clock (the real-process test is in tests/chaos)."""

from streams.watchdog import EXIT_STALLED, Watchdog


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
