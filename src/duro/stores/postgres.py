"""PostgresStore: the distributed store — many worker processes on many machines share one PostgreSQL schema.

The run state machine is ``duro.engine.machine``; this module is its PostgreSQL adapter. Threads:

- the **DB loop** (thread ``duro-pg-db``): an asyncio loop that owns the connection pool, the
  LISTEN connection (``pg_notify.Listener``) and the batch loop;
- the **writer** (thread ``duro-pg-writer``): runs the machine's transitions, which are
  synchronous; each read it makes blocks on the DB loop for one round trip.

Group commit: every state change is an *op* queued to the batch loop, which drains what is queued
into one batch = one PostgreSQL transaction on one pooled connection (``pg_conn.run_with_retry``:
a deadlock, a serialization failure or a connection lost before COMMIT runs the batch again, on a
fresh connection, with backoff). The writer runs the ops on a ``PgTx``: runs are read ``FOR
UPDATE`` (transitions on one run serialize across processes), writes are buffered per op and
flushed with a few set-based statements at the end, then COMMIT. Only after COMMIT returns are the
ops' futures resolved and their effects applied (result waiters, update waiters, this process's
workers through ``dispatch``). An op that raises drops its own writes and fails alone; a batch
that the server refuses as a whole (a constraint, a statement timeout) runs again op by op, so only
the culprit fails. A connection lost while COMMIT is in flight is settled by the batch's id, which
every batch records in ``op_ids``: the retry records it first, and finds it (the first attempt
committed: its answers stand) or not (it runs the batch), so a batch applies exactly once.

Claims, reaps and due timers select rows with ``FOR UPDATE SKIP LOCKED`` inside the batch's
transaction, then run the machine's transitions on them, as the LMDB store does. Wake-ups: a batch
that queued work for other processes sends one NOTIFY per kind (and queue); the listener calls the
``on_foreign_change`` subscribers and re-checks ``wait_closed`` waiters. Workers keep a 1 s poll as
the safety net.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import asyncpg
import msgspec
import orjson

from duro import _metrics
from duro._aio import wait_event
from duro._core import codec
from duro._core.codec import Event
from duro.engine.machine import LAPSED_LEASE_FAILURE, Effects, Machine, run_info
from duro.engine.records import ActivityMeta
from duro.errors import StoreError, WorkflowNotFoundError
from duro.stores import lmdb as _lmdb
from duro.stores.base import (
    RUNNING,
    ActivityOutcome,
    ActivityTask,
    Clock,
    Dispatch,
    ListQuery,
    QueueVersioning,
    RunClosed,
    RunInfo,
    StartRequest,
    UpdateCompleted,
    WorkflowTaskCompletion,
    check_topics,
    new_run_id,
    pack,
)
from duro.stores.batch import Op, answer_batch, resolve, store_error
from duro.stores.pg_conn import (
    CommitUnknownError,
    PgSettings,
    StoreUnavailableError,
    connect_pool,
    is_connection_loss,
    parse_pg_url,
    run_with_retry,
)
from duro.stores.pg_notify import KINDS, Listener, channel, notify_statement
from duro.stores.pg_schedules import PgSchedules
from duro.stores.pg_schema import migrate
from duro.stores.pg_sql import (
    NEXT_TIMER_US,
    RECORD_OP_ID,
    RELEASE_EXPIRED_WTASK_LEASES,
    TAKE_DUE_TIMERS,
)
from duro.stores.postgres_tx import ATASK_COLS, PgTx, atask_from_row, blocking_on, run_from_row

__all__ = ["PostgresStore", "count_runs_query", "list_runs_query", "open_postgres_store"]

log = logging.getLogger("duro.store.pg")

_MAX_BATCH = 1024
_BATCHES_IN_FLIGHT = 2  # group commits of one process committing at once, each on its own connection
_READ_RETRY_S = 30.0  # how long a read waits for a server that went away (a restart takes seconds)
_SWEEP_LIMIT = 1000
_START_TIMEOUT_S = 60.0

# Worker versioning: a task of a pinned run (build set) goes to workers of its build; another to
# workers of the queue's current build (queue_builds), to any worker while the queue has none. An
# unversioned worker's claim (the first) is today's with two cheap conditions.
_CLAIM_WTASKS = """
SELECT run_key, build FROM wtasks
WHERE task_queue = $1::text AND visible_at_us <= $2::bigint AND build IS NULL
  AND NOT EXISTS (SELECT 1 FROM queue_builds WHERE task_queue = $1::text)
ORDER BY visible_at_us
LIMIT $3::integer
FOR UPDATE SKIP LOCKED
"""
_CLAIM_WTASKS_OF_BUILD = """
SELECT run_key, build FROM wtasks
WHERE task_queue = $1::text AND visible_at_us <= $2::bigint
  AND (build = $4::text OR (build IS NULL AND coalesce(
      (SELECT build_id FROM queue_builds WHERE task_queue = $1::text), $4::text) = $4::text))
ORDER BY visible_at_us
LIMIT $3::integer
FOR UPDATE SKIP LOCKED
"""
_HAS_DUE_WTASKS = """
SELECT EXISTS (SELECT 1 FROM wtasks WHERE task_queue = $1::text AND visible_at_us <= $2::bigint AND build IS NULL)
  AND NOT EXISTS (SELECT 1 FROM queue_builds WHERE task_queue = $1::text)
"""
_HAS_DUE_WTASKS_OF_BUILD = """
SELECT EXISTS (SELECT 1 FROM wtasks WHERE task_queue = $1::text AND visible_at_us <= $2::bigint
  AND (build = $3::text OR (build IS NULL AND coalesce(
      (SELECT build_id FROM queue_builds WHERE task_queue = $1::text), $3::text) = $3::text)))
"""
_QUEUE_BUILD = "SELECT build_id, set_us FROM queue_builds WHERE task_queue = $1::text"
_RUNNING_BY_BUILD = """
SELECT record->>'build', record->>'vb', count(*) FROM runs
WHERE task_queue = $1::text AND status = 'running'
GROUP BY 1, 2 ORDER BY 1 NULLS FIRST, 2 NULLS FIRST
"""
_CLAIM_ATASKS = f"""
SELECT {ATASK_COLS} FROM atasks
WHERE task_queue = $1::text AND owner IS NULL AND visible_at_us <= $2::bigint
ORDER BY visible_at_us
LIMIT $3::integer
FOR UPDATE SKIP LOCKED
"""
_EXPIRED_ATASKS = """
SELECT run_key, seq, task_queue, attempt FROM atasks
WHERE owner IS NOT NULL AND lease_until_us <= $1::bigint
ORDER BY lease_until_us
LIMIT $2::integer
FOR UPDATE SKIP LOCKED
"""
_LEASE_OWNERS = """
SELECT owner FROM wtasks WHERE owner IS NOT NULL UNION SELECT owner FROM atasks WHERE owner IS NOT NULL
"""
_FREE_WTASKS_OF = """
WITH gone AS (
    SELECT run_key FROM wtasks WHERE owner = ANY($1::text[]) FOR UPDATE SKIP LOCKED
)
UPDATE wtasks AS t SET owner = NULL, lease_until_us = 0, visible_at_us = 0
FROM gone WHERE t.run_key = gone.run_key
RETURNING t.run_key, t.task_queue
"""
_ATASKS_OF = """
SELECT run_key, seq, task_queue, attempt FROM atasks
WHERE owner = ANY($1::text[])
LIMIT $2::integer
FOR UPDATE SKIP LOCKED
"""
_PENDING_ACTIVITIES = f"SELECT {ATASK_COLS} FROM atasks WHERE run_key = $1::bytea ORDER BY seq"
_HOLDS_ACTIVITY = """
SELECT owner, attempt, cancel_requested, lease_until_us, task_queue FROM atasks
WHERE run_key = $1::bytea AND seq = $2::bigint
"""
_LIST_RUNS = """
SELECT r.run_key, r.workflow_id, r.workflow_type, r.task_queue, r.status, r.start_us, r.close_us,
       r.next_event_id, r.epoch, r.last_input, r.record
FROM workflows AS w JOIN runs AS r ON r.run_key = w.run_key
{where}
ORDER BY w.start_us DESC, w.workflow_id
LIMIT $1::integer
"""


def _conditions(q: ListQuery, args: list[Any]) -> list[str]:
    conds: list[str] = []

    def arg(value: Any, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    if q.status is not None:
        conds.append(f"w.status = {arg(q.status, 'text')}")
    if q.workflow_type is not None:
        conds.append(f"w.workflow_type = {arg(q.workflow_type, 'text')}")
    if q.search_attributes:
        conds.append(f"w.search_attributes @> {arg(orjson.dumps(q.search_attributes).decode(), 'jsonb')}")
    if q.started_after_us is not None:
        conds.append(f"w.start_us > {arg(q.started_after_us, 'bigint')}")
    if q.started_before_us is not None:
        conds.append(f"w.start_us < {arg(q.started_before_us, 'bigint')}")
    return conds


def list_runs_query(q: ListQuery, limit: int, after: tuple[int, str] | None = None) -> tuple[str, list[Any]]:
    """The statement (and arguments) that lists the latest runs, newest first, with only the filters given.

    Written per combination rather than as ``$1 IS NULL OR status = $1``: a prepared statement's
    generic plan cannot use an index for such a condition, so each filter's own index
    (``workflows_by_status``, ``workflows_by_type``, the GIN index of search attributes, else
    ``workflows_by_start``) serves it. ``after`` pages by key (start, id), never by offset.
    """
    args: list[Any] = [min(limit, 2**31 - 1)]
    conds = _conditions(q, args)
    if after is not None:
        args += [after[0], after[1]]
        a, b = len(args) - 1, len(args)
        conds.append(f"(w.start_us < ${a}::bigint OR (w.start_us = ${a}::bigint AND w.workflow_id > ${b}::text))")
    return _LIST_RUNS.format(where=f"WHERE {' AND '.join(conds)}" if conds else ""), args


def count_runs_query(q: ListQuery) -> tuple[str, list[Any]]:
    """The statement (and arguments) that counts the workflow ids whose latest run matches ``q``."""
    args: list[Any] = []
    conds = _conditions(q, args)
    return f"SELECT count(*) FROM workflows AS w {'WHERE ' + ' AND '.join(conds) if conds else ''}", args
_READ_HISTORY = "SELECT envelope FROM history WHERE run_key = $1::bytea AND event_id >= $2::bigint ORDER BY event_id"
_READ_RUN = ("SELECT run_key, workflow_id, workflow_type, task_queue, status, start_us, close_us, next_event_id, "
             "epoch, last_input, record FROM runs WHERE run_key = $1::bytea")
# Runs that result waiters wait on, and the close event of those that closed (the last event).
_CHECK_RUNS = """
SELECT r.run_key, r.workflow_id, r.workflow_type, r.task_queue, r.status, r.start_us, r.close_us, r.next_event_id,
       r.epoch, r.last_input, r.record, h.envelope
FROM runs AS r LEFT JOIN history AS h
    ON r.status <> 'running' AND h.run_key = r.run_key AND h.event_id = r.next_event_id - 1
WHERE r.run_key = ANY($1::bytea[])
"""
_PURGE_CANDIDATES = ("SELECT run_key FROM runs WHERE close_us < $1::bigint AND status <> 'running' "
                     "ORDER BY close_us LIMIT $2::integer")
_HAS_ANY_TASKS = "SELECT EXISTS (SELECT 1 FROM wtasks) OR EXISTS (SELECT 1 FROM atasks)"
# A leased task counts as due now (0): it is running.
_NEXT_TASK_DUE = ("SELECT min(CASE WHEN owner IS NULL THEN visible_at_us ELSE 0 END) FROM "
                  "(SELECT owner, visible_at_us FROM wtasks UNION ALL SELECT owner, visible_at_us FROM atasks) AS t")
_PUT_REQUEST = ("INSERT INTO requests (request_id, task_queue, head, args, created_us) "
                "VALUES ($1::text, $2::text, $3::bytea, $4::bytea, $5::bigint)")
_PENDING_REQUESTS = ("SELECT request_id, head, args FROM requests WHERE task_queue = $1::text "
                     "ORDER BY created_us")
_TAKE_REQUEST = "DELETE FROM requests WHERE request_id = $1::text RETURNING 1"
_PUT_RESPONSE = "INSERT INTO responses (request_id, answer, created_us) VALUES ($1::text, $2::bytea, $3::bigint)"
_TAKE_RESPONSE = "DELETE FROM responses WHERE request_id = $1::text RETURNING answer"
_HAS_RESPONSE = "SELECT EXISTS (SELECT 1 FROM responses WHERE request_id = $1::text)"

_INSERT_BATCH_ID = "INSERT INTO op_ids (op_id, created_us) VALUES ($1::text, $2::bigint)"
# Batch ids matter only while their batch may be retried (seconds); requests and answers only while
# their requester waits (a few seconds by default). Older rows are purged by the reaper.
_PURGE_AFTER_US = 600_000_000
_PURGE_EVERY_S = 60.0
_PURGE = """
WITH old_ids AS (DELETE FROM op_ids WHERE op_id IN
                 (SELECT op_id FROM op_ids WHERE created_us < $1::bigint LIMIT $2::integer)),
     old_requests AS (DELETE FROM requests WHERE request_id IN
                      (SELECT request_id FROM requests WHERE created_us < $1::bigint LIMIT $2::integer))
DELETE FROM responses WHERE request_id IN
    (SELECT request_id FROM responses WHERE created_us < $1::bigint LIMIT $2::integer)
"""


class _Committed(Exception):
    """A retried batch found its id recorded: an earlier attempt, whose COMMIT went unanswered, committed."""


# Errors that mean the transaction itself broke (the server aborted it, or the connection is gone):
# the batch fails (and is retried when that is safe), not only the op that met it.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError,
              concurrent.futures.CancelledError)
_READ_ERRORS = (*_DB_ERRORS, TimeoutError)  # a read attempt that ran over its bound, too


def _read_may_retry(e: BaseException) -> bool:
    """Whether a failed read should be tried again: the connection was lost, or left unusable.

    Reads change nothing, so any client-side connection trouble (asyncpg's InterfaceError and
    InternalClientError, seen on a pooled connection the server had just ended) is worth a retry
    on a fresh connection, not only what ``is_connection_loss`` recognises.
    """
    return is_connection_loss(e) or isinstance(e, asyncpg.InterfaceError | asyncpg.InternalClientError
                                                   | TimeoutError)


def _us(t: float) -> int:
    return int(t * 1_000_000)


def _new_db_loop() -> asyncio.AbstractEventLoop:
    """The DB loop's event loop: uvloop where it is installed (asyncpg's round trips cost less on it)."""
    try:
        import uvloop
    except ImportError:  # Windows, or an install without it
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


_OPEN: dict[str, PostgresStore] = {}
_OPEN_LOCK = threading.Lock()


def open_postgres_store(url: str) -> PostgresStore:
    """Open (or share) the store a ``postgresql://`` URL names; one store per URL per process.

    Connects, creates or migrates the schema and starts listening before it returns (blocking the
    caller up to the connect timeout). Clients and workers of one process that name the same URL
    share the store (reference counted by ``close``), so tasks their commits lease go straight to
    the workers of this process.

    Raises:
        StoreURLError: the URL is malformed or has an unknown option.
        StoreUnavailableError: the server could not be reached (the message says how to start it).
        StoreError: the schema cannot be migrated, or a login/database problem.
    """
    settings = parse_pg_url(url)
    with _OPEN_LOCK:
        store = _OPEN.get(url)
        if store is None or store._closed:
            store = PostgresStore(url, settings)
            _OPEN[url] = store
        store._refs += 1
        return store


class PostgresStore(PgSchedules):
    """The PostgreSQL store (see the module docstring for its threads and batches)."""

    def __init__(self, url: str, settings: PgSettings | None = None) -> None:
        self.url = url
        self.settings = settings or parse_pg_url(url)
        self.clock = Clock()
        self.machine = Machine(_lmdb.OWNER, lambda: _us(self.clock.now()))
        self.dispatch: Dispatch | None = None
        self._refs = 0
        self._closed = False
        self._waiters: dict[bytes, list[asyncio.Future[RunInfo]]] = {}
        self._update_waiters: dict[str, asyncio.Future[bytes]] = {}
        self._change_listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[], None]]] = []
        self._own_pids: set[int] = set()  # server pids of this store's pool connections
        self._to_check: set[bytes] = set()  # runs whose result waiters want a look (on the DB loop)
        self._checker: asyncio.Future[None] | None = None  # the look in progress
        self._next_purge = 0.0  # when the reaper next purges old batch ids, requests and answers
        # How long one attempt of a batch or a read may take before it counts as a lost connection.
        self._attempt_s = (self.settings.statement_timeout_ms / 1000 + 10 if self.settings.statement_timeout_ms
                           else None)
        self._queued = 0  # ops submitted and not yet answered (is_idle)
        self._queued_lock = threading.Lock()
        self._channels = {kind: channel(self.settings.schema, kind) for kind in KINDS}
        # Counters for benchmarks: batches committed, ops in them, batches run again, round trips.
        self.commits = 0
        self.ops_committed = 0
        self.retried_batches = 0
        self.round_trips = 0
        self.time_in_batches = 0.0
        self._db_loop = _new_db_loop()
        self._call = blocking_on(self._db_loop)
        self._db_thread = threading.Thread(target=self._db_main, name="duro-pg-db", daemon=True)
        self._db_thread.start()
        self._writer = concurrent.futures.ThreadPoolExecutor(max_workers=_BATCHES_IN_FLIGHT,
                                                             thread_name_prefix="duro-pg-writer")
        self._queue: asyncio.Queue[Op | None] | None = None
        self._pool: asyncpg.Pool | None = None
        self._listener: Listener | None = None
        self._batch_task: asyncio.Task[None] | None = None
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._db_loop).result(_START_TIMEOUT_S)
        except BaseException:
            self._stop_db_loop()
            raise

    # ------------------------------------------------------------------ the DB loop

    def _db_main(self) -> None:
        asyncio.set_event_loop(self._db_loop)
        self._db_loop.run_forever()
        self._db_loop.close()

    def _stop_db_loop(self) -> None:
        self._db_loop.call_soon_threadsafe(self._db_loop.stop)
        self._db_thread.join()
        self._writer.shutdown(wait=False)

    async def _start(self) -> None:
        self._queue = asyncio.Queue()
        pool = await connect_pool(self.settings, init=self._pool_connection)
        try:
            async with pool.acquire() as conn:
                await migrate(conn, self.settings.schema)
            listener = Listener(self.settings)
            await listener.start()
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._listener = listener
        listener.ignore = self._sent_here
        for kind in KINDS:
            listener.subscribe(kind, functools.partial(self._on_notify, kind))
        self._batch_task = asyncio.create_task(self._batch_loop(), name="duro-pg-batches")

    async def _pool_connection(self, conn: asyncpg.Connection) -> None:
        # A server pid is this process's only while the connection lives (another backend may get it later).
        pid = conn.get_server_pid()
        self._own_pids.add(pid)
        conn.add_termination_listener(lambda _conn: self._own_pids.discard(pid))

    def _sent_here(self, kind: str, pid: int) -> bool:
        """Whether a notification needs no handling here: a run closed by this process's own commit.

        Its result waiters here were released when that commit returned; re-reading the run for
        each such notification cost two reads per workflow.
        """
        return kind == "closed" and pid in self._own_pids

    async def _shutdown(self) -> None:
        assert self._queue is not None
        self._queue.put_nowait(None)
        if self._batch_task is not None:
            await self._batch_task
        if self._listener is not None:
            await self._listener.close()
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 5.0)
            except Exception:
                self._pool.terminate()

    def _read(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` on the DB loop and wait for it (from any thread but the DB loop's).

        A lost connection (a server restarting, say) is retried with backoff for up to
        ``_READ_RETRY_S`` seconds: reads change nothing, so retrying them is always safe. Not on a
        thread that runs an event loop, though: a sleep there would stall everything on that loop
        (a worker's heartbeats, say), so the read fails at once and its caller's loop retries it.
        """
        return self._retrying(lambda: self._call(self._bounded(fn, *args)))

    async def _bounded(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """``fn(*args)`` on the DB loop, given up after one attempt's bound (then retried as a loss).

        A server that vanished without closing the socket (a partition dropping packets) would
        otherwise hold a read until TCP gives up; batches have the same bound.
        """
        return await asyncio.wait_for(fn(*args), self._attempt_s)

    def _retrying(self, read: Callable[[], Any]) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        deadline = time.monotonic() + (0.0 if on_loop else _READ_RETRY_S)
        delay = 0.05
        while True:
            if self._closed:
                raise RuntimeError(f"the store at {self.settings.where} is closed")
            try:
                return read()
            except _READ_ERRORS as e:
                if not _read_may_retry(e) or time.monotonic() + delay > deadline:
                    raise StoreError(f"reading from PostgreSQL at {self.settings.where} failed: "
                                     f"{type(e).__name__}: {e}") from e
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _aread(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` on the DB loop and await it (from another loop), retried like ``_read``."""
        deadline = time.monotonic() + _READ_RETRY_S
        delay = 0.05
        while True:
            try:
                return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._bounded(fn, *args),
                                                                                  self._db_loop))
            except _READ_ERRORS as e:
                if not _read_may_retry(e) or time.monotonic() + delay > deadline:
                    raise StoreError(f"reading from PostgreSQL at {self.settings.where} failed: "
                                     f"{type(e).__name__}: {e}") from e
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def aread(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        """Await ``fn(*args)`` (a read on ``pool``) on the DB loop, retried while the server is away."""
        return await self._aread(fn, *args)

    async def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(tx, fx, *args)`` (a ``PgTx`` and ``Effects``) as one op of the next group commit.

        For store-level tools (``duro copy``): what ``fn`` writes is committed when this returns, and
        nothing of it if it raises.
        """
        return await self._submit(fn, *args)

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool (lives on the DB loop: use it only there)."""
        assert self._pool is not None
        return self._pool

    # ------------------------------------------------------------------ group commit

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        if self._closed:
            raise RuntimeError(f"the store at {self.settings.where} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._queued_lock:
            self._queued += 1
        assert self._queue is not None
        self._db_loop.call_soon_threadsafe(self._queue.put_nowait, Op(fn, args, loop, fut))
        return fut

    async def _batch_loop(self) -> None:
        """Drain the queue into batches, up to ``_BATCHES_IN_FLIGHT`` committing at once.

        A batch spends most of its time waiting for round trips and the server's WAL flush, so a
        second one on another connection overlaps it (and their flushes may share one). Batches
        that touch the same run serialize on its row lock; what one process submits to one run
        comes in causal order anyway (a worker submits a run's next op after the last one returned).
        """
        assert self._queue is not None
        q = self._queue
        slots = asyncio.Semaphore(_BATCHES_IN_FLIGHT)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                await slots.acquire()  # ops queue up meanwhile: the next batch is bigger
                op = await q.get()
                if op is None:
                    return
                ops = [op]
                stop = False
                while len(ops) < _MAX_BATCH and not q.empty():
                    nxt = q.get_nowait()
                    if nxt is None:
                        stop = True
                        break
                    ops.append(nxt)
                task = asyncio.ensure_future(self._commit_batch(ops))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _t: slots.release())
                if stop:
                    return
        finally:
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)

    async def _commit_batch(self, ops: list[Op]) -> None:
        try:
            await self._commit(ops)
        except Exception:  # never lose a batch: its ops' callers would wait forever
            log.exception("a PostgreSQL batch failed unexpectedly")
            self._finish(ops, [(False, StoreError("the PostgreSQL store failed"))] * len(ops), Effects())

    async def _commit(self, ops: list[Op]) -> None:
        """Run ``ops`` as one transaction (retried per pg_conn's rules), then answer them and apply effects."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        attempts = 0
        # Exactly once across a lost COMMIT: every batch records its id in ``op_ids`` in its own
        # transaction. An attempt after the first records the id *first*: if an earlier attempt
        # committed, the id is there and nothing is run again (the ops get that attempt's answers);
        # if the server is still finishing that attempt, the insert waits for it (the unique index).
        batch_id = new_run_id()
        ran: list[tuple[list[tuple[bool, Any]], Effects, PgTx]] = []  # the latest attempt that ran the ops

        async def body(conn: asyncpg.Connection) -> tuple[list[tuple[bool, Any]], Effects, PgTx]:
            nonlocal attempts
            attempts += 1
            marker: str | None = batch_id
            if attempts > 1:
                if not await conn.fetchval(RECORD_OP_ID, batch_id, self.machine.now_us()):
                    raise _Committed
                marker = None
            out = await loop.run_in_executor(self._writer, self._run_ops, conn, ops, marker)
            ran[:] = [out]
            return out

        try:
            try:
                results, fx, tx = await run_with_retry(
                    self.pool, body, idempotent=True, where=self.settings.where, attempt_timeout_s=self._attempt_s)
            except _Committed:
                results, fx, tx = ran[0]
        except Exception as e:
            if len(ops) > 1 and not isinstance(e, StoreUnavailableError | CommitUnknownError):
                # The server refused the batch as a whole: run each op alone, so only the culprit fails.
                self.retried_batches += 1
                for op in ops:
                    await self._commit([op])
                return
            if not isinstance(e, StoreError):
                log.warning("a PostgreSQL batch of %d op(s) failed: %s: %s", len(ops), type(e).__name__, e)
            self._finish(ops, [(False, store_error(e, "the PostgreSQL store"))] * len(ops), Effects())
            return
        self.retried_batches += attempts - 1
        self.commits += 1
        self.ops_committed += len(ops)
        self.round_trips += tx.round_trips
        self.time_in_batches += time.perf_counter() - t0
        if _metrics.ENABLED:
            _metrics.RECORDER.store_committed("postgresql", len(ops), time.perf_counter() - t0)
        self._finish(ops, results, fx)

    def _run_ops(self, conn: asyncpg.Connection, ops: list[Op],
                 marker: str | None) -> tuple[list[tuple[bool, Any]], Effects, PgTx]:
        """On the writer thread: run every op on one PgTx, flush, and queue the wake-ups (COMMIT follows).

        ``marker``: the batch id to record with the last writes (None: this attempt recorded it first).
        """
        tx = PgTx(conn, self._call, self.machine.now_us, self.settings.lease_s)
        fx = Effects()
        results: list[tuple[bool, Any]] = []
        runs: list[bytes] = []
        attempts: list[tuple[bytes, int]] = []
        ids: list[str] = []
        closing: list[bytes] = []
        for op in ops:
            self._rows_of(op, runs, attempts, ids, closing)
        tx.prefetch(runs, attempts, ids, closing)
        for op in ops:
            mark = fx.mark()
            tx.push()
            try:
                value = op.fn(tx, fx, *op.args)
            except _DB_ERRORS:
                raise  # the transaction is broken: the whole batch fails (or runs again)
            except Exception as e:
                tx.drop()
                fx.rollback(mark)
                results.append((False, store_error(e, "the PostgreSQL store")))
            else:
                tx.merge()
                results.append((True, value))
        notes = set(tx.notes)
        for eff in fx.effects:
            if isinstance(eff, RunClosed):
                notes.add(("closed", eff.run_key.hex()))
            elif isinstance(eff, UpdateCompleted):
                notes.add(("update", eff.update_id))
        # The last writes, the batch id and the wake-ups go in one hop (COMMIT follows on the DB loop).
        tail: list[tuple[str, list[Any]]] = []
        if marker is not None:
            tail.append((_INSERT_BATCH_ID, [marker, self.machine.now_us()]))
        if notes:
            tail.append(notify_statement([(self._channels[kind], payload) for kind, payload in sorted(notes)]))
        tx.flush(tail)
        return results, fx, tx

    def _rows_of(self, op: Op, runs: list[bytes], attempts: list[tuple[bytes, int]], ids: list[str],
                 closing: list[bytes]) -> None:
        """The runs and activity attempts ``op`` will read, for the batch's read-ahead.

        A guess may be wrong either way: a row not read ahead is read when asked for, and one read
        needlessly costs nothing.
        """
        fn, args = op.fn, op.args
        if fn == self._op_start or fn == self._op_start_eager:
            ids.append(args[0].workflow_id)
        elif fn in (self._op_signal, self._op_cancel, self._op_terminate):
            ids.append(args[0])
        if fn == self._op_complete_wtask or fn == self._op_start_eager:
            c = args[-1]
            runs.append(c.run_key)
            if c.close_status is not None:
                closing.append(c.run_key)
            if c.completed_activity is not None:
                attempts.append((c.run_key, c.completed_activity[0]))
        elif fn == self._op_complete_activity or fn == self._op_complete_by_token:
            o = args[0]
            runs.append(o.run_key)
            attempts.append((o.run_key, o.seq))
        elif fn == self._op_heartbeat or fn == self._op_heartbeat_by_token:
            runs.append(args[0])
            attempts.append((args[0], args[2]))
        elif fn == self._op_hand_off:
            runs.append(args[1])
            attempts.append((args[1], args[2]))
        elif fn == self._op_release_wtask or fn == self._op_fail_wtask:
            runs.append(args[1])
        elif fn == self._op_return_wtasks:
            runs.extend(args[1])
        elif fn == self._op_purge:
            runs.extend(args[0])
            closing.extend(args[0])  # their id rows, which a purge deletes

    def _finish(self, ops: list[Op], results: list[tuple[bool, Any]], fx: Effects) -> None:
        """After the commit (or the failure): resolve futures and apply effects, one wake-up per loop."""
        with self._queued_lock:
            self._queued -= len(ops)
        answer_batch(ops, results, fx.effects, self._waiters, self._update_waiters, self.dispatch)

    # ------------------------------------------------------------------ wake-ups from other processes

    def _on_notify(self, kind: str, payload: str | None) -> None:
        """On the DB loop: a notification (None: the listener reconnected, anything may have changed)."""
        for loop, fn in list(self._change_listeners):
            if not loop.is_closed():
                loop.call_soon_threadsafe(fn)
        if self._waiters:
            if payload is None:
                self._check(list(self._waiters))
            elif kind == "closed":
                try:
                    key = bytes.fromhex(payload)
                except ValueError:
                    return
                if key in self._waiters:
                    self._check([key])

    def _check(self, keys: list[bytes]) -> None:
        """On the DB loop: look at these runs for their result waiters, with other looks due now, in one read.

        Looks asked for while one read is out (waiters registering, closes notified) go in the
        next: a client waiting on many runs costs a read per burst of closes, not two per run.
        """
        self._to_check.update(keys)
        if self._checker is None:
            self._checker = asyncio.ensure_future(self._check_runs())

    async def _check_runs(self) -> None:
        delay = 0.05
        try:
            while self._to_check and not self._closed:
                keys = [k for k in self._to_check if k in self._waiters]
                self._to_check.clear()
                if not keys:
                    continue
                try:
                    rows = await asyncio.wait_for(self.pool.fetch(_CHECK_RUNS, keys), self._attempt_s)
                except Exception as e:  # a lost connection: look again, the waiters wait meanwhile
                    log.debug("looking at runs for their result waiters failed (%s: %s); again in %.2fs",
                              type(e).__name__, e, delay)
                    self._to_check.update(keys)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    continue
                delay = 0.05
                found: set[bytes] = set()
                for row in rows:
                    key = bytes(row[0])
                    found.add(key)
                    rec = run_from_row(row)
                    if rec.status != RUNNING:
                        info = run_info(key, rec)
                        if row[11] is not None:
                            info.close_event = codec.decode_event(row[11])
                        self._release_waiters(key, info)
                for key in keys:
                    if key not in found:
                        for fut in self._waiters.pop(key, ()):
                            if not fut.get_loop().is_closed():
                                fut.get_loop().call_soon_threadsafe(
                                    resolve, fut, False, WorkflowNotFoundError("?", key.hex()))
        finally:
            self._checker = None

    def _release_waiters(self, run_key: bytes, info: RunInfo) -> None:
        for fut in self._waiters.pop(run_key, ()):
            loop = fut.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(resolve, fut, True, info)

    def on_foreign_change(self, fn: Callable[[], None], topics: Iterable[str] | None = None) -> Callable[[], None]:
        """Call ``fn`` on the current loop when a notification arrives; returns an unsubscriber.

        ``topics`` is checked but not used: every notification wakes every subscriber.
        """
        check_topics(topics)
        entry = (asyncio.get_running_loop(), fn)
        self._change_listeners.append(entry)

        def remove() -> None:
            if entry in self._change_listeners:
                self._change_listeners.remove(entry)

        return remove

    def set_dispatch(self, dispatch: Dispatch | None) -> None:
        """Hand this process's tasks to ``dispatch`` after each commit (None: nobody here takes any)."""
        self.dispatch = dispatch
        self.machine.local = dispatch

    async def close(self) -> None:
        """Drop one reference; the last one stops the threads and closes the connections."""
        with _OPEN_LOCK:
            self._refs -= 1
            if self._refs > 0 or self._closed:
                return
            if _OPEN.get(self.url) is self:
                del _OPEN[self.url]
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._shutdown(), self._db_loop))
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._stop_db_loop)

    # ------------------------------------------------------------------ ops (on the writer thread)

    def _op_start(self, tx: PgTx, fx: Effects, req: StartRequest) -> str:
        return self.machine.start(tx, fx, req)

    def _op_start_eager(self, tx: PgTx, fx: Effects, req: StartRequest, now_us: int,
                        first: WorkflowTaskCompletion) -> int:
        return self.machine.start_eager(tx, fx, req, now_us, first)

    def _op_signal(self, tx: PgTx, fx: Effects, workflow_id: str, run_id: str | None, name: str,
                   payload: bytes, headers: dict[str, str] | None) -> None:
        self.machine.signal(tx, fx, workflow_id, run_id, name, payload, headers)

    def _op_cancel(self, tx: PgTx, fx: Effects, workflow_id: str, run_id: str | None) -> None:
        self.machine.cancel(tx, fx, workflow_id, run_id)

    def _op_terminate(self, tx: PgTx, fx: Effects, workflow_id: str, run_id: str | None, reason: str) -> None:
        self.machine.terminate(tx, fx, workflow_id, run_id, reason)

    def _op_delete(self, tx: PgTx, fx: Effects, workflow_id: str, run_id: str | None) -> str:
        return self.machine.delete_run(tx, fx, workflow_id, run_id)

    def _op_purge(self, tx: PgTx, fx: Effects, run_keys: list[bytes], before_us: int) -> int:
        return self.machine.purge(tx, fx, run_keys, before_us)

    def _op_reset(self, tx: PgTx, fx: Effects, workflow_id: str, run_id: str | None, event_id: int, reason: str,
                  new_run: str) -> str:
        return self.machine.reset(tx, fx, workflow_id, run_id, event_id, reason, new_run)

    def _op_complete_wtask(self, tx: PgTx, fx: Effects, c: WorkflowTaskCompletion) -> int:
        return self.machine.complete_wtask(tx, fx, c)

    def _op_release_wtask(self, tx: PgTx, fx: Effects, task_queue: str, run_key: bytes, seen_through: int) -> None:
        self.machine.release_wtask(tx, fx, task_queue, run_key, seen_through)

    def _op_return_wtasks(self, tx: PgTx, fx: Effects, task_queue: str, run_keys: list[bytes]) -> int:
        return self.machine.return_wtasks(tx, fx, task_queue, run_keys)

    def _op_fail_wtask(self, tx: PgTx, fx: Effects, task_queue: str, run_key: bytes, epoch: int, error_type: str,
                       failure: bytes) -> float | None:
        digest = hashlib.blake2b(failure, digest_size=8).hexdigest()
        return self.machine.fail_wtask(tx, fx, task_queue, run_key, epoch, error_type, failure, digest)

    def _op_complete_activity(self, tx: PgTx, fx: Effects, o: ActivityOutcome) -> str:
        return self.machine.complete_activity(tx, fx, o)

    def _op_heartbeat(self, tx: PgTx, fx: Effects, run_key: bytes, task_queue: str, seq: int, attempt: int,
                      details: bytes | None) -> bool:
        return self.machine.heartbeat(tx, fx, run_key, task_queue, seq, attempt, details)

    def _op_hand_off(self, tx: PgTx, fx: Effects, task_queue: str, run_key: bytes, seq: int, attempt: int,
                     started_us: int) -> bool:
        return self.machine.hand_off_activity(tx, fx, task_queue, run_key, seq, attempt, started_us)

    def _op_complete_by_token(self, tx: PgTx, fx: Effects, o: ActivityOutcome) -> str:
        return self.machine.complete_activity_by_token(tx, fx, o)

    def _op_heartbeat_by_token(self, tx: PgTx, fx: Effects, run_key: bytes, task_queue: str, seq: int,
                               attempt: int, details: bytes | None) -> bool:
        return self.machine.heartbeat_by_token(tx, fx, run_key, task_queue, seq, attempt, details)

    def _op_renew_leases(self, tx: PgTx, fx: Effects, task_queue: str, items: list[tuple[bytes, int, int]],
                         seconds: float) -> int:
        return self.machine.renew_leases(tx, fx, task_queue, items, seconds)

    def _op_claim_wtasks(self, tx: PgTx, fx: Effects, task_queue: str, limit: int,
                         build_id: str | None = None) -> list[bytes]:
        now_us = self.machine.now_us()
        tx.flush()  # the selection must see what earlier ops of the batch wrote
        if build_id is None:
            rows = tx.fetch(_CLAIM_WTASKS, task_queue, now_us, limit)
        else:
            rows = tx.fetch(_CLAIM_WTASKS_OF_BUILD, task_queue, now_us, limit, build_id)
        keys = [bytes(r[0]) for r in rows]
        for run_key, row in zip(keys, rows, strict=True):
            self.machine.lease_wtask(tx, task_queue, run_key, now_us, row[1] or "")
        return keys

    def _op_set_current_build(self, tx: PgTx, fx: Effects, task_queue: str, build_id: str | None) -> None:
        self.machine.set_current_build(tx, fx, task_queue, build_id)

    def _op_claim_atasks(self, tx: PgTx, fx: Effects, task_queue: str, limit: int) -> list[ActivityTask]:
        now_us = self.machine.now_us()
        tx.flush()
        tasks = []
        for row in tx.fetch(_CLAIM_ATASKS, task_queue, now_us, limit):
            meta, args, details = atask_from_row(row)
            task = self.machine.lease_atask(tx, task_queue, bytes(row[0]), row[1], meta, args, details, now_us)
            if task is not None:
                tasks.append(task)
        return tasks

    def _sweep(self, tx: PgTx, fx: Effects, items: list[Any], fn: Callable[[PgTx, Effects, Any], object],
               what: str) -> None:
        """Apply ``fn`` to each item in its own layer, so one damaged record fails alone (and is logged)."""
        for item in items:
            mark = fx.mark()
            tx.push()
            try:
                fn(tx, fx, item)
            except _DB_ERRORS:
                raise
            except Exception as e:
                tx.drop()
                fx.rollback(mark)
                log.error("a %s in %s could not be processed (%s: %s); the others went on", what,
                          self.settings.where, type(e).__name__, e)
            else:
                tx.merge()

    def _op_reap(self, tx: PgTx, fx: Effects) -> int:
        """Free expired (or dead owners') workflow task leases; record such activity leases as failed attempts."""
        now_us = self.machine.now_us()
        tx.flush()
        freed = list(tx.fetch(RELEASE_EXPIRED_WTASK_LEASES, now_us, _SWEEP_LIMIT))
        for row in freed:
            tx.notes.add(("wtask", row[1]))
        rows = list(tx.fetch(_EXPIRED_ATASKS, now_us, _SWEEP_LIMIT))
        # Owners on this host whose process is gone (exited, a zombie, a reused pid) lose their leases
        # at once, as in the LMDB store; owners elsewhere only by expiry.
        dead = [r[0] for r in tx.fetch(_LEASE_OWNERS) if not _lmdb.owner_alive(r[0])]
        if dead:
            for row in tx.fetch(_FREE_WTASKS_OF, dead):
                freed.append(row)
                tx.notes.add(("wtask", row[1]))
            seen = {(bytes(r[0]), r[1]) for r in rows}
            rows += [r for r in tx.fetch(_ATASKS_OF, dead, _SWEEP_LIMIT) if (bytes(r[0]), r[1]) not in seen]
        expired = [ActivityOutcome(run_key=bytes(r[0]), task_queue=r[2], seq=r[1], attempt=r[3],
                                   failure=LAPSED_LEASE_FAILURE, error_type="TimeoutError") for r in rows]
        self._sweep(tx, fx, expired, self._op_complete_activity, "lapsed activity lease")
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + _PURGE_EVERY_S
            tx.fetch(_PURGE, now_us - _PURGE_AFTER_US, _SWEEP_LIMIT * 10)
        return len(freed) + len(expired)

    def _op_fire_timers(self, tx: PgTx, fx: Effects) -> float | None:
        """Fire every due timer (deleted by the statement that selects them); when the next one is due."""
        now_us = self.machine.now_us()
        tx.flush()
        # Firing a timer hands a workflow task to a worker here: its build check reads the current builds.
        due = tx.fetch_with_builds(TAKE_DUE_TIMERS, now_us, _SWEEP_LIMIT)

        def fire(t: PgTx, f: Effects, row: Any) -> None:
            self.machine.fire_timer(t, f, row[2], bytes(row[0]), row[1], now_us)

        self._sweep(tx, fx, list(due), fire, "timer")
        if len(due) >= _SWEEP_LIMIT:
            return now_us / 1e6
        candidates = [x for x in (tx.fetchval(NEXT_TIMER_US), tx.pending_timer_min()) if x is not None]
        return min(candidates) / 1e6 if candidates else None

    def _op_put_request(self, tx: PgTx, fx: Effects, task_queue: str, request_id: str, head: bytes,
                        args: bytes) -> None:
        tx.fetch(_PUT_REQUEST, request_id, task_queue, head, args, self.machine.now_us())
        tx.notes.add(("request", task_queue))

    def _op_answer(self, tx: PgTx, fx: Effects, task_queue: str, request_id: str, answer: bytes) -> None:
        if tx.fetch(_TAKE_REQUEST, request_id):
            tx.fetch(_PUT_RESPONSE, request_id, answer, self.machine.now_us())
            tx.notes.add(("response", request_id))

    def _op_take_answer(self, tx: PgTx, fx: Effects, task_queue: str, request_id: str) -> bytes | None:
        rows = tx.fetch(_TAKE_RESPONSE, request_id)
        if rows:
            return bytes(rows[0][0])
        tx.fetch(_TAKE_REQUEST, request_id)  # nobody answered: withdraw the request
        return None

    # ------------------------------------------------------------------ async API

    async def start_workflow(self, req: StartRequest) -> str:
        """Create a run, its WorkflowExecutionStarted event and first workflow task (one commit)."""
        return await self._submit(self._op_start, req)  # type: ignore[no-any-return]

    async def start_workflow_eager(self, req: StartRequest, now_us: int, first: WorkflowTaskCompletion) -> int:
        """Create a run and commit its first workflow task in one transaction; the next event id."""
        return await self._submit(self._op_start_eager, req, now_us, first)  # type: ignore[no-any-return]

    async def signal_workflow(self, workflow_id: str, run_id: str | None, name: str, payload: bytes,
                              headers: dict[str, str] | None = None) -> None:
        """Append a signal (with its interceptor headers) to the open run of ``workflow_id``."""
        await self._submit(self._op_signal, workflow_id, run_id, name, payload, headers)

    async def cancel_workflow(self, workflow_id: str, run_id: str | None) -> None:
        """Ask the open run to cancel."""
        await self._submit(self._op_cancel, workflow_id, run_id)

    async def terminate_workflow(self, workflow_id: str, run_id: str | None, reason: str) -> None:
        """Close the run at once with WorkflowExecutionTerminated."""
        await self._submit(self._op_terminate, workflow_id, run_id, reason)

    async def delete_workflow(self, workflow_id: str, run_id: str | None) -> str:
        """Delete a closed run and its history (and any row left of it); its run id."""
        return await self._submit(self._op_delete, workflow_id, run_id)  # type: ignore[no-any-return]

    async def purge(self, before_us: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` runs closed before ``before_us`` (found by ``runs_by_close``); how many."""
        rows = await self._aread(self.pool.fetch, _PURGE_CANDIDATES, before_us, limit)
        keys = [bytes(r[0]) for r in rows]
        return await self._submit(self._op_purge, keys, before_us) if keys else 0

    async def purge_expired(self) -> int:
        """Purge the runs closed longer ago than the store's retention (none when it is 0)."""
        if not self.settings.retention_us:
            return 0
        return await self.purge(self.machine.now_us() - self.settings.retention_us)

    async def reset_workflow(self, workflow_id: str, run_id: str | None, event_id: int, reason: str) -> str:
        """Start a new run from a WorkflowTaskCompleted of the run and close the old one; the new run id."""
        new_run = new_run_id()  # chosen here: an op that runs again (a retried batch) makes the same run
        return await self._submit(self._op_reset, workflow_id, run_id, event_id, reason, new_run)  # type: ignore[no-any-return]

    async def complete_workflow_task(self, c: WorkflowTaskCompletion) -> int:
        """Commit a workflow task; raises Conflict when the run moved on."""
        return await self._submit(self._op_complete_wtask, c)  # type: ignore[no-any-return]

    async def return_workflow_tasks(self, task_queue: str, run_keys: list[bytes]) -> int:
        """Give back workflow tasks this process leased and will not run (a worker stopping)."""
        return await self._submit(self._op_return_wtasks, task_queue, run_keys)  # type: ignore[no-any-return]

    async def release_workflow_task(self, task_queue: str, run_key: bytes, seen_through: int) -> None:
        """Drop a workflow task that had nothing new to process (or re-dispatch it if it now has)."""
        await self._submit(self._op_release_wtask, task_queue, run_key, seen_through)

    async def fail_workflow_task(self, task_queue: str, run_key: bytes, epoch: int, error_type: str,
                                 failure: bytes) -> float | None:
        """Record a workflow task that raised; the backoff before it is due again (None: moved on)."""
        return await self._submit(self._op_fail_wtask, task_queue, run_key, epoch, error_type, failure)  # type: ignore[no-any-return]

    async def set_current_build_id(self, task_queue: str, build_id: str | None) -> None:
        """Make ``build_id`` the queue's current build (None: none); the queue's workers everywhere are woken."""
        await self._submit(self._op_set_current_build, task_queue, build_id)

    async def aqueue_versioning(self, task_queue: str, running: bool = True) -> QueueVersioning:
        """The queue's current build, and (``running``) its running runs by build."""
        out = QueueVersioning(task_queue)
        row = await self._aread(self.pool.fetchrow, _QUEUE_BUILD, task_queue)
        if row is not None:
            out.current_build_id, out.set_time = row[0], row[1] / 1e6
        if not running:
            return out
        rows = await self._aread(self.pool.fetch, _RUNNING_BY_BUILD, task_queue)
        out.running = [(r[0], r[1], int(r[2])) for r in rows]
        return out

    async def claim_workflow_tasks(self, task_queue: str, limit: int, build_id: str | None = None) -> list[bytes]:
        """Lease up to ``limit`` due workflow tasks of the queue, that a worker of ``build_id`` may take."""
        return await self._submit(self._op_claim_wtasks, task_queue, limit, build_id)  # type: ignore[no-any-return]

    async def complete_activity(self, outcome: ActivityOutcome) -> str:
        """Record an attempt's end: "done", "retry", "stale", "closed" or "canceled"."""
        return await self._submit(self._op_complete_activity, outcome)  # type: ignore[no-any-return]

    async def heartbeat_activity(self, run_key: bytes, task_queue: str, seq: int, attempt: int,
                                 details: bytes | None) -> bool:
        """Record a heartbeat; True means the attempt is no longer wanted."""
        return await self._submit(self._op_heartbeat, run_key, task_queue, seq, attempt, details)  # type: ignore[no-any-return]

    async def claim_activity_tasks(self, task_queue: str, limit: int) -> list[ActivityTask]:
        """Lease up to ``limit`` visible activity attempts of the queue to this process."""
        return await self._submit(self._op_claim_atasks, task_queue, limit)  # type: ignore[no-any-return]

    async def hand_off_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int,
                                started: float) -> bool:
        """An attempt raised CompleteAsync: it waits for an outside completion (see ``Machine.hand_off_activity``)."""
        return await self._submit(self._op_hand_off, task_queue, run_key, seq, attempt, round(started * 1e6))  # type: ignore[no-any-return]

    async def complete_activity_by_token(self, outcome: ActivityOutcome) -> str:
        """Record an attempt's end given by its task token: "done", "retry" or "canceled" (else TaskTokenError)."""
        return await self._submit(self._op_complete_by_token, outcome)  # type: ignore[no-any-return]

    async def heartbeat_activity_by_token(self, run_key: bytes, task_queue: str, seq: int, attempt: int,
                                          details: bytes | None) -> bool:
        """Record a heartbeat given by a task token; True: the workflow cancelled it (else TaskTokenError)."""
        return await self._submit(self._op_heartbeat_by_token, run_key, task_queue, seq, attempt, details)  # type: ignore[no-any-return]

    async def renew_activity_leases(self, task_queue: str, items: list[tuple[bytes, int, int]],
                                    seconds: float) -> int:
        """Extend this process's leases of running activity attempts."""
        return await self._submit(self._op_renew_leases, task_queue, items, seconds)  # type: ignore[no-any-return]

    async def fire_timers(self) -> float | None:
        """Fire every due timer; when the next one is due (None: there is none)."""
        return await self._submit(self._op_fire_timers)  # type: ignore[no-any-return]

    async def reap(self) -> int:
        """Take back the tasks whose lease ran out; how many."""
        return await self._submit(self._op_reap)  # type: ignore[no-any-return]

    def wait_update(self, update_id: str) -> asyncio.Future[bytes]:
        """A future of an update's completion payload (registered before the update is submitted)."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._update_waiters[update_id] = fut
        return fut

    def drop_update_waiter(self, update_id: str) -> None:
        """Forget an update waiter."""
        self._update_waiters.pop(update_id, None)

    # ------------------------------------------------------------------ requests to other processes

    async def request(self, task_queue: str, head: bytes, args: bytes, timeout: float) -> bytes | None:
        """Ask the workers of ``task_queue`` in other processes; their answer, or None after ``timeout``."""
        request_id = new_run_id()
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        unsubscribe = self.on_foreign_change(changed.set)
        try:
            await self._submit(self._op_put_request, task_queue, request_id, head, args)
            deadline = loop.time() + timeout
            while True:
                if await self._aread(self.pool.fetchval, _HAS_RESPONSE, request_id):
                    break
                left = deadline - loop.time()
                if left <= 0:
                    break
                changed.clear()
                await wait_event(changed, min(left, 0.25))
        finally:
            unsubscribe()
        answer: bytes | None = await self._submit(self._op_take_answer, task_queue, request_id)
        return answer

    def pending_requests(self, task_queue: str) -> list[tuple[str, bytes]]:
        """Requests waiting for a worker of ``task_queue``: (request id, packed request)."""
        rows = self._read(self.pool.fetch, _PENDING_REQUESTS, task_queue)
        return [(r[0], pack(bytes(r[1]), bytes(r[2]))) for r in rows]

    async def answer(self, task_queue: str, request_id: str, answer: bytes) -> None:
        """Answer a request (once; a withdrawn request is not answered)."""
        await self._submit(self._op_answer, task_queue, request_id, answer)

    # ------------------------------------------------------------------ reading (outside batches, no locks)

    def _read_tx(self) -> PgTx:
        return PgTx(self.pool, self._call, self.machine.now_us, self.settings.lease_s, lock=False)

    def has_pending_wtasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """Whether the queue holds workflow tasks, due now, that nobody holds and a worker of ``build_id`` may take."""
        if build_id is None:
            return bool(self._read(self.pool.fetchval, _HAS_DUE_WTASKS, task_queue, self.machine.now_us()))
        return bool(self._read(self.pool.fetchval, _HAS_DUE_WTASKS_OF_BUILD, task_queue, self.machine.now_us(),
                               build_id))

    def holds_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool:
        """Whether this process still holds the lease of an activity attempt."""
        return self._holds(self._read(self.pool.fetchrow, _HOLDS_ACTIVITY, run_key, seq), task_queue, attempt)

    def _holds(self, row: Any, task_queue: str, attempt: int) -> bool:
        return bool(row is not None and row[0] == self.machine.owner and row[1] == attempt and not row[2]
                    and row[3] > self.machine.now_us() and row[4] == task_queue)

    def is_idle(self) -> bool:
        """Whether no write of this process is queued or being committed."""
        return self._queued == 0

    def has_any_tasks(self) -> bool:
        """Whether any workflow or activity task is pending or running (any queue)."""
        return bool(self._read(self.pool.fetchval, _HAS_ANY_TASKS))

    def read_history(self, run_key: bytes, from_event_id: int = 1) -> list[Event]:
        """All events of a run from ``from_event_id`` on."""
        rows = self._read(self.pool.fetch, _READ_HISTORY, run_key, from_event_id)
        return [codec.decode_event(r[0]) for r in rows]

    def find_run(self, workflow_id: str, run_id: str | None = None) -> RunInfo:
        """Describe a run; the latest run of the id when ``run_id`` is None."""
        def read() -> RunInfo:
            tx = self._read_tx()
            key = Machine.resolve(tx, workflow_id, run_id)
            return run_info(key, Machine.get_run(tx, key))

        info: RunInfo = self._retrying(read)
        return info

    def run_state(self, run_key: bytes) -> dict[str, Any]:
        """The run record with the record's own short keys (status, next, epoch, wtf, ...), as LMDB's."""
        row = self._read(self.pool.fetchrow, _READ_RUN, run_key)
        if row is None:
            raise WorkflowNotFoundError("?", run_key.hex())
        state: dict[str, Any] = msgspec.to_builtins(run_from_row(row))
        return state

    def list_runs(self, query: ListQuery, limit: int, after: tuple[int, str] | None = None) -> list[RunInfo]:
        """The latest run of each workflow id matching ``query``, newest first (see ``list_runs_query``)."""
        sql, args = list_runs_query(query, limit, after)
        rows = self._read(self.pool.fetch, sql, *args)
        return [run_info(bytes(r[0]), run_from_row(r)) for r in rows]

    def next_timer_due(self) -> float | None:
        """When the earliest timer is due, or None."""
        due = self._read(self.pool.fetchval, NEXT_TIMER_US)
        return None if due is None else float(due) / 1e6

    # ------------------------------------------------------------------ reading on an event loop
    # Awaited on the DB loop (the caller's loop runs on meanwhile), retried with backoff while the
    # server is away (a restart takes seconds), like ``_read`` off a loop.

    async def aread_history(self, run_key: bytes, from_event_id: int = 1) -> list[Event]:
        """``read_history``, awaited."""
        rows = await self._aread(self.pool.fetch, _READ_HISTORY, run_key, from_event_id)
        return [codec.decode_event(r[0]) for r in rows]

    async def afind_run(self, workflow_id: str, run_id: str | None = None) -> RunInfo:
        """``find_run``, awaited: the machine's lookup (synchronous reads) runs on a thread."""
        info: RunInfo = await asyncio.get_running_loop().run_in_executor(None, self.find_run, workflow_id, run_id)
        return info

    async def alist_runs(self, query: ListQuery, limit: int, after: tuple[int, str] | None = None) -> list[RunInfo]:
        """``list_runs``, awaited."""
        sql, args = list_runs_query(query, limit, after)
        rows = await self._aread(self.pool.fetch, sql, *args)
        return [run_info(bytes(r[0]), run_from_row(r)) for r in rows]


    def count_runs(self, query: ListQuery) -> int:
        """How many workflow ids' latest runs match ``query``."""
        sql, args = count_runs_query(query)
        return int(self._read(self.pool.fetchval, sql, *args))

    async def acount_runs(self, query: ListQuery) -> int:
        """``count_runs``, awaited."""
        sql, args = count_runs_query(query)
        return int(await self._aread(self.pool.fetchval, sql, *args))

    async def adurable(self) -> None:
        """Nothing to do: a PostgreSQL commit is visible to readers only once it is durable."""
    async def ahas_pending_wtasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """``has_pending_wtasks``, awaited."""
        if build_id is None:
            return bool(await self._aread(self.pool.fetchval, _HAS_DUE_WTASKS, task_queue, self.machine.now_us()))
        return bool(await self._aread(self.pool.fetchval, _HAS_DUE_WTASKS_OF_BUILD, task_queue,
                                      self.machine.now_us(), build_id))

    async def aholds_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool:
        """``holds_activity``, awaited."""
        row = await self._aread(self.pool.fetchrow, _HOLDS_ACTIVITY, run_key, seq)
        return self._holds(row, task_queue, attempt)

    async def apending_activities(self, run_key: bytes, task_queue: str) -> list[tuple[int, str, ActivityMeta, bytes]]:
        """(seq, task queue, meta, last heartbeat details) of the run's open activity attempts (every queue)."""
        rows = await self._aread(self.pool.fetch, _PENDING_ACTIVITIES, run_key)
        out = []
        for r in rows:
            meta, _args, details = atask_from_row(r)
            out.append((int(r[1]), str(r[2]), meta, details))
        return out

    async def anext_timer_due(self) -> float | None:
        """``next_timer_due``, awaited."""
        due = await self._aread(self.pool.fetchval, NEXT_TIMER_US)
        return None if due is None else float(due) / 1e6

    async def anext_task_due(self) -> float | None:
        """When a workflow or activity task can next be taken (see ``Store.anext_task_due``)."""
        due = await self._aread(self.pool.fetchval, _NEXT_TASK_DUE)
        if due is None:
            return None
        now = self.clock.now()
        return max(now, float(due) / 1e6)

    async def ahas_any_tasks(self) -> bool:
        """``has_any_tasks``, awaited."""
        return bool(await self._aread(self.pool.fetchval, _HAS_ANY_TASKS))

    async def apending_requests(self, task_queue: str) -> list[tuple[str, bytes]]:
        """``pending_requests``, awaited."""
        rows = await self._aread(self.pool.fetch, _PENDING_REQUESTS, task_queue)
        return [(r[0], pack(bytes(r[1]), bytes(r[2]))) for r in rows]

    async def wait_closed(self, run_key: bytes) -> RunInfo:
        """Wait until the run is closed; woken by the closing commit or another process's notification.

        The run is looked at once after the waiter is registered (so a close committed in between
        is not missed), together with the other looks due (see ``_check``).
        """
        fut: asyncio.Future[RunInfo] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_key, []).append(fut)
        try:
            self._db_loop.call_soon_threadsafe(self._check, [run_key])
            return await fut
        finally:
            futs = self._waiters.get(run_key)
            if futs and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self._waiters[run_key]
