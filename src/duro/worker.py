"""The worker: runs workflow tasks (with a sticky cache of live instances) and activities."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import gc
import inspect
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import orjson

from duro import _metrics
from duro._aio import wait_event
from duro._async_completion import CompleteAsync
from duro._core import codec
from duro._core.codec import Event
from duro._core.replay import is_command
from duro._determinism import check_mode, guard_workflow
from duro._instance import WorkflowInstance, WorkflowTaskError
from duro._local import local_dispatch
from duro._local_activity import run_local_activities
from duro._loop import install_io_guard
from duro._process_pool import SHIPPED_DETAILS, ProcessBridge, check_picklable, run_in_process
from duro._schedule_loop import schedule_loop
from duro._validate import check_name, check_versioning_behavior
from duro.activity import ActivityContext, ActivityDefinition, ActivityInfo, get_activity_definition
from duro.converter import encode_failure
from duro.engine.machine import signal_event, started_event
from duro.errors import (
    ApplicationError,
    CancelledError,
    DuroError,
    NonDeterminismError,
    StoreCorruptedError,
    StoreError,
    TimeoutError,
    WorkflowClosedError,
)
from duro.interceptor import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor, check_interceptors
from duro.stores.base import (
    TIMERS,
    ActivityOutcome,
    ActivityTask,
    Conflict,
    StartRequest,
    WorkflowTaskCompletion,
    WrongBuild,
    atask_topic,
    request_topic,
    run_key_of,
    wtask_topic,
)
from duro.workflow import WorkflowDefinition, check_exception_types, get_workflow_definition

if TYPE_CHECKING:
    from duro.client import Client

__all__ = ["Worker"]

log = logging.getLogger("duro.worker")

_TERMINAL = (codec.WORKFLOW_TERMINATED, codec.WORKFLOW_TIMED_OUT)
# Events after a cached instance's position that are not inputs of its code.
_NOT_INPUTS = (codec.WORKFLOW_TASK_COMPLETED, codec.WORKFLOW_TASK_FAILED)
_POLL_INTERVAL_S = 1.0
_REAP_INTERVAL_S = 2.0
_RENEW_INTERVAL_S = 60.0
_LEASE_CHECK_AFTER_S = 0.5
_PURGE_INTERVAL_S = 60.0  # how often a worker deletes closed runs past the store's retention
_RENEWED_LEASE_S = 330.0  # the lease of an activity without timeouts: 300 s + the 30 s slack


class Worker:
    """Polls one task queue and runs its workflow tasks and activities.

    Use as an async context manager (it runs while the block runs) or ``await worker.run()``.

    Args:
        client: the connected client whose store the worker serves.
        task_queue: the queue to poll.
        workflows: ``@duro.workflow`` functions this worker can run.
        activities: ``@duro.activity`` functions this worker can run.
        max_concurrent_workflow_tasks: workflow tasks in flight at once.
        max_concurrent_activities: activity attempts running at once (also the thread pool size
            for sync activities).
        activity_executor: where sync (``def``) activities run (Temporal's name). None (the
            default): a thread pool of the worker's own. A ``concurrent.futures.ProcessPoolExecutor``
            (or any executor that is not a ``ThreadPoolExecutor``) runs them in other processes:
            their function and arguments must be picklable, and their context is a picklable one
            whose heartbeats go through a ``multiprocessing`` manager the worker starts. The
            worker does not shut a given executor down. Async activities always run on the loop.
        max_cached_workflows: live workflow instances kept in memory (LRU); a miss replays history.
        identity: a name for this worker in logs.
        gc_threshold: while the worker runs, raise the interpreter's generation-0 GC threshold to
            at least this (None: leave the GC alone). Each parked workflow keeps a few dozen
            objects alive; with CPython's default of 700 the cyclic collector keeps walking them
            all, which halves how fast 100,000 parked workflows resume. Restored on shutdown.
        interceptors: ``duro.interceptor.Interceptor`` objects around this worker's workflows and
            activities, after the client's own (``Client.connect(url, interceptors=...)``).
        workflow_failure_exception_types: exception types that fail a run when its workflow raises
            them, for every workflow of this worker (besides duro's failures, such as
            ``duro.ApplicationError``; any other exception fails only the workflow task, which is
            retried). ``[Exception]`` fails the run on any exception.
        build_id: the build of this worker's code, for worker versioning (see docs/deployment.md);
            None (the default): an unversioned worker. A run whose first workflow task a worker of
            build B ran is pinned to B (its workflow tasks go only to workers of B) unless its
            workflow is ``versioning_behavior="auto_upgrade"``; other runs go to the task queue's
            current build (``client.set_current_build_id``), to any worker while it has none.
        default_versioning_behavior: the behaviour of this worker's workflows that declare none
            (``@duro.workflow(versioning_behavior=...)``): "pinned" (the default) or "auto_upgrade".
        determinism: the determinism guard for workflows that declare none
            (``@duro.workflow(determinism=...)``): "raise" (the default: ``time.time()``,
            ``datetime.now()``, ``random.*``, ``uuid.uuid4()``, ``os.urandom()`` or ``secrets`` called
            by workflow code raise ``duro.NonDeterminismError`` and fail the workflow task), "warn"
            (a warning is logged once per place instead) or "off". See docs/concepts.md.
    """

    def __init__(
        self,
        client: Client,
        *,
        task_queue: str,
        workflows: Sequence[Callable[..., Any]] = (),
        activities: Sequence[Callable[..., Any]] = (),
        max_concurrent_workflow_tasks: int = 200,
        max_concurrent_activities: int = 200,
        activity_executor: concurrent.futures.Executor | None = None,
        max_cached_workflows: int = 10_000,
        identity: str | None = None,
        gc_threshold: int | None = 50_000,
        interceptors: Sequence[Interceptor] = (),
        workflow_failure_exception_types: Sequence[type[BaseException]] = (),
        build_id: str | None = None,
        default_versioning_behavior: str = "pinned",
        determinism: str = "raise",
    ) -> None:
        check_name("task_queue", task_queue)
        #: the determinism guard of workflows that do not set their own ("raise", "warn", "off").
        self.determinism = cast(str, check_mode("determinism", determinism))
        #: the build of this worker's code (worker versioning; None: unversioned).
        self.build_id = check_name("build_id", build_id, allow_none=True)
        default_behavior = check_versioning_behavior("default_versioning_behavior", default_versioning_behavior)
        for name, value in (("max_concurrent_workflow_tasks", max_concurrent_workflow_tasks),
                            ("max_concurrent_activities", max_concurrent_activities),
                            ("max_cached_workflows", max_cached_workflows)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not workflows and not activities:
            raise ValueError("a Worker needs at least one workflow or activity to run")
        if activity_executor is not None and not isinstance(activity_executor, concurrent.futures.Executor):
            raise TypeError("activity_executor must be a concurrent.futures.Executor (a ThreadPoolExecutor or a "
                            f"ProcessPoolExecutor), not {type(activity_executor).__name__}")
        self.client = client
        self.store = client.store
        self.converter = client.converter
        self.task_queue = task_queue
        self.identity = identity or f"worker-{id(self):x}"
        if gc_threshold is not None and (not isinstance(gc_threshold, int) or gc_threshold < 1):
            raise ValueError(f"gc_threshold must be a positive int or None, got {gc_threshold!r}")
        self._gc_threshold = gc_threshold
        self._saved_gc: tuple[int, ...] | None = None
        self._workflows: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            d = get_workflow_definition(wf)
            if d.name in self._workflows:
                raise ValueError(f"two workflows are registered under the name {d.name!r}")
            self._workflows[d.name] = d
        self._activities: dict[str, ActivityDefinition] = {}
        for act in activities:
            a = get_activity_definition(act)
            if a.is_method:
                if not inspect.ismethod(act):
                    raise TypeError(f"activity {a.name!r} is a method: register it bound to an instance, "
                                    f"activities=[obj.{getattr(act, '__name__', a.name)}], not the class's function")
                a = dataclasses.replace(a, fn=act)  # called on that instance
            if a.name in self._activities:
                raise ValueError(f"two activities are registered under the name {a.name!r}")
            self._activities[a.name] = a
        #: the client's interceptors, then the worker's own (the first is the outermost).
        self.interceptors: tuple[Interceptor, ...] = client.interceptors + check_interceptors(interceptors)
        self._act_chain: ActivityInboundInterceptor | None = None
        if self.interceptors:
            chain: ActivityInboundInterceptor = _ActivityRoot(self)
            for it in reversed(self.interceptors):
                chain = it.intercept_activity(chain)
            self._act_chain = chain
        self.failure_types = check_exception_types("workflow_failure_exception_types",
                                                   workflow_failure_exception_types)
        # Worker versioning: what each workflow type's completions declare (only with a build id).
        self._behaviors = {name: d.versioning_behavior or default_behavior for name, d in self._workflows.items()}
        self.max_wf_tasks = max_concurrent_workflow_tasks
        self.max_activities = max_concurrent_activities
        self.max_cached = max_cached_workflows
        self._cache: OrderedDict[bytes, WorkflowInstance] = OrderedDict()
        self._active: set[bytes] = set()
        # Runs whose workflow task commit is in flight, each with a future done once it has landed.
        self._in_flight: dict[bytes, asyncio.Future[None]] = {}
        self._again: set[bytes] = set()
        self._wf_backlog: deque[bytes] = deque()
        # A poll loop that found (or may have left) tasks it had no room for: the next freed slot
        # wakes it, rather than another process's next commit or the 1 s poll.
        self._wf_starved = False
        self._act_starved = False
        # perf_counter() when each workflow task was offered (filled only while metrics are on):
        # the start of its schedule-to-start.
        self._wf_offered: dict[bytes, float] = {}
        self._next_purge = time.monotonic() + _PURGE_INTERVAL_S  # first purge a minute after start
        self._claims: set[asyncio.Future[list[bytes]]] = set()  # workflow task claims in flight
        self._act_running = 0
        self._act_backlog: deque[ActivityTask] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Where sync activities run: the given executor, else a thread pool made at start.
        self._given_executor = activity_executor
        self._executor: concurrent.futures.Executor | None = None
        # Heartbeats and cancellation of sync activities in other processes (an executor that is
        # not a thread pool); made at start when this worker has sync activities.
        self._bridge: ProcessBridge | None = None
        self._wake_wf = asyncio.Event()
        self._wake_act = asyncio.Event()
        self._wake_timer = asyncio.Event()
        self._next_timer: float | None = None
        self._retry_backoff: dict[bytes, float] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._running = False
        self._serving_requests = False
        self._requests_changed = False  # a request was left (or a retry came due) while they were being read
        self._requests_in_progress: set[str] = set()
        self._refused_requests: set[str] = set()  # updates of runs of another build (worker versioning)
        self._stopped = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it runs on, once started
        self._act_live: dict[tuple[bytes, int], ActivityTask] = {}
        self._last_renew = 0.0
        self.stats = {"workflow_tasks": 0, "replays": 0, "fused": 0, "fused_conflicts": 0, "activities": 0,
                      "task_failures": 0, "stale_activities": 0, "report_retries": 0, "eager_signals": 0,
                      "eager_signal_conflicts": 0}

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Register with the store and start polling."""
        if self._running:
            raise RuntimeError("this worker is already running")
        given = self._given_executor
        if (self._bridge is None and given is not None and not isinstance(given, concurrent.futures.ThreadPoolExecutor)
                and any(not a.is_async for a in self._activities.values())):
            self._bridge = await asyncio.to_thread(ProcessBridge)  # starts a manager process: ~0.1 s
        self._running = True
        self.loop = asyncio.get_running_loop()
        install_io_guard()
        for defn in self._workflows.values():
            guard_workflow(defn, self.determinism)
        if self._gc_threshold is not None:
            current = gc.get_threshold()
            if current[0] < self._gc_threshold:
                self._saved_gc = current
                gc.set_threshold(self._gc_threshold, *current[1:])
        store = self.store
        if self._activities:
            self._executor = given or concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_activities, thread_name_prefix=f"duro-act-{self.task_queue}")
        local_dispatch(store).attach(self)
        _metrics.watch_worker(self)
        # Each loop is woken by another process's commits that concern it (where the store can tell):
        # a worker is not woken by the steps other workers take on their own tasks.
        # Only the loops this worker runs: a watcher reads the marks of every topic listened to.
        q = self.task_queue
        if self._workflows:
            self._unsubscribe += [
                store.on_foreign_change(self._wake_wf.set, {wtask_topic(q)}),
                store.on_foreign_change(self._wake_timer.set, {TIMERS}),
                store.on_foreign_change(self._on_foreign_request, {request_topic(q)}),
            ]
            self._on_foreign_request()  # requests left for the queue before this worker started
        if self._activities:
            self._unsubscribe.append(store.on_foreign_change(self._wake_act.set, {atask_topic(q)}))
        if self._workflows:
            self._spawn(self._wf_poll_loop())
            self._spawn(self._timer_loop())
            self._spawn(schedule_loop(self))  # fires the queue's schedules (duro._schedule_loop)
        if self._activities:
            self._spawn(self._act_poll_loop())
        self._spawn(self._reap_loop())

    async def run(self) -> None:
        """Run until cancelled (for a process that is only a worker)."""
        await self.start()
        try:
            await self._stopped.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop polling, cancel running work and release the queue (leases expire or are taken over)."""
        if not self._running:
            return
        self._running = False
        self._stopped.set()
        if self._saved_gc is not None and gc.get_threshold()[0] == self._gc_threshold:
            gc.set_threshold(*self._saved_gc)
        self._saved_gc = None
        local_dispatch(self.store).detach(self)
        _metrics.unwatch_worker(self)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        held = {*self._active, *self._wf_backlog, *self._again}  # workflow tasks leased to this worker
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for claim in await asyncio.gather(*self._claims, return_exceptions=True):
            if isinstance(claim, list):
                held.update(claim)
        await self._release_held(held)
        for inst in self._cache.values():
            inst.close()
        self._cache.clear()
        if self._executor is not None and self._executor is not self._given_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._bridge is not None:
            bridge, self._bridge = self._bridge, None
            await asyncio.to_thread(bridge.close)

    async def _release_held(self, held: set[bytes]) -> None:
        """Give back the workflow tasks this worker held but did not finish, so others take them now.

        Without this they would wait for their lease to end (30 s), also for another worker of this
        process.
        """
        if not held:
            return
        try:
            await self.store.return_workflow_tasks(self.task_queue, sorted(held))
        except Exception as e:  # the store is unreachable: the leases end by themselves
            log.warning("could not give back %d workflow task(s) on shutdown (%s: %s); other workers take them "
                        "when their leases end", len(held), type(e).__name__, e)

    # ------------------------------------------------------------------ what the rest of the process sees

    @property
    def runs_workflows(self) -> bool:
        """Whether this worker runs workflow tasks (it registers workflows)."""
        return bool(self._workflows)

    @property
    def runs_activities(self) -> bool:
        """Whether this worker runs activities (it registers activities)."""
        return bool(self._activities)

    def definition(self, workflow_type: str) -> WorkflowDefinition | None:
        """The workflow registered under ``workflow_type`` here, or None."""
        return self._workflows.get(workflow_type)

    def accepts(self, workflow_type: str) -> bool:
        """Whether this running worker can take a new run of ``workflow_type`` now (an eager start)."""
        return self._running and workflow_type in self._workflows

    def cached_instance(self, run_key: bytes) -> WorkflowInstance | None:
        """The live instance of a run in this worker's cache, or None."""
        return self._cache.get(run_key)

    def idle(self) -> bool:
        """Whether this worker has no workflow task or activity in flight or queued."""
        return not (self._active or self._act_running or self._act_backlog or self._wf_backlog)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        t: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _on_foreign_request(self) -> None:
        if self._workflows and self._running:
            if self._serving_requests:
                self._requests_changed = True  # the read under way may predate this commit: read again after it
            else:
                self._serving_requests = True
                self._spawn(self._serve_requests())

    async def _serve_requests(self) -> None:
        """Answer queries and updates that clients in other processes left for this queue."""
        try:
            again = True
            while again:
                self._requests_changed = False
                pending = await self.store.apending_requests(self.task_queue)
                self._refused_requests.intersection_update(request_id for request_id, _raw in pending)
                for request_id, raw in pending:
                    if request_id in self._requests_in_progress or request_id in self._refused_requests:
                        continue
                    self._requests_in_progress.add(request_id)
                    self._spawn(self._serve_request(request_id, raw))
                again = self._requests_changed
        except Exception:  # the askers time out with a clear message unless a read in a second finds them
            log.exception("reading the pending queries and updates of %r failed", self.task_queue)
            if self._running:
                asyncio.get_running_loop().call_later(_POLL_INTERVAL_S, self._on_foreign_request)
        finally:
            self._serving_requests = False

    async def _serve_request(self, request_id: str, raw: bytes) -> None:
        from duro._query import answer_request

        try:
            answer = await answer_request(self, raw)
            await self.store.answer(self.task_queue, request_id, answer)
        except WrongBuild as e:  # an update of a run of another build: left for a worker of that build
            self._refused_requests.add(request_id)
            log.debug("request %s left for a worker of another build: %s", request_id, e)
        except Exception:  # the asker times out with a clear message; keep serving others
            log.exception("answering request %s failed", request_id)
        finally:
            self._requests_in_progress.discard(request_id)

    # ------------------------------------------------------------------ workflow tasks

    def offer_workflow_task(self, run_key: bytes, history: list[Event] | None = None) -> None:
        """A workflow task for ``run_key`` is leased to this process (called after its commit).

        ``history`` is the run's complete history when the store knows it (a run it just created).
        """
        if not self._running:
            return
        if _metrics.ENABLED:
            self._wf_offered.setdefault(run_key, time.perf_counter())
        if run_key in self._active:
            self._again.add(run_key)
            return
        if len(self._active) >= self.max_wf_tasks:
            if run_key not in self._wf_backlog:
                self._wf_backlog.append(run_key)
            return
        self._active.add(run_key)
        self._spawn(self._workflow_task(run_key, history))

    def _wf_done(self, run_key: bytes) -> None:
        self._active.discard(run_key)
        if len(self._cache) > self.max_cached:  # it could not be trimmed while runs were busy
            self._trim_cache()
        if run_key in self._again:
            self._again.discard(run_key)
            self.offer_workflow_task(run_key)
        while self._wf_backlog and len(self._active) < self.max_wf_tasks:
            nxt = self._wf_backlog.popleft()
            self.offer_workflow_task(nxt)
        if self._wf_starved and self._wf_free() > 0:
            self._wf_starved = False
            self._wake_wf.set()

    def _wf_free(self) -> int:
        """Workflow tasks this worker has room for now (its poll loop claims at most that many)."""
        return self.max_wf_tasks - len(self._active)

    def _act_free(self) -> int:
        """Activity attempts this worker has room for now, counting those waiting in its backlog."""
        return self.max_activities - self._act_running - len(self._act_backlog)

    async def _wf_poll_loop(self) -> None:
        store = self.store
        while self._running:
            # Cleared before looking, so a wake-up that arrives while we look is not lost.
            self._wake_wf.clear()
            try:
                if await store.ahas_pending_wtasks(self.task_queue, self.build_id):
                    free = self._wf_free()
                    self._wf_starved = free <= 0
                    if free > 0:
                        # Shielded: a shutdown that cancels this loop must still learn what the claim
                        # leased, to hand it back (see shutdown).
                        claim = asyncio.ensure_future(store.claim_workflow_tasks(self.task_queue, free,
                                                                                 self.build_id))
                        self._claims.add(claim)
                        claim.add_done_callback(self._claims.discard)
                        claimed = await asyncio.shield(claim)
                        self._wf_starved = len(claimed) >= free  # there may be more than it had room for
                        for run_key in claimed:
                            self.offer_workflow_task(run_key)
            except Exception:  # keep polling: a failed claim must not stop the worker
                log.exception("claiming workflow tasks of %r failed", self.task_queue)
            await wait_event(self._wake_wf, _POLL_INTERVAL_S)

    def _evict(self, run_key: bytes) -> None:
        inst = self._cache.pop(run_key, None)
        if inst is not None:
            inst.close()
            if _metrics.ENABLED and inst.close_status is None:  # not a run that just closed: a stale or failed one
                _metrics.RECORDER.sticky_cache_evicted(self.task_queue, "invalidated")

    async def _load(self, run_key: bytes, events: list[Event] | None) -> tuple[WorkflowInstance | None, list[Event]]:
        """A fresh instance replayed from the full history, and the inputs it still has to process."""
        if events is None:
            events = await self.store.aread_history(run_key)
        if not events:
            return None, []
        if events[-1].type in _TERMINAL or events[-1].type in (codec.WORKFLOW_COMPLETED, codec.WORKFLOW_FAILED):
            return None, []
        started = events[0]
        defn = self._workflows.get(started.name)
        if defn is None:
            raise WorkflowTaskError(
                f"workflow type {started.name!r} is not registered on worker {self.identity} (task queue "
                f"{self.task_queue!r}); registered: {sorted(self._workflows)}")
        inst = WorkflowInstance(defn, run_key, started, self.converter, self.interceptors, self.failure_types,
                                self.determinism)
        replaying = len(events) > 1  # more than the start: the code ran before (elsewhere, or evicted here)
        if replaying:
            self.stats["replays"] += 1
        t0 = time.perf_counter() if replaying and _metrics.ENABLED else 0.0
        pending = inst.replay(events)
        if t0 and _metrics.ENABLED:
            _metrics.RECORDER.sticky_cache_miss(self.task_queue)
            _metrics.RECORDER.replayed(started.name, time.perf_counter() - t0)
        inst.next_event_id = events[-1].event_id + 1
        return inst, pending

    async def _workflow_task(self, run_key: bytes, history: list[Event] | None = None) -> None:
        try:
            await self._workflow_task_inner(run_key, history)
        except asyncio.CancelledError:
            raise
        except WrongBuild as e:
            # Worker versioning: the run is not this build's to run now (the queue's current build
            # changed while the task ran): hand the task back, for a worker of the right build.
            self._evict(run_key)
            self._again.discard(run_key)
            log.info("workflow task of run %s handed back: %s", run_key.hex(), e)
            try:
                await self.store.return_workflow_tasks(self.task_queue, [run_key])
            except Exception:  # the lease runs out and a worker of the right build takes it then
                log.warning("could not hand back the workflow task of run %s", run_key.hex(), exc_info=True)
        except Conflict:
            # The run moved on while the task ran (new inputs, another worker): run it again on
            # fresh state; a closed run's task is then released.
            self._evict(run_key)
            self._again.add(run_key)
        except StoreError as e:
            # The store, not the code, failed (a full disk, say): nothing to record, retry here.
            self._evict(run_key)
            self._retry_here(run_key, e)
        except Exception as e:
            inst = self._cache.get(run_key)
            epoch = inst.epoch if inst is not None else -1
            self._evict(run_key)
            await self._task_failed(run_key, epoch, e)
        finally:
            self._wf_done(run_key)

    def _retry_here(self, run_key: bytes, exc: Exception) -> None:
        delay = min(self._retry_backoff.get(run_key, 0.25) * 2, 60.0)
        self._retry_backoff[run_key] = delay
        log.error("workflow task of run %s could not be committed (%s); retrying it here in %.1fs",
                  run_key.hex(), exc, delay)
        asyncio.get_running_loop().call_later(delay, self.offer_workflow_task, run_key)

    async def _task_failed(self, run_key: bytes, epoch: int, exc: Exception) -> None:
        """A workflow task raised: record it in the history and retry it after a backoff.

        Whatever raised (a missing registration, arguments that do not fit, a non-determinism, a
        damaged history), the run is never left with a task that nobody retries (a failing store
        is retried by ``_retry_here`` instead, with nothing recorded).
        The store keeps the task unleased and due after the backoff, so a worker with fixed code,
        in this process or another, picks it up; when even recording fails (a full disk), this
        worker retries the task itself.
        """
        etype = type(exc).__name__
        log.error("workflow task of run %s failed: %s: %s", run_key.hex(), etype, exc,
                  exc_info=not isinstance(exc, (WorkflowTaskError, NonDeterminismError)))
        self.stats["task_failures"] += 1
        try:
            delay = await self.store.fail_workflow_task(self.task_queue, run_key, epoch, etype, encode_failure(exc))
        except Exception as record_error:
            self._retry_here(run_key, record_error)
            return
        if delay is not None:
            asyncio.get_running_loop().call_later(delay + 0.001, self._wake_wf.set)

    async def _prepare(self, run_key: bytes,
                       history: list[Event] | None) -> tuple[WorkflowInstance | None, list[Event]]:
        """The run's instance (cached, or rebuilt by replay) and the inputs it has not processed yet."""
        inst = self._cache.get(run_key)
        if inst is not None:
            self._cache.move_to_end(run_key)
            new = await self.store.aread_history(run_key, inst.last_event_id + 1)
            foreign = any(ev.type == codec.WORKFLOW_TASK_COMPLETED and ev.event_id != inst.last_marker_id
                          for ev in new)
            if not foreign and not any(ev.type in _TERMINAL for ev in new):
                if new:
                    inst.next_event_id = new[-1].event_id + 1
                if _metrics.ENABLED:
                    _metrics.RECORDER.sticky_cache_hit(self.task_queue)
                return inst, [ev for ev in new if not is_command(ev.type) and ev.type not in _NOT_INPUTS]
            self._evict(run_key)  # another worker moved the run on, or it was closed: start over
        inst, pending = await self._load(run_key, history)
        if inst is not None:
            self._cache[run_key] = inst
            self._trim_cache()
        return inst, pending

    async def _workflow_task_inner(self, run_key: bytes, history: list[Event] | None) -> None:
        store = self.store
        t0 = time.perf_counter() if _metrics.ENABLED else 0.0
        offered = self._wf_offered.pop(run_key, None)
        inst, pending = await self._prepare(run_key, history)
        if inst is None:
            await store.release_workflow_task(self.task_queue, run_key, 1 << 62)
            return
        if not pending:
            await store.release_workflow_task(self.task_queue, run_key, inst.last_event_id)
            return
        if t0 and offered is not None and _metrics.ENABLED:
            _metrics.RECORDER.workflow_task_scheduled_to_start(inst.info.workflow_type, t0 - offered)
        inst.busy = True
        try:
            inst.activate(pending)
            await self._commit(inst, pending[-1].event_id, [], None)
        finally:
            inst.busy = False
        if t0 and _metrics.ENABLED:
            _metrics.RECORDER.workflow_task_executed(inst.info.workflow_type, time.perf_counter() - t0)
        self._retry_backoff.pop(run_key, None)

    async def eager_start(self, req: StartRequest) -> bool:
        """Start ``req`` with its first workflow task run here, committed with the start.

        Returns False (nothing written) when the first task cannot run here; the caller then
        starts the workflow the ordinary way. Raises what starting raises (already started...).
        """
        defn = self._workflows.get(req.workflow_type)
        if defn is None or not self._running or len(self._active) >= self.max_wf_tasks:
            return False
        store = self.store
        now_us = int(store.clock.now() * 1_000_000)
        started = started_event(req, now_us).with_id(1)
        run_key = run_key_of(req.run_id)
        t0 = time.perf_counter() if _metrics.ENABLED else 0.0
        try:
            inst = WorkflowInstance(defn, run_key, started, self.converter, self.interceptors, self.failure_types,
                                    self.determinism)
            inst.activate([started])
            if inst.has_local_activities:
                inst.close()
                return False  # local activities run in the ordinary first task
        except (WorkflowTaskError, NonDeterminismError, TypeError, ValueError):
            return False  # let the ordinary path run (and report) it
        inst.next_event_id = 2  # the history will hold WorkflowExecutionStarted
        first = self._versioned(inst.completion(processed_through=1), req.workflow_type)
        self._active.add(run_key)
        inst.busy = True
        try:
            with self._committing(run_key):
                nxt = await store.start_workflow_eager(req, now_us, first)
        except BaseException as e:
            inst.busy = False
            self._wf_done(run_key)
            inst.close()
            if isinstance(e, WrongBuild):  # the queue's current build is another: start it the ordinary way
                return False
            raise
        self.stats["workflow_tasks"] += 1
        if t0 and _metrics.ENABLED:
            _metrics.RECORDER.workflow_task_executed(req.workflow_type, time.perf_counter() - t0)
        # The marker is event 2; the same commit may have added inputs after the commands (a child
        # that could not start): those are left for the next task to read.
        inst.committed(first, nxt, marker_id=2)
        inst.busy = False
        # Cached before the run is released: a task the same commit queued for it (a child that
        # could not start, say) must find this instance, not rebuild a second one.
        if inst.close_status is None:
            self._cache[run_key] = inst
            self._trim_cache()
        else:
            inst.close()
        self._wf_done(run_key)
        return True

    async def eager_signal(self, workflow_id: str, run_key: bytes, name: str, payload: bytes,
                           headers: dict[str, str] | None) -> bool:
        """Deliver a signal to a run this worker holds idle in memory, in one commit with the task it wakes.

        The signal is shown to the live instance and committed together with the workflow task
        that processed it (an input of that completion, as an activity result is on the fused
        path), so a signal to a parked workflow costs one commit, not two, and no history read.
        Nothing is acknowledged before that commit is durable; the completion is conditional on
        the history the instance saw (``Conflict`` otherwise). Returns False, with nothing written,
        when it cannot be done here: the run is not cached idle here, its history moved on, its
        code raised or wants local activities, or the commit failed. The caller then sends the
        signal the ordinary way (and the instance, which saw a signal that is not recorded, is
        dropped from the cache).
        """
        inst = self._cache.get(run_key)
        if (inst is None or inst.busy or not self._running or run_key in self._active or run_key in self._again
                or inst.close_status is not None or inst.info.workflow_id != workflow_id
                or inst.last_event_id != inst.next_event_id - 1  # it has seen the whole history
                or (self._wf_backlog and run_key in self._wf_backlog)):
            return False
        ev = signal_event(name, payload, headers, int(self.store.clock.now() * 1e6))
        self._active.add(run_key)
        inst.busy = True
        t0 = time.perf_counter() if _metrics.ENABLED else 0.0
        try:
            inst.activate([ev])
            if inst.has_local_activities:
                # They would run inside the caller's signal(), before the signal is durable: the
                # ordinary workflow task runs them.
                self._evict(run_key)
                return False
            await self._commit(inst, 0, [ev], None)
        except Conflict:  # the run moved on meanwhile (_commit dropped the instance)
            self.stats["eager_signal_conflicts"] += 1
            return False
        except BaseException as e:
            self._evict(run_key)  # it saw a signal that is not recorded
            if isinstance(e, Exception):  # its code raised, or the commit failed: the ordinary path
                # records the signal, and the workflow task runs (and, if it fails, is recorded) anew
                log.debug("signal %r to run %s goes the ordinary way: %s: %s", name, run_key.hex(),
                          type(e).__name__, e)
                return False
            raise
        finally:
            inst.busy = False
            self._wf_done(run_key)
        self.stats["eager_signals"] += 1
        if t0 and _metrics.ENABLED:
            _metrics.RECORDER.workflow_task_executed(inst.info.workflow_type, time.perf_counter() - t0)
        return True

    async def accept_update(self, run_key: bytes, name: str, args: bytes, headers: dict[str, str] | None,
                            update_id: str) -> int:
        """Validate and record update ``update_id`` on a run of this worker's queue, unless it was already.

        The instance is brought up to date with the history first; an update with the same id
        accepted on the run before (by any worker) is not validated or recorded again. The commit
        that records it is conditional on the history the instance saw (``Conflict`` otherwise:
        then it looks again), so two calls with one id, in any processes, record it once.

        Returns the event id of its WorkflowExecutionUpdateAccepted (1 when not known): its outcome
        is recorded after it. Raises the validator's error (nothing is written then).
        """
        from duro.stores.base import pack

        store = self.store
        for _ in range(20):
            while run_key in self._active:
                await asyncio.sleep(0.0005)
            self._active.add(run_key)
            try:
                inst, pending = await self._prepare(run_key, None)
                if inst is None:  # the caller (start_update) knows the workflow and says which
                    raise WorkflowClosedError("the workflow is closed; updates need a running workflow",
                                              run_id=run_key.hex())
                inst.busy = True
                try:
                    if pending:  # bring the instance up to date with the history first
                        try:
                            inst.activate(pending)
                            await self._commit(inst, pending[-1].event_id, [], None)
                        except BaseException:
                            self._evict(run_key)  # it saw inputs that no commit processed
                            raise
                        if inst.close_status is not None:
                            raise WorkflowClosedError("the workflow closed before the update could be delivered",
                                                      workflow_id=inst.info.workflow_id, run_id=run_key.hex(),
                                                      status=str(inst.close_status))
                    known = inst.accepted_updates.get(update_id)
                    if known is not None:
                        return known or 1
                    decoded = self.converter.decode_args(args, ())
                    inst.validate_update(name, decoded, headers, update_id)  # raises: rejected, nothing written
                    umeta: dict[str, Any] = {"id": update_id}
                    if headers:
                        umeta["headers"] = headers
                    ev = Event(codec.UPDATE_ACCEPTED, 0, int(store.clock.now() * 1e6), 0, 0, name,
                               pack(orjson.dumps(umeta), args))
                    first = inst.next_event_id  # the id the commit gives the event (or it conflicts)
                    try:
                        inst.activate([ev])
                        await self._commit(inst, 0, [ev], None)
                    except BaseException:
                        self._evict(run_key)  # it saw an update that is not recorded
                        raise
                    inst.note_update_accepted(update_id, first)
                    return first
                finally:
                    inst.busy = False
            except WrongBuild:
                raise  # the run is another build's (worker versioning): a worker of that build must take it
            except Conflict:
                continue  # the run moved on meanwhile: try again on fresh state
            finally:
                self._wf_done(run_key)
        raise DuroError("the update could not be delivered: the run kept changing; try again")

    async def _commit(self, inst: WorkflowInstance, processed: int, inputs: list[Event],
                      completed_activity: tuple[int, int] | None) -> None:
        if inst.has_local_activities:  # run in this task, their outcomes committed with it
            await run_local_activities(self, inst)
        c = self._versioned(inst.completion(processed, inputs, completed_activity), inst.info.workflow_type)
        try:
            with self._committing(inst.run_key):
                nxt = await self.store.complete_workflow_task(c)
        except Conflict:
            self._evict(inst.run_key)
            raise
        self.stats["workflow_tasks"] += 1
        inst.committed(c, nxt)
        if inst.close_status is not None:
            self._evict(inst.run_key)

    @contextlib.contextmanager
    def _committing(self, run_key: bytes) -> Iterator[None]:
        """Mark a commit of the run's workflow task in flight, until the code after the ``await`` ran.

        An activity that commit scheduled may start before it is durable (the store hands it out
        early) and end before the commit does; its result then waits for the commit
        (``_report_success``), so that it can be committed with the workflow's next commands, in
        one commit, rather than alone. A waiter resumes on a later turn of the loop, after the task
        that committed has gone on, without awaiting, to update the instance and release the run.
        """
        done = asyncio.get_running_loop().create_future()
        self._in_flight[run_key] = done
        try:
            yield
        finally:
            if self._in_flight.get(run_key) is done:
                del self._in_flight[run_key]
            done.set_result(None)

    def _versioned(self, c: WorkflowTaskCompletion, workflow_type: str) -> WorkflowTaskCompletion:
        """The completion with this worker's build and the workflow's behaviour (worker versioning)."""
        if self.build_id is not None:
            c.build_id = self.build_id
            c.versioning_behavior = self._behaviors.get(workflow_type)
        return c

    def poll_workflow_tasks(self) -> None:
        """Look for workflow tasks now (the task queue's current build changed, say)."""
        self._wake_wf.set()

    def _trim_cache(self) -> None:
        cache = self._cache
        while len(cache) > self.max_cached:
            for key, inst in cache.items():
                if not inst.busy and key not in self._active:
                    del cache[key]
                    inst.close()
                    if _metrics.ENABLED:
                        _metrics.RECORDER.sticky_cache_evicted(self.task_queue, "cache_full")
                    break
            else:
                return

    # ------------------------------------------------------------------ timers

    def timer_set(self, when: float) -> None:
        """A timer is due at ``when`` (0: look at the store's timers now)."""
        if self._next_timer is None or when < self._next_timer:
            self._next_timer = when
            self._wake_timer.set()

    async def _next_timer_due(self) -> float | None:
        """The store's earliest timer; on a read that failed (a server restarting), look again in a second."""
        try:
            return await self.store.anext_timer_due()
        except Exception:
            log.exception("reading the next timer failed; looking again shortly")
            return self.store.clock.now() + _POLL_INTERVAL_S

    async def _timer_loop(self) -> None:
        store = self.store
        self._next_timer = await self._next_timer_due()
        while self._running:
            now = store.clock.now()
            if self._next_timer is not None and self._next_timer <= now:
                try:
                    self._next_timer = await store.fire_timers()
                except Exception:  # a full disk, say: keep the loop, try again shortly
                    log.exception("firing timers failed; retrying")
                    self._wake_timer.clear()
                    await wait_event(self._wake_timer, 0.5)
                continue
            wait = _POLL_INTERVAL_S if self._next_timer is None else min(self._next_timer - now, _POLL_INTERVAL_S)
            self._wake_timer.clear()
            await wait_event(self._wake_timer, max(wait, 0.0005))
            if self._next_timer is None or self._wake_timer.is_set():
                due = await self._next_timer_due()
                if due is not None and (self._next_timer is None or due < self._next_timer):
                    self._next_timer = due

    # ------------------------------------------------------------------ activities

    def offer_activity_task(self, task: ActivityTask) -> None:
        """An activity attempt is leased to this process (called after its commit): run it or queue it."""
        if not self._running:
            return
        task.received = time.monotonic()
        if self._act_running >= self.max_activities:
            self._act_backlog.append(task)
            return
        self._act_running += 1
        self._spawn(self._run_activity(task))

    def activity_due(self, when: float) -> None:
        """An activity attempt of this queue becomes visible at ``when`` (a retry's backoff): poll then."""
        loop = asyncio.get_running_loop()
        loop.call_later(max(0.0, when - self.store.clock.now()) + 0.001, self._wake_act.set)

    async def _act_poll_loop(self) -> None:
        store = self.store
        while self._running:
            self._wake_act.clear()
            free = self._act_free()
            self._act_starved = free <= 0
            if free > 0:
                try:
                    tasks = await store.claim_activity_tasks(self.task_queue, free)
                    self._act_starved = len(tasks) >= free
                    for task in tasks:
                        self.offer_activity_task(task)
                except Exception:  # keep polling: a failed claim must not stop the worker
                    log.exception("claiming activity tasks of %r failed", self.task_queue)
            await wait_event(self._wake_act, _POLL_INTERVAL_S)

    async def _reap_loop(self) -> None:
        while self._running:
            try:
                await self._renew_leases()
                if await self.store.reap():
                    self._wake_wf.set()
                    self._wake_act.set()
                if time.monotonic() >= self._next_purge:  # retention: closed runs past it go, in the background
                    self._next_purge = time.monotonic() + _PURGE_INTERVAL_S
                    await self.store.purge_expired()
            except Exception:
                log.exception("reaping expired leases (or purging closed runs past the retention) failed")
            await asyncio.sleep(_REAP_INTERVAL_S)

    async def _renew_leases(self) -> None:
        """Keep the leases of this worker's long activities without a timeout alive.

        Leases of this process expire like any other (so nothing is stranded in a live worker);
        an attempt with a timeout is ended by its timeout before its lease runs out, one that must
        heartbeat is kept by its heartbeats, one with neither is renewed here while it runs.
        """
        now = time.monotonic()
        if now - self._last_renew < _RENEW_INTERVAL_S:
            return
        self._last_renew = now
        items = [(t.run_key, t.seq, t.attempt) for t in self._act_live.values()
                 if not t.start_to_close_timeout and not t.schedule_to_close_timeout and not t.heartbeat_timeout]
        if items:
            await self.store.renew_activity_leases(self.task_queue, items, _RENEWED_LEASE_S)

    async def _run_activity(self, task: ActivityTask) -> None:
        key = (task.run_key, task.seq)
        try:
            # The lease may have been lost between the claim and now (this process was paused,
            # say, and another took the attempt over): then this attempt must not start. A lease
            # lasts at least 30 s and only expiry takes it from a live owner, so a task started
            # right after it was leased needs no look (the look costs a read snapshot).
            if (time.monotonic() - task.received > _LEASE_CHECK_AFTER_S
                    and not await self.store.aholds_activity(task.task_queue, task.run_key, task.seq,
                                                             task.attempt)):
                self.stats["stale_activities"] += 1
                log.warning("activity %r (seq %d attempt %d) of run %s is no longer leased to this worker; "
                            "not starting it", task.name, task.seq, task.attempt, task.run_key.hex())
                return
            self._act_live[key] = task
            await self._run_activity_inner(task)
        except asyncio.CancelledError:
            raise
        except Exception:  # the attempt's lease expires and the reaper retries it
            log.exception("activity %r of run %s failed outside its code", task.name, task.run_key.hex())
        finally:
            if self._act_live.get(key) is task:
                del self._act_live[key]
            self._act_running -= 1
            while self._act_backlog and self._act_running < self.max_activities:
                nxt = self._act_backlog.popleft()
                self._act_running += 1
                self._spawn(self._run_activity(nxt))
            if self._act_starved and self._act_free() > 0:
                self._act_starved = False
                self._wake_act.set()

    async def _run_activity_inner(self, task: ActivityTask) -> None:
        self.stats["activities"] += 1
        defn = self._activities.get(task.name)
        if defn is None:
            err = ApplicationError(
                f"activity {task.name!r} is not registered on worker {self.identity} (task queue "
                f"{task.task_queue!r}); registered: {sorted(self._activities)}", type="ActivityNotRegistered")
            await self._report_failure(task, err)
            return
        conv = self.converter
        heartbeat_details = conv.decode(task.heartbeat_details) if task.heartbeat_details else None
        started = self.store.clock.now()
        t0 = _activity_started(task, started) if _metrics.ENABLED else 0.0
        timeout = task.start_to_close_timeout
        if task.schedule_to_close_timeout:
            left = task.scheduled_time + task.schedule_to_close_timeout - started
            timeout = left if timeout is None else min(timeout, left)
        info = ActivityInfo(
            activity_id=task.seq, activity_type=task.name, attempt=task.attempt, workflow_id=task.workflow_id,
            workflow_run_id=task.run_key.hex(), workflow_type=task.workflow_type, task_queue=task.task_queue,
            scheduled_time=task.scheduled_time, heartbeat_details=heartbeat_details,
            start_to_close_timeout=task.start_to_close_timeout, heartbeat_timeout=task.heartbeat_timeout,
            headers=dict(task.headers) if task.headers else {},
        )
        ctx = ActivityContext(info, self._heartbeat, task)
        ctx._sync = not defn.is_async
        # A cancellation the worker learns of (a heartbeat's reply) is delivered as in Temporal: an
        # async activity's task is cancelled (asyncio.CancelledError at its current await); a sync
        # one sees is_cancelled, and heartbeat() raises duro.CancelledError (see _run_sync).
        try:
            args = conv.decode_args(task.args, defn.arg_hints)
            if self._act_chain is not None:
                chained: asyncio.Future[Any] = asyncio.ensure_future(self._act_chain.execute_activity(
                    ExecuteActivityInput(defn.fn, args, dict(task.headers or {}), ctx, defn.is_async)))
                if defn.is_async:
                    ctx._on_cancel = chained.cancel
                if timeout is None and not task.heartbeat_timeout:
                    result = await chained
                else:
                    result = await _watch(chained, ctx, timeout, task.heartbeat_timeout)
            elif defn.is_async and timeout is None and not task.heartbeat_timeout:
                # No deadline to watch: no extra task; a cancellation cancels this one while the
                # activity's code runs in it.
                this = asyncio.current_task()
                assert this is not None
                ctx._on_cancel = this.cancel
                try:
                    result = await defn.fn(ctx, *args)
                finally:
                    ctx._on_cancel = None
            else:
                if defn.is_async:
                    runner: asyncio.Future[Any] = asyncio.ensure_future(defn.fn(ctx, *args))
                    ctx._on_cancel = runner.cancel
                else:
                    runner = self._run_sync(defn.fn, ctx, args)
                if timeout is None and not task.heartbeat_timeout:
                    result = await runner
                else:
                    result = await _watch(runner, ctx, timeout, task.heartbeat_timeout)
        except asyncio.CancelledError:
            if not self._running:
                raise
            if ctx.is_cancelled:  # the activity let the cancellation through: it acknowledged it
                await self._report_cancelled(task)
                return
            await self._report_failure(task, ApplicationError("activity was cancelled", type="CancelledError"), ctx)
            return
        except CompleteAsync:
            # Completed later through its task token. The attempt leaves this worker (its slot is
            # free, its lease is not renewed here) and waits in the store until its deadline.
            if not await self.store.hand_off_activity(task.task_queue, task.run_key, task.seq, task.attempt, started):
                log.info("activity %r (seq %d attempt %d) of run %s raised CompleteAsync but is no longer leased "
                         "here (completed from outside already, or timed out)", task.name, task.seq, task.attempt,
                         task.run_key.hex())
            return
        except Exception as e:
            if t0 and _metrics.ENABLED:
                _metrics.RECORDER.activity_executed(task.name, time.perf_counter() - t0)
            if ctx.is_cancelled and isinstance(e, CancelledError):  # a sync activity's heartbeat() raised it
                await self._report_cancelled(task)
                return
            await self._report_failure(task, e, ctx)
            return
        if t0 and _metrics.ENABLED:
            _metrics.RECORDER.activity_executed(task.name, time.perf_counter() - t0)
        try:
            payload = conv.encode(result)
        except (TypeError, ValueError) as e:  # not encodable, NaN/inf or too large: every attempt would fail alike
            await self._report_failure(task, ApplicationError(
                f"the result of activity {task.name!r} cannot be stored: {e}", type=type(e).__name__,
                non_retryable=True))
            return
        await self._report_success(task, payload)

    async def _report_failure(self, task: ActivityTask, exc: BaseException, ctx: ActivityContext | None = None) -> None:
        non_retryable = isinstance(exc, ApplicationError) and exc.non_retryable
        etype = exc.type if isinstance(exc, ApplicationError) else type(exc).__name__
        outcome = ActivityOutcome(run_key=task.run_key, task_queue=task.task_queue, seq=task.seq,
                                  attempt=task.attempt, failure=encode_failure(exc), error_type=etype,
                                  non_retryable=non_retryable,
                                  heartbeat_details=self._last_details(ctx, exc) if ctx is not None else None)
        verdict = await self._record_outcome(outcome)
        if verdict in ("retry", "done"):  # not: stale, or its run closed or stopped waiting
            # Each failed attempt is logged with its number (describe() shows the last one), so an
            # activity that keeps failing is seen, not retried in silence.
            log.warning("activity %r (seq %d) of workflow %r (run %s) failed on attempt %d: %s: %s; %s",
                        task.name, task.seq, task.workflow_id, task.run_key.hex(), task.attempt, etype, exc,
                        "retrying" if verdict == "retry" else "no retry left: the workflow gets ActivityError")
            if _metrics.ENABLED:
                _metrics.RECORDER.activity_failed(task.name, etype, verdict == "retry")

    async def _report_cancelled(self, task: ActivityTask) -> None:
        """The attempt ended by letting its cancellation through (it acknowledged it).

        The store drops it ("try_cancel"), or records ActivityTaskCanceled for a workflow that
        waits for the end ("wait_cancellation_completed").
        """
        outcome = ActivityOutcome(run_key=task.run_key, task_queue=task.task_queue, seq=task.seq,
                                  attempt=task.attempt, error_type="CancelledError", non_retryable=True,
                                  failure=encode_failure(CancelledError(f"activity {task.name!r} was cancelled")))
        verdict = await self._record_outcome(outcome)
        log.info("activity %r (seq %d attempt %d) of workflow %r (run %s) was cancelled (%s)", task.name, task.seq,
                 task.attempt, task.workflow_id, task.run_key.hex(),
                 "recorded: the workflow waits for it" if verdict == "done" else verdict)

    async def _record_outcome(self, outcome: ActivityOutcome) -> str:
        """Commit an attempt's end, retrying while the store cannot take it (a full disk, say); the store's verdict.

        Gives up when the worker stops, or on an error that retrying cannot cure (a damaged run
        record): the attempt's lease then expires and the reaper retries the activity.
        """
        delay = 0.05
        while True:
            try:
                return await self.store.complete_activity(outcome)
            except Exception as e:
                if not self._running or not isinstance(e, StoreError) or isinstance(e, StoreCorruptedError):
                    raise
                self.stats["report_retries"] += 1
                log.warning("recording the end of activity seq %d of run %s failed (%s); retrying in %.2fs",
                            outcome.seq, outcome.run_key.hex(), e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _report_success(self, task: ActivityTask, payload: bytes) -> None:
        in_flight = self._in_flight.get(task.run_key)
        if in_flight is not None:  # the commit that scheduled it, most likely: fuse with what follows it
            await in_flight
        inst = self._cache.get(task.run_key)
        # One commit per step: when this process holds the workflow idle in memory and this is the
        # only result it waits for, resume it now and commit the result with its next commands.
        if (inst is not None and not inst.busy and task.run_key not in self._active
                and inst.pending_activities == 1 and inst.is_pending(task.seq)
                and task.task_queue == inst.info.task_queue
                and inst.last_event_id == inst.next_event_id - 1):  # it has seen the whole history
            ev = Event(codec.ACTIVITY_COMPLETED, 0, int(self.store.clock.now() * 1e6), task.seq, task.attempt,
                       task.name, payload)
            self._active.add(task.run_key)
            inst.busy = True
            t0 = time.perf_counter() if _metrics.ENABLED else 0.0
            try:
                inst.activate([ev])
                await self._commit(inst, 0, [ev], (task.seq, task.attempt))
                self.stats["fused"] += 1
                if t0 and _metrics.ENABLED:
                    _metrics.RECORDER.workflow_task_executed(inst.info.workflow_type, time.perf_counter() - t0)
                return
            except Conflict:  # the run moved on meanwhile: record the result the ordinary way below
                self.stats["fused_conflicts"] += 1
            except Exception as e:  # its code raised, or the commit failed: the ordinary path records
                # the result and the workflow task then runs (and, if it raises, is recorded) anew
                log.error("workflow task of run %s failed: %s", task.run_key.hex(), e)
                self._evict(task.run_key)
            finally:
                inst.busy = False
                self._wf_done(task.run_key)
        await self._record_outcome(ActivityOutcome(
            run_key=task.run_key, task_queue=task.task_queue, seq=task.seq, attempt=task.attempt, result=payload))


    def _run_sync(self, fn: Callable[..., Any], ctx: ActivityContext, args: Sequence[Any]) -> asyncio.Future[Any]:
        """Start a sync activity on the activity executor; the future of its result.

        On threads it gets ``ctx`` itself (in a copy of the current contextvars). In another
        process (an executor that is not a thread pool) it gets a picklable
        ``ProcessActivityContext`` whose heartbeats and cancellation go through the worker's
        ``ProcessBridge``; a function or argument that cannot be pickled raises a non-retryable
        ``ApplicationError`` here, naming it.
        """
        loop = asyncio.get_running_loop()
        bridge = self._bridge
        if bridge is None:
            call = contextvars.copy_context().run
            return loop.run_in_executor(self._executor, call, fn, ctx, *args)
        check_picklable(ctx.info.activity_type, fn, tuple(args))
        remote = bridge.context(ctx.info, functools.partial(self._heartbeat, ctx))
        ctx._on_cancel = lambda: self._spawn(asyncio.to_thread(bridge.cancel, remote))
        fut = loop.run_in_executor(self._executor, run_in_process, fn, remote, tuple(args))

        def release(_: asyncio.Future[Any]) -> None:
            if ctx.is_cancelled:  # its entry in the manager's dict goes too: a round trip, off the loop
                self._spawn(asyncio.to_thread(bridge.release, remote, True))
            else:
                bridge.release(remote, False)

        fut.add_done_callback(release)
        return fut

    def _last_details(self, ctx: ActivityContext, exc: BaseException) -> bytes | None:
        """A failed attempt's last heartbeat details (encoded), for its retry; None if it sent none.

        They go with the failure because the heartbeat's own write may still be in flight (or, from
        a process pool, still in the manager's queue) when the failure is recorded.
        """
        shipped = exc.__dict__.pop(SHIPPED_DETAILS, None)
        if shipped is None:
            hb = ctx._heartbeater
            return hb.latest if hb is not None else None
        try:
            return self.converter.encode(shipped)
        except (TypeError, ValueError):  # not encodable: its heartbeat write failed alike, and was logged
            return None

    def _heartbeat(self, ctx: ActivityContext, details: Any) -> None:
        hb = ctx._heartbeater
        if hb is None:
            hb = ctx._heartbeater = _Heartbeater(self, ctx._task, ctx)
        hb.heartbeat(details)


def _activity_started(task: ActivityTask, started: float) -> float:
    """Record a first attempt's schedule-to-start (metrics on); the perf_counter() its execution is timed from.

    Only a first attempt: a task carries its activity's first schedule time, so a retry's wait
    would include the earlier attempts and their backoffs. Both times are the store's clock
    (across machines, a skew could make it negative: counted as 0).
    """
    if task.attempt == 1:
        _metrics.RECORDER.activity_scheduled_to_start(task.name, max(0.0, started - task.scheduled_time))
    return time.perf_counter()


async def _watch(runner: asyncio.Future[Any], ctx: ActivityContext, timeout: float | None,
                 heartbeat_timeout: float | None) -> Any:
    """Await the activity, failing it with duro.TimeoutError past its deadline or heartbeat timeout."""
    start = time.monotonic()
    deadline = start + timeout if timeout is not None else None
    ctx.last_heartbeat = start
    while True:
        now = time.monotonic()
        wait = deadline - now if deadline is not None else None
        if heartbeat_timeout:
            hb_wait = ctx.last_heartbeat + heartbeat_timeout - now
            wait = hb_wait if wait is None else min(wait, hb_wait)
        if wait is not None and wait <= 0:
            runner.cancel()
            if deadline is not None and now >= deadline:
                raise TimeoutError(f"activity {ctx.info.activity_type!r} ran past its start-to-close timeout "
                                   f"of {timeout}s", timeout_type="start_to_close")
            raise TimeoutError(f"activity {ctx.info.activity_type!r} sent no heartbeat for "
                               f"{heartbeat_timeout}s", timeout_type="heartbeat")
        done, _ = await asyncio.wait({runner}, timeout=wait)
        if done:
            return runner.result()


class _Heartbeater:
    """Sends an activity's heartbeats to the store: at most one write in flight, latest details win."""

    def __init__(self, worker: Worker, task: ActivityTask, ctx: ActivityContext) -> None:
        self.worker = worker
        self.task = task
        assert worker.loop is not None, "heartbeats come from activities of a started worker"
        self.loop: asyncio.AbstractEventLoop = worker.loop
        self.ctx = ctx
        self.pending: tuple[bytes | None] | None = None
        self.in_flight = False
        self.latest: bytes | None = None  # the last details sent (None: none yet); a failure carries them

    def heartbeat(self, details: Any) -> None:
        payload = self.worker.converter.encode(details) if details is not None else None
        if payload is not None:  # set here, on the activity's thread, before the attempt can end
            self.latest = payload
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._queue(payload)
        else:  # a sync activity in the thread pool
            self.loop.call_soon_threadsafe(self._queue, payload)

    def _queue(self, payload: bytes | None) -> None:
        self.ctx.last_heartbeat = time.monotonic()
        self.pending = (payload,)
        if not self.in_flight:
            self.in_flight = True
            self.worker._spawn(self._flush())

    async def _flush(self) -> None:
        t = self.task
        try:
            while self.pending is not None:
                (payload,) = self.pending
                self.pending = None
                cancel = await self.worker.store.heartbeat_activity(t.run_key, t.task_queue, t.seq, t.attempt, payload)
                if cancel:
                    self.ctx._cancel()
        finally:
            self.in_flight = False


class _ActivityRoot(ActivityInboundInterceptor):
    """The innermost link of a worker's activity chain: runs the function (a sync one on the activity executor)."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        if input.is_async:
            return await input.fn(input.ctx, *input.args)
        return await self._worker._run_sync(input.fn, input.ctx, input.args)
