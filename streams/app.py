"""The Faust app: topics, the user table, the agents and the batch pipeline.

Commit protocol (at-least-once end to end; each step's invariant is asserted or enforced where noted):

1. ``take_events`` buffers up to ``batch_max`` behaviour records (or ``batch_within_s``) **without acking**.
   (It waits ``batch_within_s`` after *every* batch, even when records arrived while the last one was
   processed, so that wait is idle time per batch and the default is short.)
   Each partition is applied strictly in offset order with no holes (enforced by :class:`OffsetGuard`:
   Faust can drop the record at the committed offset after a rebalance; the guard seeks back to it), which
   is what makes the per-user ``last_offset`` dedup of step 3 exact. Records the guard holds back are
   marked so that their ack does not count towards the commit (:func:`streams.faust_fixes.hold_back`): the
   commit stops at the hole until the re-fetched copies are applied.
2. Each record is parsed; an invalid one is produced to ``dead-letters`` (original bytes + topic/partition/
   offset + error) and counted; it never stops the batch.
3. Per user, in offset order: load state from the table, skip events already applied
   (``offset <= state.last_offset`` or a known ``event_id``) — this makes redelivery harmless —, learn the
   rest, and write the new state to the table. The changelog record goes to the **same partition** as the
   input record (asserted), so a rebalanced or restarted worker recovers exactly this state.
   Steps 3–6 run per *slice* of the batch: whole users, about ``batch_slice_s`` of processing time each
   (sized from the measured cost per event), so the first users of a large batch get their results
   without waiting for the rest; the batch is still acked as a whole (step 7), after its last slice.
   In replayable mode (``RECO_REPLAYABLE``) steps 3-6 run per partition, in offset order, against the
   partition's shard of shared signals, as numbered in :mod:`streams.shards`.
4. One batched FAISS search ranks every touched user (including those whose events were duplicates, so a
   crash between step 3 and 5 is repaired on redelivery).
5. One Redis pipeline writes all results (compare-and-set on version: never older over newer); connection
   failures are retried with backoff until they succeed — the batch is not acked before.
6. One recommendation event per user is produced to ``recommendations``.
7. The body returns; only now does ``take_events`` ack the records.
8. Faust's commit (every ``commit_interval_s``) first flushes the producer — changelog, recommendations and
   dead letters are then durable — and only then commits the acked offsets. (Faust's own flush of the
   buffer that carries the changelog could return early; :mod:`streams.faust_fixes`, 5, makes it wait.)
   The commit stops at the first offset not acked; it moves past a hole only where the log holds no record
   (transaction markers), read from the log (:mod:`streams.faust_fixes`, 6), never on the fetcher's word.

A crash anywhere before 8 replays the batch: step 3 skips what the recovered table already holds, steps 4–6
rewrite the same results. Steps 2–7 never run concurrently with the new-image push (one lock), so result
versions are assigned in the order results are computed.

Shutdown: on SIGTERM Faust cancels the agent; the in-flight batch is shielded and finished (bounded by
``shutdown_grace_s``) before the cancellation propagates, then Faust commits and exits. A batch that cannot
finish in time (e.g. Redis is down) makes the process exit non-zero *without* acking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
import weakref
from collections import defaultdict
from pathlib import Path
from typing import Any

import faust
import numpy as np
import orjson
from faust.streams import _current_event  # the contextvar Table writes read their partition from
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models import (InterestModel, ItemLinear, Popularity, Ranker, RecommenderCore, Shard, StateError, UserState,
                    preload_torch, refresh_batches)
from models.encoders import TextEncoder
from models.index import make_index
from models.errors import InvalidInput

from . import faust_fixes, metrics
from .catalog import IndexReplica
from .diagnostics import stall_report
from .errors import InvalidEvent, invalid
from .kafka import faust_credentials
from .lag import LagMonitor
from .recovery_repair import RecoveryRepair, repair_recovery
from .redis_store import RecWrite, RedisRecStore
from .schemas import BehaviorEvent, catalog_record, dead_letter, parse_behavior, parse_image, recommendation_event
from .settings import Settings
from .shards import rebuild_shard
from .watchdog import Watchdog

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 20.0
PUSH_CHUNK = 100  # users re-ranked per lock hold during a new-image push
EXIT_FATAL = 70


def worker_identity(data_dir: Path) -> str:
    """A stable id per worker data directory (survives restarts, distinct per replica)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = data_dir / "worker_id"
    if not f.exists():
        f.write_text(f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    return f.read_text().strip()


def build_core(s: Settings, *, deterministic: bool = False) -> RecommenderCore:
    """The worker's core from settings; ``deterministic`` (a replay): every refit inline, as in replayable mode."""
    core = RecommenderCore(
        dim=s.dim, k=s.k,
        interest=InterestModel(dim=s.dim, max_interests=s.max_interests, seen_cap=s.seen_window,
                               half_life_ms=s.interest_half_life_h * 3600e3, session_gap_ms=s.session_gap_s * 1e3),
        ranker=Ranker(k=s.k), popularity=Popularity(half_life_ms=s.trending_half_life_h * 3600e3),
        index=make_index(s.dim, s.index_kind), replayable=s.replayable, scorer_members=s.scorer_members,
        # Off the event loop by default; inline (deterministic) where results must equal a replay.
        item_linear=ItemLinear(s.linear_head, refit_every=s.linear_refit_every, background=not (s.replayable or deterministic)),
    )
    return core


class OffsetGuard:
    """Per-partition "next offset to apply" for this consumer generation.

    Set from the group's committed offset when a partition is assigned (that is where Faust resumes).
    ``admit`` returns the records of a batch that may be applied, in order: already-applied ones (below the
    expectation) are dropped; at a hole the rest of that partition is dropped and a seek back to the missing
    offset is requested (again if it has not arrived ``reseek_s`` later). The caller confirms with the log
    whether a hole is real (e.g. a transaction marker) and then calls ``skip_to``.
    """

    def __init__(self, reseek_s: float = 5.0, clock=time.monotonic) -> None:
        self.next: dict[Any, int] = {}
        self.pending: dict[Any, tuple[int, float]] = {}  # tp -> (offset sought, when)
        self.reseek_s = reseek_s
        self._clock = clock

    def reset(self, starts: dict[Any, int]) -> None:
        self.next.update(starts)
        for tp in starts:
            self.pending.pop(tp, None)

    def start(self, starts: dict[Any, int]) -> None:
        """:meth:`reset` for partitions that no batch of this generation has started yet: the assignment
        callback reads the committed offsets with an ``await``, and a batch may arrive (and start the
        partition from the same offsets) meanwhile; resetting it again would rewind the guard past records
        already applied, and hold back everything after them."""
        self.reset({tp: off for tp, off in starts.items() if tp not in self.next})

    def expect(self, tp: Any) -> None:
        """Records from ``next[tp]`` on were delivered and not applied (dropped before the guard saw them):
        unless they arrive in order within ``reseek_s``, :meth:`overdue` seeks back to them."""
        if tp in self.next and tp not in self.pending:
            self.pending[tp] = (self.next[tp], self._clock())

    def forget(self, tps) -> None:
        for tp in list(tps):
            self.next.pop(tp, None)
            self.pending.pop(tp, None)

    def skip_to(self, tp: Any, offset: int) -> None:
        """The log has no record between next[tp] and ``offset``: continue from there."""
        self.next[tp] = offset
        self.pending.pop(tp, None)

    def admit(self, events: list[faust.EventT]) -> tuple[list[faust.EventT], dict[Any, int], int]:
        """Returns (records to apply, {tp: offset to seek back to}, number dropped as already applied)."""
        by_tp: dict[Any, list[faust.EventT]] = defaultdict(list)
        for ev in events:
            by_tp[ev.message.tp].append(ev)
        keep: list[faust.EventT] = []
        seeks: dict[Any, int] = {}
        dropped = 0
        now = self._clock()
        for tp, evs in by_tp.items():
            evs.sort(key=lambda e: e.message.offset)
            nxt = self.next.get(tp)
            for ev in evs:
                off = ev.message.offset
                if nxt is None or off == nxt:
                    keep.append(ev)
                    nxt = off + 1
                    self.pending.pop(tp, None)
                elif off < nxt:
                    dropped += 1  # applied earlier in this generation
                else:  # hole: nothing past it may be applied before it
                    sought = self.pending.get(tp)
                    if sought is None or sought[0] != nxt or now - sought[1] > self.reseek_s:
                        seeks[tp] = nxt
                        self.pending[tp] = (nxt, now)
                    for held in evs[evs.index(ev):]:  # not applied: their acks must not advance the commit
                        faust_fixes.hold_back(held.message)
                    break
            if nxt is not None:
                self.next[tp] = nxt
        return keep, seeks, dropped

    async def admit_checked(self, events: list[faust.EventT], first_offset_from
                            ) -> tuple[list[faust.EventT], dict[Any, int], int]:
        """:meth:`admit`, with every hole read from the log (``await first_offset_from(tp, offset)``: the first
        record at or after ``offset``). A hole the log holds no record in (transaction markers) is skipped and
        the rest of the batch admitted from there, so records behind a marker are not held back until some later
        batch happens to arrive; only holes with records in them are returned, to be sought back."""
        keep_all: list[faust.EventT] = []
        holes: dict[Any, int] = {}
        dropped_all = 0
        todo = events
        while todo:
            keep, seeks, dropped = self.admit(todo)
            keep_all += keep
            dropped_all += dropped
            again: list[faust.EventT] = []
            for tp, offset in seeks.items():
                first = await first_offset_from(tp, offset)
                if first is None or first <= offset:
                    holes[tp] = offset
                    continue
                log.info("%s/%d has no record %d..%d (a real gap in the log): continuing at %d",
                         tp[0], tp[1], offset, first - 1, first)
                self.skip_to(tp, first)
                rest = [ev for ev in todo if ev.message.tp == tp and ev.message.offset >= first]
                for ev in rest:
                    faust_fixes.release(ev.message)
                again += rest
            todo = again
        return keep_all, holes, dropped_all

    def overdue(self) -> dict[Any, int]:
        """Seeks still unanswered ``reseek_s`` after they were made (marked as made again now).

        A seek back can be defeated without any batch arriving to notice: Faust drops every fetched record
        below its per-partition read offset, and records fetched *before* the seek but drained after it
        raise that read offset past the sought one, so the re-fetched records are all dropped. Seeking
        again once that stale fetch is drained resets the read offset and the records flow."""
        now = self._clock()
        due = {tp: off for tp, (off, when) in self.pending.items() if now - when > self.reseek_s}
        for tp, off in due.items():
            self.pending[tp] = (off, now)
        return due


class _Versions:
    """Result versions: strictly increasing per process, µs wall clock (comparable across workers)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(self._last + 1, time.time_ns() // 1000)
        return self._last


class Pipeline:
    """Everything one worker runs; the Faust agents are thin shells around these methods."""

    def __init__(self, app: faust.App, s: Settings) -> None:
        self.app = app
        self.s = s
        self.worker_id = worker_identity(Path(s.data_dir))
        self.core = build_core(s)
        self.lock = asyncio.Lock()
        self.versions = _Versions()
        self.encoder = TextEncoder(expected_dim=s.dim, threads=s.torch_threads) if s.encoder == "text" else None
        self.store = RedisRecStore(
            s.redis_url, prefix=s.redis_key_prefix, ttl_s=s.redis_ttl_s, username=s.redis_username,
            password=s.redis_password.get_secret_value() if s.redis_password else None,
            retry_max_s=s.redis_retry_max_s)
        self.replica = IndexReplica(s, self.core, self.worker_id, on_applied=self.on_images_applied)
        raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
        self.behavior_topic = app.topic(s.topic_behavior, partitions=s.partitions, **raw)
        self.images_topic = app.topic(s.topic_images, partitions=s.image_partitions, **raw)
        self.catalog_topic = app.topic(s.topic_catalog, partitions=s.image_partitions, **raw)
        self.recs_topic = app.topic(s.topic_recommendations, partitions=s.partitions, **raw)
        self.dlq_topic = app.topic(s.topic_dead_letters, **raw)
        # key_type/value_type=bytes make the *store* (recovery) use the raw codec; the schema does the same
        # for the changelog topic. Both are needed, or recovery decodes raw bytes as JSON.
        self.users = app.Table("users", partitions=s.partitions, default=None, key_type=bytes, value_type=bytes,
                               schema=faust.Schema(**raw), help="UserState bytes per user_id (changelogged)")
        self.last_progress = time.monotonic()
        self._slice_cost = 0.001  # seconds of steps 3-6 per event (EWMA), sizes the slices
        self.lag_monitor: LagMonitor | None = None
        self.watchdog = Watchdog(s.stall_timeout_s)
        self.recovery_repair = RecoveryRepair(s.recovery_reseek_s)
        self._repair_task: asyncio.Future | None = None
        self.guard = OffsetGuard()
        self.trace_batches = bool(os.environ.get("RECO_DEBUG_BATCHES"))
        self.redis_marker = f"{s.redis_key_prefix}__worker__:{self.worker_id}"
        # Replayable mode (streams/shards.py): one shard per owned behaviour partition, the monotonic time of
        # each partition's last record, and the partitions whose results wait for a quiet refresh.
        self.shards: dict[int, Shard] = {}
        self._last_record: dict[int, float] = {}
        self._stale: set[int] = set()
        self._shard_generation = 0  # +1 on every revocation
        # New-image push: taste vectors of the users in the table (kept up to date by save_state), and
        # the images waiting for the push task.
        self._tastes: dict[str, np.ndarray] = {}
        self._push_pending: list[str] = []
        self._push_task: asyncio.Future | None = None

    # ------------------------------------------------------------------ helpers
    def load_state(self, user_id: str) -> UserState:
        raw = self.users.get(user_id.encode())
        if raw is None:
            return self.core.new_state(user_id)
        try:
            return UserState.from_bytes(raw)
        except StateError:
            log.exception("corrupt state for user %r: starting it afresh", user_id)
            return self.core.new_state(user_id)

    def stored_states(self, user_ids) -> list[UserState]:
        """The table's states of ``user_ids`` (users not in this worker's table, or unreadable, left out)."""
        out = []
        for user_id in user_ids:
            raw = self.users.get(user_id.encode())
            if raw is not None:
                with contextlib.suppress(StateError):
                    out.append(UserState.from_bytes(raw))
        return out

    def save_state(self, state: UserState, event: faust.EventT) -> None:
        """Table write attributed to ``event`` so the changelog record lands on the event's partition."""
        token = _current_event.set(weakref.ref(event))
        try:
            self.users[state.user_id.encode()] = state.to_bytes()
        finally:
            _current_event.reset(token)
        self._tastes[state.user_id] = state.interests

    async def send_dead_letter(self, event: faust.EventT, error: BaseException, reason: str) -> None:
        m = event.message
        await self.dlq_topic.send(key=m.key, value=dead_letter(
            value=m.value, key=m.key, topic=m.topic, partition=m.partition, offset=m.offset,
            error=error, reason=reason, worker=self.worker_id), force=True)
        metrics.DEAD_LETTERS.labels(m.topic, reason).inc()
        metrics.EVENTS_PRODUCED.labels(self.s.topic_dead_letters).inc()
        log.warning("dead letter %s/%d@%d: %s (%s)", m.topic, m.partition, m.offset, reason, error)

    async def publish(self, states: list[UserState], triggers: dict[str, dict],
                      shard: Shard | None = None) -> list[RecWrite]:
        """Steps 4–6: one batched ranking (from ``shard`` in replayable mode), one Redis pipeline, one
        output record per user."""
        if not states:
            return []
        if shard is not None:
            with self.core.use_shard(shard):  # ranked before any await: nothing else runs in the shard
                recs = self.core.recommend(states)
        else:
            recs = self.core.recommend(states)
        now = int(time.time() * 1000)
        writes, outputs = [], []
        for st, items in zip(states, recs, strict=True):
            version = self.versions.next()
            ev = recommendation_event(user_id=st.user_id, items=[i.to_dict() for i in items],
                                      trigger=triggers[st.user_id], model_version=self.core.model_version,
                                      generated_at=now, version=version)
            payload = orjson.dumps(ev)
            writes.append(RecWrite(st.user_id, version, now, payload))
            outputs.append((st.user_id.encode(), payload))
        results = await self.store.write(writes, on_retry=self._on_redis_retry)
        metrics.REDIS_WRITES.labels("written").inc(sum(results))
        metrics.REDIS_WRITES.labels("stale").inc(len(results) - sum(results))
        for key, payload in outputs:
            await self.recs_topic.send(key=key, value=payload, force=True)
        metrics.EVENTS_PRODUCED.labels(self.s.topic_recommendations).inc(len(outputs))
        return writes

    def _on_redis_retry(self, _exc: Exception) -> None:
        metrics.REDIS_RETRIES.inc()
        self.watchdog.beat_batch()  # an outage being retried is progress, not a stall

    async def _inject_fault(self, b: BehaviorEvent) -> None:
        """Test-only failpoints (RECO_FAULT_INJECTION) for the watchdog tests."""
        if b.image_id != "__fault__" or not self.s.fault_injection:
            return
        log.warning("fault injection: %s", self.s.fault_injection)
        if self.s.fault_injection == "crash":
            raise RuntimeError("injected crash")
        if self.s.fault_injection == "stall":
            await asyncio.Event().wait()
        if self.s.fault_injection == "block_loop":
            time.sleep(3600)

    # ------------------------------------------------------------------ behaviour
    async def process_behavior_batch(self, events: list[faust.EventT]) -> None:
        await self.replica.ready.wait()
        self.watchdog.start_batch()
        async with self.lock:
            await self._process_behavior_batch(events)
        self.watchdog.end_batch()
        self.last_progress = time.monotonic()
        metrics.LAST_PROGRESS.set(time.time())

    def _owned(self, events: list[faust.EventT]) -> list[faust.EventT]:
        """Fence: drop buffered records of partitions this worker no longer owns (revoked in a rebalance).
        Their new owner recovers the table from the changelog and reprocesses them from the committed
        offset; writing them here would be a zombie write behind the new owner's back."""
        assigned = self.app.consumer.assignment()
        owned = [ev for ev in events if ev.message.tp in assigned]
        if len(owned) < len(events):
            for ev in events:
                if ev.message.tp not in assigned:
                    self.guard.expect(ev.message.tp)  # still ours after all: fetched again if nothing comes
                    # not applied, so their acks must not advance the commit (faust_fixes, 4). Not only
                    # revoked partitions land here: in a kill -9 test, 0.3 s after an assignment that
                    # included them, ~1,000 records of partitions still this worker's were dropped here (the
                    # client's assignment read empty), and their acks counted; only the offset guard's seek
                    # back got them applied, and a crash before it would have lost them
                    faust_fixes.hold_back(ev.message)
            metrics.REVOKED_SKIPPED.inc(len(events) - len(owned))
            log.info("skipped %d buffered records of partitions not assigned (revoked, or the group is "
                     "rebalancing)", len(events) - len(owned))
        return owned

    async def _in_order(self, events: list[faust.EventT]) -> list[faust.EventT]:
        unknown = sorted({ev.message.tp for ev in events if ev.message.tp not in self.guard.next})
        if unknown:
            self.guard.start(await self._lag_monitor().start_offsets(self.s.app_id, unknown))
        keep, holes, dropped = await self.guard.admit_checked(events, self._lag_monitor().first_offset_from)
        if dropped:  # not duplicates of applied events: copies of records this generation already took
            metrics.REDELIVERED.inc(dropped)
        for tp, offset in holes.items():
            metrics.OFFSET_HOLES.inc()
            log.warning("hole in %s/%d at offset %d (record not delivered, e.g. after a rebalance): seeking back",
                        tp.topic, tp.partition, offset)
            await self.app.consumer.seek(tp, offset)
        return keep

    async def reseek_overdue(self) -> None:
        """Repeat seek-backs that delivered nothing (see :meth:`OffsetGuard.overdue`); runs every second."""
        assigned = self.app.consumer.assignment()
        for tp, offset in self.guard.overdue().items():
            if tp not in assigned:  # revoked (or the group is rejoining): try again at the next check
                continue
            log.warning("no record of %s/%d since seeking back to %d: seeking again", tp.topic, tp.partition, offset)
            await self.app.consumer.seek(tp, offset)

    async def _repair_recovery_every_second(self) -> None:
        """:func:`~streams.recovery_repair.repair_recovery` once a second, from the first assignment on (it must
        run during the first table recovery too, when none of Faust's timers or tasks run yet)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await repair_recovery(self.app, self.recovery_repair)
            except Exception as exc:  # a diagnosis aid: never let it take the worker down
                log.warning("table recovery repair check failed: %r", exc)

    def _lag_monitor(self) -> LagMonitor:
        if self.lag_monitor is None:
            self.lag_monitor = LagMonitor(self.s)
        return self.lag_monitor

    async def on_assigned(self, assigned) -> None:
        if self._repair_task is None:  # Faust starts timers and tasks only after the first table recovery
            self._repair_task = self.app.add_future(self._repair_recovery_every_second())
        mine = [tp for tp in assigned if tp.topic == self.s.topic_behavior]
        self.guard.forget(list(self.guard.next))
        if mine:
            self.guard.start(await self._lag_monitor().start_offsets(self.s.app_id, mine))

    async def _process_behavior_batch(self, events: list[faust.EventT]) -> None:
        s = self.s
        n_in = len(events)
        events = await self._in_order(self._owned(events))
        if self.trace_batches:
            spans: dict[int, list[int]] = defaultdict(list)
            for ev in events:
                spans[ev.message.partition].append(ev.message.offset)
            log.info("batch in=%d owned=%d partition: (first, last, count) %s", n_in, len(events),
                     {p: (min(o), max(o), len(o)) for p, o in sorted(spans.items())})
        metrics.EVENTS_CONSUMED.labels(s.topic_behavior).inc(len(events))
        metrics.BATCH_SIZE.observe(len(events))
        parsed: dict[str, list[tuple[BehaviorEvent, faust.EventT]]] = defaultdict(list)
        for ev in events:  # step 2
            m = ev.message
            try:
                b = parse_behavior(m.value, key=m.key, max_bytes=s.max_event_bytes, max_id_length=s.max_id_length,
                                   max_future_skew_ms=s.max_future_skew_ms)
                await self._inject_fault(b)
                parsed[b.user_id].append((b, ev))
            except InvalidInput as exc:
                err = invalid(exc, topic=m.topic, partition=m.partition, offset=m.offset)
                await self.send_dead_letter(ev, err, err.reason)
        assigned = self.app.consumer.assignment()
        if s.replayable:
            await self._process_replayable(parsed, assigned)
            return
        for users in self._slices(parsed):  # steps 3-6 per slice of whole users
            t0 = time.perf_counter()
            done = await self._process_users(users, parsed, assigned)
            n = sum(len(parsed[u]) for u in users)
            self._slice_cost = 0.8 * self._slice_cost + 0.2 * (time.perf_counter() - t0) / max(1, n)
            now = time.time()
            for ev in done:
                ts = ev.message.timestamp
                if ts:
                    metrics.EVENT_TO_REDIS.observe(max(0.0, now - ts))

    def _slices(self, parsed: dict[str, list]) -> list[list[str]]:
        """Users in slices of about ``batch_slice_s`` of processing (at least 8 events each)."""
        budget = max(8, int(self.s.batch_slice_s / max(self._slice_cost, 1e-6)))
        out: list[list[str]] = [[]]
        n = 0
        for user_id, items in parsed.items():
            if n >= budget:
                out.append([])
                n = 0
            out[-1].append(user_id)
            n += len(items)
        return out if out[0] else []

    async def _process_users(self, users: list[str], parsed: dict[str, list], assigned) -> list[faust.EventT]:
        """Steps 3-6 for ``users``; returns their events (for the latency metric)."""
        states: list[UserState] = []
        triggers: dict[str, dict] = {}
        events: list[faust.EventT] = []
        for user_id in users:  # step 3
            items = parsed[user_id]
            if items[0][1].message.tp not in assigned:
                continue  # revoked while this batch was parsing (see _owned)
            events.extend(ev for _, ev in items)
            state = self.load_state(user_id)
            last_written = None
            for b, ev in sorted(items, key=lambda x: x[1].message.offset):
                m = ev.message
                try:
                    if b.image_id not in self.core.index:
                        metrics.UNKNOWN_IMAGE.inc()
                    state, applied = self.core.learn(state, image_id=b.image_id, action=b.action, ts=b.ts,
                                                     dwell_ms=b.dwell_ms, offset=m.offset, event_id=b.event_id)
                except InvalidInput as exc:
                    err = invalid(exc, topic=m.topic, partition=m.partition, offset=m.offset)
                    await self.send_dead_letter(ev, err, err.reason)
                    continue
                if applied:
                    last_written = ev
                else:
                    metrics.DUPLICATES.inc()
                triggers[user_id] = _trigger(b, m)
            if last_written is not None:
                assert last_written.message.partition == items[0][1].message.partition, "a user's events span partitions"
                self.save_state(state, last_written)
            if user_id in triggers:
                states.append(state)
        await self.publish(states, triggers)  # steps 4-6
        return events

    # ------------------------------------------------------------------ replayable mode
    async def _process_replayable(self, parsed: dict[str, list], assigned) -> None:
        """Steps 3-6 in replayable mode (protocol in streams/shards.py): per partition, in offset order,
        against the partition's shard; one publish per partition."""
        by_tp: dict[Any, list] = defaultdict(list)
        for items in parsed.values():
            for item in items:
                by_tp[item[1].message.tp].append(item)
        for tp in sorted(by_tp, key=lambda t: t.partition):
            if tp not in assigned:
                continue  # revoked while this batch was parsing (see _owned)
            shard = self.shards.get(tp.partition)
            if shard is None:  # step 1
                generation = self._shard_generation
                shard = await rebuild_shard(self.core, self.s, tp, beat=self.watchdog.beat_batch)
                metrics.SHARD_REBUILDS.inc()
                if generation != self._shard_generation or tp not in self.app.consumer.assignment():
                    continue  # revoked during the rebuild: the shard may be stale when the partition returns
                self.shards[tp.partition] = shard
            states: dict[str, UserState] = {}
            last_applied: dict[str, faust.EventT] = {}
            triggers: dict[str, dict] = {}
            dead: list[tuple[faust.EventT, InvalidEvent]] = []  # sent after the block (an await)
            with self.core.use_shard(shard):  # step 2: no await inside
                for b, ev in sorted(by_tp[tp], key=lambda x: x[1].message.offset):
                    m = ev.message
                    st = states.get(b.user_id) or self.load_state(b.user_id)
                    shared = m.offset > shard.watermark
                    assert not (shared and m.offset <= st.last_offset), (
                        f"{tp.topic}/{tp.partition}@{m.offset} is in the user table but not in the shard")
                    try:
                        new, applied = self.core.learn(st, image_id=b.image_id, action=b.action, ts=b.ts,
                                                       dwell_ms=b.dwell_ms, offset=m.offset, event_id=b.event_id,
                                                       shared=shared)
                    except InvalidInput as exc:
                        err = invalid(exc, topic=m.topic, partition=m.partition, offset=m.offset)
                        dead.append((ev, err))
                        continue
                    finally:
                        shard.watermark = max(shard.watermark, m.offset)
                    states[b.user_id] = new
                    shard.users.add(b.user_id)
                    if applied:
                        last_applied[b.user_id] = ev
                    else:
                        metrics.DUPLICATES.inc()
                    triggers[b.user_id] = _trigger(b, m)
            for ev, err in dead:
                await self.send_dead_letter(ev, err, err.reason)
            for user_id, ev in last_applied.items():
                self.save_state(states[user_id], ev)
            await self.publish([states[u] for u in triggers], triggers, shard=shard)
            self._last_record[tp.partition] = time.monotonic()
            self._stale.add(tp.partition)

    def drop_shards(self, revoked) -> None:
        """A revoked partition may be learned by another worker meanwhile: its shard is rebuilt if it comes back."""
        self._shard_generation += 1
        for tp in revoked:
            if tp.topic == self.s.topic_behavior and self.shards.pop(tp.partition, None) is not None:
                self._stale.discard(tp.partition)
                log.info("replayable: dropped the shard of %s/%d (revoked)", tp.topic, tp.partition)

    async def publish_sharded(self, states: list[UserState], triggers: dict[str, dict]) -> int:
        """:meth:`publish` for users of any partition: in replayable mode each group with its own shard
        (users of no shard here are left out: not this worker's)."""
        if not self.s.replayable:
            await self.publish(states, triggers)
            return len(states)
        groups: dict[int, list[UserState]] = defaultdict(list)
        for st in states:
            for p, shard in self.shards.items():
                if st.user_id in shard.users:
                    groups[p].append(st)
                    break
        for p, group in sorted(groups.items()):
            await self.publish(group, {st.user_id: triggers[st.user_id] for st in group}, shard=self.shards[p])
            # These results were ranked in a batch of another shape than the canonical refresh's (batched
            # products may round differently): let the quiet refresh publish the canonical ones.
            self._stale.add(p)
        return sum(len(g) for g in groups.values())

    async def refresh_quiet(self) -> None:
        """Step 3 of the replayable protocol: refresh every user of each partition that has gone quiet."""
        now = time.monotonic()
        for p in sorted(self._stale):
            if now - self._last_record.get(p, 0.0) < self.s.refresh_quiet_s:
                continue
            async with self.lock:
                shard = self.shards.get(p)
                if shard is None or p not in self._stale:
                    continue
                states = self.stored_states(shard.users)
                for chunk in refresh_batches(states, self.s.batch_max):
                    triggers = {st.user_id: {"event_id": st.event_ids[-1] if st.event_ids else None,
                                             "ts": st.updated_ts, "reason": "refresh"} for st in chunk}
                    await self.publish(chunk, triggers, shard=shard)
                    self.watchdog.beat_batch()
                self._stale.discard(p)
                metrics.QUIET_REFRESHES.inc(len(states))
                log.info("replayable: refreshed %d users of partition %d (quiet for %.1fs)", len(states), p,
                         time.monotonic() - self._last_record.get(p, 0.0))

    # ------------------------------------------------------------------ images
    async def process_image_batch(self, events: list[faust.EventT]) -> None:
        """Validate + embed new images, forward them (or tombstones) to the compacted catalog topic."""
        s = self.s
        metrics.EVENTS_CONSUMED.labels(s.topic_images).inc(len(events))
        ready: list[tuple[Any, faust.EventT]] = []
        to_embed: list[tuple[Any, faust.EventT]] = []
        for ev in events:
            m = ev.message
            try:
                img = parse_image(m.value, key=m.key, dim=s.dim, max_bytes=s.max_image_bytes,
                                  max_id_length=s.max_id_length, max_future_skew_ms=s.max_future_skew_ms)
            except InvalidInput as exc:
                err = invalid(exc, topic=m.topic, partition=m.partition, offset=m.offset)
                await self.send_dead_letter(ev, err, err.reason)
                continue
            if img is None or img.embedding is not None:
                ready.append((img, ev))
            elif self.encoder is None:
                await self.send_dead_letter(ev, InvalidEvent("image has no embedding and the encoder is off",
                                                             "nothing_to_embed"), "nothing_to_embed")
            else:
                to_embed.append((img, ev))
        vectors: dict[int, Any] = {}
        if to_embed:
            texts = [img.text() for img, _ in to_embed]
            mat = await asyncio.get_running_loop().run_in_executor(None, self.encoder.encode_texts, texts)
            for (img, ev), vec in zip(to_embed, mat, strict=True):
                vectors[id(ev)] = vec
            ready.extend(to_embed)
        now = time.time()
        for img, ev in sorted(ready, key=lambda x: (x[1].message.partition, x[1].message.offset)):
            m = ev.message
            # The catalog record keeps the upload's timestamp, so replicas can measure upload -> searchable.
            ts = m.timestamp or None
            if ts:
                metrics.IMAGE_TO_CATALOG.observe(max(0.0, now - ts))
            if img is None:
                await self.catalog_topic.send(key=m.key, value=None, partition=m.partition, timestamp=ts, force=True)
            else:
                vec = img.embedding if img.embedding is not None else vectors[id(ev)]
                await self.catalog_topic.send(key=m.key, value=catalog_record(img, vec, m.offset),
                                              partition=m.partition, timestamp=ts, force=True)
        metrics.EVENTS_PRODUCED.labels(s.topic_catalog).inc(len(ready))

    async def on_images_applied(self, image_ids: list[str]) -> None:
        """Replica callback: queue a push refresh and return at once, so the replica keeps applying the
        catalog (searchability) while pushes run; images arriving meanwhile are pushed together next."""
        if self.s.push_max_users == 0:
            return
        self._push_pending.extend(image_ids)
        if self._push_task is None or self._push_task.done():
            self._push_task = asyncio.ensure_future(self._push_loop())

    async def _push_loop(self) -> None:
        while self._push_pending:
            ids, self._push_pending = list(dict.fromkeys(self._push_pending)), []
            try:
                await self.push_new_images(ids)
            except Exception as exc:  # a failed push leaves results to the next event; never kills the worker
                log.exception("push refresh for %d new images failed: %r", len(ids), exc)

    def _taste_matrix(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(user ids, stacked interest rows, owner index per row) of every user in this worker's table,
        from the taste cache (filled from the table for users this process has not saved yet)."""
        if len(self._tastes) < len(self.users):
            for key, raw in list(self.users.items()):
                uid = key.decode()
                if raw is None or uid in self._tastes:
                    continue
                try:
                    self._tastes[uid] = UserState.from_bytes(raw).interests
                except StateError:
                    continue
        for uid in [u for u in self._tastes if u.encode() not in self.users]:  # revoked users
            del self._tastes[uid]
        users = [u for u, rows in self._tastes.items() if rows.shape[0]]
        if not users:
            return [], np.zeros((0, self.core.dim), dtype=np.float32), np.zeros(0, dtype=np.int64)
        mats = [self._tastes[u] for u in users]
        owner = np.repeat(np.arange(len(users)), [m.shape[0] for m in mats])
        return users, np.vstack(mats), owner

    async def push_new_images(self, image_ids: list[str]) -> None:
        """Refresh the local users whose tastes match new images (push, not only pull).

        One product of every cached taste vector with the new images picks the best-matching users (at most
        ``push_max_users``, score >= ``push_min_score``); only their states are decoded, and their results
        are recomputed in chunks, each under the lock, so behaviour batches run in between."""
        if self.s.push_max_users == 0 or not self.replica.ready.is_set():
            return
        vecs = self.core.index.vectors(image_ids)
        if not vecs:
            return
        users, rows, owner = self._taste_matrix()
        if not users:
            return
        best_row = (rows @ np.stack(list(vecs.values())).T).max(axis=1)
        best = np.full(len(users), -np.inf, dtype=np.float32)
        np.maximum.at(best, owner, best_row)
        eligible = np.flatnonzero(best >= self.s.push_min_score)
        # a few more than the cap: a user's best image may be one they have already seen
        pick = eligible[np.argsort(-best[eligible], kind="stable")][: 2 * self.s.push_max_users]
        states = self.stored_states(users[j] for j in pick.tolist())
        matches = self.core.match_new_images(list(vecs), states, min_score=self.s.push_min_score)
        matches.sort(key=lambda m: -m.score)
        matches = matches[: self.s.push_max_users]
        now = int(time.time() * 1000)
        n = 0
        for start in range(0, len(matches), PUSH_CHUNK):
            chunk = matches[start:start + PUSH_CHUNK]
            async with self.lock:
                # re-read: a behaviour batch may have changed the user since the match (or a revocation
                # taken them from this worker's table)
                fresh = self.stored_states(m.user_id for m in chunk)
                triggers = {m.user_id: {"image_id": m.image_id, "ts": self.core.index.created_at(m.image_id) or now}
                            for m in chunk}
                n += await self.publish_sharded(fresh, triggers)
            await asyncio.sleep(0)
        metrics.PUSH_REFRESHES.inc(n)

    # ------------------------------------------------------------------ background
    async def run_replica(self) -> None:
        await self.replica.start()
        await self.replica.catch_up()
        await self.replica.run()

    async def refresh_gauges(self) -> None:
        metrics.USER_TABLE_SIZE.set(len(self.users))
        if self.replica.ready.is_set():
            metrics.INDEX_REPLICA_LAG.set(await self.replica.lag())
        try:
            mine = {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()}
            pending = False
            for row in await self._lag_monitor().group_lag(self.s.app_id, "workers", [self.s.topic_behavior]):
                metrics.CONSUMER_LAG.labels(row.topic, str(row.partition)).set(row.lag)
                pending |= (row.topic, row.partition) in mine and row.lag > 0
            recovered = self.app.tables.recovery.completed.is_set()
            self.watchdog.input_pending(pending and recovered and self.replica.ready.is_set())
        except Exception as exc:  # a gauge must never take the worker down
            log.debug("consumer lag gauge not updated: %r", exc)

    async def check_redis(self) -> None:
        """Redis is a cache of derived results: when this worker's marker key is gone (FLUSHALL, a restarted
        Redis without persistence), republish the results of every user this worker owns."""
        if not self.replica.ready.is_set() or not self.app.tables.recovery.completed.is_set():
            return
        try:
            present = await self.store.exists(self.redis_marker)
        except Exception as exc:
            log.debug("redis marker check failed: %r", exc)
            return
        if present:
            return
        n = await self.repopulate()
        await self.store.set_marker(self.redis_marker, self.worker_id)
        if n:
            log.warning("redis had lost this worker's results: republished %d users", n)

    async def repopulate(self) -> int:
        keys = [k for k, v in list(self.users.items()) if v is not None]
        done = 0
        for start in range(0, len(keys), self.s.batch_max):
            async with self.lock:
                chunk = [k.decode() for k in keys[start:start + self.s.batch_max]]
                states = self.stored_states(await self.store.missing(chunk))  # only results Redis really lost
                now = int(time.time() * 1000)
                done += await self.publish_sharded(
                    states, {st.user_id: {"reason": "redis-repopulate", "ts": now} for st in states})
        metrics.REDIS_REPOPULATED.inc(done)
        return done


def _trigger(b: BehaviorEvent, m) -> dict:
    """What a result says it reflects: the event's id (or its topic:partition:offset) and time."""
    return {"event_id": b.event_id or f"{m.topic}:{m.partition}:{m.offset}", "ts": b.ts}


async def _shielded(coro) -> None:
    """Run one batch to completion even if the agent is cancelled (SIGTERM): finish it, then propagate."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE_S)
        except Exception:  # includes TimeoutError: the batch could not finish; do not let it be acked
            log.critical("in-flight batch did not finish within %.0fs of shutdown; exiting without acking it",
                         SHUTDOWN_GRACE_S)
            os._exit(EXIT_FATAL)
        raise


async def _run_batches(stream, size: int, within: float, handler) -> None:
    """An agent's loop: batches from ``take_events`` (acked after ``handler`` returns), each finished even
    on SIGTERM; any error exits the process before the batch could be acked."""
    async for events in stream.take_events(size, within=within):
        try:
            await _shielded(handler(list(events)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _fatal(exc)


def _fatal(exc: BaseException) -> None:
    """A batch failed in a way no retry fixes: exit non-zero *before* take_events acks it."""
    log.critical("fatal error in batch processing, exiting so the orchestrator restarts us: %r", exc,
                 exc_info=exc)
    logging.shutdown()
    os._exit(EXIT_FATAL)


#: The ``slow_changelog`` failpoint's delay per changelog record (seconds): more than the 0.1 s after which
#: Faust's own producer-buffer flush gives up (streams/faust_fixes.py, 5).
SLOW_CHANGELOG_S = 0.15


def _slow_changelog_failpoint(delay_s: float) -> None:
    """Test-only: the Kafka client takes ``delay_s`` to accept each user-table changelog record (as when
    it waits for room in a full batch on a slow broker); other topics are not slowed."""
    from faust.transport.drivers.aiokafka import Producer

    original = Producer.send

    async def send(self, topic, *args, **kwargs):
        if topic.endswith("-users-changelog"):
            await asyncio.sleep(delay_s)
        return await original(self, topic, *args, **kwargs)

    Producer.send = send
    log.warning("fault injection: slow_changelog (%.2fs per changelog record)", delay_s)


def _drop_fetched_failpoint(app: faust.App, s: Settings) -> None:
    """Test-only: records the Kafka client fetched are dropped once before Faust's fetcher sees them (the
    client's position is past them), as Faust's own fetcher does when a generation changes mid-batch.
    ``drop_recovery_records``: the first changelog records fetched during table recovery
    (streams/recovery_repair.py). ``drop_fetched_images``: all but the last of the first fetch of two or more
    new-images records after one was delivered, so the fetcher's read offset jumps (streams/faust_fixes.py, 6)."""
    from faust.transport.consumer import Consumer

    original = Consumer._wait_next_records
    state = {"dropped": False, "delivered": False}

    def victims(records) -> dict:
        if s.fault_injection == "drop_recovery_records":
            if not getattr(app, "in_recovery", False):
                return {}
            return {tp: recs for tp, recs in records.items() if tp.topic.endswith("-changelog")}
        images = {tp: recs for tp, recs in records.items() if tp.topic == s.topic_images}
        if not state["delivered"]:
            state["delivered"] = bool(images)
            return {}
        return {tp: recs[:-1] for tp, recs in images.items() if len(recs) >= 2}

    async def _wait_next_records(self, timeout):
        records, active = await original(self, timeout)
        if state["dropped"] or not records:
            return records, active
        lost = victims(records)
        if lost:
            state["dropped"] = True
            spans = sorted(f"{tp.topic}/{tp.partition}@{r[0].offset}-{r[-1].offset}" for tp, r in lost.items())
            log.warning("fault injection: dropped %d fetched record(s) of %s", sum(len(r) for r in lost.values()), spans)
            gone = {id(r) for recs in lost.values() for r in recs}
            records = {tp: [r for r in recs if id(r) not in gone] for tp, recs in records.items()}
        return records, active

    Consumer._wait_next_records = _wait_next_records


def create_app(s: Settings | None = None) -> tuple[faust.App, Pipeline]:
    s = s or Settings()
    import faiss

    faust_fixes.apply()
    if s.fault_injection == "slow_changelog":
        _slow_changelog_failpoint(SLOW_CHANGELOG_S)

    faiss.omp_set_num_threads(s.faiss_threads)
    brokers = [f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()]
    app = faust.App(
        s.app_id, broker=brokers, broker_credentials=faust_credentials(s), store="memory://",
        topic_partitions=s.partitions, topic_replication_factor=s.replication_factor,
        key_serializer="raw", value_serializer="raw", datadir=str(Path(s.data_dir) / "faust"),
        web_enabled=True, web_port=s.web_port, web_bind="0.0.0.0", web_host=socket.gethostname(),
        broker_commit_interval=s.commit_interval_s, broker_session_timeout=s.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, s.broker_session_timeout_s / 3),
        broker_rebalance_timeout=s.broker_rebalance_timeout_s, consumer_auto_offset_reset="earliest",
        producer_acks=-1, table_standby_replicas=0, stream_wait_empty=True, logging_config=None,
    )
    pipe = Pipeline(app, s)
    if s.fault_injection in ("drop_recovery_records", "drop_fetched_images"):
        _drop_fetched_failpoint(app, s)
    faust_fixes.set_log_reader(app, lambda tp, offset: pipe._lag_monitor().first_offset_from(tp, offset))
    if pipe.core.learn_ranker:  # before the event loop runs: the scorer's first step would stall it for seconds
        log.info("torch preloaded for the online scorer in %.1f s", preload_torch())

    @app.agent(pipe.behavior_topic, name="behavior")
    async def behavior_agent(stream):
        await _run_batches(stream, s.batch_max, s.batch_within_s, pipe.process_behavior_batch)

    @app.agent(pipe.images_topic, name="images")
    async def images_agent(stream):
        await _run_batches(stream, s.image_batch_max, s.batch_within_s, pipe.process_image_batch)

    @app.task
    async def index_replica():
        try:
            await pipe.run_replica()
        except asyncio.CancelledError:
            await pipe.replica.stop()
            raise
        except Exception as exc:
            _fatal(exc)

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):
        log.info("partitions revoked: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in revoked))
        pipe.drop_shards(revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs):
        log.info("partitions assigned: %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        await pipe.on_assigned(assigned)

    @app.timer(interval=1.0)
    async def reseek():
        await pipe.reseek_overdue()

    if s.replayable:
        @app.timer(interval=0.25)
        async def quiet_refresh():
            await pipe.refresh_quiet()

    @app.timer(interval=5.0)
    async def gauges():
        await pipe.refresh_gauges()

    @app.timer(interval=s.redis_check_interval_s)
    async def redis_marker():
        await pipe.check_redis()

    @app.task
    async def watchdog():
        """Start the watchdog thread and beat its loop-liveness clock from this loop every 0.1 s; each beat
        also records how late the sleep before it woke (``reco_event_loop_delay_seconds``). On a stall it logs
        :func:`~streams.diagnostics.stall_report` of this loop and app before it exits."""
        loop = asyncio.get_running_loop()
        pipe.watchdog.diagnose = lambda: stall_report(loop, app)
        pipe.watchdog.beat_loop()
        pipe.watchdog.start()
        try:
            while True:
                t0 = loop.time()
                await asyncio.sleep(0.1)
                metrics.LOOP_DELAY.observe(max(0.0, loop.time() - t0 - 0.1))
                pipe.watchdog.beat_loop()
        finally:
            pipe.watchdog.stop()

    @app.page("/metrics")
    async def metrics_page(web, request):
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/ready")
    async def ready_page(web, request):
        return web.json({"ready": pipe.replica.ready.is_set(), "index_size": len(pipe.core.index),
                         "worker_id": pipe.worker_id})

    return app, pipe
