"""Watchdog: a worker that can no longer make progress exits non-zero so its orchestrator restarts it.

It runs in its own **thread**, so it also notices an event loop that is blocked (a coroutine that never
yields), which no asyncio task could. Rules, checked every second:

1. Loop liveness: an asyncio task beats ``loop_beat`` every 0.1 s; no beat for ``stall_timeout_s`` = stalled.
2. Batch liveness: a batch that started (``batch_started``) must finish or beat (Redis retries beat too)
   within ``stall_timeout_s``.
3. Input liveness: when the last lag sample said input is pending, some batch must have started within
   ``stall_timeout_s`` of that sample.

A stalled worker logs why, then what it was doing (``diagnose``: the worker sets
:func:`streams.diagnostics.stall_report`, its threads, asyncio tasks and consumer state), and
``os._exit(EXIT_STALLED)``: nothing of the stuck batch was acked, so its records are redelivered to whoever
takes the partitions over (at-least-once holds). A diagnose hook that raises is logged as such; the exit
happens either way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_STALLED = 71


class Watchdog:
    def __init__(self, stall_timeout_s: float, *, exit_fn=os._exit, clock=time.monotonic,
                 diagnose: Callable[[], str] | None = None) -> None:
        self.stall_timeout_s = stall_timeout_s
        self.diagnose = diagnose
        self._exit = exit_fn
        self._clock = clock
        now = clock()
        self.loop_beat = now
        self.batch_started: float | None = None
        self.batch_beat = now
        self.last_batch_start = now
        self.pending_since: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- signals from the worker
    def beat_loop(self) -> None:
        self.loop_beat = self._clock()

    def start_batch(self) -> None:
        now = self._clock()
        self.batch_started = self.batch_beat = self.last_batch_start = now
        self.pending_since = None

    def beat_batch(self) -> None:
        self.batch_beat = self._clock()

    def end_batch(self) -> None:
        self.batch_started = None

    def input_pending(self, pending: bool) -> None:
        if not pending:
            self.pending_since = None
        elif self.pending_since is None:
            self.pending_since = self._clock()

    # -------------------------------------------------------------- the check
    def stalled(self) -> str | None:
        now, limit = self._clock(), self.stall_timeout_s
        if now - self.loop_beat > limit:
            return f"event loop blocked for {now - self.loop_beat:.0f}s"
        if self.batch_started is not None and now - self.batch_beat > limit:
            return f"batch running for {now - self.batch_started:.0f}s without progress"
        if (self.batch_started is None and self.pending_since is not None
                and now - max(self.pending_since, self.last_batch_start) > limit):
            return f"input pending for {now - self.pending_since:.0f}s but no batch started"
        return None

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            reason = self.stalled()
            if reason:
                log.critical("watchdog: %s; exiting with %d so the worker is restarted", reason, EXIT_STALLED)
                self._log_diagnosis()
                logging.shutdown()
                self._exit(EXIT_STALLED)
                return

    def _log_diagnosis(self) -> None:
        if self.diagnose is None:
            return
        try:
            text = self.diagnose()
        except Exception as exc:  # the exit must happen whatever the diagnosis does
            text = f"(diagnosis failed: {exc!r})"
        log.critical("watchdog: what the worker was doing when it stalled:\n%s", text)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="reco-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
