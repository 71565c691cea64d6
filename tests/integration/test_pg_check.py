"""``duro --store postgresql://... check``: a healthy PostgreSQL store checks clean; each kind of damage is named.

A store with runs of every kind (completed with activities, retries, children, continue-as-new,
timers, an update, a cancellation, a failure, a termination; and open ones: waiting for a signal,
sleeping on a timer, queued with no worker, waiting for an activity nobody runs) is built once per
module in a template schema. Each test copies it into a fresh schema, damages the copy with one
direct SQL statement (or a few), and checks that the report names what was done, and nothing in
other runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

import duro
from duro._core import codec
from duro.cli import main
from duro.stores.check import CheckReport
from duro.stores.pg_check import TABLES, check_postgres
from duro.stores.pg_conn import connect_one, parse_pg_url, quote_ident
from duro.stores.pg_schema import SCHEMA_VERSION, migrate
from duro.stores.urls import display_url
from tests.engine import features_wfs as f
from tests.engine import wfs
from tests.pg import PG_URL, drop_schema, random_schema, require_postgres, with_schema
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
QUEUE = "chk"
NOBODY = "no-workers-here"


@duro.workflow
async def remote_activity(ctx: duro.WorkflowContext) -> str:
    """Waits for an activity on a queue that no worker serves: a running run with an activity task."""
    return await ctx.execute_activity(f.note, "far", task_queue=NOBODY)  # type: ignore[no-any-return]


@duro.workflow
async def cut_short(ctx: duro.WorkflowContext) -> str:
    """Cancels its activity (a timeout around it), then stays open waiting for a signal."""
    try:
        await asyncio.wait_for(ctx.execute_activity(f.long_heartbeating, 30.0, heartbeat_timeout=5), timeout=0.2)
    except TimeoutError:
        pass
    return await ctx.wait_signal("never")  # type: ignore[no-any-return]


@duro.workflow
async def backing_off(ctx: duro.WorkflowContext) -> int:
    """Its activity failed once and waits an hour for its next attempt: an open run with a queued retry."""
    policy = duro.RetryPolicy(initial_interval=3600, maximum_attempts=3)
    return await ctx.execute_activity(wfs.flaky, 1, retry_policy=policy)  # type: ignore[no-any-return]


@duro.workflow
async def waiting_parent(ctx: duro.WorkflowContext) -> str:
    """Open, waiting for an open child."""
    return await ctx.execute_child_workflow(f.waiting_child, id="waiting-parent-child")  # type: ignore[no-any-return]


WORKFLOWS = [*f.WORKFLOWS, wfs.retry_workflow, wfs.failing_workflow, wfs.signal_workflow, wfs.timer_workflow,
             remote_activity, cut_short, backing_off, waiting_parent]
ACTIVITIES = [*f.ACTIVITIES, wfs.flaky]


async def _build(url: str) -> None:
    """Runs of every kind in the store at ``url``, some closed, some left open."""
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES):
            run = client.execute_workflow
            assert await run(f.parent, 2, id="parent", task_queue=QUEUE) == [0, 2]
            assert await run(f.counter, 0, 2, id="counter", task_queue=QUEUE) == 2
            assert await run(wfs.retry_workflow, 2, 5, False, id="retry", task_queue=QUEUE) == 3
            await run(wfs.timer_workflow, 0.01, id="timers", task_queue=QUEUE)
            assert await run(f.timer_race, id="race", task_queue=QUEUE) == "activity won"
            assert await run(f.condition_timeout, id="cond", task_queue=QUEUE) == "timed out"
            with pytest.raises(duro.WorkflowFailedError):
                await run(wfs.failing_workflow, id="failed", task_queue=QUEUE)

            queried = await client.start_workflow(f.queried, id="updated", task_queue=QUEUE)
            assert await queried.execute_update("add", "a") == 1
            await queried.signal("add", "stop")
            await queried.result(timeout=20)

            cancelled = await client.start_workflow(f.cancellable, id="cancelled", task_queue=QUEUE)
            await eventually(lambda: _has_event(cancelled, "ActivityTaskScheduled"), "the activity to be scheduled")
            await cancelled.cancel()
            with pytest.raises(duro.WorkflowFailedError):
                await cancelled.result(timeout=20)

            terminated = await client.start_workflow(wfs.signal_workflow, 2, id="terminated", task_queue=QUEUE)
            await terminated.signal("item", 1)
            await terminated.terminate("enough")

            # Left open: waiting for a signal (one processed), sleeping, waiting for a far activity.
            waiting = await client.start_workflow(wfs.signal_workflow, 2, id="waiting", task_queue=QUEUE)
            await waiting.signal("item", 1)
            sleeping = await client.start_workflow(f.sleeper, 3600.0, id="sleeping", task_queue=QUEUE)
            far = await client.start_workflow(remote_activity, id="far", task_queue=QUEUE)
            short = await client.start_workflow(cut_short, id="cut-short", task_queue=QUEUE)
            backoff = await client.start_workflow(backing_off, id="backing-off", task_queue=QUEUE)
            parent = await client.start_workflow(waiting_parent, id="waiting-parent", task_queue=QUEUE)

            async def settled() -> bool:
                signalled = [e.event_type for e in await waiting.fetch_history()]
                return ("WorkflowExecutionSignaled" in signalled and signalled[-1] == "WorkflowTaskCompleted"
                        and await _has_event(sleeping, "TimerStarted")
                        and await _has_event(far, "ActivityTaskScheduled")
                        and await _has_event(short, "ActivityTaskCancelRequested")
                        and await _has_event(parent, "StartChildWorkflowExecutionInitiated")
                        and await _has_event(client.get_handle("waiting-parent-child"), "WorkflowTaskCompleted")
                        and await _attempt(url, str(backoff.run_id)) == 2)

            await eventually(settled, "the open runs to reach their waits")
        await client.start_workflow(wfs.signal_workflow, 1, id="queued", task_queue=NOBODY)  # a task nobody takes


async def _has_event(handle: duro.WorkflowHandle, event_type: str) -> bool:
    return any(e.event_type == event_type for e in await handle.fetch_history())


async def _attempt(url: str, run_id: str) -> int | None:
    """The attempt an activity task of the run is at (None: it has none)."""
    conn = await connect_one(parse_pg_url(url))
    try:
        value = await conn.fetchval("SELECT max(attempt) FROM atasks WHERE run_key = $1", bytes.fromhex(run_id))
    finally:
        await conn.close()
    return None if value is None else int(value)


@pytest.fixture(scope="module")
def template() -> Iterator[str]:
    """The schema holding the healthy store every test copies (built once, dropped at the end)."""
    schema = random_schema()
    url = with_schema(PG_URL, schema)

    async def build() -> None:
        await require_postgres()
        await _build(url)

    asyncio.run(build())
    try:
        yield schema
    finally:
        asyncio.run(drop_schema(schema))


@dataclass
class Copy:
    """A fresh copy of the template store: its URL, and a connection to damage it with (search_path set)."""

    url: str
    schema: str
    conn: asyncpg.Connection

    async def key(self, workflow_id: str) -> bytes:
        """The run key of the latest run of ``workflow_id``."""
        key = await self.conn.fetchval("SELECT run_key FROM workflows WHERE workflow_id = $1", workflow_id)
        assert key is not None, workflow_id
        return bytes(key)

    async def check(self) -> CheckReport:
        return await check_postgres(self.url)


@pytest.fixture
async def copy(template: str) -> AsyncIterator[Copy]:
    schema = random_schema()
    url = with_schema(PG_URL, schema)
    settings = parse_pg_url(url)
    conn = await connect_one(settings)
    try:
        await migrate(conn, schema)
        for table in TABLES:
            await conn.execute(f"INSERT INTO {table} SELECT * FROM {quote_ident(template)}.{table}")
        yield Copy(url, schema, conn)
    finally:
        await conn.close()
        await drop_schema(schema)


GHOST = bytes.fromhex("ab" * 16)


def _problems(report: CheckReport) -> str:
    return "\n".join(map(str, report.problems))


async def test_a_healthy_store_checks_clean(copy: Copy) -> None:
    report = await copy.check()
    assert report.ok, _problems(report)
    assert report.records_checked and report.txnid > 0
    runs = await copy.conn.fetchval("SELECT count(*) FROM runs")
    assert report.runs == report.runs_ok == runs >= 16
    assert report.events == await copy.conn.fetchval("SELECT count(*) FROM history")
    assert report.workflows == await copy.conn.fetchval("SELECT count(*) FROM workflows")
    assert report.tasks == await copy.conn.fetchval(
        "SELECT (SELECT count(*) FROM wtasks) + (SELECT count(*) FROM atasks)")
    assert report.tasks >= 2 and report.timers == 1  # queued's workflow task, far's activity, sleeping's timer


async def test_the_command_line_on_a_healthy_and_a_damaged_store(copy: Copy,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    shown = display_url(copy.url)
    code = await asyncio.to_thread(main, ["--store", copy.url, "check"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", (out, err)
    (line,) = out.splitlines()
    assert line.startswith(f"store {shown}: ") and line.endswith(": no problems found")

    key = await copy.key("parent")
    await copy.conn.execute("DELETE FROM history WHERE run_key = $1 AND event_id = 2", key)
    code = await asyncio.to_thread(main, ["--store", copy.url, "check"])
    out, err = capsys.readouterr()
    assert code == 1 and err == "", (out, err)
    lines = out.splitlines()
    assert lines[0] == f"problems in the store at {shown}:"
    assert lines[1] == (f"  run {key.hex()} (workflow 'parent') event 3: event 1 is followed by event 3: event ids "
                        "must run 1, 2, 3... without gaps")
    assert lines[-1].startswith(f"store {shown}: ") and "(" in lines[-1] and ", 1 with problems)" in lines[-1]
    assert re.search(r": \d+ problems?$", lines[-1]), lines[-1]

    code = await asyncio.to_thread(main, ["--store", copy.url, "check", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["ok"] is False and doc["records_checked"] is True and doc["path"] == shown
    assert {p["run_id"] for p in doc["problems"]} == {key.hex()}
    assert doc["runs_ok"] == doc["runs"] - 1


def test_another_process_gets_the_same_exit_status(copy: Copy) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "duro.cli", "--store", copy.url, "check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("no problems found"), proc


async def test_check_while_workers_commit(copy: Copy) -> None:
    """The check reads one snapshot: a store being written checks clean at any moment."""
    async with duro.Client.connect(copy.url) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=WORKFLOWS, activities=ACTIVITIES):
            load = asyncio.gather(*(client.execute_workflow(f.parent, 3, id=f"load-{i}", task_queue=QUEUE)
                                    for i in range(20)))
            try:
                for _ in range(3):
                    report = await check_postgres(copy.url)
                    assert report.ok, _problems(report)
            finally:
                await load


# ------------------------------------------------------------------------------------------- the schema


async def test_a_schema_that_does_not_exist(copy: Copy) -> None:
    report = await check_postgres(with_schema(PG_URL, f"duro_nothing_{uuid.uuid4().hex[:8]}"))
    assert not report.ok and not report.records_checked
    (problem,) = report.problems
    assert "there is no duro store here: the schema" in problem.message and "does not exist" in problem.message
    conn = await asyncpg.connect(PG_URL)
    try:  # nothing was created
        assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname LIKE 'duro_nothing_%')")
    finally:
        await conn.close()


@pytest.mark.parametrize(("damage", "expected"), [
    ("DROP TABLE duro_meta", "holds no duro store (it has no duro_meta table)"),
    ("DELETE FROM duro_meta", "duro_meta records no schema version"),
    ("UPDATE duro_meta SET value = 'one'", "duro_meta records the schema version 'one', not a number"),
    ("UPDATE duro_meta SET value = '99'",
     f"the schema is at version 99, newer than this duro knows ({SCHEMA_VERSION})"),
    ("UPDATE duro_meta SET value = '0'", f"the schema is at version 0, older than this duro's ({SCHEMA_VERSION})"),
])
async def test_schema_version(copy: Copy, damage: str, expected: str) -> None:
    await copy.conn.execute(damage)
    report = await copy.check()
    assert not report.records_checked and report.runs == 0
    (problem,) = report.problems
    assert expected in problem.message, problem


async def test_a_missing_table(copy: Copy) -> None:
    await copy.conn.execute("DROP TABLE op_ids")
    report = await copy.check()
    assert report.records_checked
    (problem,) = report.problems
    assert problem.message.startswith("table(s) op_ids missing: this is not a complete duro store")


# ----------------------------------------------------------------------------------- records and tasks

Damage = Callable[[Copy], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    """One kind of damage: what to do, the problem expected, and which workflows' runs the report may name."""

    name: str
    damage: Damage
    expected: str
    workflows: tuple[str, ...]  # the runs (of these workflows) the report may name
    event_id: int | None = None
    run: str | None = None  # the expected problem names this workflow's run ("ghost": GHOST)


def sql(statements: str, *workflows: str) -> Damage:
    """A damage: ``statements`` (separated by ``;``) with $1, $2... bound to the run keys of ``workflows``."""

    async def run(s: Copy) -> None:
        keys = [await s.key(w) for w in workflows]
        for statement in statements.split(";"):
            await s.conn.execute(statement, *keys)

    return run


async def _insert_event(s: Copy, workflow_id: str, event_type: int, ref: int) -> None:
    key = await s.key(workflow_id)
    next_id = await s.conn.fetchval("SELECT next_event_id FROM runs WHERE run_key = $1", key)
    envelope = codec.encode_event(event_type, next_id, 1, ref, 1, "note", b'"late"')
    await s.conn.execute("INSERT INTO history VALUES ($1, $2, $3)", key, next_id, envelope)
    await s.conn.execute("UPDATE runs SET next_event_id = next_event_id + 1 WHERE run_key = $1", key)


async def _started_event_becomes(s: Copy, workflow_id: str) -> None:
    key = await s.key(workflow_id)
    envelope = codec.encode_event(codec.WORKFLOW_TASK_COMPLETED, 1, 1, 0, 0, "", b"")
    await s.conn.execute("UPDATE history SET envelope = $2 WHERE run_key = $1 AND event_id = 1", key, envelope)


async def _ghost_history(s: Copy) -> None:
    envelope = codec.encode_event(codec.WORKFLOW_STARTED, 1, 1, 0, 1, "t", b"")
    await s.conn.execute("INSERT INTO history VALUES ($1, 1, $2)", GHOST, envelope)


CASES = [
    # histories
    Case("gap", sql("DELETE FROM history WHERE run_key = $1 AND event_id = 2", "parent"),
         "event 1 is followed by event 3: event ids must run 1, 2, 3... without gaps", ("parent",), 3),
    Case("last event gone", sql("DELETE FROM history WHERE run_key = $1 AND event_id = "
                                "(SELECT max(event_id) FROM history WHERE run_key = $1)", "retry"),
         "the run record's next event id is", ("retry",)),
    Case("first event gone", sql("DELETE FROM history WHERE run_key = $1 AND event_id = 1", "failed"),
         "the history starts at event 2: event ids must run 1, 2, 3... without gaps", ("failed",), 2),
    Case("undecodable event", sql("UPDATE history SET envelope = '\\x7f'::bytea || substring(envelope from 2) "
                                  "WHERE run_key = $1 AND event_id = 3", "timers"),
         "the event cannot be decoded", ("timers",), 3),
    Case("event under another id", sql("UPDATE history SET envelope = (SELECT envelope FROM history WHERE "
                                       "run_key = $1 AND event_id = 3) WHERE run_key = $1 AND event_id = 2", "race"),
         "the stored event says it is event 3", ("race",), 2),
    Case("no history", sql("DELETE FROM history WHERE run_key = $1", "cond"), "the run has no history", ("cond",)),
    Case("history of no run", lambda s: _ghost_history(s), "a history of 1 event(s) belongs to no run record", (),
         run="ghost"),
    Case("not started", lambda s: _started_event_becomes(s, "race"),
         "the history starts with WorkflowTaskCompleted, not WorkflowExecutionStarted", ("race",), 1),
    # run records
    Case("epoch", sql("UPDATE runs SET epoch = epoch + 1 WHERE run_key = $1", "counter"),
         "WorkflowTaskCompleted event(s) (the epoch counts them)", ("counter",)),
    Case("closed without close time", sql("UPDATE runs SET close_us = NULL WHERE run_key = $1", "failed"),
         "the run is failed but has no close time", ("failed",)),
    Case("last input outside", sql("UPDATE runs SET last_input = next_event_id + 5 WHERE run_key = $1", "timers"),
         "the run's last input is event", ("timers",)),
    Case("unreadable record", sql("""UPDATE runs SET record = '{"timers": "soon"}' WHERE run_key = $1""", "waiting"),
         "the run record cannot be read", ("waiting",)),
    Case("stuck: input without a workflow task", sql("DELETE FROM wtasks WHERE run_key = $1", "queued"),
         "its newest input, event 1, was never processed (no workflow task has completed yet), but it has no "
         "workflow task: no worker will take it up", ("queued",)),
    Case("stuck: a signal nobody processes", sql("UPDATE runs SET last_input = next_event_id - 1 WHERE run_key = $1",
                                                 "waiting"),
         "was never processed (its last workflow task processed through event", ("waiting",)),
    # workflow tasks
    Case("workflow task of no run", lambda s: s.conn.execute(
        "INSERT INTO wtasks (run_key, task_queue) VALUES ($1, 'q')", GHOST),
         "workflow task of queue 'q': no such run", (), run="ghost"),
    Case("workflow task of a closed run", sql("INSERT INTO wtasks (run_key, task_queue) VALUES ($1, 'chk')", "parent"),
         "workflow task of queue 'chk': the run is completed (a closed run has no workflow task)", ("parent",)),
    Case("workflow task in another queue", sql("UPDATE wtasks SET task_queue = 'elsewhere' WHERE run_key = $1",
                                               "queued"),
         f"workflow task of queue 'elsewhere': the run's task queue is {NOBODY!r}", ("queued",)),
    # activity tasks
    Case("activity task of no run", sql("UPDATE atasks SET run_key = '\\xabababababababababababababababab'::bytea "
                                        "WHERE run_key = $1", "far"),
         f"activity task #1 of queue {NOBODY!r}: no such run", ("far",), run="ghost"),
    Case("activity task not scheduled", sql("UPDATE atasks SET seq = 99 WHERE run_key = $1", "far"),
         "activity task #99 (attempt 1): the history has no ActivityTaskScheduled for it", ("far",)),
    Case("activity without its task", sql("DELETE FROM atasks WHERE run_key = $1", "far"),
         "activity #1 was scheduled (event 3) and has no result, but there is no activity task for it", ("far",)),
    Case("activity task with a result", lambda s: _insert_event(s, "far", codec.ACTIVITY_COMPLETED, 1),
         "activity task #1 (attempt 1): its result is already in the history (event 4)", ("far",)),
    Case("unreadable activity task", sql("""UPDATE atasks SET meta = '{"name": 5}' WHERE run_key = $1""", "far"),
         "activity task #1: its metadata cannot be read", ("far",)),
    # timers
    Case("timer of no run", lambda s: s.conn.execute("INSERT INTO timers VALUES ($1, 3, 5)", GHOST),
         "timer #3: no such run", (), run="ghost"),
    Case("timer of a closed run", sql("INSERT INTO timers VALUES ($1, 1, 5)", "timers"),
         "timer #1: the run is completed (a closed run has no timers)", ("timers",)),
    Case("timer the record lacks", sql("INSERT INTO timers VALUES ($1, 7, 5)", "sleeping"),
         "timer #7 is in the timers table but not in the run record", ("sleeping",)),
    Case("timer row gone", sql("DELETE FROM timers WHERE run_key = $1", "sleeping"),
         "but the timers table has no such timer: it will never fire", ("sleeping",)),
    Case("timer due elsewhen", sql("UPDATE timers SET fire_us = fire_us + 1 WHERE run_key = $1", "sleeping"),
         "timer #1: the run record says it is due at", ("sleeping",)),
    Case("started timer forgotten", sql("""UPDATE runs SET record = record - 'timers' WHERE run_key = $1; """
                                        "DELETE FROM timers WHERE run_key = $1", "sleeping"),
         "timer #1 was started (event 3) and neither fired nor was cancelled, but the run record does not list it",
         ("sleeping",)),
    Case("timer the history never started", sql(
        """UPDATE runs SET record = jsonb_set(record, '{timers,5}', '9') WHERE run_key = $1; """
        "INSERT INTO timers VALUES ($1, 5, 9)", "sleeping"),
         "the run record lists timer #5, but the history has no such timer started", ("sleeping",)),
    # the workflow-id index
    Case("index names no run", sql("UPDATE workflows SET run_key = '\\xabababababababababababababababab'::bytea "
                                   "WHERE run_key = $1", "parent"),
         "workflow index: the latest run does not exist", (), run="ghost"),
    Case("index names another id's run", sql("UPDATE workflows SET run_key = $2 WHERE run_key = $1", "parent",
                                             "retry"),
         "workflow index: the run belongs to workflow 'retry'", ("parent", "retry"), run="retry"),
    Case("index status", sql("UPDATE workflows SET status = 'running', close_us = NULL WHERE run_key = $1",
                             "failed"),
         "workflow index says 'running' but the run record says 'failed'", ("failed",)),
    Case("index type", sql("UPDATE workflows SET workflow_type = 'other' WHERE run_key = $1", "retry"),
         "workflow index: its workflow type ('other') differs from the run's ('retry_workflow')", ("retry",)),
    Case("index gone", sql("DELETE FROM workflows WHERE run_key = $1", "retry"),
         "the run's workflow id has no row in workflows", ("retry",)),
    Case("running run not the latest", sql("UPDATE workflows SET run_key = "
                                           "'\\xabababababababababababababababab'::bytea WHERE run_key = $1",
                                           "sleeping"),
         "the run is running, but the workflow index names run " + "ab" * 16, ("sleeping",)),
    # requests
    Case("unreadable request", lambda s: s.conn.execute(
        "INSERT INTO requests VALUES ('r-1', 'q', 'not json'::bytea, ''::bytea, 0)"),
         "request 'r-1': not a readable request record", ()),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_damage_is_reported(copy: Copy, case: Case) -> None:
    keys = {(await copy.key(w)).hex() for w in case.workflows}
    run = case.run or (case.workflows[0] if len(case.workflows) == 1 else None)
    named = None if run is None else GHOST.hex() if run == "ghost" else (await copy.key(run)).hex()
    await case.damage(copy)
    report = await copy.check()
    text = _problems(report)
    assert report.records_checked and not report.ok
    matching = [p for p in report.problems if case.expected in p.message]
    assert matching, f"expected {case.expected!r} in:\n{text}"
    if case.event_id is not None:
        assert any(p.event_id == case.event_id for p in matching), text
    if named is not None:
        assert any(p.run_id == named for p in matching), text
    # Nothing else is blamed: the problems concern the damaged runs (or runs that do not exist).
    existing = {bytes(r[0]).hex() for r in await copy.conn.fetch("SELECT run_key FROM runs")}
    assert report.damaged_runs & existing <= keys, text
    assert report.runs_ok == report.runs - len(report.damaged_runs & existing)
