"""The transaction interface a store gives the state machine: typed record operations.

A store implements ``Tx`` over one of its transactions. Every method reads or writes within that
transaction; nothing is durable until the store commits it, and an operation that raises is rolled
back by the store (so a transition may write before it finds it must fail). Keys are the store's
business: the machine names records by run key (16 bytes), workflow id, task queue and sequence
numbers only.

Identity: within one transaction, ``run`` returns the same object for the same run until
``put_run`` stores another; a transition may change a record it got and must ``put_run`` it to keep
the change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from duro._core.codec import Event
    from duro.engine.records import ActivityMeta, RunRecord, WorkflowIndex, WorkflowTaskLease

__all__ = ["Tx"]


class Tx(Protocol):
    """Typed record operations inside one store transaction (see the module docstring)."""

    # -- runs and the workflow-id index
    def run(self, run_key: bytes) -> RunRecord | None:
        """The run record, or None."""

    def put_run(self, run_key: bytes, rec: RunRecord) -> None:
        """Store the run record."""

    def index(self, workflow_id: str) -> WorkflowIndex | None:
        """The latest run of a workflow id, or None."""

    def put_index(self, workflow_id: str, idx: WorkflowIndex) -> None:
        """Store the latest run of a workflow id."""

    # -- history
    def append_history(self, run_key: bytes, events: list[Event]) -> None:
        """Append events (ids already given, consecutive after the run's last one)."""

    def read_history(self, run_key: bytes, from_event_id: int = 1, to_event_id: int = 0) -> list[Event]:
        """Events of a run from ``from_event_id`` to ``to_event_id`` (0: to the end)."""

    # -- workflow tasks
    def wtask(self, task_queue: str, run_key: bytes) -> WorkflowTaskLease | None:
        """The run's pending workflow task on ``task_queue``, or None."""

    def put_wtask(self, task_queue: str, run_key: bytes, lease: WorkflowTaskLease) -> None:
        """Create or replace the run's pending workflow task."""

    def delete_wtask(self, task_queue: str, run_key: bytes) -> None:
        """Drop the run's pending workflow task (if any)."""

    # -- worker versioning: a task queue's current build
    def current_build(self, task_queue: str) -> str | None:
        """The queue's current build id (None: none set). Read on hot paths: stores keep it cheap."""

    def set_current_build(self, task_queue: str, build_id: str | None, now_us: int) -> None:
        """Make ``build_id`` the queue's current build (None: remove the setting)."""

    # -- activity tasks
    def atask(self, task_queue: str, run_key: bytes, seq: int) -> tuple[ActivityMeta, bytes, bytes] | None:
        """An activity attempt: its meta, its arguments and its last heartbeat details; or None."""

    def put_atask(self, task_queue: str, run_key: bytes, seq: int, meta: ActivityMeta, args: bytes,
                  details: bytes) -> None:
        """Create or replace an activity attempt."""

    def delete_atask(self, task_queue: str, run_key: bytes, seq: int) -> None:
        """Drop an activity attempt (if any)."""

    # -- timers
    def put_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        """A timer of the run due at ``fire_us``."""

    def delete_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        """Drop a timer (if any)."""

    # -- deleting closed runs (retention, ``handle.delete``)
    def delete_run(self, run_key: bytes, last_event_id: int) -> None:
        """Drop a closed run's record and its history (events 1..``last_event_id``)."""

    def delete_index(self, workflow_id: str) -> None:
        """Drop a workflow id's row (its latest run was deleted)."""
