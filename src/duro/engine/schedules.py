"""Schedules: durable records that start workflow runs on a cron or interval spec, and their transitions.

A schedule is a ``ScheduleRecord`` in the store, next to the runs. Its spec (``SpecRecord``: a cron
expression or a fixed interval, bounds, jitter) gives its *due times*; ``next_due_us`` is the next
one and ``next_fire_us`` when it fires (the due time plus its jitter, drawn once, when that due
time became the next one, and stored: every worker fires it at the same moment). A worker of the
schedule's task queue fires it (``Schedules.fire``) in ONE transaction that advances ``next_due_us``
and starts the run, so a due time fires exactly once however many workers race for it and
whichever crashes: a fire either committed (the due time is behind the record) or did not (the
next worker fires it). The run's workflow id is ``<schedule id>-<scheduled time, ISO 8601 UTC>``
and is started with the reuse policy "reject_duplicate", so a fire replayed from a stale record
(or a backfill of a time that already ran) cannot start a second run for that time.

Runs carry the search attributes ``DuroScheduleId`` and ``DuroScheduledTime``. The record keeps the
workflow ids of its runs still open (``running``) for the overlap policy; when one of them closes,
``Machine.close_run`` calls ``run_closed`` in the same transaction, which forgets it and starts a
buffered fire (``buffer_one``, ``cancel_other``) if one waits.

The records live through ``ScheduleTx`` (a store's ``Tx`` with three more operations); the stores
keep an index of ``next_fire_us`` per task queue for their workers (``duro.stores.lmdb_schedules``,
``duro.stores.pg_schedules``). Times are µs since the Unix epoch by the store's clock.
"""

from __future__ import annotations

import datetime
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import msgspec

from duro.engine.records import RunRecord, RunStatus
from duro.errors import (
    DuroError,
    ScheduleAlreadyExistsError,
    ScheduleNotFoundError,
    WorkflowAlreadyStartedError,
)
from duro.stores.base import StartRequest, new_run_id

if TYPE_CHECKING:
    from duro.engine.machine import Effects, Machine
    from duro.engine.tx import Tx

__all__ = [
    "DEFAULT_CATCHUP_US",
    "MAX_BACKFILL",
    "MAX_SCHEDULE_ID_BYTES",
    "RESERVED_ATTRIBUTES",
    "SCHEDULED_TIME_ATTR",
    "SCHEDULE_ID_ATTR",
    "ActionRecord",
    "Backfill",
    "Create",
    "Delete",
    "OverlapPolicy",
    "Pause",
    "ScheduleChange",
    "ScheduleCommand",
    "ScheduleRecord",
    "ScheduleTx",
    "Schedules",
    "SpecRecord",
    "Trigger",
    "Update",
    "check_cron",
    "decode_schedule",
    "encode_schedule",
    "from_us",
    "next_after",
    "record_problems",
    "run_closed",
    "to_us",
    "upcoming",
    "workflow_id_for",
]

#: Search attribute of every run a schedule starts: the schedule's id.
SCHEDULE_ID_ATTR = "DuroScheduleId"
#: Search attribute of every run a schedule starts: its scheduled time (ISO 8601 UTC, as datetimes are kept).
SCHEDULED_TIME_ATTR = "DuroScheduledTime"
RESERVED_ATTRIBUTES = (SCHEDULE_ID_ATTR, SCHEDULED_TIME_ATTR)

#: Longest schedule id: the workflow ids of its runs add "-" and the time (28 bytes) within 255.
MAX_SCHEDULE_ID_BYTES = 200
DEFAULT_CATCHUP_US = 365 * 86400 * 1_000_000  # Temporal's default catch-up window: a year
MAX_BACKFILL = 1000  # due times one backfill call may fire
RECENT_KEPT = 10  # runs a record remembers for describe()
_MAX_ACTS = 100  # due times one fire acts on (more: the worker fires again at once)
_MAX_MISSED = 10_000  # due times past the catch-up window one fire steps over
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_RUNNING = RunStatus.RUNNING


class OverlapPolicy(enum.StrEnum):
    """What a fire does while a run the schedule started is still open."""

    SKIP = "skip"  # start nothing
    BUFFER_ONE = "buffer_one"  # start it when the open run closes (one waits; more are skipped)
    ALLOW_ALL = "allow_all"  # start it anyway
    CANCEL_OTHER = "cancel_other"  # request cancellation of the open run; start this once it closed
    TERMINATE_OTHER = "terminate_other"  # terminate the open run, start this at once


class SpecRecord(msgspec.Struct, omit_defaults=True):
    """When a schedule is due: a cron expression (in ``time_zone``, default UTC) or every ``every_us``.

    Interval times are ``start_us + k * every_us`` (the Unix epoch when there is no start), as
    Temporal's intervals. No time before ``start_us`` or after ``end_us`` (0: unbounded) is due.
    ``jitter_us``: each fire is delayed by a random amount below it (and below the gap to the
    following due time).
    """

    cron: str | None = None
    every_us: int = 0
    time_zone: str | None = None
    start_us: int = 0
    end_us: int = 0
    jitter_us: int = 0


class ActionRecord(msgspec.Struct, array_like=True):
    """A run a schedule started: its scheduled time, when it started, its ids, and what fired it.

    ``trigger`` is "schedule" (a due time), "trigger" (``trigger()``) or "backfill".
    """

    scheduled_us: int
    started_us: int
    workflow_id: str
    run_id: str
    trigger: str


class ScheduleRecord(msgspec.Struct, omit_defaults=True):
    """A schedule: what it starts, when, its policies, and where it stands.

    Invariants: ``next_due_us`` is the next due time not yet fired (0: none left) and
    ``next_fire_us`` (its due time plus jitter) when it fires; a paused schedule does not fire and
    its ``next_*`` are recomputed from the time it is unpaused (times passed while paused are not
    caught up). ``running`` lists the workflow ids of its runs open when last looked at;
    ``buffered`` the (scheduled time, trigger) of fires waiting for them to close (``buffer_one``,
    ``cancel_other``). ``fired`` counts runs started, ``skipped`` fires the overlap policy skipped (or
    whose workflow id was taken), ``missed`` due times older than the catch-up window when a worker
    got to them (a store without a worker for that long).
    """

    schedule_id: str
    workflow_type: str
    task_queue: str
    args: bytes
    spec: SpecRecord
    overlap: OverlapPolicy = OverlapPolicy.SKIP
    catchup_us: int = DEFAULT_CATCHUP_US
    paused: bool = False
    note: str = ""
    search_attributes: dict[str, Any] | None = None
    memo: dict[str, Any] | None = None
    execution_timeout: float | None = None
    run_timeout: float | None = None
    created_us: int = 0
    updated_us: int = 0
    next_due_us: int = 0
    next_fire_us: int = 0
    running: list[str] = []
    buffered: list[tuple[int, str]] = []
    recent: list[ActionRecord] = []
    fired: int = 0
    skipped: int = 0
    missed: int = 0

    @property
    def fire_at_us(self) -> int | None:
        """When a worker fires it next, as the stores index it (None: paused, or no time left)."""
        return self.next_fire_us if self.next_fire_us and not self.paused else None


_ENCODER = msgspec.json.Encoder()
encode_schedule = _ENCODER.encode
decode_schedule = msgspec.json.Decoder(ScheduleRecord).decode


class ScheduleTx(Protocol):
    """A store's ``Tx`` with the schedule records (the store's ``Tx`` class implements both).

    Identity, as for runs: within one op, ``schedule`` returns the same object for the same id
    until ``put_schedule`` stores another (a run closing inside a fire changes the same record).
    """

    def schedule(self, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record, or None."""

    def put_schedule(self, rec: ScheduleRecord) -> None:
        """Store the record (and its entry in the due index: ``rec.fire_at_us`` on ``rec.task_queue``)."""

    def delete_schedule(self, schedule_id: str) -> None:
        """Drop the record and its due-index entry (if any)."""


# ---------------------------------------------------------------------------------------------- times

def from_us(t_us: int) -> datetime.datetime:
    """µs since the epoch as an aware UTC datetime, exactly (no float on the way)."""
    return _EPOCH + datetime.timedelta(microseconds=t_us)


def to_us(t: datetime.datetime) -> int:
    """An aware datetime as µs since the epoch, exactly."""
    d = t - _EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def workflow_id_for(schedule_id: str, scheduled_us: int) -> str:
    """The workflow id of the run a schedule starts for a scheduled time: ``nightly-2026-01-01T03:00:00Z``."""
    t = from_us(scheduled_us)
    stamp = t.strftime("%Y-%m-%dT%H:%M:%S") + (f".{t.microsecond:06d}" if t.microsecond else "")
    return f"{schedule_id}-{stamp}Z"


def scheduled_attribute(scheduled_us: int) -> str:
    """The ``DuroScheduledTime`` value: ISO 8601 UTC as search attributes keep datetimes (filters match it)."""
    return from_us(scheduled_us).isoformat()


def _zone(time_zone: str | None) -> datetime.tzinfo:
    if time_zone is None:
        return datetime.UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(time_zone)


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError:  # pragma: no cover - an install without the dependency
        raise DuroError("cron schedules need the cronsim package: pip install cronsim") from None
    return cronsim


def check_cron(expr: str, time_zone: str | None = None) -> None:
    """Raise ValueError naming ``expr`` and what is wrong when it is not a cron expression cronsim reads.

    Five fields (minute hour day-of-month month day-of-week) or six (seconds first); names such as
    ``MON`` and ``JAN``, ranges, steps, lists, ``L`` and ``#`` as cronsim (Healthchecks.io) reads them.
    """
    cronsim = _cronsim()
    try:
        cronsim.CronSim(expr, datetime.datetime.now(_zone(time_zone)))
    except cronsim.CronSimError as e:
        raise ValueError(f"cron expression {expr!r} is malformed: {e} (five fields: minute hour "
                         "day-of-month month day-of-week, e.g. '0 3 * * *' for 03:00 every day)") from None


def _cron_next(expr: str, time_zone: str | None, after_us: int) -> int | None:
    cronsim = _cronsim()
    try:
        it = cronsim.CronSim(expr, from_us(after_us).astimezone(_zone(time_zone)))
        for _ in range(3):  # a time at or before after_us (never seen; a guard against a loop)
            t = to_us(next(it).astimezone(datetime.UTC))
            if t > after_us:
                return t
    except (StopIteration, OverflowError, ValueError):
        return None
    return None


def next_after(spec: SpecRecord, after_us: int, *, bounded: bool = True) -> int | None:
    """The spec's first due time after ``after_us`` (None: there is none).

    ``bounded=False`` ignores the spec's start and end (a backfill names its own range).
    """
    lo = max(after_us, spec.start_us - 1) if bounded else after_us
    if spec.every_us:
        t: int | None = spec.start_us + ((lo - spec.start_us) // spec.every_us + 1) * spec.every_us
    elif spec.cron is not None:
        t = _cron_next(spec.cron, spec.time_zone, lo)
    else:
        return None
    if t is None or (bounded and spec.end_us and t > spec.end_us):
        return None
    return t


def upcoming(spec: SpecRecord, first_us: int, n: int) -> list[int]:
    """``first_us`` (a due time, 0: none) and the due times after it: ``n`` at most."""
    out: list[int] = []
    t: int | None = first_us or None
    while t is not None and len(out) < n:
        out.append(t)
        t = next_after(spec, t)
    return out


# ---------------------------------------------------------------------------------------------- commands

@dataclass(frozen=True, slots=True)
class Create:
    """Create a schedule from a checked record (``duro.schedules`` checks what users give)."""

    rec: ScheduleRecord


@dataclass(frozen=True, slots=True)
class Pause:
    """Pause (``paused``) or unpause a schedule, with a note."""

    schedule_id: str
    paused: bool
    note: str


@dataclass(frozen=True, slots=True)
class Trigger:
    """Fire now, under ``overlap`` (None: the schedule's policy)."""

    schedule_id: str
    overlap: OverlapPolicy | None = None


@dataclass(frozen=True, slots=True)
class Backfill:
    """Fire every due time in [start_us, end_us), under ``overlap`` (None: the schedule's policy)."""

    schedule_id: str
    start_us: int
    end_us: int
    overlap: OverlapPolicy | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """Replace fields of a schedule (``ScheduleRecord`` field names; checked values)."""

    schedule_id: str
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete a schedule (its open runs go on)."""

    schedule_id: str


ScheduleCommand = Create | Pause | Trigger | Backfill | Update | Delete


@dataclass(slots=True)
class ScheduleChange:
    """What a command did: the record after it (None: deleted) and the workflow ids of the runs it started."""

    record: ScheduleRecord | None
    started: list[str] = field(default_factory=list)


# Fields whose change moves the due times: the next one is computed again from the update's time.
_TIMING = frozenset(("spec",))


# ---------------------------------------------------------------------------------------------- transitions

class Schedules:
    """The schedule transitions, over a ``ScheduleTx`` (the store's ``Tx``), for one process's ``Machine``.

    ``rand`` draws jitter (in [0, 1)); a store uses ``random.random``, tests pass their own.
    Every transition raises, before it writes, ``ScheduleNotFoundError`` for an unknown id (and
    ``ScheduleAlreadyExistsError``, ``ValueError`` where they say), so a refused command leaves the
    store as it was.
    """

    def __init__(self, machine: Machine, rand: Callable[[], float] = random.random) -> None:
        self.m = machine
        self.rand = rand

    # -- commands from clients
    def apply(self, tx: Tx, fx: Effects, cmd: ScheduleCommand) -> ScheduleChange:
        """Carry out one command (see ``ScheduleCommand``) at the machine's time."""
        stx = cast("ScheduleTx", tx)  # a store's Tx is its ScheduleTx too
        now_us = self.m.now_us()
        if isinstance(cmd, Create):
            return ScheduleChange(self.create(stx, cmd.rec, now_us))
        rec = stx.schedule(cmd.schedule_id)
        if rec is None:
            raise ScheduleNotFoundError(cmd.schedule_id)
        started: list[str] = []
        if isinstance(cmd, Delete):
            stx.delete_schedule(cmd.schedule_id)
            return ScheduleChange(None)
        if isinstance(cmd, Backfill):
            times = self.backfill_times(rec, cmd.start_us, cmd.end_us)  # may raise: before any write
            self._refresh(tx, rec)
            for t in times:
                wid = self._act(tx, fx, rec, t, now_us, cmd.overlap or rec.overlap, "backfill")
                if wid is not None:
                    started.append(wid)
        elif isinstance(cmd, Trigger):
            self._refresh(tx, rec)
            wid = self._act(tx, fx, rec, now_us, now_us, cmd.overlap or rec.overlap, "trigger")
            if wid is not None:
                started.append(wid)
        elif isinstance(cmd, Pause):
            rec.note = cmd.note
            rec.updated_us = now_us
            if cmd.paused:
                rec.paused = True
            elif rec.paused:
                rec.paused = False
                self._advance(rec, now_us)
                self._refresh(tx, rec)
                wid = self._start_buffered(tx, fx, rec, now_us)
                if wid is not None:
                    started.append(wid)
        else:
            timing = bool(_TIMING.intersection(cmd.changes))
            for name, value in cmd.changes.items():
                setattr(rec, name, value)
            rec.updated_us = now_us
            if timing and not rec.paused:
                self._advance(rec, now_us)
        stx.put_schedule(rec)
        return ScheduleChange(rec, started)

    def create(self, stx: ScheduleTx, given: ScheduleRecord, now_us: int) -> ScheduleRecord:
        """Store a new schedule; its first due time is the spec's first after now (or at its start)."""
        if stx.schedule(given.schedule_id) is not None:
            raise ScheduleAlreadyExistsError(given.schedule_id)
        # A copy: the command may be run again (a batch retried) and must find what it was given.
        rec = decode_schedule(encode_schedule(given))
        rec.created_us = rec.updated_us = now_us
        if not rec.paused:
            self._advance(rec, now_us)
        stx.put_schedule(rec)
        return rec

    @staticmethod
    def backfill_times(rec: ScheduleRecord, start_us: int, end_us: int) -> list[int]:
        """The spec's due times in [start_us, end_us), its start and end ignored; ValueError past MAX_BACKFILL."""
        if end_us <= start_us:
            raise ValueError(f"backfill of schedule {rec.schedule_id!r}: the end must be after the start; "
                             "nothing was written")
        times: list[int] = []
        t = next_after(rec.spec, start_us - 1, bounded=False)
        while t is not None and t < end_us:
            if len(times) == MAX_BACKFILL:
                raise ValueError(f"backfill of schedule {rec.schedule_id!r}: more than {MAX_BACKFILL} due times "
                                 "in the range; backfill it in parts; nothing was written")
            times.append(t)
            t = next_after(rec.spec, t, bounded=False)
        return times

    # -- the worker's transition
    def fire(self, tx: Tx, fx: Effects, schedule_id: str, now_us: int) -> list[str]:
        """Fire a schedule whose fire time has come: each due time up to now, then the next one.

        One transaction: the record's next due time moves past every time acted on, in the commit
        that starts their runs. A due time older than the catch-up window is counted as missed
        and not fired. Returns the workflow ids started. Nothing happens (nothing is written)
        when the schedule is gone, paused or not due: another worker fired it first.
        """
        stx = cast("ScheduleTx", tx)
        rec = stx.schedule(schedule_id)
        if rec is None or rec.fire_at_us is None or rec.next_fire_us > now_us:
            return []
        started: list[str] = []
        self._refresh(tx, rec)
        wid = self._start_buffered(tx, fx, rec, now_us)
        if wid is not None:
            started.append(wid)
        acts = missed = 0
        while rec.next_due_us and rec.next_fire_us <= now_us and acts < _MAX_ACTS and missed < _MAX_MISSED:
            due = rec.next_due_us
            if due + rec.catchup_us < now_us:
                missed += 1
                rec.missed += 1
            else:
                acts += 1
                wid = self._act(tx, fx, rec, due, now_us, rec.overlap, "schedule")
                if wid is not None:
                    started.append(wid)
            self._advance(rec, due)
        stx.put_schedule(rec)
        return started

    # -- the close hook
    def run_closed(self, tx: Tx, fx: Effects, run: RunRecord, now_us: int) -> None:
        """A run a schedule started closed: forget it, and start a buffered fire if one waits."""
        sid = (run.search_attributes or {}).get(SCHEDULE_ID_ATTR)
        if not isinstance(sid, str):
            return
        stx = cast("ScheduleTx", tx)
        rec = stx.schedule(sid)
        if rec is None or run.workflow_id not in rec.running:
            return
        idx = tx.index(run.workflow_id)
        if idx is not None and idx.status == _RUNNING:
            return  # the workflow id runs on (continued as new)
        rec.running.remove(run.workflow_id)
        self._start_buffered(tx, fx, rec, now_us)
        stx.put_schedule(rec)

    # -- helpers
    def _advance(self, rec: ScheduleRecord, after_us: int) -> None:
        """Make the spec's first due time after ``after_us`` the next one, with its jitter drawn now."""
        due = next_after(rec.spec, after_us)
        rec.next_due_us = due or 0
        rec.next_fire_us = 0
        if due is None:
            return
        delay = 0
        if rec.spec.jitter_us:
            following = next_after(rec.spec, due)
            room = min(rec.spec.jitter_us, following - due) if following is not None else rec.spec.jitter_us
            delay = min(int(self.rand() * room), max(room - 1, 0))
        rec.next_fire_us = due + delay

    @staticmethod
    def _refresh(tx: Tx, rec: ScheduleRecord) -> None:
        """Keep in ``running`` only the workflow ids still open (a close missed by the hook is seen here)."""
        if rec.running:
            rec.running = [w for w in rec.running if (idx := tx.index(w)) is not None and idx.status == _RUNNING]

    def _act(self, tx: Tx, fx: Effects, rec: ScheduleRecord, scheduled_us: int, now_us: int,
             overlap: OverlapPolicy, trigger: str) -> str | None:
        """One fire under ``overlap``: start a run, or skip, buffer, cancel or terminate per the policy."""
        if rec.running and overlap != OverlapPolicy.ALLOW_ALL:
            if overlap == OverlapPolicy.SKIP:
                rec.skipped += 1
                return None
            if overlap == OverlapPolicy.TERMINATE_OTHER:
                reason = (f"terminated by schedule {rec.schedule_id!r}: its run for "
                          f"{scheduled_attribute(scheduled_us)} replaces it (overlap='terminate_other')")
                for wid in list(rec.running):
                    self.m.terminate(tx, fx, wid, None, reason)  # closes it: run_closed drops it from running
                self._refresh(tx, rec)
            else:
                if rec.buffered:  # one waits already
                    rec.skipped += 1
                    return None
                rec.buffered.append((scheduled_us, trigger))
                if overlap == OverlapPolicy.CANCEL_OTHER:
                    for wid in rec.running:
                        self.m.cancel(tx, fx, wid, None)
                return None
        return self._start(tx, fx, rec, scheduled_us, now_us, trigger)

    def _start_buffered(self, tx: Tx, fx: Effects, rec: ScheduleRecord, now_us: int) -> str | None:
        if rec.buffered and not rec.running and not rec.paused:
            scheduled_us, trigger = rec.buffered.pop(0)
            return self._start(tx, fx, rec, scheduled_us, now_us, trigger)
        return None

    def _start(self, tx: Tx, fx: Effects, rec: ScheduleRecord, scheduled_us: int, now_us: int,
               trigger: str) -> str | None:
        """Start the run of a scheduled time (None: a run of its workflow id exists: it fired before)."""
        wid = workflow_id_for(rec.schedule_id, scheduled_us)
        attrs = dict(rec.search_attributes or {})
        attrs[SCHEDULE_ID_ATTR] = rec.schedule_id
        attrs[SCHEDULED_TIME_ATTR] = scheduled_attribute(scheduled_us)
        run_id = new_run_id()
        req = StartRequest(workflow_id=wid, workflow_type=rec.workflow_type, task_queue=rec.task_queue,
                           args=rec.args, run_id=run_id, id_reuse_policy="reject_duplicate",
                           execution_timeout=rec.execution_timeout, run_timeout=rec.run_timeout,
                           search_attributes=attrs, memo=rec.memo)
        try:
            self.m.create_run(tx, fx, req, now_us)  # checks the id before it writes anything
        except WorkflowAlreadyStartedError:
            rec.skipped += 1
            return None
        rec.running.append(wid)
        rec.fired += 1
        rec.recent.append(ActionRecord(scheduled_us, now_us, wid, run_id, trigger))
        del rec.recent[:-RECENT_KEPT]
        return wid


def run_closed(machine: Machine, tx: Tx, fx: Effects, run: RunRecord, now_us: int) -> None:
    """``Machine.close_run``'s hook for a run with ``DuroScheduleId`` (see ``Schedules.run_closed``)."""
    Schedules(machine).run_closed(tx, fx, run, now_us)


def record_problems(schedule_id: str, raw: bytes | str, indexed: tuple[str, int | None] | None) -> list[str]:
    """What is wrong with a stored schedule record and its due-index entry (for ``duro check``).

    Args:
        schedule_id: the id the store keeps the record under.
        raw: the record as stored (JSON).
        indexed: (task queue, fire time) of its due-index entry as the store keeps it (None: no entry).
    """
    try:
        rec = decode_schedule(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        return [f"schedule {schedule_id!r}: its record cannot be read ({e})"]
    problems = []
    if rec.schedule_id != schedule_id:
        problems.append(f"schedule {schedule_id!r}: its record names schedule {rec.schedule_id!r}")
    expected = (rec.task_queue, rec.fire_at_us) if rec.fire_at_us is not None else None
    if indexed != expected and not (indexed is not None and indexed[1] is None and expected is None):
        problems.append(f"schedule {schedule_id!r}: the due index has {indexed}, the record says {expected} "
                        "(task queue, fire time µs); its workers would fire it at the wrong time or never")
    return problems
