"""The PostgreSQL store's schema: versioned migrations and ``migrate``, which applies them once.

Groundwork of the PostgreSQL store (issue 8, part B); the store itself is being built on top.

The tables mirror the LMDB store's layout (``duro.stores.lmdb``): what LMDB keeps in one JSON run
record becomes columns where SQL reads or filters it, and ``runs.record`` (jsonb) holds the rest.
Conventions of every table:

- ``run_key`` is the run id's 16 bytes (``duro.stores.base.run_key_of``), ``bytea`` of length 16.
- Times are ``bigint`` microseconds since the Unix epoch, by the *store's* clock
  (``duro.stores.base.Clock``: time-skipping tests move it), passed in as parameters, never the
  server's ``now()``. Workers on several machines therefore need synchronized clocks (NTP);
  a skew of a few seconds against the default 30 s lease is harmless.
- No foreign keys: a run's rows in every table are written and deleted by the same transaction
  (start, close, delete, purge), and a foreign key would cost a lookup and a row lock per
  history insert on the hot path. The comment on each table states what the store maintains.
- Statuses are the strings of ``duro.stores.base`` (``running``, ``completed``, ...), checked.
- Tables written on every step (``runs``, ``wtasks``, ``atasks``) leave room in each page
  (``fillfactor``) so updates of unindexed columns stay HOT (no index writes).

A migration, once released, is never edited: changes are new migrations appended to ``MIGRATIONS``.
"""

from __future__ import annotations

import asyncpg

from duro.errors import StoreError
from duro.stores.pg_conn import quote_ident

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version"]

_STATUS_CHECK = ("CHECK (status IN ('running', 'completed', 'failed', 'canceled', 'terminated', "
                 "'continued_as_new', 'timed_out'))")

_MIGRATION_1 = f"""
-- runs: one row per run (a workflow id has a row per run: the first, continued-as-new, re-used ids).
-- Invariants kept by the store: history holds exactly the events 1 .. next_event_id - 1 of the run;
-- next_event_id only grows, and every append goes through a guard on its expected value (UPDATE ...
-- WHERE next_event_id = $expected, or the row read FOR UPDATE), so two workers never both advance a
-- run; epoch counts the run's completed workflow tasks (a completion carries the epoch it was computed
-- at and is refused when it moved); last_input is the id of the newest input event (signal, activity
-- result, timer, ...) a workflow task has yet to see; a running run has no close time. record holds
-- what is read only with the row: parent, children, timers, deadline, next_run, task failures.
CREATE TABLE runs (
    run_key        bytea   PRIMARY KEY CHECK (octet_length(run_key) = 16),
    workflow_id    text    NOT NULL,
    workflow_type  text    NOT NULL,
    task_queue     text    NOT NULL,
    status         text    NOT NULL {_STATUS_CHECK},
    start_us       bigint  NOT NULL,
    close_us       bigint,
    next_event_id  bigint  NOT NULL DEFAULT 1 CHECK (next_event_id >= 1),
    epoch          bigint  NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    last_input     bigint  NOT NULL DEFAULT 1,
    record         jsonb   NOT NULL DEFAULT '{{}}'::jsonb,
    CHECK (status <> 'running' OR close_us IS NULL)
) WITH (fillfactor = 80);
CREATE INDEX runs_by_workflow ON runs (workflow_id, start_us);

-- workflows: one row per workflow id, naming its latest run. Invariants: run_key is the newest run
-- of the id; status, workflow_type, start_us and close_us equal that run's (written in the same
-- transaction); at most one run of an id is running, and then it is this one. Starting a run
-- locks this row (INSERT ... ON CONFLICT DO NOTHING, then SELECT ... FOR UPDATE) to apply the id
-- reuse and conflict policies. The indexes serve list_workflows / count_workflows: newest first,
-- filtered by status, type, start time and search attributes (equality: jsonb containment @>).
CREATE TABLE workflows (
    workflow_id        text    PRIMARY KEY,
    run_key            bytea   NOT NULL CHECK (octet_length(run_key) = 16),
    status             text    NOT NULL {_STATUS_CHECK},
    workflow_type      text    NOT NULL,
    start_us           bigint  NOT NULL,
    close_us           bigint,
    search_attributes  jsonb   NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE INDEX workflows_by_start ON workflows (start_us DESC, workflow_id);
CREATE INDEX workflows_by_status ON workflows (status, start_us DESC);
CREATE INDEX workflows_by_type ON workflows (workflow_type, start_us DESC);
CREATE INDEX workflows_by_attributes ON workflows USING gin (search_attributes jsonb_path_ops);

-- history: the append-only event log. Invariants: a run's event ids are 1, 2, ... without gaps,
-- up to runs.next_event_id - 1; a row is never updated; rows go only with their run (delete,
-- retention purge). envelope is duro._core.codec's event envelope, the same bytes the LMDB store
-- keeps, so a history copies between stores unchanged. The primary key also refuses a second
-- append of an event id (a guard that failed open would raise a unique violation, not fork).
CREATE TABLE history (
    run_key   bytea   NOT NULL,
    event_id  bigint  NOT NULL CHECK (event_id >= 1),
    envelope  bytea   NOT NULL,
    PRIMARY KEY (run_key, event_id)
);

-- wtasks: the pending workflow task of a run; at most one per run (the key), in the run's queue.
-- A row is claimable when visible_at_us <= now. Unleased rows have owner NULL and lease_until_us 0;
-- visible_at_us is 0 (due at once) or the end of a failed task's backoff. A claim sets owner and
-- lease_until_us = visible_at_us = now + lease: a leased task is invisible until its lease ends,
-- then claimable again by the same query (take-over needs no reaper). Renewing a lease moves both.
-- Completing or releasing the task deletes the row, guarded by owner (and the run's epoch); a
-- closed run has no row.
CREATE TABLE wtasks (
    run_key         bytea   PRIMARY KEY CHECK (octet_length(run_key) = 16),
    task_queue      text    NOT NULL,
    owner           text,
    lease_until_us  bigint  NOT NULL DEFAULT 0,
    visible_at_us   bigint  NOT NULL DEFAULT 0,
    CHECK ((owner IS NULL) = (lease_until_us = 0)),
    CHECK (owner IS NULL OR visible_at_us = lease_until_us)
) WITH (fillfactor = 80);
CREATE INDEX wtasks_claim ON wtasks (task_queue, visible_at_us);
CREATE INDEX wtasks_leased ON wtasks (lease_until_us) WHERE owner IS NOT NULL;

-- atasks: activity tasks, one row per scheduled activity of a run (its seq), for its current
-- attempt. Invariants: attempt is the current attempt (a retry rewrites the row with attempt + 1 and
-- visible_at_us = the end of its backoff); owner NULL and lease_until_us 0 exactly when no worker
-- runs it; a queued row is claimable when visible_at_us <= now; a leased row is never claimed again:
-- its lease running out is a failed attempt, which the state machine records (timeout) and retries
-- per the policy. lease_us is the lease a claim grants (the start-to-close timeout, else
-- schedule-to-close, else the default, plus slack), fixed when the row is written; a heartbeat with a
-- heartbeat timeout moves lease_until_us. Results, heartbeats and renewals are guarded by
-- (run_key, seq, attempt) and owner. cancel_requested: the workflow no longer wants the result
-- (set on a leased row; a queued one is deleted instead). meta holds the rest of the task (workflow id
-- and type, activity name, scheduled time, timeouts, retry policy); heartbeat the latest details
-- (they carry over into the next attempt; NULL: none).
CREATE TABLE atasks (
    run_key           bytea    NOT NULL CHECK (octet_length(run_key) = 16),
    seq               bigint   NOT NULL,
    task_queue        text     NOT NULL,
    attempt           integer  NOT NULL CHECK (attempt >= 1),
    meta              jsonb    NOT NULL,
    args              bytea    NOT NULL,
    heartbeat         bytea,
    owner             text,
    lease_until_us    bigint   NOT NULL DEFAULT 0,
    lease_us          bigint   NOT NULL CHECK (lease_us > 0),
    visible_at_us     bigint   NOT NULL DEFAULT 0,
    cancel_requested  boolean  NOT NULL DEFAULT false,
    PRIMARY KEY (run_key, seq),
    CHECK ((owner IS NULL) = (lease_until_us = 0))
) WITH (fillfactor = 80);
CREATE INDEX atasks_claim ON atasks (task_queue, visible_at_us) WHERE owner IS NULL;
CREATE INDEX atasks_leased ON atasks (lease_until_us) WHERE owner IS NOT NULL;

-- timers: durable timers of open runs. seq 0 is the run's execution/run timeout, the others the
-- workflow's timers (their command seq). Invariants: a closed run has no timers (closing deletes
-- them: DELETE ... WHERE run_key = $1); a timer is deleted in the transaction that appends its
-- TimerFired event (or closes the run), so it fires at most once; a cancelled timer is deleted.
CREATE TABLE timers (
    run_key  bytea   NOT NULL CHECK (octet_length(run_key) = 16),
    seq      bigint  NOT NULL CHECK (seq >= 0),
    fire_us  bigint  NOT NULL,
    PRIMARY KEY (run_key, seq)
);
CREATE INDEX timers_due ON timers (fire_us);

-- requests: queries and updates for a run whose worker may live in another process. A client
-- inserts a row (and notifies the queue's request channel); a worker of task_queue that holds the
-- run answers by deleting the row and inserting the response in one transaction, so a request is
-- answered at most once and a withdrawn (deleted) request never. head is the request's JSON
-- header (kind, run, name), args its arguments, both as the client wrote them. created_us lets a
-- sweep remove requests whose client died.
CREATE TABLE requests (
    request_id  text    PRIMARY KEY,
    task_queue  text    NOT NULL,
    head        bytea   NOT NULL,
    args        bytea   NOT NULL,
    created_us  bigint  NOT NULL
);
CREATE INDEX requests_by_queue ON requests (task_queue, created_us);

-- responses: the answer to a request until its client takes it (deletes it). Invariant: written only
-- by the transaction that deleted the pending request; created_us lets a sweep remove answers
-- nobody took.
CREATE TABLE responses (
    request_id  text    PRIMARY KEY,
    answer      bytea   NOT NULL,
    created_us  bigint  NOT NULL
);

-- op_ids: ids of operations that must take effect once although their transaction may be retried
-- after an unacknowledged COMMIT (signals, cancels, terminates, updates: anything without another
-- guard). The operation inserts its id first (INSERT ... ON CONFLICT DO NOTHING RETURNING); nothing
-- returned means an earlier attempt committed. Rows older than any retry horizon (a day) are purged.
CREATE TABLE op_ids (
    op_id       text    PRIMARY KEY,
    created_us  bigint  NOT NULL
);
CREATE INDEX op_ids_by_age ON op_ids (created_us);
"""

_MIGRATION_2 = """
-- schedules: one row per schedule (duro.engine.schedules.ScheduleRecord in record, jsonb with the record's
-- own field names). fire_at_us is when a worker of task_queue fires it next (its next due time plus its
-- jitter), NULL while it is paused or has no due time left. Invariants kept by the store: task_queue and
-- fire_at_us equal the record's task_queue and fire_at_us, written by the same statement; a fire (the
-- record advanced past the due times it acted on, and the runs it started) is one transaction, the row
-- locked (a worker selects due rows FOR UPDATE SKIP LOCKED), so each due time fires once. The runs a
-- schedule started name it in their search attributes (DuroScheduleId), not by a key here.
CREATE TABLE schedules (
    schedule_id  text    PRIMARY KEY,
    task_queue   text    NOT NULL,
    fire_at_us   bigint,
    record       jsonb   NOT NULL
);
CREATE INDEX schedules_due ON schedules (task_queue, fire_at_us) WHERE fire_at_us IS NOT NULL;
"""

# Migration 3: retention finds the runs closed before a time by this index (closed runs only).
_MIGRATION_3 = """
CREATE INDEX runs_by_close ON runs (close_us) WHERE close_us IS NOT NULL;
"""

# Migration 4: worker versioning. wtasks.build is the build id whose workers alone may take the task
# (the run is pinned to it: its record says so, and the store writes the two in one transaction);
# NULL: the workers of the queue's current build take it, any worker while the queue has none.
# queue_builds holds each task queue's current build (no row: none); claims read it in the same
# statement, and a batch with its read-ahead. Adding a column without a default rewrites nothing.
_MIGRATION_4 = """
ALTER TABLE wtasks ADD COLUMN build text;
CREATE TABLE queue_builds (
    task_queue  text    PRIMARY KEY,
    build_id    text    NOT NULL,
    set_us      bigint  NOT NULL
);
"""

MIGRATIONS: list[str] = [_MIGRATION_1, _MIGRATION_2, _MIGRATION_3, _MIGRATION_4]
"""The schema's migrations, in order: ``MIGRATIONS[i]`` takes the schema from version i to i + 1.

Each runs in the transaction that records its version, with ``search_path`` set to the schema alone
(so its names are unqualified). Released migrations are never edited.
"""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this code reads and writes."""

_VERSION_KEY = "schema_version"


async def schema_version(conn: asyncpg.Connection, schema: str) -> int | None:
    """The version recorded in ``schema``'s ``duro_meta`` table; None when there is none (no schema yet).

    Args:
        conn: an open connection.
        schema: the schema's name (as in ``PgSettings.schema``).
    """
    table = f"{quote_ident(schema)}.duro_meta"
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    if not exists:
        return None
    value = await conn.fetchval(f"SELECT value FROM {table} WHERE key = $1", _VERSION_KEY)
    return None if value is None else int(value)


async def migrate(conn: asyncpg.Connection, schema: str, *, migrations: list[str] | None = None) -> int:
    """Create ``schema`` if missing and bring it to the newest version, once however many processes try.

    All of it happens in one transaction under a transaction-level advisory lock keyed by the
    schema's name, so workers starting together queue up: the first applies the migrations, the
    others find the version current and apply nothing. The version is recorded in the schema's
    ``duro_meta`` table (key ``schema_version``). A migration that fails rolls everything back.

    Args:
        conn: an open connection, not inside a transaction (``connect_one``, or one from the pool).
        schema: the schema's name (a checked identifier: ``PgSettings.schema``).
        migrations: the migrations to apply (default ``MIGRATIONS``; tests pass others).

    Returns:
        How many migrations this call applied (0 when the schema was current).

    Raises:
        StoreError: the schema's recorded version is newer than this code knows (a newer duro
            migrated it), the role may not create the schema, or a migration failed; the message
            says what to do.
    """
    steps = MIGRATIONS if migrations is None else migrations
    q = quote_ident(schema)
    try:
        async with conn.transaction():
            # A migration of a large table may take long: no statement timeout inside this one
            # (SET LOCAL: until the transaction ends). Waiting for another migrator is right too.
            await conn.execute("SET LOCAL statement_timeout = 0")
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"duro.migrate:{schema}")
            # Create it only when missing: CREATE SCHEMA needs the CREATE privilege on the database
            # even with IF NOT EXISTS, which a role given an existing schema may lack.
            if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema):
                await conn.execute(f"CREATE SCHEMA {q}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {q}.duro_meta (key text PRIMARY KEY, value text NOT NULL)")
            raw = await conn.fetchval(f"SELECT value FROM {q}.duro_meta WHERE key = $1", _VERSION_KEY)
            current = 0 if raw is None else int(raw)
            if current > len(steps):
                raise StoreError(
                    f"the duro schema {schema!r} in this database is at version {current}, newer than this "
                    f"duro knows (version {len(steps)}): a newer duro migrated it. Upgrade duro here "
                    "(pip install -U duro) to match the other processes, or use another schema (?schema=NAME)")
            if current == len(steps):
                return 0
            await conn.execute(f"SET LOCAL search_path TO {q}")
            for version in range(current + 1, len(steps) + 1):
                try:
                    await conn.execute(steps[version - 1])
                except asyncpg.PostgresError as e:
                    raise StoreError(
                        f"migration {version} of the duro schema {schema!r} failed ({type(e).__name__}: {e}); "
                        "nothing was changed. Does the schema hold tables that are not duro's? Use another "
                        "schema (?schema=NAME) or report this with the message") from e
            await conn.execute(
                f"INSERT INTO {q}.duro_meta (key, value) VALUES ($1, $2) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                _VERSION_KEY, str(len(steps)))
            return len(steps) - current
    except asyncpg.InsufficientPrivilegeError as e:
        raise StoreError(
            f"this PostgreSQL role may not create or change the schema {schema!r} ({e}); have an administrator "
            f"run CREATE SCHEMA {q} AUTHORIZATION <role> (or GRANT CREATE ON DATABASE), or pick a schema the "
            "role owns with ?schema=NAME") from e

