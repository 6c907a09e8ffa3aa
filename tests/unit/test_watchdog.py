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


def _trip(w):
    """Run ``w``'s thread with a loop that stopped beating 10 s ago; the exit codes it called (within 5 s)."""
    import time

    exits = []
    w._exit = exits.append
    w.loop_beat -= 10
    w.start()
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    w.stop()
    return exits


def test_thread_exits_with_the_stall_code():
    assert _trip(Watchdog(0.5)) == [EXIT_STALLED]


def test_a_stall_logs_the_diagnosis_before_the_exit(caplog):
    order = []
    w = Watchdog(0.5, diagnose=lambda: order.append("diagnosed") or "task behavior: awaiting <Future pending>")
    with caplog.at_level("CRITICAL", logger="streams.watchdog"):
        exits = _trip(w)
    assert exits == [EXIT_STALLED] and order == ["diagnosed"]
    messages = [r.getMessage() for r in caplog.records]
    assert "event loop blocked" in messages[0]
    assert "what the worker was doing" in messages[1] and "awaiting <Future pending>" in messages[1]


def test_a_diagnosis_that_raises_is_logged_and_the_worker_still_exits(caplog):
    def broken():
        raise RuntimeError("cannot read the consumer")

    with caplog.at_level("CRITICAL", logger="streams.watchdog"):
        exits = _trip(Watchdog(0.5, diagnose=broken))
    assert exits == [EXIT_STALLED]
    assert "diagnosis failed: RuntimeError('cannot read the consumer')" in caplog.records[-1].getMessage()


def test_the_stall_report_shows_threads_the_awaited_chain_of_each_task_and_the_consumer():
    """What the worker's hook logs, on a live loop read from another thread (as the watchdog does), with a
    stand-in for Faust's app; a consumer that cannot be read is reported without losing the rest."""
    import asyncio
    import threading

    from streams.diagnostics import stall_report

    class TP(SimpleNamespace):
        def __hash__(self):
            return hash((self.topic, self.partition))

    tp0, tp1 = TP(topic="ub", partition=0), TP(topic="ub", partition=1)
    queue = asyncio.Queue(maxsize=8)
    queue.put_nowait(1)
    actor = SimpleNamespace(stream=SimpleNamespace(channel=SimpleNamespace(_queue=queue)))
    # The Kafka client under Faust's consumer, with aiokafka's own subscription state: Faust counts ub/0 as
    # active, but the client has it paused with a fetched result waiting (so it would never fetch it again).
    from aiokafka.consumer.subscription_state import SubscriptionState
    from aiokafka.structs import TopicPartition

    def kafka_client():  # aiokafka's state wants a running loop
        subscription = SubscriptionState()
        k0, k1 = TopicPartition("ub", 0), TopicPartition("ub", 1)
        subscription.assign_from_user({k0, k1})
        subscription.seek(k1, 7)
        subscription.pause(k0)
        return SimpleNamespace(_subscription=subscription, _fetcher=SimpleNamespace(_records={k0: object()}))

    consumer = SimpleNamespace(flow_active=False, assignment=lambda: {tp0, tp1}, _paused_partitions={tp1},
                               _active_partitions={tp0}, _read_offset={tp0: 41}, _committed_offset={tp0: 40},
                               _unacked_messages=set())
    app = SimpleNamespace(consumer=consumer, rebalancing=True, consumer_generation_id=3,
                          agents={"behavior": SimpleNamespace(_actors=[actor])},
                          tables=SimpleNamespace(recovery=SimpleNamespace(completed=asyncio.Event(), in_recovery=True)))
    reports = {}

    async def stuck_in_fetch(gate):
        await gate.wait()

    async def main():
        loop = asyncio.get_running_loop()
        consumer._thread = SimpleNamespace(_consumer=kafka_client())
        gate = asyncio.Event()
        task = asyncio.create_task(stuck_in_fetch(gate), name="fetcher")
        await asyncio.sleep(0)
        t = threading.Thread(target=lambda: reports.update(
            ok=stall_report(loop, app),
            broken=stall_report(loop, SimpleNamespace())))
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.01)
        gate.set()
        await task

    asyncio.run(main())
    text = reports["ok"]
    assert "--- threads ---" in text and "MainThread" in text
    fetcher = text[text.index("task fetcher:"):]
    assert "in stuck_in_fetch" in fetcher.splitlines()[1] and "in wait" in fetcher
    assert "flow_active=False rebalancing=True generation=3" in text
    assert "table recovery completed=False in_recovery=True" in text
    assert "assigned: ub/0, ub/1" in text and "paused: ub/1" in text and "active: ub/0" in text
    assert "read offsets: ub/0=41" in text and "committed offsets: ub/0=40" in text
    assert "agent behavior: input buffer 1/8" in text
    assert "kafka client: ub/0@None (paused result-waiting), ub/1@7\n" in text
    broken = reports["broken"]
    assert "task fetcher:" in broken and "--- consumer ---\n  (could not be read: AttributeError" in broken


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
