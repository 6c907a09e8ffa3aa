"""What a stalled worker was doing: a text report the watchdog logs before it exits.

A stall (:mod:`streams.watchdog`) is rare and cannot be reproduced on demand, so the one chance to learn its
cause is the moment the watchdog trips. :func:`stall_report` then records, from the watchdog's own thread:

1. **Threads**: every thread's Python stack (a blocked event loop shows *where* it is blocked).
2. **Tasks**: every asyncio task of the worker's loop, with the chain of coroutines it is awaiting, down
   to the future it waits on (a live loop with no batch shows *what* the agents and Faust's fetcher wait for).
3. **Consumer**: Faust's flow control, assignment, paused and active partitions, read and committed offsets,
   whether a rebalance or table recovery is in progress, and how full each agent's input buffer is.

Every part is read without the loop's cooperation (the loop may be the thing that is stuck), so values may
be mid-update; each part that raises is reported as such and the others still are. The report is bounded
(``max_tasks``, ``max_depth``) so that a worker with many tasks still logs a readable page.

>>> import asyncio
>>> async def waiter(ev):
...     await ev.wait()
>>> async def main():
...     ev = asyncio.Event()
...     t = asyncio.create_task(waiter(ev), name="the-waiter")
...     await asyncio.sleep(0)
...     text = task_stacks(asyncio.get_running_loop())
...     ev.set(); await t
...     return text
>>> text = asyncio.run(main())
>>> "the-waiter" in text and "in waiter" in text and "in wait" in text
True
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import traceback
from types import FrameType
from typing import Any

#: Frames per awaited chain / thread stack, and tasks per report.
MAX_DEPTH = 16
MAX_TASKS = 60


def stall_report(loop: asyncio.AbstractEventLoop | None, app: Any = None) -> str:
    """Threads, tasks and (with a Faust ``app``) the consumer's state, as text (see the module doc)."""
    parts = [("threads", lambda: thread_stacks())]
    if loop is not None:
        parts.append(("asyncio tasks", lambda: task_stacks(loop)))
    if app is not None:
        parts.append(("consumer", lambda: consumer_state(app)))
    out = []
    for title, fn in parts:
        try:
            body = fn()
        except Exception as exc:  # a diagnostic must never stop the exit it precedes
            body = f"  (could not be read: {exc!r})"
        out.append(f"--- {title} ---\n{body}")
    return "\n".join(out)


def _path(filename: str) -> str:
    """``filename`` relative to the longest ``sys.path`` entry it is under (site-packages, the stdlib, the
    project): ``faust/transport/consumer.py`` rather than the whole install path."""
    best = ""
    for entry in sys.path:
        if entry and filename.startswith(entry.rstrip(os.sep) + os.sep) and len(entry) > len(best):
            best = entry.rstrip(os.sep) + os.sep
    return filename[len(best):]


def _where(frame: FrameType) -> str:
    code = frame.f_code
    return f"{_path(code.co_filename)}:{frame.f_lineno} in {code.co_name}"


def thread_stacks(max_depth: int = MAX_DEPTH) -> str:
    names = {t.ident: t.name for t in threading.enumerate()}
    lines = []
    for ident, frame in sys._current_frames().items():
        lines.append(f"thread {names.get(ident, '?')} ({ident}):")
        innermost = [f for f, _ in traceback.walk_stack(frame)][:max_depth]  # no source lines read
        lines += [f"  {_where(f)}" for f in reversed(innermost)]
    return "\n".join(lines)


def _frame_of(obj: Any) -> FrameType | None:
    return getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)


def _unwrap(obj: Any) -> Any:
    """The generator or coroutine behind an ``async for`` step (``async_generator_asend``/``athrow``) or an
    ``__await__`` wrapper (``coroutine_wrapper``), which expose no frame of their own (it is among what
    they reference), else ``obj``."""
    if type(obj).__name__ in ("async_generator_asend", "async_generator_athrow", "coroutine_wrapper"):
        return next((r for r in gc.get_referents(obj) if _frame_of(r) is not None), obj)
    return obj


def _await_chain(coro: Any, max_depth: int) -> list[str]:
    """Frames of ``coro`` and of what it awaits, outermost first (through ``await``, ``yield from`` and
    ``async for``), ending with the awaited object itself when that is not a coroutine (a future)."""
    chain = []
    for _ in range(max_depth):
        coro = _unwrap(coro)
        frame = _frame_of(coro)
        if frame is None:
            if coro is not None:
                chain.append(f"awaiting {_short(coro)}")
            break
        chain.append(_where(frame))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        if coro is None:
            break
    return chain


def _short(obj: Any, n: int = 160) -> str:
    text = obj if isinstance(obj, str) else repr(obj)
    return text if len(text) <= n else text[: n - 3] + "..."


def task_stacks(loop: asyncio.AbstractEventLoop, max_tasks: int = MAX_TASKS, max_depth: int = MAX_DEPTH) -> str:
    """Each task's awaited chain; a task waiting on another task gets that task's chain too (indented)."""
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())
    lines = [f"{len(tasks)} tasks" + (f" (first {max_tasks})" if len(tasks) > max_tasks else "")]
    for task in tasks[:max_tasks]:
        lines.append(f"task {_short(task.get_name(), 100)}:")
        indent, seen = "  ", {id(task)}
        while task is not None:
            lines += [f"{indent}{x}" for x in _await_chain(task.get_coro(), max_depth)]
            waiter = getattr(task, "_fut_waiter", None)
            if waiter is None:
                break
            lines.append(f"{indent}waits on {_short(waiter)}")
            task = waiter if isinstance(waiter, asyncio.Task) and id(waiter) not in seen and len(seen) < 4 else None
            seen.add(id(waiter))
            indent += "  "
    return "\n".join(lines)


def consumer_state(app: Any) -> str:
    """Faust's view of the consumer; every attribute is optional (read with ``getattr``)."""
    c = app.consumer
    lines = []

    def tps(items) -> str:
        return ", ".join(sorted(f"{tp.topic}/{tp.partition}" for tp in items or ())) or "-"

    def offsets(mapping) -> str:
        return ", ".join(sorted(f"{tp.topic}/{tp.partition}={off}" for tp, off in dict(mapping or {}).items())) or "-"

    lines.append(f"flow_active={getattr(c, 'flow_active', '?')} rebalancing={getattr(app, 'rebalancing', '?')} "
                 f"generation={getattr(app, 'consumer_generation_id', '?')}")
    recovery = getattr(getattr(app, "tables", None), "recovery", None)
    if recovery is not None:
        lines.append(f"table recovery completed={recovery.completed.is_set()} "
                     f"in_recovery={getattr(recovery, 'in_recovery', '?')}")
    try:
        lines.append(f"assigned: {tps(c.assignment())}")
    except Exception as exc:
        lines.append(f"assigned: (could not be read: {exc!r})")
    lines.append(f"paused: {tps(getattr(c, '_paused_partitions', ()))}")
    lines.append(f"active: {tps(getattr(c, '_active_partitions', ()))}")
    lines.append(f"read offsets: {offsets(getattr(c, '_read_offset', {}))}")
    lines.append(f"committed offsets: {offsets(getattr(c, '_committed_offset', {}))}")
    lines.append(f"unacked messages: {len(getattr(c, '_unacked_messages', ()))}")
    lines.append(kafka_client_state(getattr(getattr(c, "_thread", None), "_consumer", None)))
    for name, agent in dict(getattr(app, "agents", {})).items():
        for actor in list(getattr(agent, "_actors", ())):
            channel = getattr(getattr(actor, "stream", None), "channel", None)
            queue = getattr(channel, "_queue", None)  # not ``.queue``: that property creates one
            size = "none yet" if queue is None else f"{queue.qsize()}/{getattr(queue, 'maxsize', '?')}"
            lines.append(f"agent {name}: input buffer {size}")
    return "\n".join(lines)


def kafka_client_state(client: Any) -> str:
    """The Kafka client's own view (aiokafka, under Faust's): per assigned partition, paused or not, its
    fetch position, and whether a fetched result waits to be drained (the client fetches a partition
    only when it is not paused, has a position and has no such result). Faust's view can differ: a
    partition Faust counts as active may be paused here."""
    if client is None:
        return "kafka client: -"
    try:
        assignment = client._subscription.subscription.assignment
        states = {tp: assignment.state_value(tp) for tp in assignment.tps}
        pending = set(dict(getattr(client._fetcher, "_records", {})))
    except Exception as exc:  # no assignment yet, or another aiokafka version
        return f"kafka client: (could not be read: {exc!r})"
    rows = []
    for tp, st in sorted(states.items(), key=lambda x: (x[0].topic, x[0].partition)):
        flags = ("paused " if getattr(st, "paused", False) else "") + ("result-waiting " if tp in pending else "")
        rows.append(f"{tp.topic}/{tp.partition}@{getattr(st, '_position', '?')}" + (f" ({flags.strip()})" if flags else ""))
    return "kafka client: " + (", ".join(rows) or "-")
