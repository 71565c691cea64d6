"""Typed records of the run state machine, as stores keep them.

Encoded as JSON objects with short keys (``rename``): the keys are those duro 0.1 wrote, so a
store written by 0.1 reads as it is. Fields at their default are left out of the encoding.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = [
    "SEARCH_ATTRIBUTES_MARKER",
    "ActivityMeta",
    "IdReusePolicy",
    "ParentClosePolicy",
    "RunRecord",
    "RunStatus",
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
    "task_failures": "wtf", "last_failure": "wtf_msg", "search_attributes": "sa",
}):
    """One run: its identity, where its history stands, and what is pending on it.

    Invariants: ``next_event_id`` is one past the last event in the history; ``epoch`` counts the
    workflow tasks completed (a completion must name it); ``last_input`` is the id of the newest
    input event (a task that processed less leaves the run with a task); ``timers`` maps each
    pending timer's seq (as text) to its due time in µs (seq 0: the execution/run timeout);
    ``children`` maps each open child's seq to [its run id, its parent-close policy];
    ``search_attributes`` (set at start, changed by the workflow) and ``memo`` (set at start) are
    what visibility shows and filters on.
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
    "owner": "o", "until_us": "u", "visible_us": "v"}):
    """A run's pending workflow task: who holds it (``""``: nobody) until when, and when it is due.

    ``visible_us`` is set while a failed task waits for its retry (0: due now).
    """

    owner: str = ""
    until_us: int = 0
    visible_us: int = 0


class ActivityMeta(msgspec.Struct, rename={
    "workflow_id": "wid", "workflow_type": "wtype", "scheduled_us": "sched", "start_to_close": "stc",
    "schedule_to_close": "s2c", "heartbeat": "hb", "owner": "o", "until_us": "u", "visible_us": "vis",
    "deadline_us": "dl", "headers": "hdr", "heartbeat_us": "hb_at", "last_failure": "lf",
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


_ENCODER = msgspec.json.Encoder()
encode = _ENCODER.encode
decode_run = msgspec.json.Decoder(RunRecord).decode
decode_index = msgspec.json.Decoder(WorkflowIndex).decode
decode_lease = msgspec.json.Decoder(WorkflowTaskLease).decode
decode_activity_meta = msgspec.json.Decoder(ActivityMeta).decode
