"""The state machine's ``Tx`` over one PostgreSQL transaction: row mapping, run locks, and a write overlay.

Reads go to the server at once (the writer thread blocks on the DB loop for each); a run is read
``FOR UPDATE``, so transitions on one run serialize across processes. Writes are buffered in an
overlay of layers: each op (and each item of a sweep) writes into its own layer, which is merged
into the one below when it succeeds and dropped when it raises, so an op is atomic without a
savepoint. Later reads in the same batch see earlier layers. ``flush`` writes the merged writes
with a few set-based statements (``unnest``), just before COMMIT (or before a claim/sweep selects
rows with SQL).

Row mapping (tables in ``pg_schema``):

- ``RunRecord`` -> ``runs``: its identity, status, times and counters as columns, the rest
  (parent, timers, children, deadline, next run, task failures) in ``record`` (jsonb, the record's
  own short keys). ``close_us`` 0 is NULL.
- ``WorkflowIndex`` -> ``workflows`` (``run_id`` as the 16-byte ``run_key``).
- ``WorkflowTaskLease`` -> ``wtasks``: owner "" is NULL; a leased row has
  ``visible_at_us = lease_until_us`` (a claim sees it again when the lease ends); build "" is NULL.
- A task queue's current build (worker versioning) -> ``queue_builds``.
- ``ActivityMeta`` -> ``atasks``: attempt, owner, lease, visibility and the cancel flag as columns,
  the rest in ``meta`` (jsonb); empty heartbeat details are NULL.
- history rows hold ``Event.encode()`` envelopes, read back with ``codec.decode_event``.
- ``ScheduleRecord`` -> ``schedules`` (``duro.stores.pg_schedules``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Coroutine
from typing import Any, Final

import msgspec
import orjson
from msgspec import UNSET

from duro._core import codec
from duro._core.codec import Event
from duro.engine.machine import ATASK_LEASE_SLACK_S, attempt_lease_s
from duro.engine.records import ActivityMeta, RunRecord, RunStatus, WorkflowIndex, WorkflowTaskLease
from duro.stores.base import run_key_of
from duro.stores.pg_schedules import PgScheduleOps, schedule_statements

__all__ = ["Blocking", "PgTx"]

Blocking = Callable[[Coroutine[Any, Any, Any]], Any]
"""Runs a coroutine on the DB loop and returns its result (blocking the calling thread)."""

_DEL: Final = None  # an overlay entry that deletes the row

_RUN_COLS = "run_key, workflow_id, workflow_type, task_queue, status, start_us, close_us, next_event_id, " \
            "epoch, last_input, record"
_SELECT_RUN = f"SELECT {_RUN_COLS} FROM runs WHERE run_key = $1::bytea"
_SELECT_INDEX = ("SELECT workflow_id, run_key, status, workflow_type, start_us, close_us, search_attributes "
                 "FROM workflows "
                 "WHERE workflow_id = $1::text")
_SELECT_WTASK = ("SELECT run_key, task_queue, owner, lease_until_us, visible_at_us, build FROM wtasks "
                 "WHERE run_key = $1::bytea")
ATASK_COLS: Final = ("run_key, seq, task_queue, attempt, meta, args, heartbeat, owner, lease_until_us, lease_us, "
                     "visible_at_us, cancel_requested")
_SELECT_ATASK = f"SELECT {ATASK_COLS} FROM atasks WHERE run_key = $1::bytea AND seq = $2::bigint"
_PREFETCH_RUNS = f"SELECT {_RUN_COLS} FROM runs WHERE run_key = ANY($1::bytea[]) ORDER BY run_key"
_PREFETCH_WTASKS = ("SELECT run_key, task_queue, owner, lease_until_us, visible_at_us, build FROM wtasks "
                    "WHERE run_key = ANY($1::bytea[]) ORDER BY run_key")
# Every queue's current build (worker versioning): a tiny table, empty unless build ids are used;
# read with a batch's read-ahead, so checking it costs no round trip.
_SELECT_BUILDS = "SELECT task_queue, build_id FROM queue_builds"
_BUILDS_COLUMN = "(SELECT array_agg(ARRAY[task_queue, build_id]) FROM queue_builds)"
_SET_BUILD = ("INSERT INTO queue_builds (task_queue, build_id, set_us) VALUES ($1::text, $2::text, $3::bigint) "
              "ON CONFLICT (task_queue) DO UPDATE SET build_id = excluded.build_id, set_us = excluded.set_us")
_UNSET_BUILD = "DELETE FROM queue_builds WHERE task_queue = $1::text"
_PREFETCH_INDEX = ("SELECT workflow_id, run_key, status, workflow_type, start_us, close_us, search_attributes "
                   "FROM workflows "
                   "WHERE workflow_id = ANY($1::text[]) ORDER BY workflow_id")
# The workflow-id rows of runs (a run that closes updates its id's row): locked like the others.
_PREFETCH_INDEX_OF_RUNS = ("SELECT w.workflow_id, w.run_key, w.status, w.workflow_type, w.start_us, w.close_us, "
                           "w.search_attributes "
                           "FROM workflows AS w WHERE w.workflow_id IN "
                           "(SELECT r.workflow_id FROM runs AS r WHERE r.run_key = ANY($1::bytea[])) "
                           "ORDER BY w.workflow_id")
_PREFETCH_ATASKS = (f"SELECT {ATASK_COLS} FROM atasks WHERE (run_key, seq) IN "
                    "(SELECT * FROM unnest($1::bytea[], $2::bigint[])) ORDER BY run_key, seq")
_SELECT_HISTORY = ("SELECT event_id, envelope FROM history WHERE run_key = $1::bytea AND event_id >= $2::bigint "
                   "ORDER BY event_id")
_SELECT_HISTORY_TO = ("SELECT event_id, envelope FROM history WHERE run_key = $1::bytea "
                      "AND event_id BETWEEN $2::bigint AND $3::bigint ORDER BY event_id")

_UPSERT_RUNS = f"""
INSERT INTO runs ({_RUN_COLS})
SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::jsonb[])
ON CONFLICT (run_key) DO UPDATE SET
    workflow_id = excluded.workflow_id, workflow_type = excluded.workflow_type, task_queue = excluded.task_queue,
    status = excluded.status, start_us = excluded.start_us, close_us = excluded.close_us,
    next_event_id = excluded.next_event_id, epoch = excluded.epoch, last_input = excluded.last_input,
    record = excluded.record
"""
_INDEX_COLS = "workflow_id, run_key, status, workflow_type, start_us, close_us, search_attributes"
_INSERT_INDEX = f"""
INSERT INTO workflows ({_INDEX_COLS})
SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::jsonb[])
"""
# A row that was read (so locked) is updated; a new id is a plain INSERT: two processes starting the
# same new id cannot both succeed (the loser's batch fails and its op runs again alone, then sees
# the winner's run).
_UPDATE_INDEX = """
UPDATE workflows AS w SET run_key = n.run_key, status = n.status, workflow_type = n.workflow_type,
    start_us = n.start_us, close_us = n.close_us, search_attributes = n.search_attributes
FROM unnest($1::text[], $2::bytea[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::jsonb[])
    AS n(workflow_id, run_key, status, workflow_type, start_us, close_us, search_attributes)
WHERE w.workflow_id = n.workflow_id
"""
_INSERT_HISTORY = """
INSERT INTO history (run_key, event_id, envelope)
SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[])
"""
_DELETE_WTASKS = "DELETE FROM wtasks WHERE run_key = ANY($1::bytea[])"
_DELETE_RUNS = tuple(f"DELETE FROM {table} WHERE run_key = ANY($1::bytea[])"
                     for table in ("history", "wtasks", "atasks", "timers", "runs"))
_DELETE_INDEX = "DELETE FROM workflows WHERE workflow_id = ANY($1::text[])"
_UPSERT_WTASKS = """
INSERT INTO wtasks (run_key, task_queue, owner, lease_until_us, visible_at_us, build)
SELECT * FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])
ON CONFLICT (run_key) DO UPDATE SET task_queue = excluded.task_queue, owner = excluded.owner,
    lease_until_us = excluded.lease_until_us, visible_at_us = excluded.visible_at_us, build = excluded.build
"""
_DELETE_ATASKS = """
DELETE FROM atasks AS a USING unnest($1::bytea[], $2::bigint[]) AS d(run_key, seq)
WHERE a.run_key = d.run_key AND a.seq = d.seq
"""
_UPSERT_ATASKS = f"""
INSERT INTO atasks ({ATASK_COLS})
SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::text[], $4::integer[], $5::jsonb[], $6::bytea[], $7::bytea[],
                     $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], $12::boolean[])
ON CONFLICT (run_key, seq) DO UPDATE SET task_queue = excluded.task_queue, attempt = excluded.attempt,
    meta = excluded.meta, args = excluded.args, heartbeat = excluded.heartbeat, owner = excluded.owner,
    lease_until_us = excluded.lease_until_us, lease_us = excluded.lease_us, visible_at_us = excluded.visible_at_us,
    cancel_requested = excluded.cancel_requested
"""
_DELETE_TIMERS = """
DELETE FROM timers AS t USING unnest($1::bytea[], $2::bigint[]) AS d(run_key, seq)
WHERE t.run_key = d.run_key AND t.seq = d.seq
"""
_UPSERT_TIMERS = """
INSERT INTO timers (run_key, seq, fire_us)
SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bigint[])
ON CONFLICT (run_key, seq) DO UPDATE SET fire_us = excluded.fire_us
"""

_RUN_KEYS = ("wid", "type", "queue", "status", "start", "close", "next", "epoch", "last_input")
_META_KEYS = ("attempt", "o", "u", "vis", "cancel")


def _us(t: float) -> int:
    return int(t * 1_000_000)


# ---------------------------------------------------------------------------------------------- rows

def run_row(run_key: bytes, rec: RunRecord) -> tuple[Any, ...]:
    """The ``runs`` row of a run record (column order of ``_RUN_COLS``)."""
    rest = msgspec.to_builtins(rec)
    for k in _RUN_KEYS:
        rest.pop(k, None)
    return (run_key, rec.workflow_id, rec.workflow_type, rec.task_queue, str(rec.status), rec.start_us,
            rec.close_us or None, rec.next_event_id, rec.epoch, rec.last_input, orjson.dumps(rest).decode())


def run_from_row(row: Any) -> RunRecord:
    """The run record of a ``runs`` row (a tuple or an asyncpg Record, ``_RUN_COLS`` order)."""
    d = orjson.loads(row[10])
    d.update(wid=row[1], type=row[2], queue=row[3], status=row[4], start=row[5], close=row[6] or 0,
             next=row[7], epoch=row[8], last_input=row[9])
    return msgspec.convert(d, RunRecord)


def index_row(workflow_id: str, idx: WorkflowIndex) -> tuple[Any, ...]:
    """The ``workflows`` row of an index entry (search attributes as the jsonb text; none: ``{}``)."""
    return (workflow_id, run_key_of(idx.run_id), str(idx.status), idx.workflow_type, idx.start_us,
            idx.close_us or None, orjson.dumps(idx.search_attributes or {}).decode())


def index_from_row(row: Any) -> WorkflowIndex:
    """The index entry of a ``workflows`` row (a row read without its search attributes has none)."""
    attrs = orjson.loads(row[6]) if len(row) > 6 and row[6] is not None else None
    return WorkflowIndex(bytes(row[1]).hex(), RunStatus(row[2]), row[3], row[4], row[5] or 0, attrs or None)


def wtask_from_row(row: Any) -> WorkflowTaskLease:
    """The lease of a ``wtasks`` row (run_key, task_queue, owner, lease_until_us, visible_at_us, build)."""
    owner = row[2] or ""
    return WorkflowTaskLease(owner, row[3] if owner else 0, 0 if owner else row[4], row[5] or UNSET)


def atask_from_row(row: Any) -> tuple[ActivityMeta, bytes, bytes]:
    """(meta, args, heartbeat details) of an ``atasks`` row (``ATASK_COLS`` order)."""
    d = orjson.loads(row[4])
    owner = row[7] or ""
    d.update(attempt=row[3], o=owner, u=row[8] if owner else 0, vis=row[10], cancel=row[11])
    return msgspec.convert(d, ActivityMeta), bytes(row[5]), bytes(row[6] or b"")


def attempt_base_s(meta: ActivityMeta) -> float:
    """What an activity attempt's lease covers before the slack (see ``machine.attempt_lease_s``)."""
    return attempt_lease_s(meta.start_to_close, meta.schedule_to_close, meta.heartbeat) - ATASK_LEASE_SLACK_S


# ---------------------------------------------------------------------------------------------- overlay

class _Layer:
    __slots__ = ("atasks", "history", "index", "runs", "schedules", "timers", "wtasks")

    def __init__(self) -> None:
        self.runs: dict[bytes, tuple[Any, ...] | None] = {}
        self.index: dict[str, tuple[Any, ...] | None] = {}
        self.history: dict[bytes, list[Event]] = {}
        self.wtasks: dict[bytes, tuple[Any, ...] | None] = {}
        self.atasks: dict[tuple[bytes, int], tuple[Any, ...] | None] = {}
        self.timers: dict[tuple[bytes, int], int | None] = {}
        self.schedules: dict[str, tuple[Any, ...] | None] = {}  # see pg_schedules

    def merge_into(self, below: _Layer) -> None:
        below.runs.update(self.runs)
        below.index.update(self.index)
        for key, events in self.history.items():
            below.history.setdefault(key, []).extend(events)
        below.wtasks.update(self.wtasks)
        below.atasks.update(self.atasks)
        below.timers.update(self.timers)
        below.schedules.update(self.schedules)

    def empty(self) -> bool:
        return not (self.runs or self.index or self.history or self.wtasks or self.atasks or self.timers
                    or self.schedules)


class PgTx(PgScheduleOps):
    """``duro.engine.tx.Tx`` on one PostgreSQL transaction (see the module docstring).

    Args:
        conn: the batch's connection (or a pool, for lock-free reads outside a batch: ``lock=False``).
        call: runs a coroutine on the DB loop and waits for it (never called on that loop).
        now_us: the store's clock.
        lease_s: the store's workflow task lease (and the cap of the slack of activity leases).
        lock: whether reads lock the rows they find (``FOR UPDATE``; only inside a batch).
    """

    def __init__(self, conn: Any, call: Blocking, now_us: Callable[[], int], lease_s: float, *,
                 lock: bool = True) -> None:
        self.conn = conn
        self.call = call
        self.now_us = now_us
        self.lease_us = _us(lease_s)
        self.slack_s = min(lease_s, ATASK_LEASE_SLACK_S)
        self.lock = lock
        self._suffix = " FOR UPDATE" if lock else ""
        self.layers: list[_Layer] = [_Layer()]
        self.records: dict[bytes, RunRecord] = {}  # identity within the batch (cleared when a layer drops)
        self.index_in_db: dict[str, bool] = {}  # whether a workflows row exists in the database (read, so locked)
        self.notes: set[tuple[str, str]] = set()  # (kind, payload) wake-ups for other processes
        self.round_trips = 0
        # Rows read ahead for a batch (``prefetch``), as the database holds them: None = no such row.
        # Op writes never go here (they go to the layers), so a dropped layer leaves these valid; a flush
        # copies what it wrote here, since from then on the database holds it.
        self.read_rows: dict[str, dict[Any, Any]] = {"runs": {}, "wtasks": {}, "atasks": {}, "index": {}}
        # Every queue's current build as this transaction read it (None: not read yet; see current_build).
        self.builds: dict[str, str] | None = None

    # -- the layer stack
    def push(self) -> None:
        """Start a layer for an op (or a sweep item)."""
        self.layers.append(_Layer())

    def merge(self) -> None:
        """The top layer's op succeeded: its writes join the layer below."""
        self.layers.pop().merge_into(self.layers[-1])

    def drop(self) -> None:
        """The top layer's op raised: forget its writes (and records it may have changed in memory)."""
        self.layers.pop()
        self.records.clear()

    def _find(self, table: str, key: Any) -> tuple[bool, Any]:
        for layer in reversed(self.layers):
            d = getattr(layer, table)
            if key in d:
                return True, d[key]
        read = self.read_rows.get(table)
        if read is not None and key in read:
            return True, read[key]
        return False, None

    def prefetch(self, run_keys: list[bytes], attempts: list[tuple[bytes, int]],
                 workflow_ids: list[str] | None = None, closing: list[bytes] | None = None) -> None:
        """Read ahead, in one hop to the DB loop, the rows a batch's ops will read, and lock them.

        Runs and their workflow tasks, workflow-id rows (those named, and those of the ``closing``
        runs, whose close updates them), and activity attempts: each kind locked in key order, so
        concurrent batches do not deadlock on them. Without it every op reads its rows one round
        trip (and two thread hops) at a time.
        """
        # One statement: a CTE per kind of row (each locking in key order, kinds always in this order,
        # so concurrent batches do not deadlock), each returned as an array of its rows.
        ctes: list[str] = []
        cols: list[str] = []
        args: list[Any] = []

        def cte(name: str, sql: str, *values: Any) -> None:
            ctes.append(f"{name} AS ({shift(sql, len(args))}{self._suffix})")
            args.extend(values)
            cols.append(f"(SELECT array_agg({name}) FROM {name})")

        keys = sorted(set(run_keys))
        if keys:
            cte("r", _PREFETCH_RUNS, keys)
            ctes.append(f"w AS ({shift(_PREFETCH_WTASKS, len(args) - 1)}{self._suffix})")  # the same keys
            cols.append("(SELECT array_agg(w) FROM w)")
        ids = sorted(set(workflow_ids or ()))
        if ids:
            cte("i", _PREFETCH_INDEX, ids)
        if closing:
            cte("c", _PREFETCH_INDEX_OF_RUNS, sorted(set(closing)))
        pairs = sorted(set(attempts))
        if pairs:
            cte("a", _PREFETCH_ATASKS, [p[0] for p in pairs], [p[1] for p in pairs])
        if not ctes:
            return
        # The queues' current builds ride along (completions and local leases check them).
        load_builds = self.builds is None
        if load_builds:
            cols.append(_BUILDS_COLUMN)
        row = self._fetchrow(f"WITH {', '.join(ctes)} SELECT {', '.join(cols)}", *args)
        if load_builds:
            self.builds = {q: b for q, b in row[-1] or ()}
        results = iter(row)
        if keys:
            for table in ("runs", "wtasks"):
                got = {bytes(r[0]): r for r in next(results) or ()}
                cache = self.read_rows[table]
                for key in keys:
                    cache.setdefault(key, got.get(key))
        for which in (ids, closing):
            if not which:
                continue
            got_i = {r[0]: r for r in next(results) or ()}
            cache = self.read_rows["index"]
            for wid in ids if which is ids else list(got_i):
                if wid not in cache:
                    cache[wid] = got_i.get(wid)
                    self.index_in_db[wid] = wid in got_i
        if pairs:
            got_a = {(bytes(r[0]), int(r[1])): r for r in next(results) or ()}
            cache = self.read_rows["atasks"]
            for pair in pairs:
                cache.setdefault(pair, got_a.get(pair))

    # -- database access
    def _fetchrow(self, sql: str, *args: Any) -> Any:
        self.round_trips += 1
        return self.call(self.conn.fetchrow(sql, *args))

    def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self.round_trips += 1
        rows: list[Any] = self.call(self.conn.fetch(sql, *args))
        return rows

    def _execute(self, sql: str, *args: Any) -> None:
        self.round_trips += 1
        self.call(self.conn.execute(sql, *args))

    def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Run a query in this transaction (claims and sweeps select with it; ``flush`` first)."""
        return self._fetch(sql, *args)

    def fetch_with_builds(self, sql: str, *args: Any) -> list[Any]:
        """``fetch``, reading the queues' current builds in the same round trip if this transaction has not yet.

        For a batch without read-ahead (a timer sweep) whose transitions may check them.
        """
        if self.builds is not None:
            return self._fetch(sql, *args)
        row = self._fetchrow(f"WITH x AS ({sql.strip()}) SELECT (SELECT array_agg(x) FROM x), {_BUILDS_COLUMN}",
                             *args)
        self.builds = {q: b for q, b in row[1] or ()}
        return list(row[0] or ())

    def fetchval(self, sql: str, *args: Any) -> Any:
        """A single value from a query in this transaction."""
        self.round_trips += 1
        return self.call(self.conn.fetchval(sql, *args))

    # -- runs and the index
    def run(self, run_key: bytes) -> RunRecord | None:
        """The run record (locked for this transaction when read from the database)."""
        rec = self.records.get(run_key)
        if rec is not None:
            return rec
        found, row = self._find("runs", run_key)
        if not found:
            row = self._fetchrow(_SELECT_RUN + self._suffix, run_key)
        if row is None:
            return None
        rec = run_from_row(row)
        self.records[run_key] = rec
        return rec

    def delete_run(self, run_key: bytes, last_event_id: int) -> None:
        """Drop a closed run's rows: record, history, and any task or timer left (buffered)."""
        self.layers[-1].runs[run_key] = _DEL
        self.records.pop(run_key, None)

    def delete_index(self, workflow_id: str) -> None:
        """Drop a workflow id's row (buffered)."""
        if workflow_id not in self.index_in_db:
            row = self._fetchrow(_SELECT_INDEX + self._suffix, workflow_id)
            self.index_in_db[workflow_id] = row is not None
        self.layers[-1].index[workflow_id] = _DEL

    def put_run(self, run_key: bytes, rec: RunRecord) -> None:
        """Store the run record (buffered; the object stays the run's record in this batch)."""
        self.layers[-1].runs[run_key] = run_row(run_key, rec)
        self.records[run_key] = rec

    def index(self, workflow_id: str) -> WorkflowIndex | None:
        """The latest run of a workflow id (its row locked)."""
        found, row = self._find("index", workflow_id)
        if found:
            return None if row is None else index_from_row(row)
        row = self._fetchrow(_SELECT_INDEX + self._suffix, workflow_id)
        self.index_in_db[workflow_id] = row is not None
        return None if row is None else index_from_row(row)

    def put_index(self, workflow_id: str, idx: WorkflowIndex) -> None:
        """Store the latest run of a workflow id (buffered)."""
        if workflow_id not in self.index_in_db:
            row = self._fetchrow(_SELECT_INDEX + self._suffix, workflow_id)
            self.index_in_db[workflow_id] = row is not None
        self.layers[-1].index[workflow_id] = index_row(workflow_id, idx)

    # -- history
    def append_history(self, run_key: bytes, events: list[Event]) -> None:
        """Append events (buffered; the primary key refuses an id written twice at flush)."""
        self.layers[-1].history.setdefault(run_key, []).extend(events)

    def read_history(self, run_key: bytes, from_event_id: int = 1, to_event_id: int = 0) -> list[Event]:
        """Events of a run: those committed or flushed, then those buffered in this batch."""
        if to_event_id:
            rows = self._fetch(_SELECT_HISTORY_TO, run_key, from_event_id, to_event_id)
        else:
            rows = self._fetch(_SELECT_HISTORY, run_key, from_event_id)
        out = [codec.decode_event(row[1]) for row in rows]
        for layer in self.layers:
            for ev in layer.history.get(run_key, ()):
                if ev.event_id >= from_event_id and (not to_event_id or ev.event_id <= to_event_id):
                    out.append(ev)
        return out

    # -- workflow tasks
    def wtask(self, task_queue: str, run_key: bytes) -> WorkflowTaskLease | None:
        """The run's pending workflow task on ``task_queue``."""
        found, row = self._find("wtasks", run_key)
        if not found:
            row = self._fetchrow(_SELECT_WTASK + self._suffix, run_key)
        if row is None or row[1] != task_queue:
            return None
        return wtask_from_row(row)

    def put_wtask(self, task_queue: str, run_key: bytes, lease: WorkflowTaskLease) -> None:
        """Create or replace the run's workflow task; a lease lasts the store's ``lease_s`` (the URL's option)."""
        if lease.owner:
            until = self.now_us() + self.lease_us
            row: tuple[Any, ...] = (run_key, task_queue, lease.owner, until, until, lease.build or None)
        else:
            row = (run_key, task_queue, None, 0, lease.visible_us, lease.build or None)
            self.notes.add(("wtask", task_queue))
        self.layers[-1].wtasks[run_key] = row

    def delete_wtask(self, task_queue: str, run_key: bytes) -> None:
        """Drop the run's workflow task."""
        self.layers[-1].wtasks[run_key] = _DEL

    # -- worker versioning
    def current_build(self, task_queue: str) -> str | None:
        """The queue's current build, as read once per transaction (with the read-ahead, else on first use)."""
        if self.builds is None:
            self.builds = {r[0]: r[1] for r in self._fetch(_SELECT_BUILDS)}
        return self.builds.get(task_queue)

    def set_current_build(self, task_queue: str, build_id: str | None, now_us: int) -> None:
        """Set (or, None, remove) the queue's current build; written at once, and workers of the queue woken."""
        if build_id is None:
            self._execute(_UNSET_BUILD, task_queue)
        else:
            self._execute(_SET_BUILD, task_queue, build_id, now_us)
        self.builds = None  # read again (in this transaction) when next needed
        self.notes.add(("wtask", task_queue))

    # -- activity tasks
    def atask(self, task_queue: str, run_key: bytes, seq: int) -> tuple[ActivityMeta, bytes, bytes] | None:
        """An activity attempt: meta, arguments, heartbeat details."""
        found, row = self._find("atasks", (run_key, seq))
        if not found:
            row = self._fetchrow(_SELECT_ATASK + self._suffix, run_key, seq)
        if row is None or row[2] != task_queue:
            return None
        return atask_from_row(row)

    def put_atask(self, task_queue: str, run_key: bytes, seq: int, meta: ActivityMeta, args: bytes,
                  details: bytes) -> None:
        """Create or replace an activity attempt; its lease's slack is at most the store's ``lease_s``."""
        base = attempt_base_s(meta)
        lease_us = _us(base + self.slack_s)
        rest = msgspec.to_builtins(meta)
        for k in _META_KEYS:
            rest.pop(k, None)
        if meta.owner:
            until = min(meta.until_us, self.now_us() + lease_us) or 1
            owner: str | None = meta.owner
        else:
            until, owner = 0, None
            self.notes.add(("atask", task_queue))
        self.layers[-1].atasks[(run_key, seq)] = (
            run_key, seq, task_queue, meta.attempt, orjson.dumps(rest).decode(), args, details or None, owner,
            until, lease_us, meta.visible_us, meta.cancel)

    def delete_atask(self, task_queue: str, run_key: bytes, seq: int) -> None:
        """Drop an activity attempt."""
        self.layers[-1].atasks[(run_key, seq)] = _DEL

    # -- timers
    def put_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        """A timer due at ``fire_us``."""
        self.layers[-1].timers[(run_key, seq)] = fire_us
        self.notes.add(("timer", ""))

    def delete_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        """Drop a timer."""
        self.layers[-1].timers[(run_key, seq)] = _DEL

    # -- flushing
    def pending_timer_min(self) -> int | None:
        """The earliest timer buffered in this batch (not yet flushed), or None."""
        due = [v for layer in self.layers for v in layer.timers.values() if v is not None]
        return min(due) if due else None

    def flush(self, tail: list[tuple[str, list[Any]]] | None = None) -> None:
        """Write the buffered writes of the ops that succeeded (the bottom layer) with set-based statements.

        ``tail``: statements to run after them in the same hop (a batch's notifications).
        """
        if any(not layer.empty() for layer in self.layers[1:]):
            raise RuntimeError("flush with an op's writes still open")
        base = self.layers[0]
        if base.empty():
            if tail:
                sql, args = combine(tail)
                self._execute(sql, *args)
            return
        self.layers[0] = _Layer()
        stmts: list[tuple[str, list[Any]]] = []
        if base.runs:
            gone = [k for k, row in base.runs.items() if row is None]
            if gone:  # a deleted run takes every row of it along (its history, leftover tasks)
                stmts += [(sql, [gone]) for sql in _DELETE_RUNS]
            kept = [row for row in base.runs.values() if row is not None]
            if kept:
                stmts.append((_UPSERT_RUNS, _columns(kept, 11)))
        if base.index:
            gone_ids = [wid for wid, row in base.index.items() if row is None]
            if gone_ids:
                stmts.append((_DELETE_INDEX, [gone_ids]))
                for wid in gone_ids:
                    self.index_in_db[wid] = False
            new = [row for wid, row in base.index.items() if row is not None and not self.index_in_db.get(wid)]
            old = [row for wid, row in base.index.items() if row is not None and self.index_in_db.get(wid)]
            if new:
                stmts.append((_INSERT_INDEX, _columns(new, 7)))
                for row in new:
                    self.index_in_db[row[0]] = True
            if old:
                stmts.append((_UPDATE_INDEX, _columns(old, 7)))
        if base.history:
            keys: list[bytes] = []
            ids: list[int] = []
            envs: list[bytes] = []
            for run_key, events in base.history.items():
                for ev in events:
                    keys.append(run_key)
                    ids.append(ev.event_id)
                    envs.append(ev.encode())
            stmts.append((_INSERT_HISTORY, [keys, ids, envs]))
        _split(stmts, base.wtasks, _DELETE_WTASKS, _UPSERT_WTASKS, 6, single_key=True)
        _split(stmts, base.atasks, _DELETE_ATASKS, _UPSERT_ATASKS, 12)
        stmts.extend(schedule_statements(base.schedules))
        if base.timers:
            dels = [k for k, v in base.timers.items() if v is None]
            puts = [(k[0], k[1], v) for k, v in base.timers.items() if v is not None]
            if dels:
                stmts.append((_DELETE_TIMERS, [[k[0] for k in dels], [k[1] for k in dels]]))
            if puts:
                stmts.append((_UPSERT_TIMERS, _columns(puts, 3)))
        stmts.extend(tail or ())
        sql, args = combine(stmts)
        self._execute(sql, *args)
        # The database now holds what the flushed layer held: the read-ahead rows must say so, or a later
        # op of this batch (after a claim's or a sweep's flush) would read the rows as they were before
        # the batch (a deleted workflow task still there, an old run record after a dropped layer
        # cleared ``records``). The layer's rows have the column order of the read-ahead selects.
        for table in ("runs", "wtasks", "atasks", "index"):
            self.read_rows[table].update(getattr(base, table))


def _columns(rows: list[tuple[Any, ...]], n: int) -> list[Any]:
    return [[row[i] for row in rows] for i in range(n)]


def _split(stmts: list[tuple[str, list[Any]]], table: dict[Any, tuple[Any, ...] | None], delete_sql: str,
           upsert_sql: str, n: int, *, single_key: bool = False) -> None:
    if not table:
        return
    dels = [k for k, v in table.items() if v is None]
    puts = [v for v in table.values() if v is not None]
    if dels:
        if single_key:
            stmts.append((delete_sql, [dels]))
        else:
            stmts.append((delete_sql, [[k[0] for k in dels], [k[1] for k in dels]]))
    if puts:
        stmts.append((upsert_sql, _columns(puts, n)))


_PARAM = re.compile(r"\$(\d+)")


def shift(sql: str, offset: int) -> str:
    """``sql`` with its parameters ``$n`` renumbered ``$(n + offset)``, to join it to another statement."""
    return _PARAM.sub(lambda m: f"${int(m.group(1)) + offset}", sql)


def combine(stmts: list[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """Several statements as one (one round trip): each a CTE of a single statement, parameters renumbered.

    PostgreSQL runs every data-modifying CTE once, on one snapshot; a ``SELECT`` part (sending
    notifications) runs only if referenced, so the final select counts its rows. Invariant the
    callers keep: no two parts touch the same row (a key is deleted or upserted, never both).
    """
    if len(stmts) == 1 and not stmts[0][0].lstrip().upper().startswith("SELECT"):
        return stmts[0][0], list(stmts[0][1])
    ctes: list[str] = []
    refs: list[str] = []
    args: list[Any] = []
    for n, (sql, part_args) in enumerate(stmts):
        offset = len(args)
        ctes.append(f"s{n} AS ({shift(sql.strip(), offset)})")
        args.extend(part_args)
        if sql.lstrip().upper().startswith("SELECT"):
            refs.append(f"(SELECT count(*) FROM s{n})")
    return f"WITH {', '.join(ctes)} SELECT {', '.join(refs) or '1'}", args


async def _fetch_all(conn: Any, reads: list[tuple[str, list[Any]]]) -> list[list[Any]]:
    return [await conn.fetch(sql, *args) for sql, args in reads]


def blocking_on(loop: asyncio.AbstractEventLoop) -> Blocking:
    """A ``Blocking`` that runs coroutines on ``loop`` (from another thread)."""
    def call(coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result()
    return call
