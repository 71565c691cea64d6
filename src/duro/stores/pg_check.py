"""``check_postgres``: verify a PostgreSQL store's schema, histories, records and tasks without writing to it.

What it verifies are the invariants the comments of ``duro.stores.pg_schema`` state (and
``docs/postgres.md`` repeats): the schema version is recorded and is the one this duro reads and
writes; every run's history holds exactly the events 1 .. ``next_event_id`` - 1, each decoding to
the event its row says, starting with ``WorkflowExecutionStarted``; a run's ``epoch`` counts its
``WorkflowTaskCompleted`` events; a running run whose newest input came after what its last
workflow task processed has a workflow task (else nothing will ever move it); ``workflows`` names
the latest run of each id, with that run's status, type and times, and a running run is the one
its id names; workflow tasks and timers belong to running runs, and a running run's timers are
exactly those its record lists and its history started without firing or cancelling them;
activity tasks belong to existing runs, and a running run has one exactly for each activity
scheduled in its history that has no result and was not cancelled. Activity tasks of a closed run
are not damage: the store drops them when a worker claims them or reports on them.

Everything is read in one ``REPEATABLE READ READ ONLY`` transaction, so the check sees one
consistent snapshot while workers go on committing. The report has the form of the LMDB check's
(``duro.stores.check.CheckReport``), and ``duro --store postgresql://... check`` prints it the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import orjson

from duro._core import codec
from duro.engine.schedules import record_problems
from duro.errors import CorruptHistoryError, StoreError
from duro.stores.base import CLOSED_STATUSES, RUNNING
from duro.stores.check import CheckReport, unprocessed_input_problem
from duro.stores.pg_conn import StoreUnavailableError, connect_one, is_connection_loss, parse_pg_url, quote_ident
from duro.stores.pg_schema import SCHEMA_VERSION
from duro.stores.postgres_tx import ATASK_COLS, atask_from_row, run_from_row
from duro.stores.urls import display_url

__all__ = ["TABLES", "check_postgres", "check_postgres_store"]

TABLES = ("runs", "workflows", "history", "wtasks", "atasks", "timers", "requests", "responses", "op_ids",
          "schedules", "queue_builds")
"""The tables of ``pg_schema.MIGRATIONS`` (besides ``duro_meta``)."""

STATUSES = (RUNNING, *CLOSED_STATUSES)
_FETCH_ROWS = 2000  # rows per round trip of a cursor (histories are read whole, like the LMDB check)
_RESULT_TYPES = (codec.ACTIVITY_COMPLETED, codec.ACTIVITY_FAILED)
_TIMER_ENDS = (codec.TIMER_FIRED, codec.TIMER_CANCELED)

_RUNS = ("SELECT run_key, workflow_id, workflow_type, task_queue, status, start_us, close_us, next_event_id, "
         "epoch, last_input, record FROM runs ORDER BY run_key")
_WTASKS = "SELECT run_key, task_queue, owner FROM wtasks ORDER BY run_key"
_ATASKS = f"SELECT {ATASK_COLS} FROM atasks ORDER BY run_key, seq"
_TIMERS = "SELECT run_key, seq, fire_us FROM timers ORDER BY run_key, seq"
_HISTORY = "SELECT run_key, event_id, envelope FROM history ORDER BY run_key, event_id"
_WORKFLOWS = ("SELECT workflow_id, run_key, status, workflow_type, start_us, close_us FROM workflows "
              "ORDER BY workflow_id")
_REQUESTS = "SELECT request_id, head FROM requests ORDER BY request_id"
_SCHEDULES = "SELECT schedule_id, task_queue, fire_at_us, record FROM schedules ORDER BY schedule_id"


def check_postgres_store(url: str) -> CheckReport:
    """``check_postgres`` for callers without an event loop (``duro check``); see it for what is checked.

    On a thread that runs an event loop it runs the check on a thread of its own (awaiting
    ``check_postgres`` is the better way there).

    Args:
        url: the store's ``postgresql://`` URL (``?schema=`` names the deployment).

    Returns:
        The report; ``report.ok`` is True when nothing is wrong.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(check_postgres(url))
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="duro-check") as pool:
        return pool.submit(asyncio.run, check_postgres(url)).result()


async def check_postgres(url: str) -> CheckReport:
    """Verify a PostgreSQL store without writing to it; every problem found is in the report.

    The checks (see the module docstring) read one snapshot of the schema's tables; workers and
    clients may go on using the store meanwhile. Nothing is created: a schema that does not exist
    or holds no duro store is a problem in the report, not an error.

    Args:
        url: the store's ``postgresql://`` URL (``?schema=`` names the deployment; its
            ``statement_timeout_ms`` bounds each statement, and histories are read in chunks).

    Returns:
        The report (``report.path`` is the URL without its password).

    Raises:
        StoreURLError: not a valid PostgreSQL store URL.
        StoreUnavailableError: the server could not be reached (the message says how to start it).
        StoreError: the login or database is wrong, or reading failed midway (the connection was
            lost, a statement timed out).
    """
    settings = parse_pg_url(url)
    report = CheckReport(path=display_url(url))
    conn = await connect_one(settings)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            await _Checker(conn, settings.schema, report).run()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as e:
        kind = StoreUnavailableError if is_connection_loss(e, conn) else StoreError
        raise kind(f"checking the duro store in schema {settings.schema!r} at {settings.where} failed midway: "
                   f"{type(e).__name__}: {e}") from e
    finally:
        if not conn.is_closed():
            await conn.close()
    return report


@dataclass(slots=True)
class _Run:
    """What the checks need of a ``runs`` row."""

    workflow_id: str
    workflow_type: str
    task_queue: str
    status: str
    start_us: int
    close_us: int | None
    next_event_id: int
    epoch: int
    last_input: int
    timers: dict[int, int] | None  # the record's pending timers (seq -> due µs); None: the record is unreadable
    has_wtask: bool = False
    atasks: dict[int, int] = field(default_factory=dict)  # activity tasks of a running run: seq -> attempt


@dataclass(slots=True)
class _History:
    """One run's history as the stream of its rows went by."""

    ids: list[int] = field(default_factory=list)
    first_type: int | None = None
    completed_tasks: int = 0  # WorkflowTaskCompleted events
    processed: int = 0  # the input the last WorkflowTaskCompleted processed through (its ref)
    decoded: bool = True  # every event decoded
    scheduled: dict[int, int] = field(default_factory=dict)  # activity seq -> the event that scheduled it
    results: dict[int, int] = field(default_factory=dict)  # activity seq -> the event id of its result
    cancelled: set[int] = field(default_factory=set)  # activity seqs whose cancellation was requested
    timers: dict[int, int] = field(default_factory=dict)  # timer seq -> the event that started it
    timers_done: set[int] = field(default_factory=set)  # timer seqs fired or cancelled


class _Checker:
    """The checks, over one read-only transaction on ``conn`` (its search_path is the store's schema)."""

    def __init__(self, conn: asyncpg.Connection, schema: str, report: CheckReport) -> None:
        self.conn = conn
        self.schema = schema
        self.report = report
        self.runs: dict[bytes, _Run] = {}
        self.tables: set[str] = set()

    def add(self, message: str, run_key: bytes | None = None, *, event_id: int | None = None,
            workflow_id: str | None = None) -> None:
        if workflow_id is None and run_key is not None and run_key in self.runs:
            workflow_id = self.runs[run_key].workflow_id
        self.report.add(message, run_key=run_key, workflow_id=workflow_id, event_id=event_id)

    async def rows(self, sql: str) -> AsyncIterator[asyncpg.Record]:
        async for row in self.conn.cursor(sql, prefetch=_FETCH_ROWS):
            yield row

    async def run(self) -> None:
        if not await self.check_schema():
            return
        self.report.txnid = int(await self.conn.fetchval("SELECT txid_snapshot_xmin(txid_current_snapshot())"))
        if "runs" in self.tables:
            await self.check_runs()
        if "wtasks" in self.tables:
            await self.check_wtasks()
        if "atasks" in self.tables:
            await self.check_atasks()
        if "timers" in self.tables:
            await self.check_timers()
        if "history" in self.tables:
            await self.check_histories()
        if "workflows" in self.tables:
            await self.check_workflows()
        if "requests" in self.tables:
            await self.check_requests()
        if "schedules" in self.tables:
            await self.check_schedules()
        self.report.run_ids = {k.hex() for k in self.runs}
        self.report.records_checked = True

    async def check_schema(self) -> bool:
        """The schema, its recorded version and its tables; False when the records cannot be checked."""
        q = quote_ident(self.schema)
        if not await self.conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                                        self.schema):
            self.add(f"there is no duro store here: the schema {self.schema!r} does not exist")
            return False
        if not await self.conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{q}.duro_meta"):
            self.add(f"the schema {self.schema!r} holds no duro store (it has no duro_meta table)")
            return False
        raw = await self.conn.fetchval(f"SELECT value FROM {q}.duro_meta WHERE key = 'schema_version'")
        try:
            version = None if raw is None else int(raw)
        except ValueError:
            version = None
        if version is None:
            recorded = "no schema version" if raw is None else f"the schema version {raw!r}, not a number"
            self.add(f"duro_meta records {recorded}: the schema's first migration did not complete, or duro_meta "
                     "was changed by hand")
            return False
        if version > SCHEMA_VERSION:
            self.add(f"the schema is at version {version}, newer than this duro knows ({SCHEMA_VERSION}): a newer "
                     "duro migrated it; check it with that version (pip install -U duro)")
            return False
        if version < SCHEMA_VERSION:
            self.add(f"the schema is at version {version}, older than this duro's ({SCHEMA_VERSION}): opening the "
                     "store with this duro migrates it; check it after that, or with the duro that wrote it")
            return False
        rows = await self.conn.fetch(
            "SELECT c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relname = ANY($2::text[])",
            self.schema, list(TABLES))
        self.tables = {r[0] for r in rows}
        missing = [t for t in TABLES if t not in self.tables]
        if missing:
            self.add(f"table(s) {', '.join(missing)} missing: this is not a complete duro store (schema version "
                     f"{version} has them all)")
        return True

    async def check_runs(self) -> None:
        """Run rows: a readable record, a close time once closed, a last input inside the history."""
        async for row in self.rows(_RUNS):
            key = bytes(row[0])
            self.report.runs += 1
            timers: dict[int, int] | None = None
            error = None
            try:
                rec = run_from_row(row)
            except (ValueError, TypeError, AttributeError, msgspec.MsgspecError) as e:
                error = e
            else:
                timers = {int(seq): due for seq, due in (rec.timers or {}).items()}
            run = _Run(workflow_id=row[1], workflow_type=row[2], task_queue=row[3], status=row[4], start_us=row[5],
                       close_us=row[6], next_event_id=row[7], epoch=row[8], last_input=row[9], timers=timers)
            self.runs[key] = run
            if error is not None:
                self.add(f"the run record cannot be read ({type(error).__name__}: {error})", key)
            if run.status not in STATUSES:
                self.add(f"the run has an unknown status {run.status!r}", key)
            elif run.status != RUNNING and run.close_us is None:
                self.add(f"the run is {run.status} but has no close time", key)
            if run.next_event_id > 1 and not 1 <= run.last_input < run.next_event_id:
                self.add(f"the run's last input is event {run.last_input}, outside its history (events 1 to "
                         f"{run.next_event_id - 1})", key)

    async def check_wtasks(self) -> None:
        """Workflow tasks: of existing, running runs, in the run's own queue."""
        async for row in self.rows(_WTASKS):
            key, queue = bytes(row[0]), row[1]
            self.report.tasks += 1
            run = self.runs.get(key)
            if run is None:
                self.add(f"workflow task of queue {queue!r}: no such run", key)
                continue
            run.has_wtask = True
            if run.status != RUNNING:
                self.add(f"workflow task of queue {queue!r}: the run is {run.status} (a closed run has no "
                         "workflow task)", key)
            elif queue != run.task_queue:
                self.add(f"workflow task of queue {queue!r}: the run's task queue is {run.task_queue!r}, whose "
                         "workers never take it", key)

    async def check_atasks(self) -> None:
        """Activity tasks: of existing runs, with readable metadata.

        A closed run may still have some: they are dropped when a worker claims them or reports
        on them, as in the LMDB store.
        """
        async for row in self.rows(_ATASKS):
            key, seq, queue, attempt = bytes(row[0]), int(row[1]), row[2], int(row[3])
            self.report.tasks += 1
            run = self.runs.get(key)
            if run is None:
                self.add(f"activity task #{seq} of queue {queue!r}: no such run", key)
                continue
            try:
                atask_from_row(row)
            except (ValueError, TypeError, AttributeError, msgspec.MsgspecError) as e:
                self.add(f"activity task #{seq}: its metadata cannot be read ({type(e).__name__}: {e})", key)
            if run.status == RUNNING:
                run.atasks[seq] = attempt

    async def check_timers(self) -> None:
        """Timers: of existing, running runs, exactly those the run record lists (seq and due time)."""
        seen: dict[bytes, dict[int, int]] = {}
        async for row in self.rows(_TIMERS):
            key, seq, due = bytes(row[0]), int(row[1]), int(row[2])
            self.report.timers += 1
            run = self.runs.get(key)
            if run is None:
                self.add(f"timer #{seq}: no such run", key)
                continue
            if run.status != RUNNING:
                self.add(f"timer #{seq}: the run is {run.status} (a closed run has no timers)", key)
                continue
            seen.setdefault(key, {})[seq] = due
        for key, run in self.runs.items():
            if run.status != RUNNING or run.timers is None:
                continue
            rows = seen.get(key, {})
            for seq in sorted(rows.keys() | run.timers.keys()):
                listed, stored = run.timers.get(seq), rows.get(seq)
                if listed is None:
                    self.add(f"timer #{seq} is in the timers table but not in the run record", key)
                elif stored is None:
                    self.add(f"the run record lists timer #{seq} (due at {listed} µs), but the timers table has "
                             "no such timer: it will never fire", key)
                elif listed != stored:
                    self.add(f"timer #{seq}: the run record says it is due at {listed} µs, the timers table at "
                             f"{stored} µs", key)

    async def check_histories(self) -> None:
        """Every history decodes, its ids run 1, 2, 3... and the run's counters agree with it."""
        key: bytes | None = None
        hist = _History()
        orphans: dict[bytes, int] = {}
        seen: set[bytes] = set()
        async for row in self.rows(_HISTORY):
            row_key, event_id = bytes(row[0]), int(row[1])
            self.report.events += 1
            if row_key != key:
                if key is not None:
                    self.finish_history(key, hist)
                key, hist = row_key, _History()
                seen.add(row_key)
            if row_key not in self.runs:
                orphans[row_key] = orphans.get(row_key, 0) + 1
                continue
            hist.ids.append(event_id)
            try:
                event = codec.decode_event(row[2])
            except CorruptHistoryError as e:
                hist.decoded = False
                self.add(f"the event cannot be decoded: {e}", row_key, event_id=event_id)
                continue
            if event.event_id != event_id:
                self.add(f"the stored event says it is event {event.event_id}", row_key, event_id=event_id)
            if len(hist.ids) == 1:
                hist.first_type = event.type
            if event.type == codec.WORKFLOW_TASK_COMPLETED:
                hist.completed_tasks += 1
                hist.processed = event.ref
            elif event.type == codec.ACTIVITY_SCHEDULED:
                hist.scheduled.setdefault(event.ref, event_id)
            elif event.type in _RESULT_TYPES:
                hist.results.setdefault(event.ref, event_id)
            elif event.type == codec.ACTIVITY_CANCEL_REQUESTED:
                hist.cancelled.add(event.ref)
            elif event.type == codec.TIMER_STARTED:
                hist.timers.setdefault(event.ref, event_id)
            elif event.type in _TIMER_ENDS:
                hist.timers_done.add(event.ref)
        if key is not None:
            self.finish_history(key, hist)
        for orphan, count in orphans.items():
            self.add(f"a history of {count} event(s) belongs to no run record", orphan)
        for run_key in self.runs:
            if run_key not in seen:
                self.add("the run has no history", run_key)

    def finish_history(self, key: bytes, hist: _History) -> None:
        """The checks of one run that need its whole history."""
        run = self.runs.get(key)
        if run is None:
            return  # reported with the count of its events
        ids = hist.ids
        for prev, event_id in zip([0, *ids], ids, strict=False):
            if event_id != prev + 1:
                what = f"the history starts at event {event_id}" if prev == 0 else \
                    f"event {prev} is followed by event {event_id}"
                self.add(f"{what}: event ids must run 1, 2, 3... without gaps", key, event_id=event_id)
        if run.next_event_id != ids[-1] + 1:
            self.add(f"the run record's next event id is {run.next_event_id}, but the history ends at event "
                     f"{ids[-1]}", key)
        if not hist.decoded:
            return  # what the events say is incomplete: the checks below would guess
        if ids[0] == 1 and hist.first_type != codec.WORKFLOW_STARTED:
            name = codec.EVENT_NAMES.get(hist.first_type or 0, f"event type {hist.first_type}")
            self.add(f"the history starts with {name}, not WorkflowExecutionStarted", key, event_id=1)
        if run.epoch != hist.completed_tasks:
            self.add(f"the run's task epoch is {run.epoch}, but its history has {hist.completed_tasks} "
                     "WorkflowTaskCompleted event(s) (the epoch counts them)", key)
        if run.status != RUNNING:
            return
        if run.last_input > hist.processed and not run.has_wtask:
            self.add(unprocessed_input_problem(run.last_input, hist.processed), key)
        self.check_activities(key, run, hist)
        self.check_started_timers(key, run, hist)

    def check_activities(self, key: bytes, run: _Run, hist: _History) -> None:
        """A running run's activity tasks are those scheduled, without a result, and not cancelled."""
        for seq, attempt in sorted(run.atasks.items()):
            if seq not in hist.scheduled:
                self.add(f"activity task #{seq} (attempt {attempt}): the history has no ActivityTaskScheduled "
                         "for it", key)
            elif seq in hist.results:
                self.add(f"activity task #{seq} (attempt {attempt}): its result is already in the history "
                         f"(event {hist.results[seq]}), yet the task is still there", key)
        for seq, event_id in sorted(hist.scheduled.items()):
            if seq not in run.atasks and seq not in hist.results and seq not in hist.cancelled:
                self.add(f"activity #{seq} was scheduled (event {event_id}) and has no result, but there is no "
                         "activity task for it: the workflow waits for it forever", key)

    def check_started_timers(self, key: bytes, run: _Run, hist: _History) -> None:
        """A running run's record lists exactly the timers its history started and did not fire or cancel."""
        if run.timers is None:
            return  # the record is unreadable (reported)
        open_timers = {seq: ev for seq, ev in hist.timers.items() if seq not in hist.timers_done}
        for seq, event_id in sorted(open_timers.items()):
            if seq not in run.timers:
                self.add(f"timer #{seq} was started (event {event_id}) and neither fired nor was cancelled, but the "
                         "run record does not list it: it will never fire", key)
        for seq in sorted(run.timers):
            if seq != 0 and seq not in open_timers:  # seq 0 is the run's timeout, not in the history
                self.add(f"the run record lists timer #{seq}, but the history has no such timer started and not "
                         "yet fired or cancelled", key)

    async def check_workflows(self) -> None:
        """The workflow-id rows name existing runs of that id, with their status, type and times."""
        latest: dict[str, bytes] = {}
        async for row in self.rows(_WORKFLOWS):
            wid, key = row[0], bytes(row[1])
            self.report.workflows += 1
            latest[wid] = key
            run = self.runs.get(key)
            if run is None:
                self.add("workflow index: the latest run does not exist", key, workflow_id=wid)
                continue
            if run.workflow_id != wid:
                self.add(f"workflow index: the run belongs to workflow {run.workflow_id!r}", key, workflow_id=wid)
                continue
            if row[2] != run.status:
                self.add(f"workflow index says {row[2]!r} but the run record says {run.status!r}", key,
                         workflow_id=wid)
            for what, indexed, actual in (("workflow type", row[3], run.workflow_type),
                                          ("start time", row[4], run.start_us), ("close time", row[5], run.close_us)):
                if indexed != actual:
                    self.add(f"workflow index: its {what} ({indexed!r}) differs from the run's ({actual!r})", key,
                             workflow_id=wid)
        for key, run in self.runs.items():
            named = latest.get(run.workflow_id)
            if named is None:
                self.add("the run's workflow id has no row in workflows (list_workflows does not show it)", key)
            elif run.status == RUNNING and named != key:
                self.add(f"the run is running, but the workflow index names run {named.hex()} as the latest of its "
                         "id (a running run must be its id's latest)", key)

    async def check_schedules(self) -> None:
        """Schedules: a readable record, whose queue and fire time the row's indexed columns repeat."""
        async for row in self.rows(_SCHEDULES):
            for problem in record_problems(row[0], row[3], (row[1], row[2])):
                self.add(problem)

    async def check_requests(self) -> None:
        """Queries and updates waiting for a worker: a readable JSON header."""
        async for row in self.rows(_REQUESTS):
            head: Any
            try:
                head = orjson.loads(bytes(row[1]))
            except orjson.JSONDecodeError:
                head = None
            if not isinstance(head, dict):
                self.add(f"request {row[0]!r}: not a readable request record")
