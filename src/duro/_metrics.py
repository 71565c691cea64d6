"""The metrics hooks of duro's hot path: one active recorder, a no-op unless a backend is enabled.

Call sites test the module flag first, so a process without metrics pays one attribute read per
hook and builds no attributes, reads no clock::

    if _metrics.ENABLED:
        _metrics.RECORDER.workflow_started(workflow_type)

Backends (``duro.contrib.metrics`` for OpenTelemetry, ``duro.contrib.prometheus``) subclass
``Recorder`` and ``install`` themselves; with both on, ``RECORDER`` fans out to each. Recorders are
called from event loops and from a store's writer thread (the LMDB group commit), so they must be
thread-safe (the OpenTelemetry SDK's instruments and prometheus_client's metrics are).

Gauges are read, not pushed: workers register here while they run (``watch_worker``) and a
backend's callback reads ``worker_gauges()`` when it is collected.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from duro.worker import Worker

__all__ = [
    "CLOSE_STATUSES",
    "ENABLED",
    "RECORDER",
    "Recorder",
    "WorkerGauges",
    "install",
    "uninstall",
    "unwatch_worker",
    "watch_worker",
    "worker_gauges",
]

#: The statuses a run closes with; each has its own counter (``duro.workflow.<status>``).
CLOSE_STATUSES = ("completed", "failed", "canceled", "terminated", "continued_as_new", "timed_out")


class Recorder:
    """What duro measures. Every method does nothing here; a backend overrides them all.

    Durations are seconds (``time.perf_counter`` differences, or the store clock for an
    activity's schedule-to-start). Names of types and queues are passed as they are; a backend
    turns them into attributes or labels.
    """

    def workflow_started(self, workflow_type: str) -> None:
        """A client started a new run (its start is durable)."""

    def workflow_closed(self, workflow_type: str, status: str) -> None:
        """A run closed with ``status`` (one of ``CLOSE_STATUSES``), in a commit of this process's store."""

    def workflow_task_scheduled_to_start(self, workflow_type: str, seconds: float) -> None:
        """A workflow task waited ``seconds`` between reaching this worker and starting to run."""

    def workflow_task_executed(self, workflow_type: str, seconds: float) -> None:
        """A workflow task ran and its completion was committed, ``seconds`` after it started."""

    def activity_scheduled_to_start(self, activity_type: str, seconds: float) -> None:
        """An activity's first attempt started ``seconds`` after it was scheduled."""

    def activity_executed(self, activity_type: str, seconds: float) -> None:
        """An activity attempt's code ran for ``seconds`` (to its result or its exception)."""

    def activity_failed(self, activity_type: str, error_type: str, retried: bool) -> None:
        """An attempt failed and the store recorded it: another attempt follows (``retried``) or none."""

    def sticky_cache_hit(self, task_queue: str) -> None:
        """A workflow task found its run's live instance in the worker's cache."""

    def sticky_cache_miss(self, task_queue: str) -> None:
        """A workflow task had to rebuild its run's instance by replaying the history."""

    def sticky_cache_evicted(self, task_queue: str, reason: str) -> None:
        """A live instance left the cache before its run closed (``reason``: cache_full, invalidated)."""

    def replayed(self, workflow_type: str, seconds: float) -> None:
        """Rebuilding an instance replayed its history in ``seconds``."""

    def store_committed(self, store_kind: str, ops: int, seconds: float) -> None:
        """A group commit of ``ops`` operations took ``seconds`` (its transaction and the flush to disk)."""


class _FanOut(Recorder):
    """Every call goes to each installed backend, in the order they were enabled."""

    def __init__(self, recorders: tuple[Recorder, ...]) -> None:
        self.recorders = recorders

    def workflow_started(self, workflow_type: str) -> None:
        for r in self.recorders:
            r.workflow_started(workflow_type)

    def workflow_closed(self, workflow_type: str, status: str) -> None:
        for r in self.recorders:
            r.workflow_closed(workflow_type, status)

    def workflow_task_scheduled_to_start(self, workflow_type: str, seconds: float) -> None:
        for r in self.recorders:
            r.workflow_task_scheduled_to_start(workflow_type, seconds)

    def workflow_task_executed(self, workflow_type: str, seconds: float) -> None:
        for r in self.recorders:
            r.workflow_task_executed(workflow_type, seconds)

    def activity_scheduled_to_start(self, activity_type: str, seconds: float) -> None:
        for r in self.recorders:
            r.activity_scheduled_to_start(activity_type, seconds)

    def activity_executed(self, activity_type: str, seconds: float) -> None:
        for r in self.recorders:
            r.activity_executed(activity_type, seconds)

    def activity_failed(self, activity_type: str, error_type: str, retried: bool) -> None:
        for r in self.recorders:
            r.activity_failed(activity_type, error_type, retried)

    def sticky_cache_hit(self, task_queue: str) -> None:
        for r in self.recorders:
            r.sticky_cache_hit(task_queue)

    def sticky_cache_miss(self, task_queue: str) -> None:
        for r in self.recorders:
            r.sticky_cache_miss(task_queue)

    def sticky_cache_evicted(self, task_queue: str, reason: str) -> None:
        for r in self.recorders:
            r.sticky_cache_evicted(task_queue, reason)

    def replayed(self, workflow_type: str, seconds: float) -> None:
        for r in self.recorders:
            r.replayed(workflow_type, seconds)

    def store_committed(self, store_kind: str, ops: int, seconds: float) -> None:
        for r in self.recorders:
            r.store_committed(store_kind, ops, seconds)


NOOP = Recorder()
#: True while at least one backend is installed; hooks test it before doing anything else.
ENABLED = False
#: The recorder hooks call: ``NOOP``, the one backend, or a fan-out to several.
RECORDER: Recorder = NOOP

_lock = threading.Lock()
_installed: list[Recorder] = []


def _publish() -> None:
    global ENABLED, RECORDER
    # RECORDER is set before ENABLED turns on (and ENABLED off before RECORDER goes), so a hook
    # on another thread that sees ENABLED true never calls a recorder that was already removed
    # by more than this one swap.
    if not _installed:
        ENABLED = False
        RECORDER = NOOP
        return
    RECORDER = _installed[0] if len(_installed) == 1 else _FanOut(tuple(_installed))
    ENABLED = True


def install(recorder: Recorder) -> None:
    """Make ``recorder`` receive every measurement from now on (beside any already installed)."""
    with _lock:
        if recorder not in _installed:
            _installed.append(recorder)
        _publish()


def uninstall(recorder: Recorder) -> None:
    """Stop sending measurements to ``recorder`` (nothing happens if it is not installed)."""
    with _lock:
        if recorder in _installed:
            _installed.remove(recorder)
        _publish()


# ---------------------------------------------------------------------- gauges, read on collection

_workers: weakref.WeakSet[Worker] = weakref.WeakSet()  # weak: a worker never shut down is not kept alive


def watch_worker(worker: Worker) -> None:
    """A worker started: its backlog and cache size are reported by the gauges until it stops."""
    with _lock:
        _workers.add(worker)


def unwatch_worker(worker: Worker) -> None:
    """A worker stopped: it leaves the gauges."""
    with _lock:
        _workers.discard(worker)


class WorkerGauges:
    """What the running workers of one task queue in this process hold right now."""

    __slots__ = ("activity_backlog", "cached_workflows", "task_queue", "workflow_backlog")

    def __init__(self, task_queue: str) -> None:
        self.task_queue = task_queue
        self.workflow_backlog = 0  # workflow tasks leased here, waiting for a free slot
        self.activity_backlog = 0  # activity attempts leased here, waiting for a free slot
        self.cached_workflows = 0  # live instances in the sticky caches


def worker_gauges() -> list[WorkerGauges]:
    """The gauges of each task queue with a running worker in this process (summed over its workers).

    Called from a metrics reader's thread: it only takes lengths of the workers' collections,
    which is safe while their loop changes them (each ``len`` is atomic under the GIL).
    """
    with _lock:
        workers = list(_workers)
    by_queue: dict[str, WorkerGauges] = {}
    for w in workers:
        g = by_queue.get(w.task_queue)
        if g is None:
            g = by_queue[w.task_queue] = WorkerGauges(w.task_queue)
        g.workflow_backlog += len(w._wf_backlog)
        g.activity_backlog += len(w._act_backlog)
        g.cached_workflows += len(w._cache)
    return list(by_queue.values())
