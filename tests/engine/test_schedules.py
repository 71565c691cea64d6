"""Schedules end to end on each store: fired by workers, in a time-skipping environment, by several workers
(two connections in this process, a worker in another process), and after a worker died mid-way."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import duro
from duro._core import codec
from duro.engine.schedules import workflow_id_for
from duro.schedules import ScheduleHandle
from duro.testing import WorkflowEnvironment
from tests.waiting import eventually

Q = "sched"
UTC = datetime.UTC
REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().with_name("schedule_worker.py")
ATTR_ID, ATTR_TIME = "DuroScheduleId", "DuroScheduledTime"


@duro.workflow(name="sched_probe")
async def probe(ctx: duro.WorkflowContext) -> str:
    """Answers which process ran it ("main": this one; schedule_worker.py answers its label)."""
    return "main"


@duro.workflow(name="sched_waiter")
async def waiter(ctx: duro.WorkflowContext) -> str:
    """Stays open until signalled "go" (a run that overlaps the next fire)."""
    await ctx.wait_signal("go")
    return "main"


WORKFLOWS = [probe, waiter]


def us(t: datetime.datetime) -> int:
    return round(t.timestamp() * 1_000_000)


async def runs_of(client: duro.Client, schedule_id: str) -> list[duro.WorkflowExecution]:
    """The runs a schedule started, by scheduled time."""
    found = await client.list_workflows(search_attributes={ATTR_ID: schedule_id}, limit=10_000)
    return sorted(found, key=lambda w: w.search_attributes[ATTR_TIME])


async def fired(handle: ScheduleHandle, n: int) -> bool:
    return (await handle.describe()).fired_count >= n


# ---------------------------------------------------------------------------------------------- time skipping

async def skip_until(env: WorkflowEnvironment, check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Move the environment's clock to each next fire until ``check()`` holds.

    Time skips by itself only while a test waits for a workflow's result (as in Temporal); a test of
    schedules waits for fires, so it moves the clock itself, one due time after another.
    """

    async def moved_on() -> bool:
        if await check():
            return True
        due = await env.client.store.anext_schedule_due()
        await env.sleep(max(0.0, due - env.clock.now()) + 0.001 if due is not None else 1.0)
        return False

    await eventually(moved_on, what)


async def test_a_cron_schedule_fires_every_minute_in_a_time_skipping_environment(store: str) -> None:
    began = time.monotonic()
    async with WorkflowEnvironment(store=store, time_skipping=True) as env, \
            duro.Worker(env.client, task_queue=Q, workflows=WORKFLOWS):
        client = env.client
        sh = await client.create_schedule("minutely", probe, task_queue=Q, cron="* * * * *")
        first = (await sh.describe()).next_run_times[0]
        assert first.second == 0 and first > datetime.datetime.now(UTC) - datetime.timedelta(minutes=1)
        await skip_until(env, lambda: fired(sh, 3), "three fires")
        await sh.pause("enough")
        desc = await sh.describe()
        expected = [workflow_id_for("minutely", us(first + datetime.timedelta(minutes=i))) for i in range(3)]
        assert [a.workflow_id for a in desc.recent_runs][:3] == expected
        assert [a.scheduled_time for a in desc.recent_runs][:3] == [first + datetime.timedelta(minutes=i)
                                                                    for i in range(3)]
        assert {a.trigger for a in desc.recent_runs} == {"schedule"}
        for wid in expected:
            assert await client.get_handle(wid).result() == "main"
        run = await client.get_handle(expected[1]).describe()
        assert run.search_attributes == {ATTR_ID: "minutely", ATTR_TIME: (first + datetime.timedelta(minutes=1))
                                         .isoformat()}
        assert run.workflow_type == "sched_probe" and run.task_queue == Q
        assert [w.workflow_id for w in await runs_of(client, "minutely")][:3] == expected
        by_time = await client.list_workflows(search_attributes={ATTR_TIME: first})  # filters take a datetime
        assert [w.workflow_id for w in by_time] == expected[:1]
        assert env.skipped >= 120  # minutes passed for the workflows ...
    assert time.monotonic() - began < 30  # ... in seconds of wall time


async def test_an_interval_with_start_and_jitter_and_what_describe_shows(store: str) -> None:
    async with WorkflowEnvironment(store=store, time_skipping=True) as env, \
            duro.Worker(env.client, task_queue=Q, workflows=WORKFLOWS):
        client = env.client
        start = (datetime.datetime.now(UTC) + datetime.timedelta(hours=2)).replace(minute=0, second=0,
                                                                                     microsecond=0)
        sh = await client.create_schedule(
            "hourly", probe, task_queue=Q, every=datetime.timedelta(hours=1), start_at=start,
            end_at=start + datetime.timedelta(hours=2), jitter=datetime.timedelta(minutes=5),
            search_attributes={"team": "ops"}, memo={"why": "report"}, note="made by a test")
        desc = await sh.describe()
        assert desc.spec == duro.ScheduleSpec(every=datetime.timedelta(hours=1), start_at=start,
                                              end_at=start + datetime.timedelta(hours=2),
                                              jitter=datetime.timedelta(minutes=5))
        assert desc.next_run_times == [start + datetime.timedelta(hours=i) for i in range(3)]  # the end is inclusive
        assert desc.next_fire_time is not None and start <= desc.next_fire_time < start + datetime.timedelta(minutes=5)
        assert (desc.overlap, desc.paused, desc.note, desc.workflow_type, desc.args) == (
            "skip", False, "made by a test", "sched_probe", [])
        assert (desc.search_attributes, desc.memo) == ({"team": "ops"}, {"why": "report"})
        await skip_until(env, lambda: fired(sh, 3), "the three due times")
        desc = await sh.describe()
        assert desc.next_run_times == [] and desc.next_fire_time is None  # past its end
        for i, action in enumerate(desc.recent_runs):
            due = start + datetime.timedelta(hours=i)
            assert action.scheduled_time == due and action.workflow_id == workflow_id_for("hourly", us(due))
            assert due <= action.started_at < due + datetime.timedelta(minutes=5, seconds=5)  # its jittered time
            run = await client.get_handle(action.workflow_id).describe()
            assert run.search_attributes == {"team": "ops", ATTR_ID: "hourly", ATTR_TIME: due.isoformat()}
            assert run.memo == {"why": "report"}
        assert [d.id for d in await client.list_schedules()] == ["hourly"]


async def test_pause_unpause_trigger_update_and_delete(store: str) -> None:
    async with WorkflowEnvironment(store=store, time_skipping=True) as env, \
            duro.Worker(env.client, task_queue=Q, workflows=WORKFLOWS):
        client = env.client
        sh = await client.create_schedule("ops", waiter, task_queue=Q, every=datetime.timedelta(hours=1),
                                          paused=True, note="not yet")
        desc = await sh.describe()
        assert (desc.paused, desc.note, desc.next_run_times) == (True, "not yet", [])
        await env.sleep(datetime.timedelta(hours=3))
        assert await client.store.fire_schedules(Q) is None  # paused: nothing is due
        assert (await sh.describe()).fired_count == 0
        await sh.unpause("go")
        desc = await sh.describe()
        assert not desc.paused and desc.note == "go"
        assert desc.next_run_times[0] > datetime.datetime.now(UTC) + datetime.timedelta(hours=2)  # not caught up
        await sh.pause()
        wid = await sh.trigger()
        assert wid is not None and wid.startswith("ops-")
        assert await sh.trigger() is None  # its run is open: the schedule's policy (skip) applies
        other = await sh.trigger(overlap="allow_all")
        assert other is not None and other != wid
        desc = await sh.describe()
        assert (desc.running_workflow_ids, desc.skipped_count) == ([wid, other], 1)
        assert [a.trigger for a in desc.recent_runs] == ["trigger", "trigger"]
        for w in (wid, other):
            await client.get_handle(w).signal("go")
            assert await client.get_handle(w).result() == "main"
        await eventually(lambda: _no_open_runs(sh), "the schedule to see its runs closed")
        changed = await sh.update(every=datetime.timedelta(minutes=30), overlap="allow_all", workflow=probe)
        assert (changed.spec.every, changed.overlap, changed.workflow_type) == (
            datetime.timedelta(minutes=30), "allow_all", "sched_probe")
        changed = await sh.update(cron="0 * * * *", jitter=datetime.timedelta(seconds=5))
        assert (changed.spec.cron, changed.spec.every, changed.spec.jitter) == (
            "0 * * * *", None, datetime.timedelta(seconds=5))
        assert changed.paused  # an update does not unpause
        await sh.delete()
        with pytest.raises(duro.ScheduleNotFoundError, match="schedule 'ops' is not in this store"):
            await sh.describe()
        assert await client.list_schedules() == []
        assert (await client.get_handle(wid).describe()).status == "completed"  # its runs stay


async def _no_open_runs(sh: ScheduleHandle) -> bool:
    await sh.client.store.fire_schedules(Q)  # nothing is due; the fire path is not what forgets them:
    return not (await sh.describe()).running_workflow_ids  # the close of each run did


async def test_backfill_starts_each_past_due_time_once(store: str) -> None:
    async with duro.Client.connect(store) as client, duro.Worker(client, task_queue=Q, workflows=WORKFLOWS):
        sh = await client.create_schedule("reports", probe, task_queue=Q, every=datetime.timedelta(minutes=10),
                                          overlap="allow_all")
        start = datetime.datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
        end = start + datetime.timedelta(hours=1)
        started = await sh.backfill(start, end)
        assert started == [workflow_id_for("reports", us(start + datetime.timedelta(minutes=10 * i)))
                           for i in range(6)]
        for wid in started:
            assert await client.get_handle(wid).result() == "main"
        assert await sh.backfill(start, end) == []  # those times have their runs: none again
        desc = await sh.describe()
        assert (desc.fired_count, desc.skipped_count) == (6, 6)
        assert {a.trigger for a in desc.recent_runs} == {"backfill"}
        assert [w.workflow_id for w in await runs_of(client, "reports")] == started
        with pytest.raises(ValueError, match="must be after start"):
            await sh.backfill(end, start)
        assert (await sh.describe()).fired_count == 6


# ---------------------------------------------------------------------------------------------- overlap

@pytest.mark.parametrize("policy", ["skip", "buffer_one", "allow_all", "cancel_other", "terminate_other"])
async def test_overlap_policies(store: str, policy: str) -> None:
    async with WorkflowEnvironment(store=store, time_skipping=True) as env, \
            duro.Worker(env.client, task_queue=Q, workflows=WORKFLOWS):
        client = env.client
        sh = await client.create_schedule("ov", waiter, task_queue=Q, every=datetime.timedelta(minutes=1),
                                          overlap=policy)
        await skip_until(env, lambda: fired(sh, 1), "the first fire")
        first = (await sh.describe()).recent_runs[0].workflow_id

        async def second_due_passed() -> bool:
            d = await sh.describe()
            return d.fired_count + d.skipped_count + len(d.buffered) >= 2

        await skip_until(env, second_due_passed, "the second due time")
        await sh.pause()
        desc = await sh.describe()
        status = (await client.get_handle(first).describe()).status
        if policy == "skip":
            assert desc.fired_count == 1 and desc.skipped_count >= 1 and status == "running"
        elif policy == "allow_all":
            assert desc.fired_count >= 2 and len(desc.running_workflow_ids) >= 2 and status == "running"
        elif policy == "terminate_other":
            assert desc.fired_count >= 2 and status == "terminated"
            assert len(desc.running_workflow_ids) == 1 and desc.running_workflow_ids[0] != first
        elif policy == "buffer_one":
            assert desc.fired_count == 1 and len(desc.buffered) == 1 and status == "running"
            await sh.unpause()  # a buffered fire waits while paused
            await client.get_handle(first).signal("go")
        else:  # cancel_other: the open run was asked to cancel; the new one starts once it closed
            await sh.unpause()
            assert status in ("running", "canceled")
            with pytest.raises(duro.WorkflowFailedError):
                await client.get_handle(first).result()
        if policy in ("buffer_one", "cancel_other"):

            async def second_started() -> bool:
                d = await sh.describe()
                return d.fired_count >= 2 and first not in d.running_workflow_ids

            await skip_until(env, second_started, "the buffered fire to start when the open run closed")
            second = (await sh.describe()).recent_runs[1]
            assert second.workflow_id != first
            assert (await client.get_handle(second.workflow_id).describe()).status == "running"
        await sh.delete()


# ---------------------------------------------------------------------------------------------- several workers

def _second_url(store: str) -> str:
    """A second connection to the same store: PostgreSQL, another pool (another store object); LMDB shares its
    environment within a process, so there two workers share one store object."""
    if store.startswith("postgresql"):
        return store + "&application_name=duro-second-connection"
    return store


async def _exactly_once(client: duro.Client, sh: ScheduleHandle, every_us: int) -> list[duro.WorkflowExecution]:
    """The schedule's runs: one per due time, no gap, none twice, none skipped or missed."""
    desc = await sh.describe()
    runs = await runs_of(client, sh.id)
    times = [us(datetime.datetime.fromisoformat(w.search_attributes[ATTR_TIME])) for w in runs]
    assert len(set(times)) == len(times) == desc.fired_count, (times, desc)
    assert all(b - a == every_us for a, b in itertools.pairwise(times)), times
    assert (desc.skipped_count, desc.missed_count) == (0, 0), desc
    assert [w.workflow_id for w in runs] == [workflow_id_for(sh.id, t) for t in times]
    return runs


async def test_two_workers_on_two_connections_fire_each_due_time_once(store: str) -> None:
    async with duro.Client.connect(store) as a, duro.Client.connect(_second_url(store)) as b, \
            duro.Worker(a, task_queue=Q, workflows=WORKFLOWS, identity="a"), \
            duro.Worker(b, task_queue=Q, workflows=WORKFLOWS, identity="b"):
        sh = await a.create_schedule("fast", probe, task_queue=Q, every=datetime.timedelta(milliseconds=100),
                                     overlap="allow_all")
        await eventually(lambda: fired(sh, 12), "a dozen fires (about a second)")
        await sh.pause()
        runs = await _exactly_once(a, sh, 100_000)
        for w in runs:
            assert await a.get_handle(w.workflow_id).result() == "main"


class WorkerProcess:
    """``schedule_worker.py`` in a subprocess (its output in files under ``log_dir``)."""

    def __init__(self, store: str, log_dir: Path, label: str) -> None:
        self.out = log_dir / f"{label}.out"
        self.err = log_dir / f"{label}.err"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "PYTHONUNBUFFERED": "1"}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), store, Q, label], cwd=REPO, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    async def ready(self) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited: {self.err.read_text(errors='replace')[-3000:]}")
            return b"ready" in self.out.read_bytes()

        await eventually(check, "the worker process to be ready", timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str, str], WorkerProcess]]:
    started: list[WorkerProcess] = []

    def make(store: str, label: str) -> WorkerProcess:
        p = WorkerProcess(store, tmp_path, label)
        started.append(p)
        return p

    yield make
    for p in started:
        p.kill()


async def test_a_worker_here_and_one_in_another_process_fire_each_due_time_once(
        store: str, spawn: Callable[[str, str], WorkerProcess]) -> None:
    other = spawn(store, "sub")
    await other.ready()
    async with duro.Client.connect(store) as client, duro.Worker(client, task_queue=Q, workflows=WORKFLOWS):
        sh = await client.create_schedule("shared", "sched_probe", task_queue=Q,
                                          every=datetime.timedelta(milliseconds=100), overlap="allow_all")
        await eventually(lambda: fired(sh, 15), "fifteen fires")
        await sh.pause()
        runs = await _exactly_once(client, sh, 100_000)
        results = [await client.get_handle(w.workflow_id).result() for w in runs]
        assert set(results) <= {"main", "sub"}


# ---------------------------------------------------------------------------------------------- crashes

async def test_a_fire_committed_by_a_worker_that_died_is_not_fired_again(
        store: str, spawn: Callable[[str, str], WorkerProcess]) -> None:
    """The other process fires and runs the first task, then is killed; a worker here takes the run over."""
    doomed = spawn(store, "sub")
    await doomed.ready()
    async with duro.Client.connect(store) as client:
        start = datetime.datetime.now(UTC) + datetime.timedelta(milliseconds=300)
        sh = await client.create_schedule("crash", "sched_waiter", task_queue=Q, every=datetime.timedelta(hours=1),
                                          start_at=start)
        wid = workflow_id_for("crash", us(start))
        handle = client.get_handle(wid)

        async def ran_first_task() -> bool:
            try:
                history = await handle.fetch_history()
            except duro.WorkflowNotFoundError:
                return False
            return any(e.event_type == "WorkflowTaskCompleted" for e in history)

        await eventually(ran_first_task, "the other process to fire and run the first workflow task")
        doomed.kill()
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS):
            due = await client.store.fire_schedules(Q)  # as this worker's loop does: nothing is due
            assert due is not None and due >= start.timestamp() + 3599
            await handle.signal("go")
            assert await handle.result() == "main"  # this process ran the rest
        desc = await sh.describe()
        assert (desc.fired_count, desc.skipped_count, desc.running_workflow_ids) == (1, 0, [])
        assert [w.workflow_id for w in await runs_of(client, "crash")] == [wid]


async def test_a_fire_committed_with_no_worker_left_is_run_by_the_next_worker(store: str) -> None:
    async with duro.Client.connect(store) as client:
        start = datetime.datetime.now(UTC) + datetime.timedelta(milliseconds=200)
        sh = await client.create_schedule("orphan", probe, task_queue=Q, every=datetime.timedelta(hours=1),
                                          start_at=start)

        async def fire() -> bool:
            await client.store.fire_schedules(Q)  # a worker's fire, committed; then that worker is gone
            return await fired(sh, 1)

        await eventually(fire, "the fire")
        wid = workflow_id_for("orphan", us(start))
        assert (await client.get_handle(wid).describe()).history_length == 1  # started, nobody ran it
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS):
            assert await client.get_handle(wid).result() == "main"
        desc = await sh.describe()
        assert (desc.fired_count, desc.skipped_count) == (1, 0)
        history = await client.get_handle(wid).fetch_history()
        assert [e.event_type for e in history][-1] == "WorkflowExecutionCompleted"
        assert codec.WORKFLOW_COMPLETED == history.core_events[-1].type


# ---------------------------------------------------------------------------------------------- bad input

BAD_CREATES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"cron": "61 * * * *"}, ValueError, r"cron expression '61 \* \* \* \*' is malformed: Bad minute"),
    ({"cron": "every day"}, ValueError, "cron expression 'every day' is malformed"),
    ({"cron": "* * * * *", "every": 5}, ValueError, "give exactly one of cron= .* or every= .*: both were given"),
    ({}, ValueError, "give exactly one of cron= .* or every= .*: neither was given"),
    ({"every": 0}, ValueError, "every must be positive"),
    ({"every": datetime.timedelta(seconds=-1)}, ValueError, "every must be positive"),
    ({"every": 60, "start_at": datetime.datetime(2027, 1, 1, tzinfo=UTC),
      "end_at": datetime.datetime(2026, 1, 1, tzinfo=UTC)}, ValueError, "end_at .* is before start_at"),
    ({"every": 60, "start_at": datetime.datetime(2027, 1, 1)}, ValueError, "start_at must be timezone-aware"),
    ({"every": 60, "overlap": "sometimes"}, ValueError, "overlap must be one of skip, buffer_one"),
    ({"cron": "0 3 * * *", "time_zone": "Mars/Olympus"}, ValueError, "not a known IANA time zone"),
    ({"every": 60, "time_zone": "Europe/Paris"}, ValueError, "time_zone applies to cron schedules"),
    ({"every": 60, "search_attributes": {ATTR_ID: "x"}}, ValueError, "set by the schedule on each run"),
    ({"every": 60, "jitter": -1}, ValueError, "jitter must be zero or positive"),
]


@pytest.mark.parametrize(("options", "error", "message"), BAD_CREATES)
async def test_bad_input_on_create_is_refused_and_nothing_is_written(
        client: duro.Client, options: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        await client.create_schedule("bad", probe, task_queue=Q, **options)
    assert await client.list_schedules() == []


async def test_an_existing_id_and_an_unknown_id_are_refused_and_nothing_is_written(client: duro.Client) -> None:
    sh = await client.create_schedule("one", probe, task_queue=Q, every=60)
    before = await sh.describe()
    with pytest.raises(duro.ScheduleAlreadyExistsError, match="a schedule with id 'one' exists already"):
        await client.create_schedule("one", probe, task_queue=Q, cron="0 3 * * *")
    assert await sh.describe() == before
    with pytest.raises(TypeError, match="arguments do not fit workflow 'sched_probe'"):
        await client.create_schedule("two", probe, 1, task_queue=Q, every=60)
    missing = client.get_schedule_handle("missing")
    calls: list[Callable[[], Any]] = [
        missing.describe, missing.pause, missing.unpause, missing.trigger, missing.delete,
        lambda: missing.backfill(datetime.datetime(2026, 1, 1, tzinfo=UTC), datetime.datetime(2026, 1, 2, tzinfo=UTC)),
        lambda: missing.update(overlap="allow_all"), lambda: missing.update(every=5)]
    for call in calls:
        with pytest.raises(duro.ScheduleNotFoundError, match="schedule 'missing' is not in this store"):
            await call()
    assert [d.id for d in await client.list_schedules()] == ["one"]
    with pytest.raises(ValueError, match="cron expression 'nope' is malformed"):
        await sh.update(cron="nope")
    with pytest.raises(ValueError, match="every must be positive"):
        await sh.update(every=0)
    assert await sh.describe() == before
    with pytest.raises(ValueError, match="schedule id must not be empty"):
        client.get_schedule_handle("")


@pytest.fixture
async def running_worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS) as w:
        yield w


async def test_trigger_runs_with_a_worker(client: duro.Client, running_worker: duro.Worker) -> None:
    sh = await client.create_schedule("t", probe, task_queue=Q, cron="0 0 1 1 *")
    wid = await sh.trigger()
    assert wid is not None
    assert await asyncio.wait_for(client.get_handle(wid).result(), 30) == "main"
