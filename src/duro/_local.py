"""The workers running in this process, per store: in-process dispatch lives here, not in the store.

A store tells ``LocalDispatch`` which tasks one of its commits leased to this process (effects,
after the commit is durable), and asks it whether a queue has a consumer here. Clients use the same
registry to find a worker for an eager start, a live instance to answer a query from memory, or a
worker to deliver an update to; the testing environment uses it to see whether work is in flight.
Everything here goes through the workers' public methods.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

from duro.stores.base import (
    ActivityTaskDue,
    ActivityTaskReady,
    Effect,
    TimerSet,
    WorkflowTaskReady,
)

if TYPE_CHECKING:
    from duro._instance import WorkflowInstance
    from duro.stores.base import Store
    from duro.worker import Worker
    from duro.workflow import WorkflowDefinition

__all__ = ["LocalDispatch", "local_dispatch"]

log = logging.getLogger("duro.worker")


class LocalDispatch:
    """The workers of one store in this process, and the routing of that store's effects to them."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.workers: list[Worker] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self._wf: dict[str, list[Worker]] = {}  # per queue, in the order attached
        self._act: dict[str, Worker] = {}
        self._returns: set[asyncio.Task[Any]] = set()  # workflow tasks being given back (see deliver)

    # ------------------------------------------------------------------ registration

    def attach(self, worker: Worker) -> None:
        """Start handing ``worker`` the tasks of its queue that this process commits."""
        self.workers.append(worker)
        self.loop = worker.loop
        self._index()
        self._store.set_dispatch(self)

    def detach(self, worker: Worker) -> None:
        """Stop handing ``worker`` tasks (new ones are then written unleased, for any worker)."""
        if worker in self.workers:
            self.workers.remove(worker)
        self._index()
        if not self.workers:
            self.loop = None
            self._store.set_dispatch(None)

    def _index(self) -> None:
        # The last worker attached for a queue takes its tasks, as before one registry per kind;
        # workflow workers are all kept, since a task may need a worker of one build (versioning).
        wf: dict[str, list[Worker]] = {}
        for w in self.workers:
            if w.runs_workflows:
                wf.setdefault(w.task_queue, []).append(w)
        self._wf = wf
        self._act = {w.task_queue: w for w in self.workers if w.runs_activities}

    # ------------------------------------------------------------------ the store's side (Dispatch)

    def takes_workflow_tasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """Whether a worker here runs workflow tasks of ``task_queue`` (of build ``build_id``; None: any)."""
        if build_id is None:
            return task_queue in self._wf
        return any(w.build_id == build_id for w in self._wf.get(task_queue, ()))

    def _workflow_worker(self, task_queue: str, build_id: str | None, run_key: bytes) -> Worker | None:
        """The worker here to hand a workflow task to: of ``build_id`` (None: any), the one holding the run first."""
        found = self._wf.get(task_queue)
        if not found:
            return None
        if len(found) == 1:
            w = found[0]
            return w if build_id is None or w.build_id == build_id else None
        fit = [w for w in found if build_id is None or w.build_id == build_id]
        for w in fit:
            if w.cached_instance(run_key) is not None:
                return w
        return fit[-1] if fit else None

    def takes_activity_tasks(self, task_queue: str) -> bool:
        """Whether a worker here runs activities of ``task_queue``."""
        return task_queue in self._act

    def deliver(self, effects: list[Effect]) -> None:
        """Route one commit's effects (on ``loop``, after the commit is durable)."""
        for eff in effects:
            if isinstance(eff, WorkflowTaskReady):
                w = self._workflow_worker(eff.task_queue, eff.build_id, eff.run_key)
                if w is not None:
                    w.offer_workflow_task(eff.run_key, eff.history)
                else:
                    self._give_back(eff.task_queue, eff.run_key)
            elif isinstance(eff, ActivityTaskReady):
                w = self._act.get(eff.task.task_queue)
                if w is not None:
                    w.offer_activity_task(eff.task)
            elif isinstance(eff, ActivityTaskDue):
                w = self._act.get(eff.task_queue)
                if w is not None:
                    w.activity_due(eff.when)
            elif isinstance(eff, TimerSet):
                self.timer_set(eff.when)

    def _give_back(self, task_queue: str, run_key: bytes) -> None:
        """Return a workflow task a commit leased to this process after its worker stopped.

        The commit saw a consumer when it ran; the worker detached before the effect arrived. Left
        alone, the task would wait for its lease to end (30 s) before any worker, here or elsewhere,
        could take it.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (the store is closing): the lease runs out instead
            return
        task = loop.create_task(self._return(task_queue, run_key))
        self._returns.add(task)
        task.add_done_callback(self._returns.discard)

    async def _return(self, task_queue: str, run_key: bytes) -> None:
        try:
            await self._store.return_workflow_tasks(task_queue, [run_key])
        except Exception:  # closed meanwhile, say: the lease runs out and another worker takes it then
            log.warning("could not give back the workflow task of run %s (queue %r); it is taken over when its "
                        "lease ends", run_key.hex(), task_queue, exc_info=True)

    def activities_due(self, when: float) -> None:
        """Tell the workers that run activities that attempts become due at ``when`` (0: look now)."""
        for w in self.workers:
            if w.runs_activities:
                w.activity_due(when)

    def poll_workflow_tasks(self, task_queue: str) -> None:
        """Have the workers here of ``task_queue`` look for workflow tasks now (its current build changed)."""
        for w in self._wf.get(task_queue, ()):
            w.poll_workflow_tasks()

    def timer_set(self, when: float) -> None:
        """Tell the workers that run timers that one is due at ``when`` (0: look now)."""
        for w in self.workers:
            if w.runs_workflows:
                w.timer_set(when)

    # ------------------------------------------------------------------ the client's side

    def eager_worker(self, workflow_type: str, task_queue: str) -> Worker | None:
        """A worker on the running loop that can run a new run's first task at once, or None."""
        loop = asyncio.get_running_loop()
        for w in self.workers:
            # Only a worker on this event loop: its instances must not be touched from another thread.
            if w.task_queue == task_queue and w.loop is loop and w.accepts(workflow_type):
                return w
        return None

    def update_worker(self, workflow_type: str, task_queue: str, build_id: str | None = None) -> Worker | None:
        """A worker here that runs ``workflow_type`` on ``task_queue`` (updates go through it).

        ``build_id``: the build the run is pinned to (worker versioning); only a worker of it will do.
        """
        for w in self.workers:
            if (w.task_queue == task_queue and w.definition(workflow_type) is not None
                    and (build_id is None or w.build_id == build_id)):
                return w
        return None

    def definition(self, workflow_type: str) -> WorkflowDefinition | None:
        """The code of ``workflow_type`` if a worker here registers it."""
        w = self.registering_worker(workflow_type)
        return w.definition(workflow_type) if w is not None else None

    def registering_worker(self, workflow_type: str) -> Worker | None:
        """The first worker here that registers ``workflow_type`` (its settings apply to a replay here)."""
        for w in self.workers:
            if w.definition(workflow_type) is not None:
                return w
        return None

    def cached(self, run_key: bytes) -> list[tuple[Worker, WorkflowInstance]]:
        """The live instances of a run held by workers here (normally at most one)."""
        out = []
        for w in list(self.workers):
            inst = w.cached_instance(run_key)
            if inst is not None:
                out.append((w, inst))
        return out

    def idle(self) -> bool:
        """Whether no worker here has work in flight or queued."""
        return all(w.idle() for w in self.workers)


_DISPATCH: weakref.WeakKeyDictionary[Any, LocalDispatch] = weakref.WeakKeyDictionary()


def local_dispatch(store: Store) -> LocalDispatch:
    """The registry of this process's workers on ``store`` (made on first use)."""
    d = _DISPATCH.get(store)
    if d is None:
        d = _DISPATCH[store] = LocalDispatch(store)
    return d
