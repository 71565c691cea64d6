"""``check_store``: verify a store's files, histories, records and indexes without writing to it.

This module checks LMDB stores; ``check_store`` hands a ``postgresql://`` URL to
``duro.stores.pg_check``, which fills in the same ``CheckReport``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from duro._core import codec, mdb
from duro._core.log import read_events
from duro.errors import CorruptHistoryError, StoreCorruptedError, StoreURLError
from duro.stores.base import CLOSED_STATUSES, RUNNING, unpack
from duro.stores.lmdb import MARK_PREFIX, parse_lmdb_url
from duro.stores.lmdb_files import DATA_FILE, LmdbMeta, inspect_lmdb_files, named_databases
from duro.stores.lmdb_schedules import check_schedules

__all__ = ["CheckReport", "Problem", "check_store", "unprocessed_input_problem"]

# The named databases of duro.stores.lmdb (its module docstring has their key and value layouts).
DATABASES = (b"history", b"runs", b"wf", b"wtask", b"atask", b"timer", b"meta", b"req", b"resp")
STATUSES = (RUNNING, *CLOSED_STATUSES)
RUN_KEY_SIZE = 16
EVENT_KEY_SIZE = RUN_KEY_SIZE + 8  # run key + event id (u64 big-endian)
TIMER_KEY_SIZE = 8 + RUN_KEY_SIZE + 8  # fire time µs (u64) + run key + seq (u64)
# Opened like LmdbStore opens it (a different map size in two processes makes LMDB refuse calls).
DEFAULT_MAP_SIZE = 1 << 36
MAX_DBS = 16
MAX_READERS = 1024
# Read transactions tried before giving up on finding the snapshot's meta page (each miss means
# two other commits landed between beginning the transaction and reading the meta pages).
_SNAPSHOT_ATTEMPTS = 20


def unprocessed_input_problem(last_input: int, processed: int) -> str:
    """The problem of a running run that has an input no workflow task processed, and no workflow task.

    Both stores keep this invariant: a transition that appends an input to a running run (a signal,
    an activity result, a timer, a child's close) makes sure the run has a workflow task, and a
    completed workflow task that did not process the newest input leaves one. Without it nothing
    moves the run again.

    Args:
        last_input: the run record's ``last_input`` (the id of its newest input event).
        processed: the input its last WorkflowTaskCompleted processed through (0: none completed).
    """
    done = f"its last workflow task processed through event {processed}" if processed else \
        "no workflow task has completed yet"
    return (f"the run is running and its newest input, event {last_input}, was never processed ({done}), but it "
            "has no workflow task: no worker will take it up")


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a store.

    Attributes:
        message: what is wrong.
        run_id: the run concerned (32 hex digits), if any.
        workflow_id: the workflow concerned, if known.
        event_id: the history event concerned, if any.
    """

    message: str
    run_id: str | None = None
    workflow_id: str | None = None
    event_id: int | None = None

    def __str__(self) -> str:
        where = []
        if self.run_id is not None:
            where.append(f"run {self.run_id}")
        if self.workflow_id is not None:
            where.append(f"(workflow {self.workflow_id!r})")
        if self.event_id is not None:
            where.append(f"event {self.event_id}")
        return f"{' '.join(where)}: {self.message}" if where else self.message

    def to_dict(self) -> dict[str, Any]:
        """The problem as a JSON-ready dict."""
        return {"message": self.message, "run_id": self.run_id, "workflow_id": self.workflow_id,
                "event_id": self.event_id}


@dataclass
class CheckReport:
    """What ``check_store`` found.

    Attributes:
        path: the store's directory.
        problems: everything found wrong, in the order found.
        runs: run records checked.
        events: history events checked.
        workflows: workflow ids in the index.
        tasks: workflow and activity tasks checked.
        timers: timers checked.
        damaged_runs: ids of the runs that have at least one problem.
        run_ids: ids of the run records checked.
        txnid: the id of the transaction (snapshot) that was checked.
        records_checked: False when the files are missing or damaged, so nothing inside was checked.
    """

    path: str
    problems: list[Problem] = field(default_factory=list)
    runs: int = 0
    events: int = 0
    workflows: int = 0
    tasks: int = 0
    timers: int = 0
    damaged_runs: set[str] = field(default_factory=set)
    run_ids: set[str] = field(default_factory=set, repr=False)
    txnid: int = 0
    records_checked: bool = False

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    @property
    def runs_ok(self) -> int:
        """Runs checked that have no problem."""
        return self.runs - len(self.damaged_runs & self.run_ids)

    def add(self, message: str, *, run_key: bytes | None = None, workflow_id: str | None = None,
            event_id: int | None = None) -> None:
        """Record a problem (and the run it concerns)."""
        run_id = run_key.hex() if run_key is not None else None
        self.problems.append(Problem(message, run_id, workflow_id, event_id))
        if run_id is not None:
            self.damaged_runs.add(run_id)

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {"path": self.path, "ok": self.ok, "records_checked": self.records_checked, "txnid": self.txnid,
                "runs": self.runs, "runs_ok": self.runs_ok,
                "events": self.events, "workflows": self.workflows, "tasks": self.tasks, "timers": self.timers,
                "problems": [p.to_dict() for p in self.problems]}


def _store_location(url_or_path: str) -> tuple[str, int | None]:
    """The directory and the ``map_size`` option of an ``lmdb://PATH`` URL or a plain directory path."""
    if "://" not in url_or_path:
        return str(Path(url_or_path).expanduser().resolve()), None
    if not url_or_path.startswith("lmdb://"):
        raise StoreURLError(f"cannot check {url_or_path!r}: expected lmdb://PATH, a store directory, or "
                            "postgresql://USER@HOST:PORT/DATABASE[?schema=NAME]")
    path, sizes = parse_lmdb_url(url_or_path)
    return path, sizes["map_size"]


def check_store(url_or_path: str) -> CheckReport:
    """Verify a store without writing to it; every problem found is in the report.

    A ``postgresql://`` (or ``postgres://``) URL is checked by ``duro.stores.pg_check.check_postgres``
    (see there); what follows is the LMDB check.

    Checks, in one read snapshot: the files (as the store checks them before opening, see
    ``duro.stores.lmdb_files``); that every event of every history decodes, its ids run 1, 2, 3...
    and its run record's next event id follows the last one; that run records, the workflow-id
    index, tasks, timers and requests are readable and point to existing runs; that a running run
    with an input its last workflow task did not process has a workflow task.

    Workers and clients, in this process or others, may go on using the store meanwhile; a store
    open in this process is checked through its environment (LMDB must not be opened twice in one
    process). The snapshot is held for the whole check, so on a large store under load the file
    grows meanwhile (LMDB cannot reuse pages a reader may still see).

    Args:
        url_or_path: ``lmdb://PATH`` (``?map_size=`` as the store uses it), the store's directory, or
            a ``postgresql://`` URL.

    Returns:
        The report; ``report.ok`` is True when nothing is wrong.

    Raises:
        StoreURLError: neither an LMDB nor a PostgreSQL store URL.
        StorePermissionError: this process may not read or write the store's files.
        StoreError: the store's files could not be read (PostgreSQL: the server could not be
            reached, or reading failed midway).
    """
    if url_or_path.startswith(("postgresql://", "postgres://")):
        from duro.stores.pg_check import check_postgres_store

        return check_postgres_store(url_or_path)
    path, map_size = _store_location(url_or_path)
    report = CheckReport(path=path)
    data = os.path.join(path, DATA_FILE)
    if not os.path.isfile(data):
        report.add(f"there is no duro store at {path} ({DATA_FILE} is missing)")
        return report
    try:
        meta = inspect_lmdb_files(path)
    except StoreCorruptedError as e:
        report.add(str(e))
        return report
    if meta is None and os.path.getsize(data) == 0:
        report.add(f"the store file {data} is empty (0 bytes): it holds no data")
        return report
    shared = _open_here(path)
    if shared is not None:
        _check_env(shared, path, report)
        return report
    env = mdb.Environment(path, map_size=_map_size(meta, map_size), max_dbs=MAX_DBS, max_readers=MAX_READERS,
                          sync=True)
    try:
        _check_env(env, path, report)
    finally:
        env.close()
    return report


def _open_here(path: str) -> mdb.Environment | None:
    """The environment of the store at ``path`` if this process has it open, to share rather than reopen.

    LMDB must not be opened twice in one process: closing the second handle would drop the
    process's POSIX locks on lock.mdb, which the first one still relies on.
    """
    from duro.stores.lmdb import open_environment

    return open_environment(path)


def _map_size(meta: LmdbMeta | None, option: int | None) -> int:
    # At least what the last writer mapped: a smaller map would make LMDB refuse our transactions.
    return max(option or DEFAULT_MAP_SIZE, meta.map_size if meta is not None else 0,
               (meta.last_pg + 1) * meta.page_size if meta is not None else 0)


def _check_env(env: mdb.Environment, path: str, report: CheckReport) -> None:
    names: dict[bytes, Any] | None = None
    for _ in range(_SNAPSHOT_ATTEMPTS):
        with env.begin() as txn:
            try:
                names = named_databases(path, txn.id())
            except StoreCorruptedError as e:
                report.add(str(e))
                return
        if names is not None:
            break
    if names is None:
        report.add("could not read the list of named databases: other processes committed too fast; try again")
        return
    missing = [n.decode() for n in DATABASES if n not in names]
    if missing:
        report.add(f"named database(s) {', '.join(missing)} missing: this is not a complete duro store")
    # Opening an existing named database takes LMDB's writer lock for a moment but writes nothing;
    # missing ones are not opened (that would create them).
    dbs = {n: env.open_db(n) for n in DATABASES if n in names}
    sched = env.open_db(b"sched") if b"sched" in names else None  # schedules (a store may predate them)
    with env.begin() as txn:
        report.txnid = txn.id()
        _Checker(txn, dbs, report).run()
        if sched is not None:
            check_schedules(txn, sched, report.add)
        report.records_checked = True


def _json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class _Checker:
    """The record-level checks, over one read transaction."""

    def __init__(self, txn: mdb.Transaction, dbs: dict[bytes, mdb.Database], report: CheckReport) -> None:
        self.txn = txn
        self.dbs = dbs
        self.report = report
        self.runs: dict[bytes, dict[str, Any] | None] = {}  # run key -> record (None: unreadable)
        self.processed: dict[bytes, int] = {}  # run key -> what its last WorkflowTaskCompleted processed through
        self.wtask_runs: set[bytes] = set()  # runs that have a workflow task

    def items(self, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        db = self.dbs.get(name)
        if db is None:
            return
        with self.txn.cursor(db=db) as cur:
            yield from cur.iternext()

    def keys(self, name: bytes) -> Iterator[bytes]:
        db = self.dbs.get(name)
        if db is None:
            return
        with self.txn.cursor(db=db) as cur:
            yield from cur.iternext(keys=True, values=False)

    def wid(self, run_key: bytes) -> str | None:
        rec = self.runs.get(run_key)
        return rec.get("wid") if rec else None

    def run(self) -> None:
        self.check_runs()
        self.check_histories()
        self.check_index()
        self.check_tasks()
        self.check_timers()
        self.check_requests()
        self.check_meta()
        self.check_pending_work()
        self.report.run_ids = {k.hex() for k in self.runs}

    def check_runs(self) -> None:
        add = self.report.add
        for key, raw in self.items(b"runs"):
            if len(key) != RUN_KEY_SIZE:
                add(f"runs: a key of {len(key)} bytes (expected {RUN_KEY_SIZE}): {key!r}")
                continue
            self.report.runs += 1
            rec = _json(raw)
            if not isinstance(rec, dict):
                self.runs[key] = None
                add("the run record is not a JSON object", run_key=key)
                continue
            self.runs[key] = rec
            wid = rec.get("wid") if isinstance(rec.get("wid"), str) else None
            lacking = [f for f, t in (("wid", str), ("type", str), ("queue", str), ("status", str), ("next", int),
                                      ("start", int)) if not isinstance(rec.get(f), t)]
            if lacking:
                add(f"the run record lacks or garbles field(s) {', '.join(lacking)}", run_key=key, workflow_id=wid)
            elif rec["status"] not in STATUSES:
                add(f"the run record has an unknown status {rec['status']!r}", run_key=key, workflow_id=wid)

    def check_histories(self) -> None:
        """Every run's history decodes, its ids run 1, 2, 3... and its record's next id follows the last."""
        add = self.report.add
        history = self.dbs.get(b"history")
        if history is None:
            return
        counts: dict[bytes, int] = {}
        for key in self.keys(b"history"):
            if len(key) != EVENT_KEY_SIZE:
                add(f"history: a key of {len(key)} bytes (expected {EVENT_KEY_SIZE}: run key and event id)")
                continue
            self.report.events += 1
            counts[key[:RUN_KEY_SIZE]] = counts.get(key[:RUN_KEY_SIZE], 0) + 1
        for run_key, count in counts.items():
            if run_key not in self.runs:
                add(f"a history of {count} event(s) belongs to no run record", run_key=run_key)
        for run_key, rec in self.runs.items():
            wid = self.wid(run_key)
            try:
                # What the store itself does to replay a run: decode straight from LMDB's map.
                ids = []
                processed = 0
                for e in read_events(self.txn, history, run_key):
                    ids.append(e.event_id)
                    if e.type == codec.WORKFLOW_TASK_COMPLETED:
                        processed = e.ref
                self.processed[run_key] = processed
            except CorruptHistoryError:
                ids = self.scan_run(history, run_key, wid)
            for prev, event_id in zip([0, *ids], ids, strict=False):
                if event_id != prev + 1:
                    what = f"the history starts at event {event_id}" if prev == 0 else \
                        f"event {prev} is followed by event {event_id}"
                    add(f"{what}: event ids must run 1, 2, 3... without gaps", run_key=run_key, workflow_id=wid,
                        event_id=event_id)
            if rec is None or not isinstance(rec.get("next"), int):
                continue
            if not ids:
                add("the run has no history", run_key=run_key, workflow_id=wid)
            elif rec["next"] != ids[-1] + 1:
                add(f"the run record's next event id is {rec['next']}, but the history ends at event {ids[-1]}",
                    run_key=run_key, workflow_id=wid)

    def scan_run(self, history: mdb.Database, run_key: bytes, wid: str | None) -> list[int]:
        """Decode a damaged run's events one by one, reporting each bad one; returns the ids of all its keys."""
        ids: list[int] = []
        with self.txn.cursor(db=history) as cur:
            if not cur.set_range(run_key):
                return ids
            for key, raw in cur.iternext():
                if not key.startswith(run_key):
                    break
                if len(key) != EVENT_KEY_SIZE:
                    continue  # reported by the key scan
                event_id = int.from_bytes(key[RUN_KEY_SIZE:], "big")
                ids.append(event_id)
                try:
                    event = codec.decode_event(raw)
                except CorruptHistoryError as e:
                    self.report.add(f"the event cannot be decoded: {e}", run_key=run_key, workflow_id=wid,
                                    event_id=event_id)
                    continue
                if event.event_id != event_id:
                    self.report.add(f"the stored event says it is event {event.event_id}", run_key=run_key,
                                    workflow_id=wid, event_id=event_id)
        return ids

    def check_index(self) -> None:
        """The workflow-id index names existing runs of that workflow, with their status."""
        add = self.report.add
        for key, raw in self.items(b"wf"):
            self.report.workflows += 1
            try:
                wid = key.decode()
            except UnicodeDecodeError:
                add(f"workflow index: a key that is not UTF-8: {key!r}")
                continue
            idx = _json(raw)
            if not isinstance(idx, dict) or not isinstance(idx.get("run"), str):
                add("workflow index: the entry is not a JSON object naming a run", workflow_id=wid)
                continue
            try:
                run_key = bytes.fromhex(idx["run"])
            except ValueError:
                run_key = b""
            if len(run_key) != RUN_KEY_SIZE:
                add(f"workflow index: {idx['run']!r} is not a run id", workflow_id=wid)
                continue
            if run_key not in self.runs:
                add("workflow index: the latest run does not exist", run_key=run_key, workflow_id=wid)
                continue
            rec = self.runs[run_key]
            if rec is None:
                continue
            if rec.get("wid") != wid:
                add(f"workflow index: the run belongs to workflow {rec.get('wid')!r}", run_key=run_key,
                    workflow_id=wid)
            elif idx.get("status") != rec.get("status"):
                add(f"workflow index says {idx.get('status')!r} but the run record says {rec.get('status')!r}",
                    run_key=run_key, workflow_id=wid)

    def _task_run(self, what: str, run_key: bytes, queue: bytes) -> None:
        if run_key not in self.runs:
            self.report.add(f"{what} of queue {queue.decode(errors='replace')!r}: no such run", run_key=run_key)

    def check_tasks(self) -> None:
        """Workflow tasks (queue 0x00 run key -> JSON lease) and activity tasks (... seq -> packed record)."""
        add = self.report.add
        for key, raw in self.items(b"wtask"):
            self.report.tasks += 1
            if len(key) < RUN_KEY_SIZE + 1 or key[-RUN_KEY_SIZE - 1] != 0:
                add(f"workflow task: a malformed key {key!r}")
                continue
            run_key = key[-RUN_KEY_SIZE:]
            self.wtask_runs.add(run_key)
            self._task_run("workflow task", run_key, key[: -RUN_KEY_SIZE - 1])
            lease = _json(raw)
            if not isinstance(lease, dict) or "o" not in lease or "u" not in lease:
                add("workflow task: the lease is not a JSON object with o and u", run_key=run_key,
                    workflow_id=self.wid(run_key))
        for key, raw in self.items(b"atask"):
            self.report.tasks += 1
            if len(key) < RUN_KEY_SIZE + 9 or key[-RUN_KEY_SIZE - 9] != 0:
                add(f"activity task: a malformed key {key!r}")
                continue
            run_key = key[-RUN_KEY_SIZE - 8 : -8]
            seq = int.from_bytes(key[-8:], "big")
            self._task_run(f"activity task #{seq}", run_key, key[: -RUN_KEY_SIZE - 9])
            try:
                parts = unpack(raw)
            except ValueError as e:
                parts = []
                add(f"activity task #{seq}: {e}", run_key=run_key, workflow_id=self.wid(run_key))
            if parts and not isinstance(_json(parts[0]), dict):
                add(f"activity task #{seq}: its metadata is not a JSON object", run_key=run_key,
                    workflow_id=self.wid(run_key))

    def check_timers(self) -> None:
        """Timers (fire time, run key, seq -> b"") name existing runs."""
        for key, _raw in self.items(b"timer"):
            self.report.timers += 1
            if len(key) != TIMER_KEY_SIZE:
                self.report.add(f"timers: a key of {len(key)} bytes (expected {TIMER_KEY_SIZE})")
                continue
            run_key = key[8 : 8 + RUN_KEY_SIZE]
            if run_key not in self.runs:
                self.report.add(f"timer #{int.from_bytes(key[-8:], 'big')}: no such run", run_key=run_key)

    def check_requests(self) -> None:
        """Queries and updates waiting for another process (queue 0x00 id -> packed JSON head, args)."""
        for key, raw in self.items(b"req"):
            try:
                parts = unpack(raw)
            except ValueError:
                parts = []
            if not parts or not isinstance(_json(parts[0]), dict):
                self.report.add(f"request {key!r}: not a readable request record")

    def check_meta(self) -> None:
        """The id of the last batch (b"batch" -> u64) and the change marks (b"chg" 0x00 topic -> u64)."""
        for key, raw in self.items(b"meta"):
            if (key == b"batch" or key.startswith(MARK_PREFIX)) and len(raw) != 8:
                what = "the batch id" if key == b"batch" else f"the change mark {key[len(MARK_PREFIX):]!r}"
                self.report.add(f"meta: {what} is {len(raw)} bytes, expected 8")

    def check_pending_work(self) -> None:
        """A running run whose newest input came after what its last workflow task processed has a workflow task."""
        for run_key, rec in self.runs.items():
            processed = self.processed.get(run_key)
            if rec is None or rec.get("status") != RUNNING or processed is None:
                continue  # unreadable record or history: reported already
            last_input = rec.get("last_input", 1)  # left out of the record at its default
            if isinstance(last_input, int) and last_input > processed and run_key not in self.wtask_runs:
                self.report.add(unprocessed_input_problem(last_input, processed), run_key=run_key,
                                workflow_id=self.wid(run_key))
