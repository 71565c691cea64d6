"""The worker's schedule loop: fires the schedules of its task queue when they are due.

Like the timer loop, it sleeps until the earliest fire time of its queue (read from the store's
due index), at most ``POLL_S``, and wakes early when this process changes a schedule
(``wake_schedule_loops``, called by the client and by the testing environment when it moves the
clock) or another process changes one of the queue's schedules (``Store.on_foreign_change`` with
``schedule_topic(queue)``; PostgreSQL wakes it at every notification). Any number of workers, in any
number of processes, may run it for one queue: each fire is one transition, and a due time
fires once (see ``duro.engine.schedules``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from duro._aio import wait_event
from duro.stores.base import schedule_topic

if TYPE_CHECKING:
    from duro.stores.base import Store
    from duro.worker import Worker

__all__ = ["POLL_S", "schedule_loop", "wake_schedule_loops"]

log = logging.getLogger("duro.worker")

POLL_S = 1.0
_RETRY_S = 0.5
_MIN_READ_GAP_S = 0.02
_BUSY_S = 0.005

# The loops running in this process, per store: (their event loop, their wake-up event).
_LOOPS: weakref.WeakKeyDictionary[Any, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = (
    weakref.WeakKeyDictionary())


def wake_schedule_loops(store: Store) -> None:
    """Make this process's schedule loops on ``store`` look at the due index again (a schedule changed)."""
    for loop, event in list(_LOOPS.get(store, ())):
        if not loop.is_closed():
            loop.call_soon_threadsafe(event.set)


async def _next_due(store: Store, task_queue: str) -> float | None:
    try:
        return await store.anext_schedule_due(task_queue)
    except Exception:  # a read that failed (a server restarting): look again shortly
        log.exception("reading the next schedule of %r failed; looking again shortly", task_queue)
        return store.clock.now() + POLL_S


async def schedule_loop(worker: Worker) -> None:
    """Fire the due schedules of ``worker``'s task queue until cancelled (the worker's shutdown)."""
    store, task_queue = worker.store, worker.task_queue
    wake = asyncio.Event()
    entry = (asyncio.get_running_loop(), wake)
    _LOOPS.setdefault(store, set()).add(entry)
    unsubscribe = store.on_foreign_change(wake.set, {schedule_topic(task_queue)})
    try:
        last_read = time.monotonic()
        due = await _next_due(store, task_queue)
        while True:
            now = store.clock.now()
            if due is not None and due <= now:
                try:
                    due = await store.fire_schedules(task_queue)
                except Exception:  # a full disk, a lost server: keep the loop, try again shortly
                    log.exception("firing the schedules of %r failed; retrying", task_queue)
                    wake.clear()
                    await wait_event(wake, _RETRY_S)
                    continue
                if due is not None and due <= store.clock.now():
                    # Still due: more than one sweep's worth, or (PostgreSQL) another process is firing
                    # it right now (its row is locked): look again in a moment, not in a busy loop.
                    await asyncio.sleep(_BUSY_S)
                continue
            wake.clear()
            await wait_event(wake, max(POLL_S if due is None else min(due - now, POLL_S), 0.0005))
            # Other processes' commits wake it too (any commit, on PostgreSQL any notification): under
            # load, the due index is read at most every _MIN_READ_GAP_S, not once per commit.
            gap = last_read + _MIN_READ_GAP_S - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            last_read = time.monotonic()
            due = await _next_due(store, task_queue)
    finally:
        unsubscribe()
        _LOOPS.get(store, set()).discard(entry)
