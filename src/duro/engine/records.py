"""Typed records of the run state machine, as stores keep them.

Encoded as JSON objects with short keys (``rename``): the keys are those duro 0.1 wrote, so a
store written by 0.1 reads as it is. Fields at their default are left out of the encoding.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "SEARCH_ATTRIBUTES_MARKER",
    "ActivityMeta",
    "IdReusePolicy",
    "ParentClosePolicy",
    "RunRecord",
    "RunStatus",
    "VersioningBehavior",
    "WorkflowIndex",
    "WorkflowTaskLease",
    "decode_activity_meta",
    "decode_index",
    "decode_lease",
    "decode_run",
    "encode",
]


# ctx.upsert_search_attributes is recorded as a MarkerRecorded command of this name (payload: the
# JSON object of changes); the state machine applies it to the run and its visibility row.
SEARCH_ATTRIBUTES_MARKER = "duro:search_attributes"


class RunStatus(enum.StrEnum):
    """Where a run stands; the values are the statuses users see."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    TIMED_OUT = "timed_out"


class VersioningBehavior(enum.StrEnum):
    """How a run of a versioned worker moves between builds (Temporal's names)."""

    PINNED = "pinned"  # every workflow task on the build that ran its first one
    AUTO_UPGRADE = "auto_upgrade"  # each workflow task on the queue's current build


_PINNED: str = VersioningBehavior.PINNED.value


class IdReusePolicy(enum.StrEnum):
    """Whether the id of a closed run may start a new run."""

    ALLOW_DUPLICATE = "allow_duplicate"
    ALLOW_DUPLICATE_FAILED_ONLY = "allow_duplicate_failed_only"
    REJECT_DUPLICATE = "reject_duplicate"


class ParentClosePolicy(enum.StrEnum):
    """What happens to an open child when its parent closes."""

    TERMINATE = "terminate"
    REQUEST_CANCEL = "request_cancel"
    ABANDON = "abandon"


class RunRecord(msgspec.Struct, omit_defaults=True, rename={
    "workflow_id": "wid", "workflow_type": "type", "task_queue": "queue", "start_us": "start",
    "close_us": "close", "next_event_id": "next", "deadline_us": "deadline", "next_run_id": "next_run",
    "task_failures": "wtf", "last_failure": "wtf_msg", "search_attributes": "sa", "build_id": "build",
    "versioning_behavior": "vb",
}):
    """One run: its identity, where its history stands, and what is pending on it.

    Invariants: ``next_event_id`` is one past the last event in the history; ``epoch`` counts the
    workflow tasks completed (a completion must name it); ``last_input`` is the id of the newest
    input event (a task that processed less leaves the run with a task); ``timers`` maps each
    pending timer's seq (as text) to its due time in µs (seq 0: the execution/run timeout);
    ``children`` maps each open child's seq to [its run id, its parent-close policy];
    ``search_attributes`` (set at start, changed by the workflow) and ``memo`` (set at start) are
    what visibility shows and filters on. ``build_id`` is the build of the worker that completed the
    run's latest workflow task (None: an unversioned worker, or none yet) and ``versioning_behavior``
    what that worker declared for it (``VersioningBehavior``; None when unversioned): a ``pinned``
    run's workflow tasks go only to workers of ``build_id`` (see ``pinned_build``).
    """

    workflow_id: str
    workflow_type: str
    task_queue: str
    status: RunStatus
    start_us: int
    close_us: int = 0
    next_event_id: int = 1
    epoch: int = 0
    last_input: int = 1
    parent: dict[str, Any] | None = None
    deadline_us: int = 0
    timers: dict[str, int] | None = None
    children: dict[str, list[str]] | None = None
    next_run_id: str | None = None
    task_failures: int = 0
    last_failure: str | None = None
    search_attributes: dict[str, Any] | None = None
    memo: dict[str, Any] | None = None
    build_id: str | None = None
    versioning_behavior: str | None = None

    @property
    def pinned_build(self) -> str:
        """The build whose workers alone may run this run's workflow tasks ("": not pinned)."""
        build = self.build_id  # None for every run of an unversioned worker: one attribute read
        if build is not None and self.versioning_behavior == _PINNED:
            return build
        return ""


class WorkflowIndex(msgspec.Struct, omit_defaults=True, rename={
    "run_id": "run", "workflow_type": "type", "start_us": "start", "close_us": "close", "search_attributes": "sa",
}):
    """The latest run of a workflow id (and what ``list_workflows`` filters on).

    Invariant: ``status``, the times and ``search_attributes`` equal those of the run it names
    (written in the same transaction as the run record); they are kept here so that listing and
    filtering never load run records.
    """

    run_id: str
    status: RunStatus
    workflow_type: str
    start_us: int
    close_us: int = 0
    search_attributes: dict[str, Any] | None = None


class WorkflowTaskLease(msgspec.Struct, omit_defaults=False, rename={
    "owner": "o", "until_us": "u", "visible_us": "v", "pinned": "b"}):
    """A run's pending workflow task: who holds it (``""``: nobody) until when, and when it is due.

    ``visible_us`` is set while a failed task waits for its retry (0: due now). ``pinned`` is the
    build id whose workers alone may take it (the run's ``pinned_build``); UNSET (not encoded, so an
    unversioned lease is written as duro 0.1 wrote it): any worker the queue's current build allows.
    Write it as ``pin or UNSET``; read it as ``build``.
    """

    owner: str = ""
    until_us: int = 0
    visible_us: int = 0
    pinned: str | UnsetType = UNSET

    @property
    def build(self) -> str:
        """The build the task is pinned to ("": none)."""
        return self.pinned if isinstance(self.pinned, str) else ""


class ActivityMeta(msgspec.Struct, rename={
    "workflow_id": "wid", "workflow_type": "wtype", "scheduled_us": "sched", "start_to_close": "stc",
    "schedule_to_close": "s2c", "heartbeat": "hb", "owner": "o", "until_us": "u", "visible_us": "vis",
    "deadline_us": "dl", "headers": "hdr", "heartbeat_us": "hb_at", "last_failure": "lf",
    "cancel_wait": "cwait",
}):
    """An activity attempt waiting or running: what to run, its limits, who holds its lease.

    Stored beside the attempt's arguments and last heartbeat details (opaque bytes). An attempt
    whose code raised ``CompleteAsync`` waits for a completion from outside: its owner is
    ``machine.ASYNC_OWNER`` (no process) and ``deadline_us`` its start-to-close/schedule-to-close
    deadline (0: none), past which no heartbeat extends its lease.
    """

    workflow_id: str
    workflow_type: str
    name: str
    attempt: int
    scheduled_us: int
    start_to_close: float | None
    schedule_to_close: float | None
    heartbeat: float | None
    retry: dict[str, Any]
    owner: str = ""
    until_us: int = 0
    visible_us: int = 0
    cancel: bool = False
    deadline_us: int = 0
    headers: dict[str, str] | None = None  # interceptor headers of the activity (None: none)
    heartbeat_us: int = 0  # when the attempt last heartbeat (0: never); shown by describe()
    last_failure: str | None = None  # "Type: message" of the previous attempt's failure (a retry)
    # With ``cancel``: the workflow waits for this attempt's end ("wait_cancellation_completed"),
    # so that end is recorded (never retried); without, a cancelled attempt's end is dropped.
    cancel_wait: bool = False


_ENCODER = msgspec.json.Encoder()
encode = _ENCODER.encode
decode_run = msgspec.json.Decoder(RunRecord).decode
decode_index = msgspec.json.Decoder(WorkflowIndex).decode
decode_lease = msgspec.json.Decoder(WorkflowTaskLease).decode
decode_activity_meta = msgspec.json.Decoder(ActivityMeta).decode
