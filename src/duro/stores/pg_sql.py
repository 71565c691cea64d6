"""The PostgreSQL store's hot statements: claims under leases, due timers, expired leases, guarded appends.

Groundwork of the PostgreSQL store (issue 8, part B); the tables are ``pg_schema``'s. Every
statement is parameterized (``$n``, typed by casts) and uses unqualified names: duro's connections
have ``search_path`` set to the store's schema (``PgSettings.server_settings``).

How claims work: a claim selects candidate rows in index order with ``FOR UPDATE SKIP LOCKED``
(rows another transaction is claiming or changing are skipped, not waited for), updates them in the
same statement, and returns them. Run under READ COMMITTED (the default), a row that another worker
claimed and committed after this statement's snapshot is re-checked against the ``WHERE`` clause on
its newest version and dropped, so two concurrent claims never return the same row and never block
each other. The claiming transaction should commit at once: rows stay locked until it does.

Times are microseconds since the epoch by the store's clock, passed in (``$now_us``), never ``now()``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPEND_HISTORY",
    "CLAIM_ATASKS",
    "CLAIM_WTASKS",
    "EXPIRED_ATASK_LEASES",
    "GUARD_NEXT_EVENT_ID",
    "HAS_DUE_WTASKS",
    "LOCK_RUNS",
    "NEXT_TIMER_US",
    "RECORD_OP_ID",
    "RELEASE_EXPIRED_WTASK_LEASES",
    "TAKE_DUE_TIMERS",
]

CLAIM_WTASKS: Final = """
WITH due AS (
    SELECT run_key, owner AS previous_owner
    FROM wtasks
    WHERE task_queue = $1::text AND visible_at_us <= $2::bigint
    ORDER BY visible_at_us
    LIMIT $3::integer
    FOR UPDATE SKIP LOCKED
)
UPDATE wtasks AS t
SET owner = $4::text,
    lease_until_us = $2::bigint + $5::bigint,
    visible_at_us = $2::bigint + $5::bigint
FROM due
WHERE t.run_key = due.run_key
RETURNING t.run_key, due.previous_owner
"""
"""Lease up to ``$3`` due workflow tasks of queue ``$1`` to owner ``$4`` for ``$5`` µs; ``$2`` is now (µs).

Due means ``visible_at_us <= now``: a fresh task, a failed one whose backoff ended, or a leased one
whose lease ran out (a claim sets ``visible_at_us`` to the lease end), which is how a dead or hung
worker's workflow tasks are taken over. Oldest first, served by the index ``wtasks_claim``.

Returns rows ``(run_key, previous_owner)``: ``previous_owner`` is NULL for a task nobody held and the
old owner for a take-over. The caller then reads each run (``LOCK_RUNS`` or a plain read) and its
history; its completion is accepted only while the run's ``epoch`` and ``next_event_id`` are the ones it
read, so a worker that lost its lease and completes late is refused (a conflict: it drops its cached
instance). Retrying a claim whose COMMIT acknowledgement was lost is harmless: the tasks it may have
leased are claimable again when the lease ends.
"""

CLAIM_ATASKS: Final = """
WITH due AS (
    SELECT run_key, seq
    FROM atasks
    WHERE task_queue = $1::text AND owner IS NULL AND visible_at_us <= $2::bigint
    ORDER BY visible_at_us
    LIMIT $3::integer
    FOR UPDATE SKIP LOCKED
)
UPDATE atasks AS t
SET owner = $4::text,
    lease_until_us = $2::bigint + t.lease_us
FROM due LEFT JOIN runs AS r ON r.run_key = due.run_key
WHERE t.run_key = due.run_key AND t.seq = due.seq
RETURNING t.run_key, t.seq, t.task_queue, t.attempt, t.meta, t.args, t.heartbeat, t.lease_until_us,
          coalesce(r.status, 'missing') AS run_status
"""
"""Lease up to ``$3`` visible activity tasks of queue ``$1`` to owner ``$4``; ``$2`` is now (µs).

Visible means not running anywhere (``owner IS NULL``) and past any retry backoff
(``visible_at_us <= now``); served by the partial index ``atasks_claim``. Each row's lease is
now + its own ``lease_us``. A leased row is never claimed here, even when its lease ran out: that
is a failed attempt (see ``EXPIRED_ATASK_LEASES``).

Returns rows ``(run_key, seq, task_queue, attempt, meta, args, heartbeat, lease_until_us,
run_status)``. A task whose run is no longer running (``run_status`` is another status, or
``'missing'``) must be deleted by the caller in the same transaction instead of being run, as the
LMDB store does. A retried claim whose acknowledgement was lost leaves the tasks it leased to run
out their lease, then they are retried as lapsed attempts: safe, only late.
"""

TAKE_DUE_TIMERS: Final = """
DELETE FROM timers AS t
USING (
    SELECT run_key, seq
    FROM timers
    WHERE fire_us <= $1::bigint
    ORDER BY fire_us
    LIMIT $2::integer
    FOR UPDATE SKIP LOCKED
) AS due
WHERE t.run_key = due.run_key AND t.seq = due.seq
RETURNING t.run_key, t.seq, t.fire_us
"""
"""Take (delete and return) up to ``$2`` timers due at ``$1`` (now, µs), the earliest first.

The caller fires them in the same transaction: for each ``(run_key, seq, fire_us)`` of a running run,
append ``TimerFired`` (seq 0: the run's timeout closes it) and make sure it has a workflow task.
Because the row is deleted by the transaction that fires it, a timer fires at most once; a timer whose
firing fails (a damaged run, run it in a savepoint) stays deleted, as in the LMDB store, so it is not
due again forever. Concurrent sweepers on other workers take disjoint timers. Retrying after a lost
acknowledgement is harmless: timers that fired are gone.
"""

NEXT_TIMER_US: Final = "SELECT min(fire_us) FROM timers"
"""When the next timer is due (µs), or NULL when there is none: how long a timer sweeper may sleep.

Served by the index ``timers_due``. A timer set later by another process wakes sleepers through the
``timer`` notification channel (``pg_notify``).
"""

EXPIRED_ATASK_LEASES: Final = """
SELECT run_key, seq, task_queue, attempt, owner
FROM atasks
WHERE owner IS NOT NULL AND lease_until_us <= $1::bigint
ORDER BY lease_until_us
LIMIT $2::integer
FOR UPDATE SKIP LOCKED
"""
"""Lock up to ``$2`` activity attempts whose lease ran out by ``$1`` (now, µs): their worker died or hung.

Served by the partial index ``atasks_leased``. Rows ``(run_key, seq, task_queue, attempt, owner)``;
the caller records each, in the same transaction, as a failed attempt (a start-to-close timeout:
"the worker running this attempt died or lost its lease"), which retries it per its policy (the row
is rewritten with ``attempt + 1``, unleased, visible after the backoff) or appends ActivityTaskFailed.
The rows stay locked until that transaction ends, so concurrent reapers split the work. A late
result from the lapsed worker then carries an attempt that is no longer current and is refused.
"""

RELEASE_EXPIRED_WTASK_LEASES: Final = """
WITH expired AS (
    SELECT run_key, owner
    FROM wtasks
    WHERE owner IS NOT NULL AND lease_until_us <= $1::bigint
    ORDER BY lease_until_us
    LIMIT $2::integer
    FOR UPDATE SKIP LOCKED
)
UPDATE wtasks AS t
SET owner = NULL, lease_until_us = 0
FROM expired
WHERE t.run_key = expired.run_key
RETURNING t.run_key, t.task_queue, expired.owner AS previous_owner
"""
"""Unlease up to ``$2`` workflow tasks whose lease ran out by ``$1`` (now, µs).

Not needed for take-over (``CLAIM_WTASKS`` already takes expired leases); a reaper runs it so the
table says who holds what, and to learn which queues to wake (notify ``wtask`` with each
``task_queue``). Returns ``(run_key, task_queue, previous_owner)``; the tasks stay due
(``visible_at_us`` is the old lease end). Served by the partial index ``wtasks_leased``.
"""

HAS_DUE_WTASKS: Final = """
SELECT EXISTS (SELECT 1 FROM wtasks WHERE task_queue = $1::text AND visible_at_us <= $2::bigint)
"""
"""Whether queue ``$1`` has a workflow task due at ``$2`` (now, µs) that nobody holds (a cheap poll)."""

LOCK_RUNS: Final = """
SELECT run_key, workflow_id, workflow_type, task_queue, status, start_us, close_us, next_event_id,
       epoch, last_input, record
FROM runs
WHERE run_key = ANY($1::bytea[])
ORDER BY run_key
FOR UPDATE
"""
"""Read and lock the runs ``$1`` (an array of run keys) for a transition, in key order.

A group commit locks every run its operations touch with this one statement before it changes
anything: always in ``run_key`` order, so two batches touching the same runs wait for each other
instead of deadlocking (a deadlock would still be safe: PostgreSQL aborts one transaction, a
definite rollback that ``run_with_retry`` retries, but it costs ``deadlock_timeout``, 1 s). The guards
(status, ``epoch``, expected ``next_event_id``) are then checked on these rows in Python. Runs found
later in the batch (a parent to notify, a child to start) are locked as they come: order those by key
where possible.
"""

GUARD_NEXT_EVENT_ID: Final = """
UPDATE runs
SET next_event_id = $3::bigint
WHERE run_key = $1::bytea AND next_event_id = $2::bigint AND status = 'running'
RETURNING epoch, last_input
"""
"""Advance run ``$1`` from next event id ``$2`` (what the caller read) to ``$3``, or touch nothing.

The single-statement form of the append guard, for a caller that has not locked the run: no row
returned means the run moved on (another worker appended, or it closed) and the caller must not
append (a conflict). Also how a retry after a lost COMMIT acknowledgement tells that its first attempt
committed: the guard fails, and the history holds the events that attempt wrote. Insert the events
with ``APPEND_HISTORY`` in the same transaction.
"""

APPEND_HISTORY: Final = """
INSERT INTO history (run_key, event_id, envelope)
SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[])
"""
"""Append events of any number of runs in one round trip: parallel arrays of run keys, event ids, envelopes.

The primary key refuses an event id written twice (a unique violation, never a forked history).
"""

RECORD_OP_ID: Final = """
INSERT INTO op_ids (op_id, created_us) VALUES ($1::text, $2::bigint)
ON CONFLICT (op_id) DO NOTHING
RETURNING true
"""
"""Record operation id ``$1`` at ``$2`` (now, µs); returns a row only the first time.

The first statement of an operation that has no other guard (a signal, cancel, terminate or update
sent with an id made before its first attempt): no row returned means an earlier attempt of the same
operation committed, and the retry must not apply it again (it reports success instead).
"""
