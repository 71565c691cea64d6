"""The schedule state machine (``duro.engine.schedules``) over the in-memory ``Tx``: due times, fires, policies."""

from __future__ import annotations

import re
from typing import Any

import pytest

from duro._core import codec
from duro.engine.machine import Effects
from duro.engine.records import RunStatus
from duro.engine.schedules import (
    MAX_BACKFILL,
    SCHEDULE_ID_ATTR,
    SCHEDULED_TIME_ATTR,
    Backfill,
    Create,
    Delete,
    OverlapPolicy,
    Pause,
    ScheduleChange,
    ScheduleCommand,
    ScheduleRecord,
    Schedules,
    SpecRecord,
    Trigger,
    Update,
    check_cron,
    from_us,
    next_after,
    to_us,
    upcoming,
    workflow_id_for,
)
from duro.errors import ScheduleAlreadyExistsError, ScheduleNotFoundError
from duro.stores.base import run_key_of
from tests.unit.machine_env import Env, Q, S, cmd
from tests.unit.memtx import START_US, MemTx

MIN = 60 * S
# START_US is 2023-11-14T22:13:20Z: the next whole minute is 22:14:00.
NEXT_MINUTE = START_US + 40 * S


def record(sid: str = "s", *, every_s: float = 0, cron: str | None = None, **kw: Any) -> ScheduleRecord:
    spec_kw = {k: kw.pop(k) for k in ("start_us", "end_us", "jitter_us", "time_zone") if k in kw}
    spec = SpecRecord(cron=cron, every_us=round(every_s * S), **spec_kw)
    return ScheduleRecord(schedule_id=sid, workflow_type="Wf", task_queue=Q, args=b'["a"]', spec=spec, **kw)


class Sched:
    """An ``Env`` with the schedule transitions (jitter drawn by ``rand``)."""

    def __init__(self, rand: float = 0.5) -> None:
        self.env = Env()
        self.rand = rand
        self.schedules = Schedules(self.env.machine, rand=lambda: self.rand)

    def do(self, command: ScheduleCommand) -> ScheduleChange:
        return self.env.apply(lambda tx, fx: self.schedules.apply(tx, fx, command))

    def create(self, rec: ScheduleRecord) -> ScheduleRecord:
        got = self.do(Create(rec)).record
        assert got is not None
        return got

    def get(self, sid: str = "s") -> ScheduleRecord:
        rec = self.env.store.view().schedule(sid)
        assert rec is not None
        return rec

    def fire(self, sid: str = "s", schedules: Schedules | None = None) -> list[str]:
        s = schedules or self.schedules
        return self.env.apply(lambda tx, fx: s.fire(tx, fx, sid, self.env.now))

    def at(self, t_us: int) -> None:
        self.env.clock.now_us = t_us

    def fire_due(self) -> list[str]:
        """What a worker's sweep does: fire every due schedule of the queue, in one transaction."""
        def sweep(tx: MemTx, fx: Effects) -> list[str]:
            out: list[str] = []
            for sid in tx.due_schedules(Q, self.env.now):
                out += self.schedules.fire(tx, fx, sid, self.env.now)
            return out
        return self.env.apply(sweep)

    def close(self, workflow_id: str, status: str = "completed") -> None:
        key = run_key_of(self.env.index(workflow_id).run_id)  # type: ignore[union-attr]
        ev = codec.WORKFLOW_COMPLETED if status == "completed" else codec.WORKFLOW_FAILED
        self.env.complete(key, [cmd(ev, payload=b'"done"' if status == "completed" else b"{}")], close_status=status)

    def status(self, workflow_id: str) -> str:
        idx = self.env.index(workflow_id)
        assert idx is not None
        return str(idx.status)


# ---------------------------------------------------------------------------------------------- due times

def test_interval_times_are_anchored_to_the_epoch_or_the_start() -> None:
    spec = SpecRecord(every_us=MIN)
    assert next_after(spec, START_US) == NEXT_MINUTE
    assert next_after(spec, NEXT_MINUTE) == NEXT_MINUTE + MIN  # strictly after
    started = SpecRecord(every_us=MIN, start_us=START_US + 7 * S)
    assert next_after(started, 0) == START_US + 7 * S
    assert upcoming(started, START_US + 7 * S, 3) == [START_US + 7 * S, START_US + 67 * S, START_US + 127 * S]


def test_cron_times_in_utc_and_in_a_time_zone() -> None:
    spec = SpecRecord(cron="0 3 * * *")
    first = next_after(spec, START_US)
    assert first is not None and from_us(first).isoformat() == "2023-11-15T03:00:00+00:00"
    assert next_after(spec, first) == first + 86400 * S
    every5 = SpecRecord(cron="*/5 * * * *")
    assert [from_us(t).strftime("%H:%M") for t in upcoming(every5, next_after(every5, START_US) or 0, 3)] == [
        "22:15", "22:20", "22:25"]
    ny = SpecRecord(cron="0 3 * * *", time_zone="America/New_York")
    t = next_after(ny, START_US)
    assert t is not None and from_us(t).isoformat() == "2023-11-15T08:00:00+00:00"  # 03:00 EST
    seconds = SpecRecord(cron="*/10 * * * * *")  # six fields: seconds first
    assert next_after(seconds, START_US) == START_US + 10 * S


def test_start_and_end_bound_the_due_times() -> None:
    spec = SpecRecord(every_us=MIN, start_us=NEXT_MINUTE + MIN, end_us=NEXT_MINUTE + 3 * MIN)
    assert upcoming(spec, next_after(spec, START_US) or 0, 10) == [
        NEXT_MINUTE + MIN, NEXT_MINUTE + 2 * MIN, NEXT_MINUTE + 3 * MIN]  # the end is inclusive
    assert next_after(spec, NEXT_MINUTE + 3 * MIN) is None


def test_a_malformed_cron_expression_is_named() -> None:
    for expr in ("bad", "61 * * * *", "* * * *", "0 0 31 2 *"):
        with pytest.raises(ValueError, match=re.escape(f"cron expression {expr!r} is malformed")):
            check_cron(expr)
    check_cron("0 3 * * MON-FRI")


def test_workflow_ids_and_times() -> None:
    assert workflow_id_for("nightly", NEXT_MINUTE) == "nightly-2023-11-14T22:14:00Z"
    assert workflow_id_for("fast", NEXT_MINUTE + 200_000) == "fast-2023-11-14T22:14:00.200000Z"
    assert to_us(from_us(NEXT_MINUTE + 7)) == NEXT_MINUTE + 7


# ---------------------------------------------------------------------------------------------- fires

def test_a_fire_starts_the_run_and_advances_the_due_time_in_one_transaction() -> None:
    s = Sched()
    rec = s.create(record(every_s=60))
    assert (rec.next_due_us, rec.next_fire_us, rec.fire_at_us) == (NEXT_MINUTE, NEXT_MINUTE, NEXT_MINUTE)
    s.at(NEXT_MINUTE - 1)
    assert s.fire_due() == []  # not yet: nothing written
    s.at(NEXT_MINUTE)
    wid = "s-2023-11-14T22:14:00Z"
    assert s.fire_due() == [wid]
    rec = s.get()
    assert (rec.next_due_us, rec.fired, rec.running) == (NEXT_MINUTE + MIN, 1, [wid])
    assert [(a.scheduled_us, a.workflow_id, a.trigger) for a in rec.recent] == [(NEXT_MINUTE, wid, "schedule")]
    run = s.env.rec(run_key_of(rec.recent[0].run_id))
    assert (run.workflow_type, run.task_queue, run.status) == ("Wf", Q, RunStatus.RUNNING)
    assert run.search_attributes == {SCHEDULE_ID_ATTR: "s", SCHEDULED_TIME_ATTR: "2023-11-14T22:14:00+00:00"}
    assert s.env.history(run_key_of(rec.recent[0].run_id))[0].type == codec.WORKFLOW_STARTED
    assert s.env.wtask(run_key_of(rec.recent[0].run_id)) is not None


def test_a_due_time_fires_once_with_two_workers_and_a_stale_replay_starts_no_second_run() -> None:
    s = Sched()
    s.create(record(every_s=60, overlap=OverlapPolicy.ALLOW_ALL))
    s.at(NEXT_MINUTE)
    other = Schedules(s.env.machine_for("owner-of-another-process"))
    before = s.env.store.state.copy()  # the record as the slower worker read it
    assert s.fire() == ["s-2023-11-14T22:14:00Z"]
    assert s.fire(schedules=other) == []  # it read the record after the first commit: not due
    assert s.get().fired == 1
    # A fire computed from the record before that commit (a lost race replayed, a restored
    # snapshot): the run's workflow id is taken, so no second run for that time.
    tx, fx = s.env.store.begin(), Effects()
    tx.state.schedules["s"] = before.schedules["s"]
    assert other.fire(tx, fx, "s", s.env.now) == []
    rec = tx.schedule("s")
    assert rec is not None and (rec.fired, rec.skipped) == (0, 1)
    assert [wid for wid in tx.state.index if wid.startswith("s-")] == ["s-2023-11-14T22:14:00Z"]


def test_several_due_times_passed_fire_each_once_and_times_past_the_catchup_window_are_missed() -> None:
    s = Sched()
    s.create(record(every_s=60, overlap=OverlapPolicy.ALLOW_ALL, catchup_us=150 * S))
    s.at(NEXT_MINUTE + 4 * MIN)  # five due times: the first two are older than 150 s
    started = s.fire()
    assert started == [workflow_id_for("s", NEXT_MINUTE + i * MIN) for i in (2, 3, 4)]
    rec = s.get()
    assert (rec.fired, rec.missed, rec.next_due_us) == (3, 2, NEXT_MINUTE + 5 * MIN)
    assert s.fire() == []


def test_jitter_is_drawn_once_stored_and_kept_below_the_gap() -> None:
    s = Sched(rand=0.5)
    rec = s.create(record(every_s=60, jitter_us=10 * S))
    assert (rec.next_due_us, rec.next_fire_us) == (NEXT_MINUTE, NEXT_MINUTE + 5 * S)
    s.rand = 0.9  # a later draw does not move a time already drawn
    s.at(NEXT_MINUTE + 4 * S)
    assert s.fire_due() == []
    s.at(NEXT_MINUTE + 5 * S)
    assert s.fire_due() == ["s-2023-11-14T22:14:00Z"]  # named by its due time, not its jittered one
    rec = s.get()
    assert (rec.next_due_us, rec.next_fire_us) == (NEXT_MINUTE + MIN, NEXT_MINUTE + MIN + 9 * S)
    wide = s.create(record("wide", every_s=60, jitter_us=600 * S))  # capped by the 60 s to the next time
    assert wide.next_fire_us - wide.next_due_us == 54 * S


def test_start_at_and_end_at() -> None:
    s = Sched()
    rec = s.create(record(every_s=60, start_us=NEXT_MINUTE + 2 * MIN, end_us=NEXT_MINUTE + 3 * MIN,
                          overlap=OverlapPolicy.ALLOW_ALL))
    assert rec.next_due_us == NEXT_MINUTE + 2 * MIN
    s.at(NEXT_MINUTE + 3 * MIN)
    assert len(s.fire()) == 2
    rec = s.get()
    assert (rec.next_due_us, rec.fire_at_us) == (0, None)  # no time left: out of the due index
    s.at(NEXT_MINUTE + 10 * MIN)
    assert s.fire_due() == []


# ---------------------------------------------------------------------------------------------- overlap

def _two_fires(policy: OverlapPolicy) -> Sched:
    s = Sched()
    s.create(record(every_s=60, overlap=policy))
    s.at(NEXT_MINUTE)
    assert s.fire() == [workflow_id_for("s", NEXT_MINUTE)]
    s.at(NEXT_MINUTE + MIN)
    return s


FIRST, SECOND, THIRD = (workflow_id_for("s", NEXT_MINUTE + i * MIN) for i in range(3))


def test_skip_starts_nothing_while_a_run_is_open() -> None:
    s = _two_fires(OverlapPolicy.SKIP)
    assert s.fire() == []
    assert (s.get().skipped, s.get().running) == (1, [FIRST])
    s.close(FIRST)
    assert s.get().running == []  # the close hook forgot it
    s.at(NEXT_MINUTE + 2 * MIN)
    assert s.fire() == [THIRD]


def test_allow_all_starts_regardless() -> None:
    s = _two_fires(OverlapPolicy.ALLOW_ALL)
    assert s.fire() == [SECOND]
    assert s.get().running == [FIRST, SECOND]


def test_buffer_one_starts_the_buffered_fire_in_the_transaction_that_closes_the_open_run() -> None:
    s = _two_fires(OverlapPolicy.BUFFER_ONE)
    assert s.fire() == []
    assert s.get().buffered == [(NEXT_MINUTE + MIN, "schedule")]
    s.at(NEXT_MINUTE + 2 * MIN)
    assert s.fire() == []  # one waits already: this one is skipped
    assert (s.get().buffered, s.get().skipped) == ([(NEXT_MINUTE + MIN, "schedule")], 1)
    s.close(FIRST, "failed")
    rec = s.get()
    assert (rec.running, rec.buffered, rec.fired) == ([SECOND], [], 2)
    assert s.status(SECOND) == "running"


def test_cancel_other_requests_cancellation_and_starts_once_it_closed() -> None:
    s = _two_fires(OverlapPolicy.CANCEL_OTHER)
    assert s.fire() == []
    first = run_key_of(s.env.index(FIRST).run_id)  # type: ignore[union-attr]
    assert s.env.types(first)[-1] == codec.WORKFLOW_CANCEL_REQUESTED
    assert s.get().buffered == [(NEXT_MINUTE + MIN, "schedule")]
    s.close(FIRST)
    assert s.get().running == [SECOND]


def test_terminate_other_terminates_and_starts_at_once() -> None:
    s = _two_fires(OverlapPolicy.TERMINATE_OTHER)
    assert s.fire() == [SECOND]
    assert s.status(FIRST) == "terminated"
    assert (s.get().running, s.get().fired) == ([SECOND], 2)


def test_a_run_that_continues_as_new_stays_open_for_the_policy() -> None:
    s = _two_fires(OverlapPolicy.SKIP)
    key = run_key_of(s.env.index(FIRST).run_id)  # type: ignore[union-attr]
    s.env.complete(key, [cmd(codec.WORKFLOW_CONTINUED_AS_NEW, 0, "Wf", b"[]")], close_status="continued_as_new")
    assert s.get().running == [FIRST]
    assert s.fire() == []


# ---------------------------------------------------------------------------------------------- commands

def test_pause_stops_fires_and_unpause_resumes_from_now_without_catching_up() -> None:
    s = Sched()
    s.create(record(every_s=60))
    rec = s.do(Pause("s", True, "maintenance")).record
    assert rec is not None and (rec.paused, rec.note, rec.fire_at_us) == (True, "maintenance", None)
    s.at(NEXT_MINUTE + 5 * MIN)
    assert s.fire() == [] and s.fire_due() == []
    s.at(NEXT_MINUTE + 5 * MIN + 30 * S)
    rec = s.do(Pause("s", False, "done")).record
    assert rec is not None and (rec.paused, rec.note, rec.next_due_us) == (False, "done", NEXT_MINUTE + 6 * MIN)
    assert rec.fired == rec.missed == 0


def test_trigger_fires_now_under_the_policy() -> None:
    s = _two_fires(OverlapPolicy.SKIP)
    assert s.do(Trigger("s")).started == []  # the schedule's policy: skip
    now = s.env.now
    assert s.do(Trigger("s", OverlapPolicy.ALLOW_ALL)).started == [workflow_id_for("s", now)]
    assert s.get().recent[-1].trigger == "trigger"
    assert s.get().next_due_us == NEXT_MINUTE + MIN  # the schedule's own times are not moved


def test_backfill_fires_each_due_time_of_the_range_once() -> None:
    s = Sched()
    s.create(record(every_s=60, overlap=OverlapPolicy.ALLOW_ALL))
    start, end = NEXT_MINUTE - 10 * MIN, NEXT_MINUTE - 7 * MIN
    change = s.do(Backfill("s", start, end))
    assert change.started == [workflow_id_for("s", start + i * MIN) for i in range(3)]  # [start, end)
    assert s.do(Backfill("s", start, end)).started == []  # again: those times ran, no second run
    assert s.get().skipped == 3
    skip = s.do(Backfill("s", end, end + 2 * MIN, OverlapPolicy.SKIP))  # runs are open: skipped
    assert skip.started == []


def test_update_changes_the_spec_and_moves_the_next_time() -> None:
    s = Sched()
    s.create(record(every_s=60))
    rec = s.do(Update("s", {"spec": SpecRecord(cron="0 3 * * *"), "args": b'["b"]'})).record
    assert rec is not None and from_us(rec.next_due_us).isoformat() == "2023-11-15T03:00:00+00:00"
    assert rec.args == b'["b"]'
    moved = s.do(Update("s", {"task_queue": "other"})).record
    assert moved is not None and moved.next_due_us == rec.next_due_us
    assert s.env.store.view().due_schedules("other", rec.next_due_us) == ["s"]


def test_delete_leaves_its_runs_running() -> None:
    s = _two_fires(OverlapPolicy.SKIP)
    assert s.do(Delete("s")).record is None
    assert s.env.store.view().schedule("s") is None
    assert s.status(FIRST) == "running"
    s.close(FIRST)  # the hook finds no schedule: nothing else happens
    assert s.status(FIRST) == "completed"


# ---------------------------------------------------------------------------------------------- bad input

def test_an_unknown_id_is_refused_before_anything_is_written() -> None:
    s = Sched()
    schedules = s.schedules
    commands: list[ScheduleCommand] = [Pause("nope", True, ""), Pause("nope", False, ""), Trigger("nope"),
                                       Backfill("nope", START_US, START_US + MIN), Update("nope", {"note": "x"}),
                                       Delete("nope")]
    for command in commands:
        def apply(tx: MemTx, fx: Effects, c: ScheduleCommand = command) -> ScheduleChange:
            return schedules.apply(tx, fx, c)

        err = s.env.refuses(ScheduleNotFoundError, apply)
        assert "schedule 'nope' is not in this store" in str(err)


def test_an_existing_id_and_a_bad_backfill_are_refused_before_anything_is_written() -> None:
    s = Sched()
    s.create(record(every_s=60))
    schedules = s.schedules
    s.env.refuses(ScheduleAlreadyExistsError, lambda tx, fx: schedules.apply(tx, fx, Create(record(every_s=5))))
    err = s.env.refuses(ValueError, lambda tx, fx: schedules.apply(tx, fx, Backfill("s", START_US, START_US)))
    assert "the end must be after the start" in str(err)
    too_many = Backfill("s", START_US, START_US + (MAX_BACKFILL + 1) * MIN)
    err = s.env.refuses(ValueError, lambda tx, fx: schedules.apply(tx, fx, too_many))
    assert f"more than {MAX_BACKFILL} due times" in str(err)
