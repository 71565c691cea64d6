"""The run state machine: every transition of a run, written once over ``Tx`` (see ``duro.engine``).

A transition reads and writes records through the ``Tx`` it is given and appends what must happen
after its commit to an ``Effects`` collector (tasks leased to this process, timers set, runs closed,
updates completed); the store applies those only once the commit is durable. A transition that
raises may have written part of its changes: the store rolls the whole transition back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from msgspec import UNSET

from duro._core import codec
from duro._core.codec import Event
from duro.engine.records import (
    SEARCH_ATTRIBUTES_MARKER,
    ActivityMeta,
    RunRecord,
    RunStatus,
    VersioningBehavior,
    WorkflowIndex,
    WorkflowTaskLease,
)
from duro.engine.schedules import SCHEDULE_ID_ATTR
from duro.engine.schedules import run_closed as schedule_run_closed
from duro.errors import DuroError, WorkflowAlreadyStartedError, WorkflowClosedError, WorkflowNotFoundError
from duro.stores.base import (
    ActivityOutcome,
    ActivityTask,
    ActivityTaskDue,
    ActivityTaskReady,
    ChildStart,
    Conflict,
    Effect,
    ExternalRequest,
    RunClosed,
    RunInfo,
    StartRequest,
    TimerSet,
    UpdateCompleted,
    WorkflowTaskCompletion,
    WorkflowTaskReady,
    WrongBuild,
    headed,
    new_run_id,
    pack,
    run_key_of,
    unpack,
    update_key,
)

if TYPE_CHECKING:
    from duro.engine.tx import Tx

__all__ = [
    "ASYNC_OWNER",
    "ATASK_LEASE_SLACK_S",
    "DEFAULT_ACTIVITY_TIMEOUT_S",
    "SEARCH_ATTRIBUTES_MARKER",
    "WTASK_LEASE_S",
    "Effects",
    "Local",
    "Machine",
    "child_closed_event",
    "retry_delay",
    "run_info",
    "started_event",
]

WTASK_LEASE_S = 30.0
WTASK_RETRY_INITIAL_S = 0.5
WTASK_RETRY_MAX_S = 60.0
ATASK_LEASE_SLACK_S = 30.0
DEFAULT_ACTIVITY_TIMEOUT_S = 300.0
# The owner of an attempt whose code raised CompleteAsync: no process holds it (a worker that stops
# or dies does not end it), only its deadline and heartbeats do. Not a "host:pid:..." token, so
# no liveness check takes it for a dead process.
ASYNC_OWNER = "(async)"
_NEVER = 1 << 63
RUNNING = RunStatus.RUNNING


def us(t: float) -> int:
    """Seconds to integer microseconds (rounded: 2.01 s is 2,010,000 µs, not one less)."""
    return round(t * 1_000_000)


class Local(Protocol):
    """Whether this process has a consumer for a queue (then a new task is leased to it at once)."""

    def takes_workflow_tasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """Whether a worker of this process runs workflow tasks of ``task_queue`` (of build ``build_id``; None: any)."""

    def takes_activity_tasks(self, task_queue: str) -> bool:
        """Whether a worker of this process runs activities of ``task_queue``."""


class Effects:
    """What the transitions of one commit ask the store to do once it is durable."""

    __slots__ = ("effects",)

    def __init__(self) -> None:
        self.effects: list[Effect] = []

    def mark(self) -> int:
        """Where the collector stands, to drop what a failed transition added (``rollback``)."""
        return len(self.effects)

    def rollback(self, mark: int) -> None:
        """Drop the effects added since ``mark``."""
        del self.effects[mark:]


def run_info(run_key: bytes, rec: RunRecord) -> RunInfo:
    """What describe() and list_workflows() report about a run record."""
    return RunInfo(
        workflow_id=rec.workflow_id, run_id=run_key.hex(), workflow_type=rec.workflow_type,
        task_queue=rec.task_queue, status=str(rec.status), start_time=rec.start_us / 1e6,
        close_time=rec.close_us / 1e6 if rec.close_us else None, history_length=rec.next_event_id - 1,
        parent=rec.parent, next_run_id=rec.next_run_id, task_failures=rec.task_failures,
        search_attributes=rec.search_attributes, memo=rec.memo, build_id=rec.build_id,
        versioning_behavior=rec.versioning_behavior,
    )


def execution_deadline_us(req: StartRequest, now_us: int, deadline_us: int = 0) -> int:
    """When the workflow execution times out, in µs (0: never).

    The deadline carried over from an earlier run of a continue-as-new chain, or else now plus the
    request's execution timeout.
    """
    if req.execution_timeout and not deadline_us:
        return now_us + us(req.execution_timeout)
    return deadline_us


def signal_event(name: str, payload: bytes, headers: dict[str, str] | None, time_us: int = 0) -> Event:
    """A WorkflowExecutionSignaled event (its interceptor headers, if any, packed with the payload).

    ``time_us`` 0 lets ``append`` stamp it with the commit's time.
    """
    body, flags = headed(payload, headers)
    return Event(codec.SIGNAL_RECEIVED, 0, time_us, 0, 0, name, body, flags)


def cancel_requested_event(by: tuple[str, bytes] | None = None, event_id: int = 0, cause: str = "") -> Event:
    """A WorkflowExecutionCancelRequested event, naming who asked when another run did.

    As Temporal's names the external workflow and its initiated event: ``by`` is the requesting
    run (workflow id, run key), ``event_id`` its RequestCancelExternal... event (0: none, as for a
    parent-close policy), ``cause`` why (``"parent_closed"``). Empty for ``handle.cancel()``.
    """
    if by is None:
        return Event(codec.WORKFLOW_CANCEL_REQUESTED, 0, 0, 0, 0, "", b"")
    asked: dict[str, Any] = {"workflow_id": by[0], "run_id": by[1].hex()}
    if event_id:
        asked["event_id"] = event_id
    body: dict[str, Any] = {"cause": cause, "requested_by": asked} if cause else {"requested_by": asked}
    return Event(codec.WORKFLOW_CANCEL_REQUESTED, 0, 0, 0, 0, "", orjson.dumps(body))


def initiated_event_id(written: list[Event], req: ExternalRequest) -> int:
    """The id of the RequestCancelExternal... event of cancellation request ``req`` in ``written`` (0: none)."""
    for ev in written:
        if ev.type == codec.EXTERNAL_CANCEL and ev.ref == req.seq:
            return ev.event_id
    return 0


def started_event(req: StartRequest, now_us: int, deadline_us: int = 0) -> Event:
    """The WorkflowExecutionStarted event of a run (its payload: pack(meta JSON, arguments)).

    The execution timeout spans continue-as-new runs (``deadline_us`` carries it over); the run
    timeout restarts with each run. Either becomes timer seq 0 of the run.
    """
    meta: dict[str, Any] = {"wid": req.workflow_id, "queue": req.task_queue,
                            "first_run": req.first_run_id or req.run_id}
    deadline_us = execution_deadline_us(req, now_us, deadline_us)
    if deadline_us:
        meta["deadline_us"] = deadline_us
    if req.execution_timeout:
        meta["execution_timeout"] = req.execution_timeout
    if req.run_timeout:
        meta["run_timeout"] = req.run_timeout
    if req.parent:
        meta["parent"] = req.parent
    if req.headers:
        meta["headers"] = req.headers
    return Event(codec.WORKFLOW_STARTED, 0, now_us, 0, 1, req.workflow_type, pack(orjson.dumps(meta), req.args))


def child_closed_event(seq: int, status: RunStatus, close_event: Event) -> Event:
    """The parent's input for its child (command ``seq``) closed with ``status`` by ``close_event``.

    ChildWorkflowExecutionCompleted (the result), ChildWorkflowExecutionCanceled (the child's
    cancellation failure), else ChildWorkflowExecutionFailed named by the status (the failure, or a
    timeout). Before duro 0.2 a cancelled child was a Failed one named "canceled" with the same
    payload: the parent's code sees the same error from either.
    """
    if status == RunStatus.COMPLETED:
        return Event(codec.CHILD_COMPLETED, 0, 0, seq, 0, "", close_event.payload)
    if status == RunStatus.CANCELED:
        return Event(codec.CHILD_CANCELED, 0, 0, seq, 0, "", close_event.payload)
    if status in (RunStatus.FAILED, RunStatus.TERMINATED):
        payload = close_event.payload
    else:
        payload = orjson.dumps({"kind": "timeout", "type": "TimeoutError", "timeout_type": "execution",
                                "message": f"the child workflow {status}"})
    return Event(codec.CHILD_FAILED, 0, 0, seq, 0, str(status), payload)


def backoff_delay(policy: dict[str, Any], attempt: int, error_type: str, non_retryable: bool) -> float | None:
    """Seconds before the attempt after ``attempt`` under ``policy``, or None when that failure is final.

    ``policy`` is ``RetryPolicy.to_dict()``; final means non-retryable, or the last attempt. Both
    queued and local activities retry by it.
    """
    if non_retryable or error_type in (policy.get("non_retryable_error_types") or ()):
        return None
    max_attempts = policy.get("maximum_attempts", 0) or 0
    if max_attempts and attempt >= max_attempts:
        return None
    initial = policy.get("initial_interval", 1.0)
    max_interval = policy.get("maximum_interval") or initial * 100
    try:
        return float(min(initial * policy.get("backoff_coefficient", 2.0) ** (attempt - 1), max_interval))
    except OverflowError:  # unlimited attempts: the power outgrew a float long after the cap was reached
        return float(max_interval)


def retry_delay(meta: ActivityMeta, o: ActivityOutcome, now_us: int) -> float | None:
    """Seconds until an activity's next attempt, or None when the failure is final."""
    delay = backoff_delay(meta.retry or {}, o.attempt, o.error_type, o.non_retryable)
    if delay is None:
        return None
    s2c = meta.schedule_to_close
    if s2c and now_us + us(delay) >= meta.scheduled_us + us(s2c):
        return None
    return float(delay)


def failure_text(failure: bytes | None) -> str:
    """"Type: message" of an attempt's failure payload (its raw text when it is not a failure object)."""
    try:
        d = orjson.loads(failure or b"{}")
    except orjson.JSONDecodeError:
        return (failure or b"").decode("utf-8", "replace")[:1000]
    if not isinstance(d, dict):
        return str(d)[:1000]
    kind = d.get("type") or d.get("kind") or "error"
    return f"{kind}: {d.get('message', '')}"[:1000]


def task_of(task_queue: str, run_key: bytes, seq: int, meta: ActivityMeta, args: bytes, details: bytes) -> ActivityTask:
    """The ActivityTask a worker runs, from a stored attempt."""
    return ActivityTask(
        run_key=run_key, workflow_id=meta.workflow_id, workflow_type=meta.workflow_type, task_queue=task_queue,
        seq=seq, name=meta.name, args=args, attempt=meta.attempt, scheduled_time=meta.scheduled_us / 1e6,
        start_to_close_timeout=meta.start_to_close, schedule_to_close_timeout=meta.schedule_to_close,
        heartbeat_timeout=meta.heartbeat, retry_policy=meta.retry, heartbeat_details=details or None,
        headers=meta.headers,
    )


def attempt_lease_s(start_to_close: float | None, schedule_to_close: float | None,
                    heartbeat: float | None = None) -> float:
    """How long a worker holds an activity attempt before another may take it, plus the slack.

    Its timeout (300 s without one); an attempt that must heartbeat holds it only until its next
    heartbeat is due (each heartbeat extends it), so a dead worker's attempt is retried after its
    heartbeat timeout, as Temporal does, not after the whole timeout.
    """
    base = start_to_close or schedule_to_close or DEFAULT_ACTIVITY_TIMEOUT_S
    if heartbeat:
        base = min(base, heartbeat)
    return base + ATASK_LEASE_SLACK_S


_TERMINATED_BY_PARENT = orjson.dumps({
    "kind": "terminated", "type": "TerminatedError",
    "message": "terminated because its parent workflow closed (parent_close_policy)"})
_RUN_TIMED_OUT = orjson.dumps({"kind": "timeout", "type": "TimeoutError", "timeout_type": "execution",
                               "message": "the workflow ran past its execution or run timeout"})


class Machine:
    """The transitions, for one process.

    ``owner`` is the process's lease token, ``local`` says which queues have a consumer in it
    (None: none), ``now_us`` reads the store's clock.
    """

    def __init__(self, owner: str, now_us: Callable[[], int]) -> None:
        self.owner = owner
        self.now_us = now_us
        self.local: Local | None = None

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def get_run(tx: Tx, run_key: bytes) -> RunRecord:
        """The run record; WorkflowNotFoundError when there is none."""
        rec = tx.run(run_key)
        if rec is None:
            raise WorkflowNotFoundError("?", run_key.hex())
        return rec

    @staticmethod
    def resolve(tx: Tx, workflow_id: str, run_id: str | None) -> bytes:
        """The run key of ``run_id`` (checked against ``workflow_id``), or of the id's latest run."""
        if run_id:
            try:
                key = run_key_of(run_id)
            except ValueError:
                raise WorkflowNotFoundError(workflow_id, run_id) from None
            rec = tx.run(key)
            if rec is None or rec.workflow_id != workflow_id:
                raise WorkflowNotFoundError(workflow_id, run_id)
            return key
        idx = tx.index(workflow_id)
        if idx is None:
            raise WorkflowNotFoundError(workflow_id)
        return run_key_of(idx.run_id)

    @staticmethod
    def append(tx: Tx, run_key: bytes, rec: RunRecord, events: list[Event], now_us: int) -> list[Event]:
        """Give events their ids and timestamps and append them; advance the run record (not saved)."""
        eid = rec.next_event_id
        stamped = []
        for ev in events:
            # An input the worker already showed to workflow code keeps its timestamp: ctx.now()
            # must read the same on replay as it did live.
            ts = ev.timestamp_us or now_us
            stamped.append(Event(ev.type, eid, ts, ev.ref, ev.attempt, ev.name, ev.payload, ev.flags))
            eid += 1
        tx.append_history(run_key, stamped)
        rec.next_event_id = eid
        return stamped

    def enqueue_wtask(self, tx: Tx, fx: Effects, run_key: bytes, rec: RunRecord, now_us: int,
                      history: list[Event] | None = None) -> None:
        """Make sure the run has a pending workflow task; lease it to this process when it has a consumer.

        Worker versioning: the task carries the run's pinned build, and a consumer here takes it only
        if it is of that build or, for a run not pinned, of the queue's current build (any consumer
        when the queue has none).
        """
        q = rec.task_queue
        pin = rec.pinned_build
        existing = tx.wtask(q, run_key)
        local = self.local
        target: str | None = None  # the build of the consumer here that may take it (None: any)
        if local is not None and local.takes_workflow_tasks(q):
            target = pin or tx.current_build(q)
            mine = target is None or local.takes_workflow_tasks(q, target)
        else:
            mine = False
        if existing is not None:
            if existing.build != pin:  # the task that just completed pinned the run (or unpinned it)
                existing.pinned = pin or UNSET
                tx.put_wtask(q, run_key, existing)
            if mine and existing.owner == self.owner:
                fx.effects.append(WorkflowTaskReady(q, run_key, None, target))
            return
        if mine:
            tx.put_wtask(q, run_key, WorkflowTaskLease(self.owner, now_us + us(WTASK_LEASE_S), 0, pin or UNSET))
            # A brand-new run's whole history is what this transaction wrote: hand it over, saving a read.
            fx.effects.append(WorkflowTaskReady(q, run_key, history, target))
        else:
            tx.put_wtask(q, run_key, WorkflowTaskLease(pinned=pin or UNSET))

    @staticmethod
    def check_build(tx: Tx, task_queue: str, pin: str, build_id: str | None) -> None:
        """Refuse, with WrongBuild, a workflow task run by a worker of a build that may not run it now.

        A run pinned to a build (``pin``) is run by workers of that build only; another is run by
        workers of the queue's current build, or by any worker while the queue has none.
        """
        if pin:
            if build_id != pin:
                raise WrongBuild(f"the run is pinned to build {pin!r}; this worker is of "
                                 f"{'build ' + repr(build_id) if build_id else 'no build (unversioned)'}")
            return
        current = tx.current_build(task_queue)
        if current is not None and build_id != current:
            raise WrongBuild(f"the current build of task queue {task_queue!r} is {current!r}; this worker is of "
                             f"{'build ' + repr(build_id) if build_id else 'no build (unversioned)'}")

    def set_current_build(self, tx: Tx, fx: Effects, task_queue: str, build_id: str | None) -> None:
        """Make ``build_id`` the queue's current build (None: the queue has none; any worker takes new runs)."""
        tx.set_current_build(task_queue, build_id, self.now_us())

    def add_input(self, tx: Tx, fx: Effects, run_key: bytes, rec: RunRecord, ev: Event, now_us: int) -> None:
        """Append one input event to an open run and make sure it has a workflow task."""
        (stamped,) = self.append(tx, run_key, rec, [ev], now_us)
        rec.last_input = stamped.event_id
        tx.put_run(run_key, rec)
        self.enqueue_wtask(tx, fx, run_key, rec, now_us)

    # ------------------------------------------------------------------ starting runs

    def start(self, tx: Tx, fx: Effects, req: StartRequest) -> str:
        """Create a run: WorkflowExecutionStarted and its first workflow task (and timeout timer).

        When a run of the id is open, ``req.id_conflict_policy`` decides: "fail" raises
        WorkflowAlreadyStartedError, "use_existing" returns that run's id (after recording
        ``req.start_signal`` on it, if any), "terminate_existing" terminates it and starts anew.
        Returns the id of the run the caller gets a handle on.
        """
        idx = tx.index(req.workflow_id)
        if idx is not None and idx.status == RUNNING and req.id_conflict_policy != "fail":
            if req.id_conflict_policy == "use_existing":
                if req.start_signal is not None:
                    self.signal(tx, fx, req.workflow_id, idx.run_id, req.start_signal, req.start_signal_args)
                return idx.run_id
            self.terminate(tx, fx, req.workflow_id, idx.run_id,
                           f"terminated by a new start of workflow {req.workflow_id!r} "
                           "(id_conflict_policy='terminate_existing')")
            self.create_run(tx, fx, req, self.now_us(), replaced_open=True)
            return req.run_id
        self.create_run(tx, fx, req, self.now_us())
        return req.run_id

    def start_eager(self, tx: Tx, fx: Effects, req: StartRequest, now_us: int, first: WorkflowTaskCompletion) -> int:
        """Create a run together with its first workflow task, already run by a worker of this process.

        Saves a commit and a hop on the start path (Temporal calls it eager start). ``first`` was
        computed from ``started_event(req, now_us)``, the same event this records. Raises
        WrongBuild, before writing, when the worker's build may not take a new run of the queue.
        """
        self.check_build(tx, req.task_queue, req.build_id or "", first.build_id)
        self.create_run(tx, fx, req, now_us, eager=True)
        return self.complete_wtask(tx, fx, first)

    def create_run(self, tx: Tx, fx: Effects, req: StartRequest, now_us: int, deadline_us: int = 0,
                   eager: bool = False, replaced_open: bool = False) -> bytes:
        """Create a run: its record, WorkflowExecutionStarted, the id index, its first task (and timeout).

        ``replaced_open``: the id's open run was just terminated for this start, so the reuse policy
        (about runs that had closed) does not apply.
        """
        idx = tx.index(req.workflow_id)
        if idx is not None and not replaced_open:
            if idx.status == RUNNING:
                raise WorkflowAlreadyStartedError(req.workflow_id, idx.run_id)
            policy = req.id_reuse_policy
            if policy == "reject_duplicate":
                raise WorkflowAlreadyStartedError(req.workflow_id, idx.run_id)
            if policy == "allow_duplicate_failed_only" and idx.status == RunStatus.COMPLETED:
                raise WorkflowAlreadyStartedError(req.workflow_id, idx.run_id)
        run_key = run_key_of(req.run_id)
        rec = RunRecord(workflow_id=req.workflow_id, workflow_type=req.workflow_type, task_queue=req.task_queue,
                        status=RUNNING, start_us=now_us, parent=req.parent or None,
                        search_attributes=req.search_attributes or None, memo=req.memo or None)
        if req.build_id:  # pinned from the start: a child or continue-as-new run of a pinned run
            rec.build_id, rec.versioning_behavior = req.build_id, VersioningBehavior.PINNED
        deadline_us = execution_deadline_us(req, now_us, deadline_us)
        started = started_event(req, now_us, deadline_us)
        rec.deadline_us = deadline_us
        fire_us = min(x for x in (deadline_us, now_us + us(req.run_timeout) if req.run_timeout else 0, _NEVER) if x)
        if fire_us < _NEVER:
            tx.put_timer(fire_us, run_key, 0)
            rec.timers = {"0": fire_us}
            fx.effects.append(TimerSet(fire_us / 1e6))
        first = [started]
        if req.start_signal is not None:  # signal-with-start: the first task sees it
            first.append(signal_event(req.start_signal, req.start_signal_args, req.headers))
        history = self.append(tx, run_key, rec, first, now_us)
        rec.last_input = history[-1].event_id
        tx.put_run(run_key, rec)
        tx.put_index(req.workflow_id, WorkflowIndex(req.run_id, RUNNING, req.workflow_type, now_us,
                                                    search_attributes=rec.search_attributes))
        if not eager:  # eager: the caller commits the first task in this same transaction
            self.enqueue_wtask(tx, fx, run_key, rec, now_us, history)
        return run_key

    # ------------------------------------------------------------------ from outside the run

    def _open_run(self, tx: Tx, workflow_id: str, run_id: str | None, doing: str) -> tuple[bytes, RunRecord]:
        run_key = self.resolve(tx, workflow_id, run_id)
        rec = self.get_run(tx, run_key)
        if rec.status != RUNNING:
            raise WorkflowClosedError(doing.format(wid=workflow_id, run=run_key.hex(), status=rec.status),
                                      workflow_id=workflow_id, run_id=run_key.hex(), status=str(rec.status))
        return run_key, rec

    def cancel(self, tx: Tx, fx: Effects, workflow_id: str, run_id: str | None) -> None:
        """Record WorkflowExecutionCancelRequested on an open run."""
        run_key, rec = self._open_run(tx, workflow_id, run_id,
                                      "workflow {wid!r} is already {status}; nothing to cancel")
        self.add_input(tx, fx, run_key, rec, cancel_requested_event(), self.now_us())

    def signal(self, tx: Tx, fx: Effects, workflow_id: str, run_id: str | None, name: str, payload: bytes,
               headers: dict[str, str] | None = None) -> None:
        """Append a signal (with its interceptor headers, if any) to an open run."""
        run_key, rec = self._open_run(tx, workflow_id, run_id, "cannot signal workflow {wid!r}: its run {run} is "
                                      "{status}; start a new run or check the id")
        self.add_input(tx, fx, run_key, rec, signal_event(name, payload, headers), self.now_us())

    def terminate(self, tx: Tx, fx: Effects, workflow_id: str, run_id: str | None, reason: str) -> None:
        """Close an open run at once with WorkflowExecutionTerminated."""
        run_key, rec = self._open_run(tx, workflow_id, run_id,
                                      "workflow {wid!r} is already {status}; nothing to terminate")
        now_us = self.now_us()
        payload = orjson.dumps({"kind": "terminated", "message": reason or "terminated", "type": "TerminatedError"})
        (ev,) = self.append(tx, run_key, rec, [Event(codec.WORKFLOW_TERMINATED, 0, 0, 0, 0, "", payload)], now_us)
        self.close_run(tx, fx, run_key, rec, RunStatus.TERMINATED, now_us, ev)

    def reset(self, tx: Tx, fx: Effects, workflow_id: str, run_id: str | None, event_id: int, reason: str,
              new_run_id: str) -> str:
        """Start run ``new_run_id`` from the run's WorkflowTaskCompleted ``event_id``; close the old run.

        The new run holds the events before ``event_id``, a record of the reset, and the signals,
        updates and outcomes of earlier decisions that arrived after it; the current code redoes
        the rest (``duro.engine.reset`` has the details). An open old run is terminated
        ("reset: <reason>"); open or closed, it points to the new run, as does the id's index.
        Raises (before writing) WorkflowNotFoundError, or DuroError for an event id that is not a
        WorkflowTaskCompleted of the run, a run with none, or another open run of the id.
        """
        from duro.engine.reset import reset_run  # its own module: the history analysis is long

        return reset_run(self, tx, fx, workflow_id, run_id, event_id, reason, new_run_id)

    # ------------------------------------------------------------------ closing

    def close_run(self, tx: Tx, fx: Effects, run_key: bytes, rec: RunRecord, status: RunStatus, now_us: int,
                  close_event: Event) -> None:
        """Close a run: its task and timers go, the index follows, children and parent are told."""
        rec.status = status
        rec.close_us = now_us
        tx.delete_wtask(rec.task_queue, run_key)
        for seq, fire_us in (rec.timers or {}).items():
            tx.delete_timer(fire_us, run_key, int(seq))
        rec.timers = None
        idx = tx.index(rec.workflow_id)
        if idx is not None and idx.run_id == run_key.hex():
            idx.status = status
            idx.close_us = now_us
            tx.put_index(rec.workflow_id, idx)
        # Children still open follow their parent-close policy; a closed run lists none.
        children, rec.children = rec.children, None
        tx.put_run(run_key, rec)
        info = run_info(run_key, rec)
        info.close_event = close_event
        fx.effects.append(RunClosed(run_key, info))
        for child_run, policy in (children or {}).values():
            self.close_child(tx, fx, run_key_of(child_run), policy, now_us, rec.workflow_id, run_key)
        if rec.parent and status != RunStatus.CONTINUED_AS_NEW:
            self.notify_parent(tx, fx, rec.parent, status, close_event, now_us)
        if rec.search_attributes and SCHEDULE_ID_ATTR in rec.search_attributes:  # started by a schedule
            schedule_run_closed(self, tx, fx, rec, now_us)

    def close_child(self, tx: Tx, fx: Effects, child_key: bytes, policy: str, now_us: int, parent_id: str,
                    parent_key: bytes) -> None:
        """Apply a closing parent's policy to one of its open children (the parent: ``parent_id``, ``parent_key``)."""
        child = tx.run(child_key)
        if child is None or child.status != RUNNING or policy == "abandon":
            return
        if policy == "request_cancel":
            self.add_input(tx, fx, child_key, child,
                           cancel_requested_event((parent_id, parent_key), cause="parent_closed"), now_us)
            return
        (ev,) = self.append(tx, child_key, child, [Event(codec.WORKFLOW_TERMINATED, 0, 0, 0, 0, "",
                                                         _TERMINATED_BY_PARENT)], now_us)
        child.parent = None  # its parent is closing: nobody to tell
        self.close_run(tx, fx, child_key, child, RunStatus.TERMINATED, now_us, ev)

    def notify_parent(self, tx: Tx, fx: Effects, parent: dict[str, Any], status: RunStatus, close_event: Event,
                      now_us: int) -> None:
        """Tell an open parent how its child closed (ChildWorkflowExecutionCompleted / Canceled / Failed)."""
        parent_key = run_key_of(parent["run"])
        prec = tx.run(parent_key)
        if prec is None or prec.status != RUNNING:
            return
        if prec.children:
            prec.children.pop(str(parent["seq"]), None)
        ev = child_closed_event(parent["seq"], status, close_event)
        self.add_input(tx, fx, parent_key, prec, ev, now_us)

    # ------------------------------------------------------------------ workflow tasks

    def complete_wtask(self, tx: Tx, fx: Effects, c: WorkflowTaskCompletion) -> int:
        """Commit a workflow task: its inputs (if any), marker and commands, and what they start.

        Raises Conflict, before writing, when the run moved on since the worker read it.
        Returns the run's next event id.
        """
        rec = self.get_run(tx, c.run_key)
        if rec.status != RUNNING:
            raise Conflict(f"run is {rec.status}")
        if rec.epoch != c.epoch:
            raise Conflict(f"run moved to task epoch {rec.epoch}, worker had {c.epoch}")
        if c.inputs and rec.next_event_id != c.expect_next_event_id:
            raise Conflict("history grew since the worker read it")
        if c.completed_activity is not None:
            seq, attempt = c.completed_activity
            found = tx.atask(c.task_queue, c.run_key, seq)
            if found is None or found[0].attempt != attempt:
                raise Conflict("the activity attempt is no longer current")
        self.check_build(tx, rec.task_queue, rec.pinned_build, c.build_id)
        # The task went through: a failure streak ends; the run is on the worker's build now.
        rec.task_failures = 0
        rec.last_failure = None
        rec.build_id = c.build_id
        rec.versioning_behavior = c.versioning_behavior if c.build_id is not None else None
        now_us = self.now_us()
        processed = c.processed_through
        if c.inputs:
            stamped = self.append(tx, c.run_key, rec, c.inputs, now_us)
            processed = stamped[-1].event_id
            rec.last_input = processed
        if c.completed_activity is not None:
            tx.delete_atask(c.task_queue, c.run_key, c.completed_activity[0])
        marker = Event(codec.WORKFLOW_TASK_COMPLETED, 0, 0, processed, 0, "", b"")
        written = self.append(tx, c.run_key, rec, [marker, *c.commands], now_us)
        rec.epoch += 1
        for task in c.activity_tasks:
            self.put_atask(tx, fx, task, now_us)
        timers = rec.timers
        for seq, delay in c.timers:
            fire_us = now_us + max(0, us(delay))
            tx.put_timer(fire_us, c.run_key, seq)
            if timers is None:
                timers = rec.timers = {}
            timers[str(seq)] = fire_us
            fx.effects.append(TimerSet(fire_us / 1e6))
        for seq in c.cancel_timers:
            fire = timers.pop(str(seq), None) if timers else None
            if fire is not None:
                tx.delete_timer(fire, c.run_key, seq)
        for cancel in c.cancel_activities:
            ended = self.request_activity_cancel(tx, cancel[0], c.run_key, cancel[1], wait=cancel[2:] == (True,))
            if ended is not None and c.close_status is None:  # the workflow waits for this: it ends now
                (canceled,) = self.append(tx, c.run_key, rec, [ended], now_us)
                rec.last_input = canceled.event_id
        for child in c.children:
            self.start_child(tx, fx, c.run_key, rec, child, now_us, closing=c.close_status is not None)
        for req in c.external:
            self.deliver_external(tx, fx, req, now_us, (rec.workflow_id, c.run_key), written)
        for ev in c.commands:
            if ev.type == codec.UPDATE_COMPLETED:
                fx.effects.append(UpdateCompleted(update_key(c.run_key, ev.name), ev.payload))
            elif ev.type == codec.MARKER and ev.name == SEARCH_ATTRIBUTES_MARKER:
                self.upsert_search_attributes(tx, c.run_key, rec, ev.payload)
        if c.close_status == "continued_as_new":
            self.continue_as_new(tx, fx, c.run_key, rec, written[-1], now_us)
        if c.close_status is not None:
            self.close_run(tx, fx, c.run_key, rec, RunStatus(c.close_status), now_us, written[-1])
        elif rec.last_input > processed:
            # Inputs arrived while the task ran: the run needs another task right away.
            self.enqueue_wtask(tx, fx, c.run_key, rec, now_us)
            tx.put_run(c.run_key, rec)
        else:
            tx.delete_wtask(c.task_queue, c.run_key)
            tx.put_run(c.run_key, rec)
        return rec.next_event_id

    @staticmethod
    def upsert_search_attributes(tx: Tx, run_key: bytes, rec: RunRecord, payload: bytes) -> None:
        """Merge a workflow's ``upsert_search_attributes`` into its run and its id's visibility row.

        ``payload`` is a JSON object; a key set to null is removed. The run record is saved by the
        caller.
        """
        attrs = dict(rec.search_attributes or {})
        for key, value in orjson.loads(payload).items():
            if value is None:
                attrs.pop(key, None)
            else:
                attrs[key] = value
        rec.search_attributes = attrs or None
        idx = tx.index(rec.workflow_id)
        if idx is not None and idx.run_id == run_key.hex():
            idx.search_attributes = rec.search_attributes
            tx.put_index(rec.workflow_id, idx)

    def delete_run(self, tx: Tx, fx: Effects, workflow_id: str, run_id: str | None) -> str:
        """Delete a closed run and its history (``handle.delete``); the id's row goes if it named it.

        Raises DuroError, before writing, for a running run (cancel or terminate it first).
        """
        run_key = self.resolve(tx, workflow_id, run_id)
        rec = self.get_run(tx, run_key)
        if rec.status == RUNNING:
            raise DuroError(f"workflow {workflow_id!r} (run {run_key.hex()}) is running: cancel or terminate it "
                            "before deleting it")
        self.drop_run(tx, run_key, rec)
        return run_key.hex()

    @staticmethod
    def drop_run(tx: Tx, run_key: bytes, rec: RunRecord) -> None:
        """Delete a closed run's rows, and its id's row when that names this run."""
        tx.delete_run(run_key, rec.next_event_id - 1)
        idx = tx.index(rec.workflow_id)
        if idx is not None and idx.run_id == run_key.hex():
            tx.delete_index(rec.workflow_id)

    def purge(self, tx: Tx, fx: Effects, run_keys: list[bytes], before_us: int) -> int:
        """Delete those of ``run_keys`` that are closed and were closed before ``before_us``; how many.

        The candidates come from a read outside this transaction: each is checked again here.
        """
        n = 0
        for run_key in run_keys:
            rec = tx.run(run_key)
            if rec is None or rec.status == RUNNING or not rec.close_us or rec.close_us >= before_us:
                continue
            self.drop_run(tx, run_key, rec)
            n += 1
        return n

    def request_activity_cancel(self, tx: Tx, task_queue: str, run_key: bytes, seq: int,
                                wait: bool = False) -> Event | None:
        """Mark an activity attempt cancelled: its next heartbeat says so, and it is not retried.

        ``wait``: the workflow waits for the attempt's end ("wait_cancellation_completed"), which
        ``complete_activity`` then records. An attempt that runs nowhere is dropped at once; with
        ``wait`` the ActivityTaskCanceled event that ends it is returned, for the caller to append.
        """
        found = tx.atask(task_queue, run_key, seq)
        if found is None:
            return None
        meta, args, details = found
        if not meta.owner:  # not running anywhere: drop it
            tx.delete_atask(task_queue, run_key, seq)
            if not wait:
                return None
            failure = orjson.dumps({"kind": "cancelled", "type": "CancelledError",
                                    "message": f"activity {meta.name!r} was cancelled before it started"})
            return Event(codec.ACTIVITY_CANCELED, 0, 0, seq, meta.attempt, meta.name, failure)
        meta.cancel = True
        meta.cancel_wait = wait
        tx.put_atask(task_queue, run_key, seq, meta, args, details)
        return None

    def start_child(self, tx: Tx, fx: Effects, parent_key: bytes, prec: RunRecord, child: ChildStart,
                    now_us: int, closing: bool = False) -> None:
        """Start a child run in the parent's commit; an id in use is a ChildWorkflowExecutionFailed.

        When the parent closes in the same commit (``closing``), a child that cannot start is not
        recorded in it: the parent's history must end with its close event, and nobody waits.
        """
        req = StartRequest(workflow_id=child.workflow_id, workflow_type=child.workflow_type,
                           task_queue=child.task_queue, args=child.args, run_id=child.run_id,
                           parent={"run": parent_key.hex(), "seq": child.seq, "wid": prec.workflow_id},
                           headers=child.headers,
                           # A pinned parent's child on its queue starts on the parent's build, as in Temporal.
                           build_id=(prec.pinned_build or None) if child.task_queue == prec.task_queue else None)
        try:
            self.create_run(tx, fx, req, now_us)
        except WorkflowAlreadyStartedError as e:
            if closing:
                return
            failure = orjson.dumps({"kind": "application", "type": "WorkflowAlreadyStartedError", "message": str(e)})
            ev = Event(codec.CHILD_FAILED, 0, 0, child.seq, 0, "start_failed", failure)
            (stamped,) = self.append(tx, parent_key, prec, [ev], now_us)
            prec.last_input = stamped.event_id
            return
        if prec.children is None:
            prec.children = {}
        prec.children[str(child.seq)] = [child.run_id, child.parent_close_policy]

    def deliver_external(self, tx: Tx, fx: Effects, req: ExternalRequest, now_us: int,
                         by: tuple[str, bytes] | None = None, written: list[Event] | None = None) -> None:
        """A signal or cancellation request from one run to another (dropped if that is not open).

        A cancellation's WorkflowExecutionCancelRequested names ``by``, the requesting run (workflow
        id, run key), and its RequestCancelExternal... event among ``written``, the events its
        workflow task wrote.
        """
        try:
            key = self.resolve(tx, req.workflow_id, req.run_id)
        except WorkflowNotFoundError:
            return
        rec = tx.run(key)
        if rec is None or rec.status != RUNNING:
            return
        if req.kind == "cancel":
            ev = cancel_requested_event(by, initiated_event_id(written or [], req))
        else:
            ev = signal_event(req.name, req.args, req.headers)
        self.add_input(tx, fx, key, rec, ev, now_us)

    def continue_as_new(self, tx: Tx, fx: Effects, run_key: bytes, rec: RunRecord, ev: Event, now_us: int) -> None:
        """Start the next run of the same workflow id (same type and queue, the new arguments)."""
        old_meta = orjson.loads(unpack(tx.read_history(run_key, 1, 1)[0].payload)[0])
        new_run = new_run_id()
        # The old run must not count as running when the new one claims the id.
        rec.status = RunStatus.CONTINUED_AS_NEW
        tx.put_index(rec.workflow_id, WorkflowIndex(run_key.hex(), RunStatus.CONTINUED_AS_NEW, rec.workflow_type,
                                                    rec.start_us, now_us))
        req = StartRequest(workflow_id=rec.workflow_id, workflow_type=ev.name or rec.workflow_type,
                           task_queue=rec.task_queue, args=ev.payload, run_id=new_run, parent=rec.parent,
                           first_run_id=old_meta.get("first_run"), run_timeout=old_meta.get("run_timeout"),
                           execution_timeout=old_meta.get("execution_timeout"),
                           # As in Temporal, the next run keeps the search attributes and the memo; it
                           # keeps the start's interceptor headers too (a trace goes on across runs).
                           search_attributes=rec.search_attributes, memo=rec.memo,
                           headers=old_meta.get("headers") or None,
                           # A pinned run continues on its build, as in Temporal.
                           build_id=rec.pinned_build or None)
        self.create_run(tx, fx, req, now_us, deadline_us=old_meta.get("deadline_us", 0))
        rec.next_run_id = new_run
        parent = rec.parent
        if parent:  # the parent now waits for the new run
            parent_key = run_key_of(parent["run"])
            prec = tx.run(parent_key)
            if prec is not None and prec.children and prec.children.get(str(parent["seq"])):
                prec.children[str(parent["seq"])][0] = new_run
                tx.put_run(parent_key, prec)

    def release_wtask(self, tx: Tx, fx: Effects, task_queue: str, run_key: bytes, seen_through: int) -> None:
        """Drop a workflow task that had nothing new (or hand it out again if inputs arrived)."""
        rec = tx.run(run_key)
        if rec is not None and rec.status == RUNNING and rec.last_input > seen_through:
            self.enqueue_wtask(tx, fx, run_key, rec, self.now_us())
        else:
            tx.delete_wtask(task_queue, run_key)

    def return_wtasks(self, tx: Tx, fx: Effects, task_queue: str, run_keys: list[bytes]) -> int:
        """Give back workflow tasks leased to this process that it will not run (a worker stopping).

        Each is handed to another worker of this process that takes the queue, or left unleased and
        due now for any process, instead of waiting for its lease to end. A task leased elsewhere, or
        gone, is left as it is; a closed run's task is dropped. Returns how many were given back.
        """
        given = 0
        for run_key in run_keys:
            existing = tx.wtask(task_queue, run_key)
            if existing is None or existing.owner != self.owner:
                continue
            tx.delete_wtask(task_queue, run_key)
            rec = tx.run(run_key)
            if rec is not None and rec.status == RUNNING:
                self.enqueue_wtask(tx, fx, run_key, rec, self.now_us())
                given += 1
        return given

    def fail_wtask(self, tx: Tx, fx: Effects, task_queue: str, run_key: bytes, epoch: int, error_type: str,
                   failure: bytes, digest: str) -> float | None:
        """Record that a workflow task raised, and make it due again after a backoff.

        The first failure of a streak (and any failure with a new ``digest``) appends a
        WorkflowTaskFailed event; repeats only count, in the run record, so a task that keeps
        failing does not grow the history. The task is left unleased, visible again after the
        backoff, so any worker of the queue (new code, another process) may take it. Returns the
        backoff in seconds, or None when the run moved on meanwhile. ``epoch`` < 0: the current one.
        """
        rec = self.get_run(tx, run_key)
        if epoch < 0:  # the worker failed before it knew the run's task epoch
            epoch = rec.epoch
        if rec.status != RUNNING or rec.epoch != epoch:
            return None
        now_us = self.now_us()
        attempt = rec.task_failures + 1
        rec.task_failures = attempt
        if attempt == 1 or rec.last_failure != digest:
            self.append(tx, run_key, rec, [Event(codec.WORKFLOW_TASK_FAILED, 0, 0, epoch, attempt, error_type,
                                                 failure)], now_us)
            rec.last_failure = digest
        delay: float = min(WTASK_RETRY_INITIAL_S * 2.0 ** min(attempt - 1, 16), WTASK_RETRY_MAX_S)
        tx.put_wtask(task_queue, run_key, WorkflowTaskLease("", 0, now_us + us(delay), rec.pinned_build or UNSET))
        tx.put_run(run_key, rec)
        return delay

    def lease_wtask(self, tx: Tx, task_queue: str, run_key: bytes, now_us: int, build: str = "") -> None:
        """Lease a claimed workflow task to this process (``build``: the task's, kept)."""
        tx.put_wtask(task_queue, run_key, WorkflowTaskLease(self.owner, now_us + us(WTASK_LEASE_S), 0, build or UNSET))

    # ------------------------------------------------------------------ activities

    def put_atask(self, tx: Tx, fx: Effects, t: ActivityTask, now_us: int, visible_us: int = 0) -> None:
        """Store an activity attempt; lease it to this process at once when it has a consumer and it is due."""
        consumer = self.local is not None and self.local.takes_activity_tasks(t.task_queue)
        local = consumer and visible_us <= now_us
        meta = ActivityMeta(
            workflow_id=t.workflow_id, workflow_type=t.workflow_type, name=t.name, attempt=t.attempt,
            scheduled_us=us(t.scheduled_time), start_to_close=t.start_to_close_timeout,
            schedule_to_close=t.schedule_to_close_timeout, heartbeat=t.heartbeat_timeout, retry=t.retry_policy,
            owner=self.owner if local else "",
            until_us=now_us + us(attempt_lease_s(t.start_to_close_timeout, t.schedule_to_close_timeout,
                                                 t.heartbeat_timeout))
            if local else 0,
            visible_us=visible_us, headers=t.headers or None, last_failure=t.last_failure,
        )
        tx.put_atask(t.task_queue, t.run_key, t.seq, meta, t.args, t.heartbeat_details or b"")
        if local:
            fx.effects.append(ActivityTaskReady(t))
        elif consumer:
            fx.effects.append(ActivityTaskDue(t.task_queue, visible_us / 1e6))

    def complete_activity(self, tx: Tx, fx: Effects, o: ActivityOutcome) -> str:
        """Record an attempt's end: "done", "retry", "stale", "closed" or "canceled"."""
        found = tx.atask(o.task_queue, o.run_key, o.seq)
        if found is None:
            return "stale"
        meta, args, details = found
        if meta.attempt != o.attempt:
            return "stale"
        rec = self.get_run(tx, o.run_key)
        if rec.status != RUNNING:
            tx.delete_atask(o.task_queue, o.run_key, o.seq)
            return "closed"
        if meta.cancel and not meta.cancel_wait:  # the workflow stopped waiting for it: nothing to record, no retry
            tx.delete_atask(o.task_queue, o.run_key, o.seq)
            return "canceled"
        now_us = self.now_us()
        if meta.owner == ASYNC_OWNER and o.failure == LAPSED_LEASE_FAILURE:  # say which timeout it was
            from duro.engine.async_completion import async_lapse_failure

            o = ActivityOutcome(run_key=o.run_key, task_queue=o.task_queue, seq=o.seq, attempt=o.attempt,
                                failure=async_lapse_failure(meta), error_type="TimeoutError")
        if o.result is not None:
            ev = Event(codec.ACTIVITY_COMPLETED, 0, 0, o.seq, o.attempt, meta.name, o.result)
        elif meta.cancel:
            # "wait_cancellation_completed": the workflow waits for this end; it is recorded, never
            # retried: the acknowledged cancellation (a "cancelled" failure), or a failure.
            etype = codec.ACTIVITY_CANCELED if _is_cancelled_failure(o.failure) else codec.ACTIVITY_FAILED
            ev = Event(etype, 0, 0, o.seq, o.attempt, meta.name, o.failure or b"{}")
        else:
            delay = retry_delay(meta, o, now_us)
            if delay is not None:
                task = task_of(o.task_queue, o.run_key, o.seq, meta, args,
                               details if o.heartbeat_details is None else o.heartbeat_details)
                task.attempt = o.attempt + 1
                task.last_failure = failure_text(o.failure)
                self.put_atask(tx, fx, task, now_us, visible_us=now_us + us(delay))
                return "retry"
            ev = Event(codec.ACTIVITY_FAILED, 0, 0, o.seq, o.attempt, meta.name, o.failure or b"{}")
        tx.delete_atask(o.task_queue, o.run_key, o.seq)
        (stamped,) = self.append(tx, o.run_key, rec, [ev], now_us)
        rec.last_input = stamped.event_id
        tx.put_run(o.run_key, rec)
        self.enqueue_wtask(tx, fx, o.run_key, rec, now_us)
        return "done"

    def heartbeat(self, tx: Tx, fx: Effects, run_key: bytes, task_queue: str, seq: int, attempt: int,
                  details: bytes | None) -> bool:
        """Record a heartbeat; True means the attempt is no longer wanted (cancelled or superseded)."""
        found = tx.atask(task_queue, run_key, seq)
        if found is None:
            return True
        meta, args, old = found
        if meta.attempt != attempt:
            return True
        rec = tx.run(run_key)
        if rec is None or rec.status != RUNNING:
            return True  # its run closed: the result would be dropped, stop now
        if meta.owner == ASYNC_OWNER:  # waiting for an outside completion: never past its deadline
            from duro.engine.async_completion import waiting_until

            meta.until_us = waiting_until(meta, self.now_us())
        elif meta.heartbeat:
            meta.until_us = max(meta.until_us, self.now_us() + us(meta.heartbeat + ATASK_LEASE_SLACK_S))
        meta.heartbeat_us = self.now_us()
        tx.put_atask(task_queue, run_key, seq, meta, args, details if details is not None else old)
        return meta.cancel

    def renew_leases(self, tx: Tx, fx: Effects, task_queue: str, items: list[tuple[bytes, int, int]],
                     seconds: float) -> int:
        """Extend this process's leases of running activity attempts (run key, seq, attempt)."""
        until = self.now_us() + us(seconds)
        renewed = 0
        for run_key, seq, attempt in items:
            found = tx.atask(task_queue, run_key, seq)
            if found is None:
                continue
            meta, args, details = found
            if meta.owner != self.owner or meta.attempt != attempt or meta.until_us >= until:
                continue
            meta.until_us = until
            tx.put_atask(task_queue, run_key, seq, meta, args, details)
            renewed += 1
        return renewed

    # ------------------------------------------------------------------ completing activities from outside
    # (duro.engine.async_completion has the details)

    def hand_off_activity(self, tx: Tx, fx: Effects, task_queue: str, run_key: bytes, seq: int, attempt: int,
                          started_us: int) -> bool:
        """An attempt's code raised ``CompleteAsync``: it now waits for a completion from outside.

        False (nothing written): the attempt is no longer this process's.
        """
        from duro.engine.async_completion import hand_off

        return hand_off(self, tx, task_queue, run_key, seq, attempt, started_us)

    def complete_activity_by_token(self, tx: Tx, fx: Effects, o: ActivityOutcome) -> str:
        """``complete_activity`` for a task token: "done", "retry" or "canceled".

        Raises TaskTokenError, before writing, when the token names no attempt that is running or
        waiting for its completion.
        """
        from duro.engine.async_completion import check_token

        check_token(self, tx, o.task_queue, o.run_key, o.seq, o.attempt)
        return self.complete_activity(tx, fx, o)

    def heartbeat_by_token(self, tx: Tx, fx: Effects, run_key: bytes, task_queue: str, seq: int, attempt: int,
                           details: bytes | None) -> bool:
        """``heartbeat`` for a task token; True when the workflow cancelled the activity.

        Raises TaskTokenError, before writing, as ``complete_activity_by_token`` does.
        """
        from duro.engine.async_completion import check_token

        check_token(self, tx, task_queue, run_key, seq, attempt)
        return self.heartbeat(tx, fx, run_key, task_queue, seq, attempt, details)

    def lease_atask(self, tx: Tx, task_queue: str, run_key: bytes, seq: int, meta: ActivityMeta, args: bytes,
                    details: bytes, now_us: int) -> ActivityTask | None:
        """Lease a claimed activity attempt to this process (None: its run closed; the attempt is dropped)."""
        rec = tx.run(run_key)
        if rec is None or rec.status != RUNNING:
            tx.delete_atask(task_queue, run_key, seq)
            return None
        meta.owner = self.owner
        meta.until_us = now_us + us(attempt_lease_s(meta.start_to_close, meta.schedule_to_close, meta.heartbeat))
        tx.put_atask(task_queue, run_key, seq, meta, args, details)
        return task_of(task_queue, run_key, seq, meta, args, details)

    # ------------------------------------------------------------------ timers

    def fire_timer(self, tx: Tx, fx: Effects, fire_us: int, run_key: bytes, seq: int, now_us: int) -> None:
        """Fire one due timer: TimerFired, or for seq 0 the run's execution/run timeout."""
        tx.delete_timer(fire_us, run_key, seq)
        rec = tx.run(run_key)
        if rec is None or rec.status != RUNNING:
            return
        if rec.timers:
            rec.timers.pop(str(seq), None)
        if seq == 0:
            (ev,) = self.append(tx, run_key, rec, [Event(codec.WORKFLOW_TIMED_OUT, 0, 0, 0, 0, "", _RUN_TIMED_OUT)],
                                now_us)
            self.close_run(tx, fx, run_key, rec, RunStatus.TIMED_OUT, now_us, ev)
            return
        self.add_input(tx, fx, run_key, rec, Event(codec.TIMER_FIRED, 0, 0, seq, 0, "", b""), now_us)


def _is_cancelled_failure(failure: bytes | None) -> bool:
    """Whether a failure payload says the attempt acknowledged its cancellation (kind "cancelled")."""
    if not failure:
        return False
    try:
        d = orjson.loads(failure)
    except orjson.JSONDecodeError:
        return False
    return isinstance(d, dict) and d.get("kind") == "cancelled"


LAPSED_LEASE_FAILURE = orjson.dumps({"kind": "timeout", "timeout_type": "start_to_close", "type": "TimeoutError",
                                     "message": "the worker running this attempt died or lost its lease"})
