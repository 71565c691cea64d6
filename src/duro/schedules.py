"""Schedules: start a workflow on a cron expression or at a fixed interval, durably, from any worker.

``client.create_schedule(id, workflow, *args, task_queue=..., cron="0 3 * * *")`` (or ``every=``)
stores a schedule; a worker of ``task_queue`` (any of them, in any process) fires it at each due
time, in one transaction with the run it starts, so each due time starts at most one run, however
many workers run and whichever of them crashes. ``client.get_schedule_handle(id)`` returns a
``ScheduleHandle`` (describe, pause, unpause, trigger, backfill, update, delete);
``client.list_schedules()`` lists them. The state machine is ``duro.engine.schedules``.

A run a schedule starts has the workflow id ``<schedule id>-<scheduled time>`` (ISO 8601 UTC, e.g.
``nightly-2026-01-01T03:00:00Z``) and the search attributes ``DuroScheduleId`` and
``DuroScheduledTime`` (filter ``list_workflows`` on them).
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from duro._schedule_loop import wake_schedule_loops
from duro._validate import check_call_args, check_duration, check_name
from duro._visibility import check_memo, check_search_attributes
from duro.activity import to_seconds
from duro.engine.schedules import (
    DEFAULT_CATCHUP_US,
    MAX_SCHEDULE_ID_BYTES,
    RESERVED_ATTRIBUTES,
    ActionRecord,
    Backfill,
    Create,
    Delete,
    OverlapPolicy,
    Pause,
    ScheduleCommand,
    ScheduleRecord,
    SpecRecord,
    Trigger,
    Update,
    check_cron,
    from_us,
    to_us,
    upcoming,
)
from duro.errors import ScheduleNotFoundError
from duro.workflow import get_workflow_definition

if TYPE_CHECKING:
    from duro.converter import DataConverter
    from duro.stores.base import Store

__all__ = ["OVERLAP_POLICIES", "ScheduleAction", "ScheduleClient", "ScheduleDescription", "ScheduleHandle",
           "ScheduleSpec"]

OVERLAP_POLICIES = tuple(p.value for p in OverlapPolicy)
"""The overlap policies: what a fire does while a run the schedule started is still open.

- ``"skip"`` (the default): start nothing for that time;
- ``"buffer_one"``: start it as soon as the open run closes (one fire waits; further ones are skipped);
- ``"allow_all"``: start it anyway;
- ``"cancel_other"``: request cancellation of the open run, and start this one once it closed;
- ``"terminate_other"``: terminate the open run and start this one at once.
"""

NEXT_RUNS_SHOWN = 5


class _Unset(enum.Enum):
    UNSET = "unset"


_UNSET = _Unset.UNSET
Time = datetime.datetime | float
Duration = datetime.timedelta | float


@dataclass(frozen=True)
class ScheduleSpec:
    """When a schedule is due: a cron expression (in ``time_zone``) or every ``every``, within bounds.

    ``start_at``/``end_at`` (inclusive) bound the due times; each fire is delayed by a random
    ``jitter`` at most (drawn once, stored: every worker fires at the same moment).
    """

    cron: str | None = None
    every: datetime.timedelta | None = None
    time_zone: str | None = None
    start_at: datetime.datetime | None = None
    end_at: datetime.datetime | None = None
    jitter: datetime.timedelta | None = None

    @classmethod
    def _from(cls, spec: SpecRecord) -> ScheduleSpec:
        return cls(cron=spec.cron, every=datetime.timedelta(microseconds=spec.every_us) if spec.every_us else None,
                   time_zone=spec.time_zone, start_at=from_us(spec.start_us) if spec.start_us else None,
                   end_at=from_us(spec.end_us) if spec.end_us else None,
                   jitter=datetime.timedelta(microseconds=spec.jitter_us) if spec.jitter_us else None)


@dataclass(frozen=True)
class ScheduleAction:
    """A run a schedule started: its scheduled time, when it started, its ids, and what fired it.

    ``trigger`` is ``"schedule"`` (a due time), ``"trigger"`` (``ScheduleHandle.trigger``) or
    ``"backfill"``.
    """

    scheduled_time: datetime.datetime
    started_at: datetime.datetime
    workflow_id: str
    run_id: str
    trigger: str

    @classmethod
    def _from(cls, a: ActionRecord) -> ScheduleAction:
        return cls(from_us(a.scheduled_us), from_us(a.started_us), a.workflow_id, a.run_id, a.trigger)


@dataclass(frozen=True)
class ScheduleDescription:
    """What ``ScheduleHandle.describe()`` and ``Client.list_schedules()`` report about a schedule.

    ``next_run_times`` are the next due times (up to five; none while paused or when no time is
    left), ``next_fire_time`` when the first of them fires (with its jitter). ``recent_runs`` are
    the last runs it started, oldest first; ``running_workflow_ids`` those of them open when it last
    looked; ``buffered`` the scheduled times waiting for them to close. ``fired_count`` counts
    runs started, ``skipped_count`` fires the overlap policy skipped (or whose workflow id had run
    already), ``missed_count`` due times passed beyond the catch-up window with no worker to fire them.
    """

    id: str
    workflow_type: str
    task_queue: str
    args: list[Any]
    spec: ScheduleSpec
    overlap: str
    paused: bool
    note: str
    next_run_times: list[datetime.datetime]
    next_fire_time: datetime.datetime | None
    recent_runs: list[ScheduleAction]
    running_workflow_ids: list[str]
    buffered: list[datetime.datetime]
    fired_count: int
    skipped_count: int
    missed_count: int
    catchup_window: datetime.timedelta
    created_at: datetime.datetime
    updated_at: datetime.datetime
    search_attributes: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _from(cls, rec: ScheduleRecord, converter: DataConverter) -> ScheduleDescription:
        nexts = [] if rec.paused else upcoming(rec.spec, rec.next_due_us, NEXT_RUNS_SHOWN)
        return cls(
            id=rec.schedule_id, workflow_type=rec.workflow_type, task_queue=rec.task_queue,
            args=converter.decode_args(rec.args, []), spec=ScheduleSpec._from(rec.spec), overlap=str(rec.overlap),
            paused=rec.paused, note=rec.note, next_run_times=[from_us(t) for t in nexts],
            next_fire_time=from_us(rec.next_fire_us) if nexts and rec.next_fire_us else None,
            recent_runs=[ScheduleAction._from(a) for a in rec.recent], running_workflow_ids=list(rec.running),
            buffered=[from_us(t) for t, _ in rec.buffered], fired_count=rec.fired, skipped_count=rec.skipped,
            missed_count=rec.missed, catchup_window=datetime.timedelta(microseconds=rec.catchup_us),
            created_at=from_us(rec.created_us), updated_at=from_us(rec.updated_us),
            search_attributes=dict(rec.search_attributes or {}), memo=dict(rec.memo or {}),
        )


# ---------------------------------------------------------------------------------------------- checks

def _schedule_id(schedule_id: object) -> str:
    sid = check_name("schedule id", schedule_id)
    if len(sid.encode()) > MAX_SCHEDULE_ID_BYTES:
        raise ValueError(f"schedule id is {len(sid.encode())} bytes long in UTF-8; the limit is "
                         f"{MAX_SCHEDULE_ID_BYTES} (the workflow ids of its runs add the scheduled time)")
    return sid


def _overlap(value: object) -> OverlapPolicy:
    if isinstance(value, str) and value in OVERLAP_POLICIES:
        return OverlapPolicy(value)
    raise ValueError(f"overlap must be one of {', '.join(OVERLAP_POLICIES)}; got {value!r}")


def _time_us(name: str, value: object) -> int:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (e.g. datetime.datetime.now(datetime.UTC)); got {value!r}")
        return to_us(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e11:
        return round(value * 1_000_000)
    raise TypeError(f"{name} must be a timezone-aware datetime or epoch seconds; got {value!r}")


def _duration_us(name: str, value: object, *, allow_zero: bool) -> int:
    seconds = check_duration(name, value, allow_zero=allow_zero)
    t = round(seconds * 1_000_000)
    if not allow_zero and t < 1:
        raise ValueError(f"{name} must be at least one microsecond; got {value!r}")
    return t


def _note(note: object) -> str:
    if not isinstance(note, str):
        raise TypeError(f"note must be a str, not {type(note).__name__}")
    if "\x00" in note or len(note.encode()) > 4096:
        raise ValueError("note must hold no NUL and be at most 4096 bytes in UTF-8")
    return note


def check_spec(spec: SpecRecord) -> SpecRecord:
    """Raise ValueError naming what is wrong with a spec (both or neither of cron and every, bad bounds...)."""
    if (spec.cron is None) == (not spec.every_us):
        raise ValueError("give exactly one of cron= (a cron expression) or every= (an interval): "
                         + ("both were given" if spec.cron is not None else "neither was given"))
    if spec.time_zone is not None:
        if spec.cron is None:
            raise ValueError("time_zone applies to cron schedules; an every= interval does not depend on it")
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(spec.time_zone)
        except (ValueError, KeyError, OSError):
            raise ValueError(f"time_zone {spec.time_zone!r} is not a known IANA time zone (e.g. 'Europe/Paris', "
                             "'America/New_York', 'UTC')") from None
    if spec.cron is not None:
        check_cron(spec.cron, spec.time_zone)
    if spec.start_us and spec.end_us and spec.end_us < spec.start_us:
        raise ValueError(f"end_at ({from_us(spec.end_us).isoformat()}) is before start_at "
                         f"({from_us(spec.start_us).isoformat()})")
    return spec


def _spec(cron: object, every: object, time_zone: object, start_at: object, end_at: object,
          jitter: object) -> SpecRecord:
    if cron is not None and not isinstance(cron, str):
        raise TypeError(f"cron must be a str such as '0 3 * * *', not {type(cron).__name__}")
    if time_zone is not None and not isinstance(time_zone, str):
        raise TypeError(f"time_zone must be a str such as 'Europe/Paris', not {type(time_zone).__name__}")
    return check_spec(SpecRecord(
        cron=cron, every_us=_duration_us("every", every, allow_zero=False) if every is not None else 0,
        time_zone=time_zone, start_us=_time_us("start_at", start_at) if start_at is not None else 0,
        end_us=_time_us("end_at", end_at) if end_at is not None else 0,
        jitter_us=_duration_us("jitter", jitter, allow_zero=True) if jitter is not None else 0))


def _attributes(search_attributes: object) -> dict[str, Any] | None:
    if search_attributes is None:
        return None
    attrs = check_search_attributes(search_attributes)
    taken = [name for name in RESERVED_ATTRIBUTES if name in attrs]
    if taken:
        raise ValueError(f"search attribute(s) {taken} are set by the schedule on each run; use other names")
    return attrs or None


def _workflow(workflow: Callable[..., Any] | str, args: Sequence[Any] | None) -> str:
    """The registered name; the arguments checked against the function's parameters (None: not given)."""
    if isinstance(workflow, str):
        return check_name("workflow name", workflow)
    defn = get_workflow_definition(workflow)
    if args is not None:
        check_call_args("workflow", defn.name, defn.signature, args)
    return defn.name


# ---------------------------------------------------------------------------------------------- the API

class ScheduleHandle:
    """A reference to a schedule by id (``client.get_schedule_handle(id)``, ``client.create_schedule(...)``).

    Every method raises ``duro.ScheduleNotFoundError`` (writing nothing) when the store has no
    schedule with this id.
    """

    def __init__(self, client: ScheduleClient, schedule_id: str) -> None:
        self.client = client
        self.id = schedule_id

    def __repr__(self) -> str:
        return f"ScheduleHandle(id={self.id!r})"

    async def _do(self, command: ScheduleCommand) -> tuple[ScheduleRecord | None, list[str]]:
        store = self.client.store
        change = await store.change_schedule(command)
        wake_schedule_loops(store)  # this process's workers: the due times may have moved
        return change.record, change.started

    async def describe(self) -> ScheduleDescription:
        """The schedule: its spec and policies, next due times, recent runs, paused state and note."""
        rec = await self.client.store.aread_schedule(self.id)
        if rec is None:
            raise ScheduleNotFoundError(self.id)
        return ScheduleDescription._from(rec, self.client.converter)

    async def pause(self, note: str = "") -> None:
        """Stop firing (runs already started go on); ``note`` says why (shown by describe)."""
        await self._do(Pause(self.id, True, _note(note)))

    async def unpause(self, note: str = "") -> None:
        """Fire again, from the next due time after now (times passed while paused are not caught up)."""
        await self._do(Pause(self.id, False, _note(note)))

    async def trigger(self, overlap: str | None = None) -> str | None:
        """Fire now, once, besides the due times; returns the workflow id started (None: skipped or buffered).

        As in Temporal, the schedule's overlap policy applies unless ``overlap`` names another: with
        the default "skip", a trigger while a run of the schedule is open starts nothing; pass
        ``overlap="allow_all"`` to start one regardless. The run's scheduled time is now. A paused
        schedule can be triggered (a buffered trigger waits for the unpause).
        """
        policy = _overlap(overlap) if overlap is not None else None
        _, started = await self._do(Trigger(self.id, policy))
        return started[0] if started else None

    async def backfill(self, start: Time, end: Time, overlap: str | None = None) -> list[str]:
        """Fire every due time of the spec in [start, end), oldest first, as if the schedule had run then.

        The schedule's ``start_at``/``end_at`` and jitter do not apply; its overlap policy does,
        unless ``overlap`` names another (with "skip", only the first time starts while its run
        is open; "allow_all" starts them all). A time that already has its run (a regular fire, an
        earlier backfill) is not started again. At most 1,000 times per call.

        Returns:
            The workflow ids of the runs started, in order.

        Raises:
            ValueError: ``end`` is not after ``start``, or the range holds more than 1,000 due times
                (nothing is written).
        """
        start_us, end_us = _time_us("start", start), _time_us("end", end)
        if end_us <= start_us:
            raise ValueError(f"backfill: end ({from_us(end_us).isoformat()}) must be after start "
                             f"({from_us(start_us).isoformat()})")
        policy = _overlap(overlap) if overlap is not None else None
        _, started = await self._do(Backfill(self.id, start_us, end_us, policy))
        return started

    async def update(self, *, workflow: Callable[..., Any] | str | _Unset = _UNSET,
                     args: Sequence[Any] | _Unset = _UNSET, task_queue: str | _Unset = _UNSET,
                     cron: str | _Unset | None = _UNSET, every: Duration | _Unset | None = _UNSET,
                     time_zone: str | _Unset | None = _UNSET, start_at: Time | _Unset | None = _UNSET,
                     end_at: Time | _Unset | None = _UNSET, jitter: Duration | _Unset | None = _UNSET,
                     overlap: str | _Unset = _UNSET, catchup_window: Duration | _Unset = _UNSET,
                     search_attributes: dict[str, Any] | _Unset | None = _UNSET,
                     memo: dict[str, Any] | _Unset | None = _UNSET,
                     execution_timeout: Duration | _Unset | None = _UNSET,
                     run_timeout: Duration | _Unset | None = _UNSET) -> ScheduleDescription:
        """Change what the schedule starts or when; only the options given change (None clears an optional one).

        Giving ``cron`` clears ``every`` and the reverse. A change of the spec (cron, every, time
        zone, bounds, jitter) recomputes the next due time from now. Runs already started are not
        touched. Arguments are those of ``Client.create_schedule``; ``args`` is the list of the
        workflow's arguments.

        Returns:
            The schedule as it is now.

        Raises:
            ValueError, TypeError: a bad option, as for ``create_schedule`` (nothing is written).
        """
        changes: dict[str, Any] = {}
        if not isinstance(args, _Unset):
            if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
                raise TypeError(f"args must be a list or tuple of the workflow's arguments, got {type(args).__name__}")
            changes["args"] = self.client.converter.encode_args(tuple(args))
        if not isinstance(workflow, _Unset):
            changes["workflow_type"] = _workflow(workflow, None if isinstance(args, _Unset) else args)
        if not isinstance(task_queue, _Unset):
            changes["task_queue"] = check_name("task_queue", task_queue)
        if not isinstance(overlap, _Unset):
            changes["overlap"] = _overlap(overlap)
        if not isinstance(catchup_window, _Unset):
            changes["catchup_us"] = _duration_us("catchup_window", catchup_window, allow_zero=False)
        if not isinstance(search_attributes, _Unset):
            changes["search_attributes"] = _attributes(search_attributes)
        if not isinstance(memo, _Unset):
            changes["memo"] = check_memo(memo) or None if memo is not None else None
        if not isinstance(execution_timeout, _Unset):
            changes["execution_timeout"] = to_seconds(execution_timeout, "execution_timeout")
        if not isinstance(run_timeout, _Unset):
            changes["run_timeout"] = to_seconds(run_timeout, "run_timeout")
        spec: dict[str, Any] = {}
        if not isinstance(cron, _Unset) and not isinstance(every, _Unset) and cron is not None and every is not None:
            raise ValueError("give exactly one of cron= (a cron expression) or every= (an interval): both were given")
        if not isinstance(cron, _Unset):
            if cron is not None and not isinstance(cron, str):
                raise TypeError(f"cron must be a str such as '0 3 * * *', not {type(cron).__name__}")
            spec["cron"] = cron
            if cron is not None:
                spec["every_us"] = 0
        if not isinstance(every, _Unset):
            spec["every_us"] = _duration_us("every", every, allow_zero=False) if every is not None else 0
            if every is not None:
                spec["cron"] = None
                spec["time_zone"] = None
        if not isinstance(time_zone, _Unset):
            spec["time_zone"] = time_zone
        if not isinstance(start_at, _Unset):
            spec["start_us"] = _time_us("start_at", start_at) if start_at is not None else 0
        if not isinstance(end_at, _Unset):
            spec["end_us"] = _time_us("end_at", end_at) if end_at is not None else 0
        if not isinstance(jitter, _Unset):
            spec["jitter_us"] = _duration_us("jitter", jitter, allow_zero=True) if jitter is not None else 0
        if spec:
            current = await self.client.store.aread_schedule(self.id)
            if current is None:
                raise ScheduleNotFoundError(self.id)
            merged = {**{f: getattr(current.spec, f) for f in SpecRecord.__struct_fields__}, **spec}
            changes["spec"] = check_spec(SpecRecord(**merged))
        rec, _ = await self._do(Update(self.id, changes))
        assert rec is not None
        return ScheduleDescription._from(rec, self.client.converter)

    async def delete(self) -> None:
        """Delete the schedule; runs it started go on."""
        await self._do(Delete(self.id))


class ScheduleClient:
    """The schedule methods of ``duro.Client`` (a mixin: it uses the client's store and converter)."""

    store: Store
    converter: DataConverter

    async def create_schedule(
        self,
        schedule_id: str,
        workflow: Callable[..., Any] | str,
        *args: Any,
        task_queue: str,
        cron: str | None = None,
        every: Duration | None = None,
        overlap: str = "skip",
        jitter: Duration | None = None,
        start_at: Time | None = None,
        end_at: Time | None = None,
        paused: bool = False,
        note: str = "",
        time_zone: str | None = None,
        catchup_window: Duration | None = None,
        search_attributes: dict[str, Any] | None = None,
        memo: dict[str, Any] | None = None,
        execution_timeout: Duration | None = None,
        run_timeout: Duration | None = None,
    ) -> ScheduleHandle:
        """Create a schedule that starts ``workflow(*args)`` on ``task_queue`` at each due time.

        A worker of ``task_queue`` fires it (any one that is alive; each due time once). The first
        due time is the spec's first after now (or ``start_at``).

        Args:
            schedule_id: the schedule's id (at most 200 bytes: its runs' workflow ids add the time).
            workflow: the ``@duro.workflow`` function, or its registered name.
            *args: the workflow's arguments, the same for every run.
            task_queue: the queue whose workers fire the schedule and run its workflows.
            cron: a cron expression, in UTC unless ``time_zone`` is given: five fields (minute hour
                day-of-month month day-of-week, e.g. ``"0 3 * * *"``), or six with seconds first;
                parsed by cronsim.
            every: an interval (a timedelta or seconds) instead of ``cron``; due times are
                ``start_at + k * every`` (the Unix epoch when there is no ``start_at``).
            overlap: what a fire does while a run the schedule started is open: "skip" (default),
                "buffer_one", "allow_all", "cancel_other" or "terminate_other" (see
                ``duro.schedules.OVERLAP_POLICIES``).
            jitter: delay each fire by a random amount up to this (drawn once per due time and
                stored, so every worker fires at the same moment; never past the next due time).
            start_at: no due time before this (a timezone-aware datetime or epoch seconds).
            end_at: no due time after this.
            paused: create it paused (``unpause()`` starts it).
            note: a note shown by ``describe()`` (why it is paused, say).
            time_zone: the IANA time zone the cron expression is read in (e.g. "Europe/Paris").
            catchup_window: due times older than this when a worker gets to them (no worker ran
                meanwhile) are counted as missed instead of fired; default a year.
            search_attributes: set on every run (besides ``DuroScheduleId``/``DuroScheduledTime``).
            memo: set on every run.
            execution_timeout: each run's execution timeout.
            run_timeout: each run's run timeout.

        Returns:
            A handle on the schedule.

        Raises:
            duro.ScheduleAlreadyExistsError: a schedule with this id exists.
            ValueError: a malformed cron expression, both or neither of ``cron`` and ``every``, an
                interval that is not positive, ``end_at`` before ``start_at``, an unknown
                overlap policy or time zone, a bad id or name.
            TypeError: an option of the wrong type, or arguments that do not fit the workflow.

        Nothing is written when any of these is raised.
        """
        sid = _schedule_id(schedule_id)
        workflow_type = _workflow(workflow, args)
        queue = check_name("task_queue", task_queue)
        if not isinstance(paused, bool):
            raise TypeError(f"paused must be a bool, not {type(paused).__name__}")
        rec = ScheduleRecord(
            schedule_id=sid, workflow_type=workflow_type, task_queue=queue,
            args=self.converter.encode_args(args),
            spec=_spec(cron, every, time_zone, start_at, end_at, jitter), overlap=_overlap(overlap),
            catchup_us=(_duration_us("catchup_window", catchup_window, allow_zero=False)
                        if catchup_window is not None else DEFAULT_CATCHUP_US),
            paused=paused, note=_note(note), search_attributes=_attributes(search_attributes),
            memo=(check_memo(memo) or None) if memo is not None else None,
            execution_timeout=to_seconds(execution_timeout, "execution_timeout"),
            run_timeout=to_seconds(run_timeout, "run_timeout"))
        handle = ScheduleHandle(self, sid)
        await handle._do(Create(rec))
        return handle

    def get_schedule_handle(self, schedule_id: str) -> ScheduleHandle:
        """A handle on the schedule with this id (each of its methods says if there is none).

        Raises:
            ValueError, TypeError: ``schedule_id`` is not a valid id.
        """
        return ScheduleHandle(self, _schedule_id(schedule_id))

    async def list_schedules(self) -> list[ScheduleDescription]:
        """Every schedule in the store, by id."""
        return [ScheduleDescription._from(rec, self.converter) for rec in await self.store.alist_schedules()]
