"""The Store protocol: what the engine needs from a durable backend, and the records it exchanges."""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from duro.stores.urls import display_url

if TYPE_CHECKING:
    from duro._core.codec import Event
    from duro.engine.records import ActivityMeta
    from duro.engine.schedules import ScheduleChange, ScheduleCommand, ScheduleRecord

__all__ = [
    "CANCEL_TYPES",
    "CLOSED",
    "FLAG_CANCEL_TYPE",
    "FLAG_HEADERS",
    "TIMERS",
    "ActivityOutcome",
    "ActivityTask",
    "ChildStart",
    "Clock",
    "ExternalRequest",
    "ListQuery",
    "LocalReads",
    "QueueVersioning",
    "RunInfo",
    "StartRequest",
    "Store",
    "WorkflowTaskCompletion",
    "WrongBuild",
    "atask_topic",
    "check_topics",
    "headed",
    "new_run_id",
    "pack",
    "request_topic",
    "run_key_of",
    "schedule_topic",
    "split_headed",
    "unpack",
    "update_key",
    "wtask_topic",
]

RUNNING = "running"
CLOSED_STATUSES = ("completed", "failed", "terminated", "canceled", "continued_as_new", "timed_out")

_U32 = struct.Struct("<I")


def pack(*parts: bytes) -> bytes:
    """Concatenate byte strings, each prefixed by its u32 little-endian length."""
    out = bytearray()
    for p in parts:
        out += _U32.pack(len(p))
        out += p
    return bytes(out)


def unpack(data: bytes | memoryview) -> list[bytes]:
    """Split what ``pack`` built back into its parts (copies them out of ``data``)."""
    parts = []
    view = memoryview(data)
    i, n = 0, len(view)
    while i < n:
        if i + 4 > n:
            raise ValueError("truncated packed record")
        (size,) = _U32.unpack_from(view, i)
        i += 4
        if i + size > n:
            raise ValueError("truncated packed record")
        parts.append(bytes(view[i : i + size]))
        i += size
    return parts


# Event flag: the payload is pack(headers JSON object, the payload proper). Set on SignalReceived
# and ActivityTaskScheduled events that carry interceptor headers; events without headers (all
# those written before headers existed) keep flags 0 and their payload as it was. (Bit 0 of
# flags means "a cancel request" on a SignalExternalWorkflowExecutionInitiated recorded before
# RequestCancelExternalWorkflowExecutionInitiated existed; replay still reads it so.)
FLAG_HEADERS = 0x0100

# ActivityTaskScheduled flags, bits 0-1: the activity's cancellation type (``execute_activity(...,
# cancellation_type=)``), which replay must know. 0: recorded before cancellation types existed;
# replay gives such an activity the old behaviour (its future is cancelled: asyncio.CancelledError).
FLAG_CANCEL_TYPE = 0x0003
CANCEL_TYPES = {"try_cancel": 1, "wait_cancellation_completed": 2, "abandon": 3}


def headed(payload: bytes, headers: dict[str, str] | None) -> tuple[bytes, int]:
    """(payload, flags) of an event carrying ``headers`` (unchanged and 0 when there are none)."""
    if not headers:
        return payload, 0
    return pack(orjson.dumps(headers), payload), FLAG_HEADERS


def split_headed(payload: bytes, flags: int) -> tuple[dict[str, str], bytes]:
    """(headers, payload proper) of an event's payload (see ``FLAG_HEADERS``)."""
    if not flags & FLAG_HEADERS:
        return {}, payload
    head, body = unpack(payload)
    headers: dict[str, str] = orjson.loads(head)
    return headers, body


def run_key_of(run_id: str) -> bytes:
    """The 16-byte store key of a run id (32 hex digits); ValueError for anything else."""
    key = bytes.fromhex(run_id)
    if len(key) != 16:
        raise ValueError(f"a run id is 32 hex digits, got {run_id!r}")
    return key


DEFAULT_RETENTION_DAYS = 30.0


def parse_retention_days(value: str | None, url: str) -> int:
    """The ``retention_days`` option of a store URL, as µs (0: keep closed runs forever).

    Closed runs older than this are deleted with their histories in the background (default 30).

    Raises:
        StoreURLError: not a number of days from 0 to 36,500.
    """
    from duro.errors import StoreURLError

    if value is None:
        return round(DEFAULT_RETENTION_DAYS * 86_400e6)
    try:
        days = float(value)
    except ValueError:
        days = math.nan
    if not math.isfinite(days) or not 0 <= days <= 36_500:
        raise StoreURLError(f"retention_days={value!r} in {display_url(url)!r} must be a number of days from 0 "
                            "(keep closed runs forever) to 36500")
    return round(days * 86_400e6)


# The clock as imported, before a worker wraps ``time.time`` for the determinism guard
# (duro._determinism): the engine reads it several times per workflow, never from workflow code.
_wall_clock = time.time


# The OS's random source is read for 256 run ids at a time: os.urandom releases the GIL, and each
# call on the event loop's thread then waited for the writer thread to hand the GIL back (measured:
# 6% of the loop thread's time while starting 50,000 workflows). The pool holds the hex digits of
# 64 random bits per id; a forked child empties it, or it would hand out its parent's ids.
_urandom = os.urandom
_RANDOM_IDS_PER_READ = 256
_random_hex: list[str] = []
_sequence = itertools.count()


def _random_64_bits_hex() -> str:
    try:
        return _random_hex.pop()  # atomic: threads never get the same entry
    except IndexError:  # the pool is empty: read the next batch, keep the first for this id
        raw = _urandom(8 * _RANDOM_IDS_PER_READ).hex()
        _random_hex.extend([raw[i : i + 16] for i in range(16, len(raw), 16)])
        return raw[:16]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_hex.clear)


def new_run_id() -> str:
    """A fresh run id: 32 hex digits, a millisecond timestamp, a sequence number, then 64 random bits.

    Like a UUIDv7 with a counter. Time-ordered ids keep the keys of runs started together (their
    history, tasks and records) on the same few B-tree pages, so a group commit writes and fsyncs
    far fewer pages than with fully random ids (measured: 600 random-key puts cost ~5 ms to commit,
    clustered ones ~1 ms). The 16-bit sequence (this process's count of ids, wrapping) orders the
    ids one process makes within a millisecond, so their keys are appended at the end of their
    B-trees: LMDB then fills pages (it splits a page in the middle for an insert anywhere else, and
    with keys in random order within each millisecond, the run and history pages were half full).
    The random bits keep ids of different processes apart.
    """
    ms = int(_wall_clock() * 1000) & 0xFFFFFFFFFFFF
    return f"{ms:012x}{next(_sequence) & 0xFFFF:04x}{_random_64_bits_hex()}"


class Clock:
    """Where the engine reads the time; the testing environment replaces it to skip time."""

    def now(self) -> float:
        """Seconds since the epoch."""
        return _wall_clock()


@dataclass(slots=True)
class StartRequest:
    """Everything needed to start a workflow run."""

    workflow_id: str
    workflow_type: str
    task_queue: str
    args: bytes
    run_id: str
    id_reuse_policy: str = "allow_duplicate"
    execution_timeout: float | None = None
    run_timeout: float | None = None
    parent: dict[str, Any] | None = None
    first_run_id: str | None = None
    # A run with this id already open: "fail", "use_existing" (signal it, if start_signal) or
    # "terminate_existing" (terminate it, then start).
    id_conflict_policy: str = "fail"
    start_signal: str | None = None  # signal-with-start: recorded right after WorkflowExecutionStarted
    start_signal_args: bytes = b""
    search_attributes: dict[str, Any] | None = None  # checked by duro._visibility
    memo: dict[str, Any] | None = None
    headers: dict[str, str] | None = None  # interceptor headers: recorded in WorkflowExecutionStarted
    # A child or continue-as-new run of a pinned run on its queue: pinned to this build from the start.
    build_id: str | None = None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The filters of ``list_workflows`` / ``count_workflows`` (all given ones must hold).

    Times are µs by the store's clock; both bounds are exclusive. ``search_attributes`` are
    equality filters on the workflow's current attributes (type included: 5 is not "5").
    """

    status: str | None = None
    workflow_type: str | None = None
    search_attributes: dict[str, Any] | None = None
    started_after_us: int | None = None
    started_before_us: int | None = None


@dataclass(slots=True)
class QueueVersioning:
    """What ``duro build show`` reports about a task queue.

    Attributes:
        task_queue: the queue.
        current_build_id: its current build (None: none is set, any worker takes new runs).
        set_time: when that was set (seconds since the epoch, the store's clock; None: never).
        running: running runs of the queue as ``(build id, behaviour, count)``: the build that ran
            their latest workflow task (None: unversioned, or none ran yet) and its behaviour.
    """

    task_queue: str
    current_build_id: str | None = None
    set_time: float | None = None
    running: list[tuple[str | None, str | None, int]] = field(default_factory=list)


@dataclass(slots=True)
class RunInfo:
    """What a store knows about one run, for describe() and list_workflows()."""

    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    status: str
    start_time: float
    close_time: float | None
    history_length: int
    parent: dict[str, Any] | None = None
    next_run_id: str | None = None
    close_event: Event | None = None  # handed to in-process waiters so they need not read it back
    task_failures: int = 0  # consecutive failed attempts of the run's current workflow task
    search_attributes: dict[str, Any] | None = None
    memo: dict[str, Any] | None = None
    build_id: str | None = None  # the build of the worker that ran its latest workflow task (None: unversioned)
    versioning_behavior: str | None = None  # "pinned" or "auto_upgrade" (None: unversioned)


@dataclass(slots=True)
class ActivityTask:
    """One attempt of an activity, as handed to a worker."""

    run_key: bytes
    workflow_id: str
    workflow_type: str
    task_queue: str
    seq: int
    name: str
    args: bytes
    attempt: int
    scheduled_time: float
    start_to_close_timeout: float | None
    schedule_to_close_timeout: float | None
    heartbeat_timeout: float | None
    retry_policy: dict[str, Any]
    heartbeat_details: bytes | None = None
    received: float = 0.0  # time.monotonic() when this process's worker got the leased task
    headers: dict[str, str] | None = None  # interceptor headers, as recorded in ActivityTaskScheduled
    last_failure: str | None = None  # "Type: message" of the previous attempt's failure (a retry)


#: Topics of ``Store.on_foreign_change``: what another process's commit changed, where a store can
#: tell (LMDB writes a change mark per topic with each batch). Per task queue for tasks.
TIMERS = "timer"
CLOSED = "closed"


def wtask_topic(task_queue: str) -> str:
    """A queue's claimable workflow tasks (and its current build, which decides who claims them)."""
    return "wtask:" + task_queue


def atask_topic(task_queue: str) -> str:
    """A queue's claimable activity attempts."""
    return "atask:" + task_queue


def request_topic(task_queue: str) -> str:
    """Queries and updates left for a queue's workers by clients in other processes."""
    return "request:" + task_queue


def schedule_topic(task_queue: str) -> str:
    """A queue's schedules (created, changed, or due sooner)."""
    return "schedule:" + task_queue


_QUEUE_TOPICS = ("wtask:", "atask:", "request:", "schedule:")  # the prefixes of the helpers above


def _is_topic(t: object) -> bool:
    if not isinstance(t, str):
        return False
    return t in (TIMERS, CLOSED) or any(t.startswith(p) and len(t) > len(p) for p in _QUEUE_TOPICS)


def check_topics(topics: Iterable[str] | None) -> frozenset[str] | None:
    """``on_foreign_change``'s ``topics`` as a frozenset; ValueError for a string, an empty set or an unknown name.

    A string would be taken letter by letter, an empty set would never wake its listener, and
    neither would a misspelt topic ("timers", a bare queue name).
    """
    if topics is None:
        return None
    if isinstance(topics, str | bytes):
        raise ValueError(f"topics must be a set of topic names (wtask_topic(queue), TIMERS, ...), not the string "
                         f"{topics!r}: wrap it, frozenset({{{topics!r}}})")
    checked = frozenset(topics)
    if not checked:
        raise ValueError("topics must be a non-empty set of topic names, or None to hear every commit of another "
                         "process; got an empty set")
    unknown = sorted(repr(t) for t in checked if not _is_topic(t))
    if unknown:
        raise ValueError(f"unknown topic(s) {', '.join(unknown)}: topics are TIMERS, CLOSED, or made by "
                         "wtask_topic(queue), atask_topic(queue), request_topic(queue) or schedule_topic(queue) "
                         "(duro.stores.base)")
    return checked


@dataclass(slots=True)
class ActivityOutcome:
    """How one activity attempt ended: ``result`` payload, or a ``failure`` payload."""

    run_key: bytes
    task_queue: str
    seq: int
    attempt: int
    result: bytes | None = None
    failure: bytes | None = None
    error_type: str = ""
    non_retryable: bool = False
    # The attempt's last heartbeat details, when it failed after heartbeating (as Temporal's
    # RespondActivityTaskFailed carries them): its retry sees them even if the heartbeat's own
    # write lost the race with this outcome. None keeps what the store holds.
    heartbeat_details: bytes | None = None


@dataclass(slots=True)
class ChildStart:
    """A child workflow a workflow task starts (in the same commit)."""

    seq: int
    workflow_id: str
    run_id: str
    workflow_type: str
    task_queue: str
    args: bytes
    parent_close_policy: str
    headers: dict[str, str] | None = None  # interceptor headers: the child's start headers


@dataclass(slots=True)
class ExternalRequest:
    """A signal or cancel request a workflow task sends to another run (kind "signal" or "cancel")."""

    kind: str
    workflow_id: str
    run_id: str | None
    name: str
    args: bytes
    headers: dict[str, str] | None = None  # interceptor headers of a signal (recorded with it)
    seq: int = 0  # the command's sequence number in the requesting run (its Initiated event's ref)


@dataclass(slots=True)
class WorkflowTaskCompletion:
    """The commands one workflow task produced, to be committed in one transaction.

    Invariants: ``inputs`` are events not yet in the history that the worker applied before
    running the code (the one-commit-per-step path); they are appended only if nothing else was
    appended since ``expect_next_event_id``. ``processed_through`` is the id of the last input event
    the code saw (for ``inputs`` it is computed by the store). ``epoch`` must equal the run's count
    of completed workflow tasks, so two workers that raced on one task cannot both commit.
    """

    run_key: bytes
    task_queue: str
    epoch: int
    processed_through: int
    commands: list[Event]
    activity_tasks: list[ActivityTask] = field(default_factory=list)
    timers: list[tuple[int, float]] = field(default_factory=list)
    inputs: list[Event] = field(default_factory=list)
    expect_next_event_id: int = 0
    completed_activity: tuple[int, int] | None = None  # (seq, attempt) whose task the inputs finish
    close_status: str | None = None
    children: list[ChildStart] = field(default_factory=list)
    external: list[ExternalRequest] = field(default_factory=list)
    cancel_timers: list[int] = field(default_factory=list)
    # (task queue, seq, wait): wait is True for "wait_cancellation_completed" (the end is recorded,
    # the workflow waits for it); a (task queue, seq) pair is taken as wait False.
    cancel_activities: list[tuple[str, int, bool]] = field(default_factory=list)
    # Worker versioning: the build of the worker that ran the task (None: an unversioned worker)
    # and the behaviour it declares for the workflow ("pinned" or "auto_upgrade").
    build_id: str | None = None
    versioning_behavior: str | None = None

    @property
    def from_outside(self) -> bool:
        """Whether its inputs came from a caller outside the worker, who is answered when it commits.

        A signal or an update shown to a cached instance: the commit must be durable before that
        caller hears of it. The worker's own steps (no inputs, or an activity's outcome it fuses
        with the task) answer nobody outside.
        """
        return bool(self.inputs) and self.completed_activity is None


class Conflict(Exception):
    """A conditional commit found that the run moved on; nothing was written."""


class WrongBuild(Conflict):
    """A workflow task completion from a worker whose build may not run the run now; nothing was written.

    The run is pinned to another build, or it is not pinned and the task queue's current build is
    another one (it changed while the task ran). The worker gives the task back instead of retrying it.
    """


@dataclass(slots=True)
class WorkflowTaskReady:
    """Effect: a workflow task of ``run_key`` is leased to this process.

    ``history`` is the whole history when the commit wrote all of it (a new run's), else None.
    ``build_id`` is the build whose worker must run it (None: any worker of the queue here).
    """

    task_queue: str
    run_key: bytes
    history: list[Event] | None = None
    build_id: str | None = None


@dataclass(slots=True)
class ActivityTaskReady:
    """Effect: an activity attempt is leased to this process."""

    task: ActivityTask


@dataclass(slots=True)
class ActivityTaskDue:
    """Effect: an activity attempt of ``task_queue`` becomes visible at ``when`` (a retry's backoff)."""

    task_queue: str
    when: float


@dataclass(slots=True)
class TimerSet:
    """Effect: a timer is due at ``when`` (seconds since the epoch)."""

    when: float


@dataclass(slots=True)
class RunClosed:
    """Effect: a run closed; ``info`` (with its close event) goes to whoever waits for it."""

    run_key: bytes
    info: RunInfo


@dataclass(slots=True)
class UpdateCompleted:
    """Effect: an update completed with ``payload`` (its result or failure).

    ``update_id`` is ``update_key(run_key, id)``: update ids are chosen by callers and unique only
    within a run, so waiters are keyed by run and id.
    """

    update_id: str
    payload: bytes


def update_key(run_key: bytes, update_id: str) -> str:
    """The key of update ``update_id`` of a run for update waiters (``wait_update``): "<run id>/<update id>"."""
    return f"{run_key.hex()}/{update_id}"


Effect = WorkflowTaskReady | ActivityTaskReady | ActivityTaskDue | TimerSet | RunClosed | UpdateCompleted


class Dispatch(Protocol):
    """The in-process side of a store: the workers of this process that take tasks directly.

    A store asks it whether a queue has a consumer here (then a new task is leased to this process
    in the same commit, saving a poll) and hands it the effects of each commit, after the commit is
    durable, on ``loop``. It lives on the client/worker side (``duro._local``), not in the store.
    """

    loop: asyncio.AbstractEventLoop | None

    def takes_workflow_tasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """Whether a worker of this process runs workflow tasks of ``task_queue`` (of build ``build_id``; None: any)."""

    def takes_activity_tasks(self, task_queue: str) -> bool:
        """Whether a worker of this process runs activities of ``task_queue``."""

    def deliver(self, effects: list[Effect]) -> None:
        """Route the effects of one commit to the workers (called on ``loop``)."""


class Store(Protocol):
    """A durable backend: everything the client, the worker, the CLI and the test environment use.

    Every method that changes state returns only after the change is durable, and changes all it
    changes or nothing (it raises a ``duro.StoreError`` or a domain error then). ``LmdbStore``
    implements it (checked by mypy where ``open_store`` returns one as a ``Store``).
    """

    url: str
    clock: Clock

    # -- runs
    async def start_workflow(self, req: StartRequest) -> str:
        """Create a run, its WorkflowExecutionStarted event and first workflow task; the run id."""

    async def start_workflow_eager(self, req: StartRequest, now_us: int, first: WorkflowTaskCompletion) -> int:
        """Create a run together with its first workflow task, already run here; the next event id."""

    async def signal_workflow(self, workflow_id: str, run_id: str | None, name: str, payload: bytes,
                              headers: dict[str, str] | None = None) -> None:
        """Append a signal to an open run and make sure it has a workflow task."""

    async def cancel_workflow(self, workflow_id: str, run_id: str | None) -> None:
        """Record a cancellation request for an open run."""

    async def terminate_workflow(self, workflow_id: str, run_id: str | None, reason: str) -> None:
        """Close an open run at once."""

    async def delete_workflow(self, workflow_id: str, run_id: str | None) -> str:
        """Delete a closed run and its history; its run id (``Machine.delete_run``)."""

    async def purge(self, before_us: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` runs closed before ``before_us`` (store clock, µs); how many."""

    async def purge_expired(self) -> int:
        """``purge`` of the runs older than the store's retention (``?retention_days=``; 0: none)."""

    async def reset_workflow(self, workflow_id: str, run_id: str | None, event_id: int, reason: str) -> str:
        """Start a new run from the run's WorkflowTaskCompleted ``event_id``; the new run id.

        The old run (if open) is terminated and points to the new one (see ``Machine.reset``).
        Raises ``WorkflowNotFoundError`` or ``duro.DuroError`` (nothing written) when it cannot.
        """

    # -- workflow tasks
    async def complete_workflow_task(self, c: WorkflowTaskCompletion) -> int:
        """Commit a workflow task's commands; return the run's next event id. Raises Conflict."""

    async def return_workflow_tasks(self, task_queue: str, run_keys: list[bytes]) -> int:
        """Give back workflow tasks this process leased and will not run (see ``Machine.return_wtasks``)."""

    async def release_workflow_task(self, task_queue: str, run_key: bytes, seen_through: int) -> None:
        """Drop a workflow task that had nothing new (or hand it out again if it now has)."""

    async def fail_workflow_task(self, task_queue: str, run_key: bytes, epoch: int, error_type: str,
                                 failure: bytes) -> float | None:
        """Record a workflow task that raised; the backoff before it is due again (None: moved on)."""

    async def claim_workflow_tasks(self, task_queue: str, limit: int, build_id: str | None = None) -> list[bytes]:
        """Lease up to ``limit`` due workflow tasks of the queue that a worker of build ``build_id`` may take.

        ``build_id`` None: an unversioned worker. A task of a run pinned to a build goes only to a
        worker of that build; any other goes to a worker of the queue's current build, or to any
        worker when the queue has none (``set_current_build_id``). Returns their run keys.
        """

    def has_pending_wtasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """Whether the queue holds due workflow tasks, for a worker of ``build_id``, that nobody here has."""

    # -- worker versioning
    async def set_current_build_id(self, task_queue: str, build_id: str | None) -> None:
        """Make ``build_id`` the queue's current build (None: the queue has none)."""

    async def aqueue_versioning(self, task_queue: str, running: bool = True) -> QueueVersioning:
        """The queue's current build, and (``running``) its running runs by build: a scan of the run records."""

    # -- activities
    async def complete_activity(self, outcome: ActivityOutcome) -> str:
        """Record one attempt's end: "done", "retry", "stale", "closed" or "canceled"."""

    async def heartbeat_activity(self, run_key: bytes, task_queue: str, seq: int, attempt: int,
                                 details: bytes | None) -> bool:
        """Record a heartbeat; True when the attempt is no longer wanted."""

    async def claim_activity_tasks(self, task_queue: str, limit: int) -> list[ActivityTask]:
        """Lease up to ``limit`` visible activity attempts of the queue to this process."""

    async def hand_off_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int,
                                started: float) -> bool:
        """An attempt raised ``CompleteAsync`` (it started at ``started``): it now waits for an outside completion.

        False when the attempt is no longer this process's (see ``Machine.hand_off_activity``).
        """

    async def complete_activity_by_token(self, outcome: ActivityOutcome) -> str:
        """Record the end of the attempt a task token names: "done", "retry" or "canceled".

        Raises ``duro.TaskTokenError`` (nothing written) when no such attempt runs or waits.
        """

    async def heartbeat_activity_by_token(self, run_key: bytes, task_queue: str, seq: int, attempt: int,
                                          details: bytes | None) -> bool:
        """Record a heartbeat of the attempt a task token names; True when the workflow cancelled it.

        Raises ``duro.TaskTokenError`` (nothing written) when no such attempt runs or waits.
        """

    async def renew_activity_leases(self, task_queue: str, items: list[tuple[bytes, int, int]],
                                    seconds: float) -> int:
        """Extend this process's leases of running attempts (run key, seq, attempt)."""

    def holds_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool:
        """Whether this process still holds the lease of an activity attempt."""

    # -- timers and leases
    async def fire_timers(self) -> float | None:
        """Fire every due timer; when the next one is due (None: there is none)."""

    def next_timer_due(self) -> float | None:
        """When the earliest timer is due, or None."""

    async def reap(self) -> int:
        """Take back the tasks of dead owners and expired leases; how many."""

    def has_any_tasks(self) -> bool:
        """Whether any workflow or activity task is pending or running (any queue)."""

    def is_idle(self) -> bool:
        """Whether no write of this process is queued or being committed."""

    # -- queries and updates across processes
    async def request(self, task_queue: str, head: bytes, args: bytes, timeout: float) -> bytes | None:
        """Ask the workers of ``task_queue`` in other processes; their answer, or None after ``timeout``."""

    def pending_requests(self, task_queue: str) -> list[tuple[str, bytes]]:
        """Requests waiting for a worker of ``task_queue``: (request id, packed request)."""

    async def answer(self, task_queue: str, request_id: str, answer: bytes) -> None:
        """Answer a request (once)."""

    def wait_update(self, update_id: str) -> asyncio.Future[bytes]:
        """A future of an update's completion payload (registered before the update is submitted)."""

    def drop_update_waiter(self, update_id: str) -> None:
        """Forget an update waiter."""

    # -- reading (outside a loop: tools, tests)
    def read_history(self, run_key: bytes, from_event_id: int = 1) -> list[Event]:
        """A run's events from ``from_event_id`` on."""

    def find_run(self, workflow_id: str, run_id: str | None = None) -> RunInfo:
        """Describe a run (the latest of the workflow id when ``run_id`` is None)."""

    def list_runs(self, query: ListQuery, limit: int, after: tuple[int, str] | None = None) -> list[RunInfo]:
        """The latest run of each workflow id matching ``query``, newest first, from an index.

        ``after``: the (start µs, workflow id) of the last run of the previous page.
        """

    def count_runs(self, query: ListQuery) -> int:
        """How many workflow ids' latest runs match ``query``."""

    # -- reading on an event loop: what clients and workers call. A store whose reads wait on a
    # server awaits them here (and rides out a restart with retries) instead of blocking the loop.
    async def aread_history(self, run_key: bytes, from_event_id: int = 1) -> list[Event]:
        """``read_history``, awaited."""

    async def afind_run(self, workflow_id: str, run_id: str | None = None) -> RunInfo:
        """``find_run``, awaited."""

    async def alist_runs(self, query: ListQuery, limit: int, after: tuple[int, str] | None = None) -> list[RunInfo]:
        """``list_runs``, awaited."""

    async def acount_runs(self, query: ListQuery) -> int:
        """``count_runs``, awaited."""

    async def adurable(self) -> None:
        """Return once every commit a read made before this call could see is durable.

        Before a client answers from what it read (a result, a description, a history, an update's
        outcome): a store whose commits are visible a moment before they are durable (LMDB, whose
        meta page is synced after the commit, by the syncer) syncs here if it must. ``afind_run``,
        ``alist_runs`` and ``acount_runs`` do it themselves; ``aread_history`` does not (a worker
        replays what it reads, and answers nobody from it).
        """

    async def ahas_pending_wtasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """``has_pending_wtasks``, awaited."""

    async def aholds_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool:
        """``holds_activity``, awaited."""

    async def apending_activities(self, run_key: bytes, task_queue: str) -> list[tuple[int, str, ActivityMeta, bytes]]:
        """(seq, task queue, meta, last heartbeat details) of the run's open activity attempts, by seq.

        LMDB finds those on ``task_queue`` (give the run's queue); PostgreSQL those on every queue.
        """

    async def anext_timer_due(self) -> float | None:
        """``next_timer_due``, awaited."""

    async def ahas_any_tasks(self) -> bool:
        """``has_any_tasks``, awaited."""

    async def anext_task_due(self) -> float | None:
        """When a workflow or activity task can next be taken, by the store's clock (seconds).

        The current time when one is due or running; the end of the earliest wait (a retry's backoff)
        when all wait; None when there is no task. For time skipping in tests.
        """

    async def apending_requests(self, task_queue: str) -> list[tuple[str, bytes]]:
        """``pending_requests``, awaited."""

    async def wait_closed(self, run_key: bytes) -> RunInfo:
        """Wait until the run is closed."""

    # -- schedules (duro.engine.schedules): records, and a due index per task queue for the workers
    async def change_schedule(self, command: ScheduleCommand) -> ScheduleChange:
        """Carry out a schedule command (create, pause, trigger, backfill, update, delete) in one commit."""

    async def fire_schedules(self, task_queue: str) -> float | None:
        """Fire the due schedules of ``task_queue`` (each fire one transition); when its next one is due."""

    async def aread_schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record as committed, or None."""

    async def alist_schedules(self) -> list[ScheduleRecord]:
        """Every schedule record, by id."""

    async def anext_schedule_due(self, task_queue: str | None = None) -> float | None:
        """When the earliest schedule (of ``task_queue``, or of any queue) fires; None: none."""

    # -- this process
    def set_dispatch(self, dispatch: Dispatch | None) -> None:
        """Hand the tasks this process's commits lease to it to ``dispatch`` (see ``duro._local``)."""

    def on_foreign_change(self, fn: Callable[[], None], topics: Iterable[str] | None = None) -> Callable[[], None]:
        """Call ``fn`` on the current loop when another process commits; returns an unsubscriber.

        ``topics`` narrows it to commits that changed one of them (``wtask_topic(queue)``, ...), where
        the store can tell; a store that cannot calls ``fn`` after every commit of another process.
        """

    async def close(self) -> None:
        """Release the backend."""


class _SyncReads(Protocol):
    """The synchronous reads ``LocalReads`` awaits."""

    def read_history(self, run_key: bytes, from_event_id: int = 1) -> list[Event]: ...
    async def adurable(self) -> None: ...
    def find_run(self, workflow_id: str, run_id: str | None = None) -> RunInfo: ...
    def list_runs(self, query: ListQuery, limit: int, after: tuple[int, str] | None = None) -> list[RunInfo]: ...
    def count_runs(self, query: ListQuery) -> int: ...
    def has_pending_wtasks(self, task_queue: str, build_id: str | None = None) -> bool: ...
    def holds_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool: ...
    def pending_activities(self, run_key: bytes, task_queue: str) -> list[tuple[int, str, ActivityMeta, bytes]]: ...
    def next_timer_due(self) -> float | None: ...
    def has_any_tasks(self) -> bool: ...
    def next_task_due(self) -> float | None: ...
    def pending_requests(self, task_queue: str) -> list[tuple[str, bytes]]: ...


class LocalReads:
    """The awaited reads of the ``Store`` protocol for a store whose reads are local and quick (LMDB).

    Each calls the synchronous read: on a memory map it takes microseconds, less than handing it
    to a thread would.
    """

    async def aread_history(self: _SyncReads, run_key: bytes, from_event_id: int = 1) -> list[Event]:
        """``read_history``, awaited."""
        return self.read_history(run_key, from_event_id)

    async def afind_run(self: _SyncReads, workflow_id: str, run_id: str | None = None) -> RunInfo:
        """``find_run``, awaited (and durable: see ``Store.adurable``)."""
        found = self.find_run(workflow_id, run_id)
        await self.adurable()
        return found

    async def alist_runs(self: _SyncReads, query: ListQuery, limit: int,
                         after: tuple[int, str] | None = None) -> list[RunInfo]:
        """``list_runs``, awaited (and durable)."""
        found = self.list_runs(query, limit, after)
        await self.adurable()
        return found

    async def acount_runs(self: _SyncReads, query: ListQuery) -> int:
        """``count_runs``, awaited (and durable)."""
        count = self.count_runs(query)
        await self.adurable()
        return count

    async def ahas_pending_wtasks(self: _SyncReads, task_queue: str, build_id: str | None = None) -> bool:
        """``has_pending_wtasks``, awaited."""
        return self.has_pending_wtasks(task_queue, build_id)

    async def aholds_activity(self: _SyncReads, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool:
        """``holds_activity``, awaited."""
        return self.holds_activity(task_queue, run_key, seq, attempt)

    async def apending_activities(self: _SyncReads, run_key: bytes,
                                  task_queue: str) -> list[tuple[int, str, ActivityMeta, bytes]]:
        """``pending_activities``, awaited."""
        return self.pending_activities(run_key, task_queue)

    async def anext_timer_due(self: _SyncReads) -> float | None:
        """``next_timer_due``, awaited."""
        return self.next_timer_due()

    async def ahas_any_tasks(self: _SyncReads) -> bool:
        """``has_any_tasks``, awaited."""
        return self.has_any_tasks()

    async def anext_task_due(self: _SyncReads) -> float | None:
        """``next_task_due``, awaited."""
        return self.next_task_due()

    async def apending_requests(self: _SyncReads, task_queue: str) -> list[tuple[str, bytes]]:
        """``pending_requests``, awaited."""
        return self.pending_requests(task_queue)
