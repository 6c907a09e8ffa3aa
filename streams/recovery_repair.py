"""Repair for Faust's table recovery waiting forever on changelog records its fetcher dropped.

Seen in the scaling test (4 of 162 runs on 2026-12-06): a worker taking over partitions recovers the user
table from the changelog, and the stall report showed the Kafka client *at the end* of two changelog
partitions (positions 22 and 39, last offsets 21 and 38) while Faust's recovery had received none of their
records. The client had fetched them and Faust's fetcher dropped them (its ``getmany`` drops fetched
records when the consumer generation changes or flow stops mid-batch, and its drain loop drops records
below a stale read offset), so nothing would ever deliver them again: recovery waits, the agents never
start, and only the watchdog's exit (71) ended it.

The repair: while recovery runs, a changelog partition it still needs records of, where the client's
position is past the last offset recovery applied and recovery has applied nothing of it for
``stuck_s``, is sought back to the offset after the last one applied. The records are fetched again and
recovery applies them (it skips offsets it has already seen, so a needless seek costs only a re-read).

>>> r = RecoveryRepair(stuck_s=10, clock=lambda: now)
>>> now = 0.0
>>> r.due([("t-changelog/2", -1, 21, 22)])  # nothing applied yet, last offset 21, the client at 22
{}
>>> now = 11.0
>>> r.due([("t-changelog/2", -1, 21, 22)])  # 11 s without progress: seek back to the start
{'t-changelog/2': 0}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from . import metrics

log = logging.getLogger(__name__)


class RecoveryRepair:
    """Tracks per changelog partition since when recovery has made no progress (see the module doc)."""

    def __init__(self, stuck_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stuck_s = stuck_s
        self._clock = clock
        self._since: dict[Any, tuple[int, float]] = {}  # tp -> (offset applied, since when unchanged)

    def reset(self) -> None:
        self._since.clear()

    def due(self, rows: Iterable[tuple]) -> dict[Any, int]:
        """``rows``: ``(tp, applied, last, position)`` per active changelog partition. Returns ``{tp: offset to
        seek to}`` for those stuck ``stuck_s`` with the client ahead of recovery; each is then given another
        ``stuck_s`` before it is sought again."""
        now = self._clock()
        out: dict[Any, int] = {}
        seen = set()
        for tp, applied, last, position in rows:
            seen.add(tp)
            if applied >= last:  # recovered
                self._since.pop(tp, None)
                continue
            prev = self._since.get(tp)
            if prev is None or prev[0] != applied:
                self._since[tp] = (applied, now)
                continue
            if now - prev[1] < self.stuck_s:
                continue
            if position is None or position <= applied + 1:  # the client is not ahead: nothing was dropped
                continue
            out[tp] = applied + 1
            self._since[tp] = (applied, now)
        for tp in set(self._since) - seen:
            del self._since[tp]
        return out


async def repair_recovery(app, repair: RecoveryRepair) -> int:
    """Run :meth:`RecoveryRepair.due` on ``app``'s table recovery and seek what is due; returns how many."""
    recovery = getattr(getattr(app, "tables", None), "recovery", None)
    if recovery is None or not getattr(recovery, "in_recovery", False):
        repair.reset()
        return 0
    consumer = app.consumer
    rows = []
    for tp in list(recovery.active_tps):
        last = recovery.active_highwaters.get(tp)
        applied = recovery.active_offsets.get(tp)
        if last is None or applied is None or last < 0:
            continue
        try:
            position = await consumer.position(tp)
        except Exception:  # not assigned (any more), or the client is restarting: look again next time
            continue
        rows.append((tp, applied, last, position))
    seeks = repair.due(rows)
    for tp, offset in seeks.items():
        log.warning("table recovery has applied nothing of %s/%d for %.0f s (applied up to %d of %d) while the "
                    "Kafka client is past it: its records were fetched and dropped; seeking back to %d",
                    tp.topic, tp.partition, repair.stuck_s, offset - 1, recovery.active_highwaters[tp], offset)
        metrics.RECOVERY_RESEEKS.inc()
        await consumer.seek(tp, offset)
    return len(seeks)
