"""Fixes for five faust-streaming 0.15.x bugs that break at-least-once delivery, and the hook that keeps
records the offset guard held back out of the commit.

1. **Off-by-one in the head-gap check** (``Consumer._new_offset``). ``_committed_offset[tp]`` holds the
   Kafka committed offset, i.e. the *next* offset to read, but the check that refuses to commit past an
   unacked head message reads ``if min(acked) - committed_offset > 1: return None``. When exactly the
   message at the committed offset was never acked (e.g. it was dropped from an agent queue that
   ``flow_control.clear()`` emptied during a rebalance) and later ones were, Faust commits past it and
   that one event is lost. Found by ``tests/chaos/test_faults.py::test_scale_1_to_3_to_1_with_rebalances``
   (one event per run missing, always the first offset after a commit). Fixed: any
   ``min(acked) > committed`` not covered by known gaps (transaction markers, compaction) is a gap.
2. **Stale acks across a rebalance.** ``on_partitions_revoked`` forgets a partition's acked offsets, but
   acks that arrive afterwards (from a batch still in flight) recreate them; if the partition is then
   assigned to this worker again, those stale acks can let a commit run ahead of records that were
   re-fetched but not yet processed. Fixed: a newly assigned partition starts with clean ack bookkeeping.
3. **Acks of skipped stale-generation messages.** After a rebalance a stream *skips* messages fetched in
   the previous consumer generation (they are fetched again from the committed offset) but still *acks*
   them, so their offsets count towards the next commit while the re-fetched copies are still unprocessed;
   one more rebalance before those copies are processed and they are committed without ever being applied
   (seen as one lost event in the 1 → 3 → 1 scaling test). Fixed: an ack from an older generation releases
   the message but does not count towards the commit offset.

4. **Records held back by the offset guard** (``streams.app.OffsetGuard``: records past a hole in a
   partition are not applied; the guard seeks back to the hole) are still acked by ``take_events`` when
   their batch returns. Counted as acked, they let the commit run past records nobody applied: seen in
   ``tests/chaos/test_faults.py::test_kill9_repeatedly_mid_stream`` as a restarted worker committing up
   to offset ~250 while it had applied 0..32, and the next restart losing 33..249. Fixed: the guard marks
   them with :func:`hold_back`; their ack releases them without counting towards the commit (like 3),
   so the commit stops at the hole until the re-fetched copies are applied and acked.

5. **A flush that does not flush** (``ProducerBuffer.flush``). Table writes reach the changelog through
   Faust's producer buffer (``send_soon``), which one task drains into the Kafka client; a commit first
   flushes it, so that every state change of the records it commits is durable. But the flush *returns*
   (a) as soon as no message was handed over within 0.1 s, with messages still queued: e.g. while the
   client waits for room in a full batch on a slow broker, or while a batch holds the event loop; and
   (b) when the queue is empty but its last message is still being handed to the client (size 0, not yet
   in the client's accumulator, so the client's own flush does not wait for it either). The commit then
   runs ahead of the changelog, and a crash before those records are sent loses the events they applied:
   seen in CI as ``tests/chaos/test_faults.py::test_kill9_repeatedly_mid_stream[replayable]`` with 10 of
   one user's 48 events never applied, and with (b) logged by an instrumented worker in 1 of 16 worker
   lives on this machine. Fixed: the buffer counts the messages put and handed over, and the flush waits
   until every message put before it was handed over, however long that takes (not for those put
   meanwhile: a busy table cannot hold a commit back forever); a message that could not be handed over,
   or a buffer that stops running with messages queued, makes it raise, and the commit with it (the
   records are then processed again). ``test_kill9_right_after_a_commit_while_the_changelog_is_slow``
   (the ``slow_changelog`` failpoint) loses events in every run without this fix.

6. **Holes booked as gaps without looking** (``Consumer._add_gap``). When the fetcher receives a record more
   than one offset past the last one it read, Faust books the offsets in between *and the received record
   itself* as a "gap" (its bookkeeping for transaction markers), and the commit counts a gap as done.
   But a jump also happens when records were fetched and not delivered: e.g. records fetched before the
   offset guard's seek back and drained after it (the read offset is reset by the seek, then jumps). The
   commit then ran past records nobody had applied: seen as ``ub/2`` offsets 241-247 committed and never
   applied in 1 of 162 runs of the scaling test (the group's commits went 241 -> 248, the end of the
   booked gap, just before a rebalance). Fixed: the fetcher books nothing; a hole between the committed
   offset and the first acked one is read from the log instead (:func:`set_log_reader`, off the commit
   path, at most once per ``RECHECK_HOLE_S`` per partition), and only offsets the log holds no record at
   are booked as a gap. Offsets with records wait until the records are applied (the offset guard seeks
   back to them on the behaviour topic; on other topics, a record still missing at the next read is sought
   back to here). This also lets the commit move past a transaction marker at the committed offset after
   a restart, where 1 made it wait forever (the fetcher books no gap for the first record it reads).

All are applied once by :func:`apply` (idempotent) before the app is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref

from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer

from . import metrics

log = logging.getLogger(__name__)

_APPLIED = False
#: Faust's own implementation, kept for the regression test that shows the bug.
ORIGINAL_NEW_OFFSET = Consumer._new_offset
ORIGINAL_ACK = Consumer.ack
ORIGINAL_BUFFER_FLUSH = ProducerBuffer.flush
ORIGINAL_BUFFER_PUT = ProducerBuffer.put
ORIGINAL_SEND_PENDING = ProducerBuffer._send_pending
ORIGINAL_ADD_GAP = Consumer._add_gap
#: How long after reading a hole from the log the same hole may be read again (seconds; see 6).
RECHECK_HOLE_S = 5.0
#: While the buffer is stopping, how long a flush waits for the message being handed over (seconds).
STOPPING_HANDOVER_S = 10.0


#: Delivered messages the offset guard did not apply (see 4), from the guard's decision until their ack. Weak
#: references: a held-back message that is never acked (its stream skipped it, or the worker's assignment
#: changed) leaves nothing behind. (It was a set of ``id()``s; a leftover id, reused by a later message,
#: made that message's ack not count, and its partition's commit waited for it for good.)
_HELD_BACK: weakref.WeakSet = weakref.WeakSet()


def hold_back(message) -> None:
    """This delivered copy of a record was not applied: its ack must not advance the commit."""
    _HELD_BACK.add(message)


def is_held_back(message) -> bool:
    return message in _HELD_BACK


def release(message) -> None:
    """Undo :func:`hold_back`: this copy is applied after all (the hole before it was a gap in the log)."""
    _HELD_BACK.discard(message)


def is_stale(consumer: Consumer, message) -> bool:
    generation = getattr(message, "generation_id", None)
    current = getattr(consumer.app, "consumer_generation_id", None)
    return generation is not None and current is not None and generation != current


def _head_gap(consumer: Consumer, tp) -> bool:
    """True when the first acked offset is beyond the committed offset and the hole is not a known gap."""
    acked = consumer._acked[tp]
    committed = consumer._committed_offset[tp]
    if not acked or committed is None:
        return False
    lo, hi = committed, min(acked)
    if hi <= lo:
        return False
    covered: set[int] = set()
    for iv in consumer._gap[tp].overlap(lo, hi):
        covered.update(range(max(iv.begin, lo), min(iv.end, hi)))
    if len(covered) == hi - lo:
        return False
    _check_hole(consumer, tp, next(o for o in range(lo, hi) if o not in covered), hi)
    return True


def set_log_reader(app, first_offset_from) -> None:
    """Install how the commit reads a hole from the log (see 6): ``await first_offset_from(tp, offset)`` is
    the offset of the first record at or after ``offset`` in partition ``tp`` (None: could not tell).
    Without one, no hole is ever booked as a gap and the commit waits at every hole."""
    app._reco_first_offset_from = first_offset_from


def _check_hole(consumer: Consumer, tp, lo: int, hi: int) -> None:
    """Read offsets ``lo``..``hi - 1`` of ``tp`` (no record there was acked) from the log in the background;
    offsets that hold no record are booked as a gap, so the next commit can move past them."""
    reader = getattr(getattr(consumer, "app", None), "_reco_first_offset_from", None)
    if reader is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    checks = consumer.__dict__.setdefault("_reco_hole_checks", {})
    last = checks.get(tp)  # (lo, started at, task)
    if last is not None and (not last[2].done() or (last[0] == lo and loop.time() - last[1] < RECHECK_HOLE_S)):
        return
    task = loop.create_task(_read_hole(consumer, tp, lo, hi, reader))
    checks[tp] = (lo, loop.time(), task)


async def _read_hole(consumer: Consumer, tp, lo: int, hi: int, reader) -> None:
    try:
        first = await reader(tp, lo)
    except Exception as exc:  # the commit keeps waiting at the hole; read again later
        log.warning("could not read %s from offset %d to tell a gap from unapplied records: %r", _name(tp), lo,
                    exc)
        first = None
    if first is None:
        metrics.COMMIT_HOLES.labels("unknown").inc()
        return
    end = min(first, hi)
    if end > lo:  # no record at lo..end-1: a real gap (transaction markers, compaction)
        consumer._gap[tp].addi(lo, end)
        consumer._gap[tp].merge_overlaps()
        metrics.COMMIT_HOLES.labels("gap").inc()
        log.info("%s has no record at offsets %d..%d: booked as a gap for the commit", _name(tp), lo, end - 1)
    missing = consumer.__dict__.setdefault("_reco_missing", {})  # tp -> (offset of the missing record, since)
    if end >= hi:
        missing.pop(tp, None)
        return
    # A record at `end` was not applied yet: the commit waits for it. The offset guard seeks back to such a
    # record on the behaviour topic; on any other topic nothing would re-fetch it in this generation (Faust
    # drops re-fetched records below its read offset). So when the same record is still missing at the next
    # read (RECHECK_HOLE_S later), the partition is sought back to it here.
    metrics.COMMIT_HOLES.labels("records").inc()
    now = asyncio.get_running_loop().time()
    seen = missing.get(tp)
    if seen is None or seen[0] != end:
        missing[tp] = (end, now)
        log.warning("%s: record %d is in the log but not acked while later ones are; the commit waits for it",
                    _name(tp), end)
    elif now - seen[1] >= RECHECK_HOLE_S and tp in consumer.assignment():
        missing[tp] = (end, now)
        log.warning("%s: record %d is still in the log and not acked while later ones are: seeking back to it",
                    _name(tp), end)
        try:
            await consumer.seek(tp, end)
        except Exception as exc:  # e.g. revoked meanwhile: the next read tries again
            log.warning("%s: could not seek back to %d: %r", _name(tp), end, exc)


async def _add_gap(self: Consumer, tp, offset_from: int, offset_to: int) -> None:
    """The fetcher saw the read offset jump to ``offset_to``: book nothing (see 6); the commit reads the hole
    from the log when it gets there."""
    log.debug("%s: fetcher jumped to %d after %d; not booked as a gap", _name(tp), offset_to, offset_from - 1)


def _name(tp) -> str:
    return f"{tp[0]}/{tp[1]}"


def not_handed_over(buffer: ProducerBuffer) -> int:
    """Messages put in the buffer and not yet handed to the Kafka client (queued or being handed over; see 5)."""
    return getattr(buffer, "_reco_put", 0) - getattr(buffer, "_reco_handed", 0)


def _put(self: ProducerBuffer, fut) -> None:
    ORIGINAL_BUFFER_PUT(self, fut)
    self._reco_put = getattr(self, "_reco_put", 0) + 1


async def _send_pending(self: ProducerBuffer, fut) -> None:
    # One drain task hands the messages over one at a time, in the order they were put: after the n-th
    # handover, the first n messages put are in the client's accumulator (whose flush waits for delivery).
    try:
        await ORIGINAL_SEND_PENDING(self, fut)
    except Exception as exc:  # this message is lost: no commit may count on it (the drain task dies too)
        self._reco_lost = exc
        raise
    self._reco_handed = getattr(self, "_reco_handed", 0) + 1


async def _buffer_flush(self: ProducerBuffer) -> None:
    """Return only when every message put before this call is in the client, however long that takes (not
    waiting for messages put meanwhile: a steady stream of table writes cannot hold a commit back forever)."""
    if self.app is not None and self.app.conf.producer_threaded:  # not this project's configuration
        return await ORIGINAL_BUFFER_FLUSH(self)
    target = getattr(self, "_reco_put", 0)
    stopping_since = None
    while getattr(self, "_reco_handed", 0) < target:
        lost = getattr(self, "_reco_lost", None)
        if lost is not None:
            raise RuntimeError(f"Cannot flush: a buffered message could not be handed to the client ({lost!r})")
        if self.state != "running":
            if self.size:
                raise RuntimeError("Cannot flush: Producer not Running")
            loop = asyncio.get_running_loop()
            stopping_since = stopping_since or loop.time()
            if loop.time() - stopping_since > STOPPING_HANDOVER_S:
                log.warning("producer buffer stopped with %d message(s) still being handed over",
                            not_handed_over(self))
                return
        self.message_sent.clear()
        with contextlib.suppress(asyncio.TimeoutError):  # re-check the state now and then; never give up
            await asyncio.wait_for(self.message_sent.wait(), timeout=0.5)


def apply() -> None:
    global _APPLIED
    if _APPLIED:
        return
    original_new_offset = ORIGINAL_NEW_OFFSET
    original_assigned = Consumer.on_partitions_assigned
    original_ack = ORIGINAL_ACK

    def _new_offset(self, tp):
        if _head_gap(self, tp):
            return None
        return original_new_offset(self, tp)

    async def on_partitions_assigned(self, assigned, generation_id: int = 0):
        for tp in assigned:
            self._acked.pop(tp, None)
            self._acked_index.pop(tp, None)
            self._gap.pop(tp, None)
            self.__dict__.get("_reco_missing", {}).pop(tp, None)
        return await original_assigned(self, assigned, generation_id)

    def ack(self, message) -> bool:
        held = message in _HELD_BACK
        if held:
            _HELD_BACK.discard(message)
        if held or is_stale(self, message):
            message.acked = True  # released: nothing waits for it, and it is not committed
            self._unacked_messages.discard(message)
            return False
        return original_ack(self, message)

    Consumer._new_offset = _new_offset
    Consumer.ack = ack
    Consumer.on_partitions_assigned = on_partitions_assigned
    ProducerBuffer.put = _put
    ProducerBuffer._send_pending = _send_pending
    ProducerBuffer.flush = _buffer_flush
    Consumer._add_gap = _add_gap
    _APPLIED = True
