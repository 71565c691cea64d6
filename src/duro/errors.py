"""Exceptions raised by duro; defined once here and raised by the compiled core too."""

from __future__ import annotations

from typing import Any


class DuroError(Exception):
    """Base class of every error duro raises on purpose."""


class CorruptHistoryError(DuroError):
    """Bytes read from a store are not a valid duro event (truncated, garbage or an unknown version)."""


class NonDeterminismError(DuroError):
    """Replaying a workflow's code asked for something other than what its history recorded.

    Attributes:
        event_id: id of the recorded event that did not match (0 when the history ran out).
        recorded: a readable description of the recorded event.
        requested: a readable description of what the code asked for now.
    """

    def __init__(self, message: str, *, event_id: int = 0, recorded: str = "", requested: str = "") -> None:
        super().__init__(message)
        self.event_id = event_id
        self.recorded = recorded
        self.requested = requested


class ApplicationError(DuroError):
    """An error raised by user code (workflow or activity) that carries a type and details.

    Args:
        message: what went wrong.
        type: a name for the kind of error; defaults to the class name. Matched against
            ``RetryPolicy.non_retryable_error_types``.
        non_retryable: when true the activity is not retried, whatever its retry policy says.
        details: JSON-encodable extra data carried to the caller.
    """

    def __init__(
        self,
        message: str,
        type: str | None = None,
        non_retryable: bool = False,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type or "ApplicationError"
        self.non_retryable = non_retryable
        self.details = details

    def __repr__(self) -> str:
        return f"ApplicationError({self.message!r}, type={self.type!r}, non_retryable={self.non_retryable})"


class ActivityError(DuroError):
    """An activity failed for good (retries exhausted, non-retryable error or timeout).

    The underlying error (an ``ApplicationError`` or ``TimeoutError``) is the ``__cause__``.

    Attributes:
        activity_type: registered name of the activity.
        activity_id: the activity's sequence number within its workflow run.
        attempt: the attempt that failed last.
    """

    def __init__(self, message: str, *, activity_type: str = "", activity_id: int = 0, attempt: int = 0) -> None:
        super().__init__(message)
        self.activity_type = activity_type
        self.activity_id = activity_id
        self.attempt = attempt


class TimeoutError(DuroError):
    """An activity or workflow ran past one of its timeouts.

    Attributes:
        timeout_type: ``start_to_close``, ``schedule_to_close``, ``heartbeat`` or ``execution``.
    """

    def __init__(self, message: str, *, timeout_type: str = "") -> None:
        super().__init__(message)
        self.timeout_type = timeout_type


class CancelledError(DuroError):
    """A workflow or activity was cancelled."""


class TerminatedError(DuroError):
    """A workflow was terminated from outside; its code did not get to run again."""


class WorkflowFailedError(DuroError):
    """``handle.result()`` found that the run did not complete; the cause is chained as ``__cause__``."""

    def __init__(self, message: str, *, workflow_id: str = "", run_id: str = "") -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.run_id = run_id


class WorkflowAlreadyStartedError(DuroError):
    """A workflow with this id is already running."""

    def __init__(self, workflow_id: str, run_id: str = "") -> None:
        super().__init__(
            f"workflow id {workflow_id!r} is already running (run {run_id}); use client.get_handle() "
            "to reach it, or choose another id"
        )
        self.workflow_id = workflow_id
        self.run_id = run_id


class WorkflowNotFoundError(DuroError):
    """No workflow (or run) with this id exists in the store."""

    def __init__(self, workflow_id: str, run_id: str | None = None) -> None:
        what = f"workflow id {workflow_id!r}" + (f" run {run_id!r}" if run_id else "")
        super().__init__(f"{what} is not in this store; check the id and the store URL")
        self.workflow_id = workflow_id
        self.run_id = run_id


class WorkflowClosedError(DuroError):
    """The run is closed: it takes no signal, cancellation, termination or update any more."""

    def __init__(self, message: str, *, workflow_id: str = "", run_id: str = "", status: str = "") -> None:
        super().__init__(message)
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.status = status


class WorkflowIOError(DuroError):
    """Workflow code tried real I/O (sockets, files, threads, subprocesses); do it in an activity."""


class StoreURLError(DuroError, ValueError):
    """A store URL that duro cannot open; the message says which forms are accepted."""


class StoreError(DuroError):
    """The store could not carry out an operation; nothing of that operation was written.

    Subclasses say why (full, damaged, not permitted, a value past a limit); the message says what
    to do. Operations acknowledged before the error stay durable.
    """


class StoreFullError(StoreError):
    """The disk under the store, or the store's LMDB map, is full; free space (or grow the map) and retry."""


class StoreCorruptedError(StoreError):
    """The store's files are damaged (truncated, overwritten, not an LMDB environment).

    Attributes:
        path: the damaged file.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StorePermissionError(StoreError, PermissionError):
    """This process may not read or write the store's files; the message names the path."""


class StoreLimitError(StoreError, ValueError):
    """A key or value is larger than the store accepts; the message names the limit."""


class PayloadTooLargeError(DuroError, ValueError):
    """An encoded argument, result, signal or heartbeat is larger than the configured limit.

    Attributes:
        size: the encoded size in bytes.
        limit: the limit in bytes.
    """

    def __init__(self, message: str, *, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class TaskTokenError(DuroError, ValueError):
    """A task token (``ActivityInfo.task_token``) that cannot complete, fail or heartbeat anything.

    Nothing is written when it is raised. The message says what was wrong.

    Attributes:
        reason: ``"malformed"`` (not a duro task token: garbage, truncated or altered bytes),
            ``"version"`` (a token format this duro does not read), ``"unknown_run"`` (no such run in
            this store), ``"unknown_activity"`` (the run has no such activity attempt on that task
            queue), ``"not_started"`` (the attempt has not started), ``"completed"`` (the activity
            already completed or failed for good), ``"superseded"`` (a later attempt replaced this one),
            ``"timed_out"`` (the attempt ran past its timeout waiting for this call) or ``"closed"``
            (the workflow run is closed).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ScheduleNotFoundError(DuroError):
    """No schedule with this id exists in the store; nothing was written.

    Attributes:
        schedule_id: the id asked for.
    """

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"schedule {schedule_id!r} is not in this store; check the id and the store URL "
                         "(client.list_schedules() lists them); nothing was written")
        self.schedule_id = schedule_id


class ScheduleAlreadyExistsError(DuroError):
    """A schedule with this id exists already; nothing was written.

    Attributes:
        schedule_id: the id asked for.
    """

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"a schedule with id {schedule_id!r} exists already; change it with "
                         "client.get_schedule_handle(id).update(...), delete it first, or choose another id; "
                         "nothing was written")
        self.schedule_id = schedule_id
