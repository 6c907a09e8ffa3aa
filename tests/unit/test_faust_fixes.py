"""The Faust at-least-once fixes, on Faust's own code: the consumer's commit offset and acks, and the
producer buffer's flush (with a fake channel at the seam where the buffer hands messages to the client)."""

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
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


class Handover:
    """The channel of buffered messages: handing one to the client takes ``delay_s`` (e.g. waiting for room
    in a full batch while the broker is slow), or fails."""

    def __init__(self, delay_s: float, fail: bool = False) -> None:
        self.delay_s, self.fail, self.handed = delay_s, fail, []

    async def publish_message(self, fut, wait: bool = False):
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise ConnectionError("broker gone")
        self.handed.append(fut)


async def buffer_with(channel: Handover, n: int) -> ProducerBuffer:
    buf = ProducerBuffer()
    buf.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
    await buf.start()
    for _ in range(n):
        buf.put(SimpleNamespace(message=SimpleNamespace(channel=channel)))
    await asyncio.sleep(0)  # the drain task takes the first message off the queue
    return buf


async def finish(buf: ProducerBuffer, channel: Handover, n: int) -> None:
    while len(channel.handed) < n:
        await asyncio.sleep(0.01)
    await buf.stop()


@pytest.mark.parametrize("n", [1, 3], ids=["one-being-handed-over", "more-queued"])
async def test_upstream_buffer_flush_returns_before_its_messages_reach_the_client(n):
    # A commit flushes this buffer so that the table's changelog records are durable before the offsets
    # of the records that wrote them are committed. Faust's flush returns with none of them handed over:
    # the queue looks empty while its only message is being handed over, and with more queued it gives
    # up after 0.1 s without progress.
    channel = Handover(0.3)
    buf = await buffer_with(channel, n)
    await faust_fixes.ORIGINAL_BUFFER_FLUSH(buf)
    assert channel.handed == []
    await finish(buf, channel, n)


@pytest.mark.parametrize("n", [1, 3], ids=["one-being-handed-over", "more-queued"])
async def test_patched_buffer_flush_returns_when_every_message_is_in_the_client(patched, n):
    channel = Handover(0.3)
    buf = await buffer_with(channel, n)
    await buf.flush()
    assert len(channel.handed) == n and buf.size == 0 and faust_fixes.not_handed_over(buf) == 0
    await finish(buf, channel, n)


async def test_patched_buffer_flush_raises_when_a_message_could_not_be_handed_over(patched):
    channel = Handover(0.05, fail=True)
    buf = await buffer_with(channel, 1)
    with pytest.raises(RuntimeError, match="could not be handed to the client"):
        await asyncio.wait_for(buf.flush(), 5)  # the commit fails with it: its records are processed again
    assert buf.state == "crashed"
    with pytest.raises(RuntimeError, match="could not be handed"):
        await buf.stop()  # stopping flushes too: the loss is reported there as well


async def test_patched_buffer_flush_does_not_wait_for_messages_put_after_it_began(patched):
    channel = Handover(0.2)
    buf = await buffer_with(channel, 1)
    flush = asyncio.ensure_future(buf.flush())
    await asyncio.sleep(0.05)
    for _ in range(3):  # table writes of the batches that run while the commit waits
        buf.put(SimpleNamespace(message=SimpleNamespace(channel=channel)))
    await asyncio.wait_for(flush, 5)
    assert len(channel.handed) == 1, "the flush waits for the message put before it, and only for that one"
    await finish(buf, channel, 4)


# --- 6: holes are read from the log before the commit moves past them ---------------------------------------


class Log:
    """The seam where the commit reads a partition: ``records`` are the offsets that hold a record."""

    def __init__(self, records, fail: bool = False) -> None:
        self.records, self.fail, self.reads = sorted(records), fail, []

    async def first_offset_from(self, tp, offset):
        self.reads.append(offset)
        if self.fail:
            raise ConnectionError("broker gone")
        return next((o for o in self.records if o >= offset), None)


def reading(log: Log, committed, acked, assigned=True):
    c = fake(committed, acked)
    c.app = SimpleNamespace()
    faust_fixes.set_log_reader(c.app, log.first_offset_from)
    c.seeks = []
    c.assignment = lambda: {TP} if assigned else set()

    async def seek(tp, offset):
        c.seeks.append((tp, offset))
    c.seek = seek
    return c


async def settle(c) -> None:
    task = c._reco_hole_checks[TP][2]
    await task


async def test_upstream_gap_bookkeeping_commits_records_nobody_applied():
    # The offset guard sought back to 241 (Faust's read offset: 241); record 248, fetched before the seek, is
    # drained after it: the fetcher books 242..248 as a gap. 241..243 are applied and acked, one commit
    # after each, then one more commit: Faust commits 249, past 244..248, which nobody applied (a rebalance
    # or crash then loses them: the scaling test's loss).
    c = fake(241, [])
    await faust_fixes.ORIGINAL_ADD_GAP(c, TP, 242, 248)
    assert commits(faust_fixes.ORIGINAL_NEW_OFFSET, c, applied=[241, 242, 243, None]) == [242, 243, 244, 249]


async def test_patched_fetcher_books_no_gap_and_the_commit_stops_at_what_was_applied(patched):
    c = fake(241, [])
    await Consumer._add_gap(c, TP, 242, 248)
    assert not c._gap[TP]
    assert commits(patched, c, applied=[241, 242, 243, None]) == [242, 243, 244, None]


def commits(new_offset, c, applied) -> list:
    """One commit after each record is applied (None: a commit with nothing new acked)."""
    out = []
    for offset in applied:
        if offset is not None:
            c._acked[TP].append(offset)
            c._acked_index[TP].add(offset)
        out.append(new_offset(c, TP))
        if out[-1] is not None:
            c._committed_offset[TP] = out[-1]
    return out


async def test_a_hole_without_records_is_booked_and_the_commit_moves_past_it(patched):
    # a transaction marker at the committed offset 101, e.g. after a restart: the fetcher books nothing
    # for the first record it reads, and 1 alone would make the commit wait there forever
    log = Log(records=[100, 102, 103])
    c = reading(log, 101, [102, 103])
    assert patched(c, TP) is None  # not known yet: no commit past it
    await settle(c)
    assert log.reads == [101]
    assert patched(c, TP) == 104


async def test_a_hole_with_records_is_not_booked_and_read_again_later(patched, monkeypatch):
    log = Log(records=range(240, 260))  # 241..247 are in the log: fetched and never delivered
    c = reading(log, 241, [248, 249])
    assert patched(c, TP) is None
    await settle(c)
    assert not c._gap[TP] and c.seeks == []
    assert patched(c, TP) is None and log.reads == [241], "read at most once per RECHECK_HOLE_S"
    monkeypatch.setattr(faust_fixes, "RECHECK_HOLE_S", 0.0)
    assert patched(c, TP) is None
    await settle(c)
    assert log.reads == [241, 241]
    assert c.seeks == [(TP, 241)], "still missing at the next read: sought back (nothing else re-fetches it)"
    c._acked[TP] = list(range(241, 250))  # the seek back delivered them, and they were applied
    c._acked_index[TP] = set(c._acked[TP])
    assert patched(c, TP) == 250


async def test_a_missing_record_of_a_partition_no_longer_assigned_is_not_sought(patched, monkeypatch):
    monkeypatch.setattr(faust_fixes, "RECHECK_HOLE_S", 0.0)
    c = reading(Log(records=range(240, 260)), 241, [248], assigned=False)
    for _ in range(3):
        assert patched(c, TP) is None
        await settle(c)
    assert c.seeks == []


async def test_only_the_recordless_part_of_a_hole_is_booked(patched):
    log = Log(records=[100, 103, 104])  # 101, 102: markers; 103: a record not applied yet
    c = reading(log, 101, [104])
    assert patched(c, TP) is None
    await settle(c)
    assert [(iv.begin, iv.end) for iv in c._gap[TP]] == [(101, 103)]
    assert patched(c, TP) is None, "103 holds a record: the commit waits for it"


async def test_a_log_that_cannot_be_read_books_nothing(patched, monkeypatch):
    log = Log(records=[102], fail=True)
    c = reading(log, 101, [102])
    assert patched(c, TP) is None
    await settle(c)
    assert not c._gap[TP] and patched(c, TP) is None


def test_without_a_log_reader_a_hole_is_never_passed(patched):
    c = fake(101, [102])
    c.app = SimpleNamespace()
    assert patched(c, TP) is None and not hasattr(c, "_reco_hole_checks")


async def test_a_failed_seek_back_is_logged_and_tried_again(patched, monkeypatch):
    monkeypatch.setattr(faust_fixes, "RECHECK_HOLE_S", 0.0)
    c = reading(Log(records=range(240, 260)), 241, [248])
    tries = []

    async def seek(tp, offset):
        tries.append(offset)
        raise RuntimeError("partition revoked meanwhile")
    c.seek = seek
    for _ in range(3):
        assert patched(c, TP) is None
        await settle(c)  # the task does not fail
    assert tries == [241, 241]
