"""``duro copy`` on a PostgreSQL store: reading every run from one snapshot, and writing runs in one batch.

The source is read on a connection of its own in one ``REPEATABLE READ READ ONLY`` transaction (one
snapshot for the whole copy), without opening a ``PostgresStore``: that would create or migrate the
schema, and copying must leave the source as it was. Row mapping is ``postgres_tx``'s.

The sink is a friend of ``duro.stores.postgres``: a batch of runs is one op of the store's group
commit, written through ``PgTx`` (its rows read ahead and locked in one round trip per table).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from duro.engine.machine import Effects
from duro.stores.export import (
    ActivityAttempt,
    CopyError,
    LiveLeases,
    RunBundle,
    events_of,
    set_missing_builds,
    write_bundles,
)
from duro.stores.lmdb import owner_alive
from duro.stores.pg_conn import PgSettings, connect_one
from duro.stores.pg_schema import SCHEMA_VERSION, schema_version
from duro.stores.postgres import PostgresStore
from duro.stores.postgres_tx import (
    ATASK_COLS,
    PgTx,
    atask_from_row,
    index_from_row,
    run_from_row,
    wtask_from_row,
)

__all__ = ["PgSink", "PgSource", "describe"]

PAGE_RUNS = 500
HISTORY_CHUNK_EVENTS = 5000  # events fetched per history query (a larger run comes alone)

# Column order as postgres_tx.run_from_row reads it.
_RUNS_PAGE = """
SELECT run_key, workflow_id, workflow_type, task_queue, status, start_us, close_us, next_event_id, epoch,
       last_input, record
FROM runs WHERE run_key > $1::bytea ORDER BY run_key LIMIT $2::integer
"""
_INDEX_OF = ("SELECT workflow_id, run_key, status, workflow_type, start_us, close_us, search_attributes FROM workflows "
             "WHERE workflow_id = ANY($1::text[])")
_WTASKS_OF = ("SELECT run_key, task_queue, owner, lease_until_us, visible_at_us, build FROM wtasks "
              "WHERE run_key = ANY($1::bytea[])")
_ATASKS_OF = f"SELECT {ATASK_COLS} FROM atasks WHERE run_key = ANY($1::bytea[]) ORDER BY run_key, seq"
_TIMERS_OF = "SELECT run_key, seq, fire_us FROM timers WHERE run_key = ANY($1::bytea[]) ORDER BY run_key, seq"
_HISTORY_OF = ("SELECT run_key, envelope FROM history WHERE run_key = ANY($1::bytea[]) "
               "ORDER BY run_key, event_id")
_IDS_PAGE = "SELECT workflow_id FROM workflows WHERE workflow_id > $1::text ORDER BY workflow_id LIMIT $2::integer"
_LEASED = """
SELECT 'wtask' AS kind, owner, count(*) FROM wtasks WHERE owner IS NOT NULL AND lease_until_us > $1::bigint
GROUP BY owner
UNION ALL
SELECT 'atask', owner, count(*) FROM atasks WHERE owner IS NOT NULL AND lease_until_us > $1::bigint GROUP BY owner
"""
# What any change of the store's state moves: a new run, an appended event, a retried attempt, a task
# or a timer set or taken (leases alone are left out: the copy resets them anyway).
_FINGERPRINT = """
SELECT (SELECT count(*) FROM runs), (SELECT coalesce(sum(next_event_id), 0) FROM runs),
       (SELECT count(*) FROM atasks), (SELECT coalesce(sum(attempt), 0) FROM atasks),
       (SELECT count(*) FROM wtasks), (SELECT count(*) FROM timers)
"""
_ANY_WORKFLOWS = "SELECT EXISTS (SELECT 1 FROM runs) OR EXISTS (SELECT 1 FROM workflows)"
_EXISTING_IDS = "SELECT workflow_id FROM workflows WHERE workflow_id = ANY($1::text[])"


def describe(settings: PgSettings) -> str:
    """A PostgreSQL store for messages: server, database, user and schema (never the password)."""
    return f"PostgreSQL {settings.where}, schema {settings.schema!r}"


class PgSource:
    """Reads a PostgreSQL store for copying, from one read-only snapshot; make it with ``PgSource.open``."""

    def __init__(self, settings: PgSettings, conn: asyncpg.Connection, tr: Any, fingerprint: tuple[Any, ...]) -> None:
        self.settings = settings
        self.description = describe(settings)
        self._conn = conn
        self._tr: Any = tr
        self._fingerprint = fingerprint

    @classmethod
    async def open(cls, settings: PgSettings) -> PgSource:
        """Connect, check that the schema holds a duro store of this version, and begin the snapshot.

        Raises:
            CopyError: there is no duro store in the schema, or its version is not this duro's.
            StoreUnavailableError, StoreError: the server cannot be reached or refuses the login.
        """
        conn = await connect_one(settings)
        try:
            version = await schema_version(conn, settings.schema)
            if version is None:
                raise CopyError(f"there is no duro store in schema {settings.schema!r} at {settings.where}: "
                                "nothing to copy (is the schema=NAME option right?)")
            if version != SCHEMA_VERSION:
                raise CopyError(
                    f"the duro store in schema {settings.schema!r} is at schema version {version}, this duro "
                    f"reads version {SCHEMA_VERSION}: copy it with the duro version that wrote it (or, if it is "
                    "older, open it once with this duro, which migrates it)")
            tr = conn.transaction(isolation="repeatable_read", readonly=True)
            await tr.start()
            # The snapshot is taken by the transaction's first query: this one.
            fingerprint = tuple(await conn.fetchrow(_FINGERPRINT))
        except BaseException:
            await conn.close()
            raise
        return cls(settings, conn, tr, fingerprint)

    async def live_leases(self, now_us: int) -> LiveLeases:
        """Tasks leased until after ``now_us`` by owners that may be alive (a dead local process's are free)."""
        out = LiveLeases()
        for kind, owner, n in await self._conn.fetch(_LEASED, now_us):
            if not owner_alive(owner):
                continue
            if kind == "wtask":
                out.workflow_tasks += n
            else:
                out.activity_attempts += n
            out.owners.add(owner)
        return out

    async def schedule_count(self) -> int:
        """How many rows the ``schedules`` table holds."""
        return int(await self._conn.fetchval("SELECT count(*) FROM schedules"))

    async def current_builds(self) -> dict[str, str]:
        """Each task queue's current build (the ``queue_builds`` table)."""
        return {r[0]: r[1] for r in await self._conn.fetch("SELECT task_queue, build_id FROM queue_builds")}

    async def runs(self) -> AsyncIterator[RunBundle]:
        """Every run with its rows, in run-key order: a page of run records, then their rows by table."""
        conn = self._conn
        after = b""
        while True:
            page = await conn.fetch(_RUNS_PAGE, after, PAGE_RUNS)
            if not page:
                return
            after = bytes(page[-1][0])
            keys = [bytes(r[0]) for r in page]
            records = [run_from_row(r) for r in page]
            # The index rows of the page's workflow ids, by the run they name: (workflow id, entry).
            latest = {bytes(r[1]): (r[0], index_from_row(r))
                      for r in await conn.fetch(_INDEX_OF, list({rec.workflow_id for rec in records}))}
            wtasks = {bytes(r[0]): (r[1], wtask_from_row(r)) for r in await conn.fetch(_WTASKS_OF, keys)}
            attempts: dict[bytes, list[ActivityAttempt]] = {}
            for r in await conn.fetch(_ATASKS_OF, keys):
                meta, args, details = atask_from_row(r)
                attempts.setdefault(bytes(r[0]), []).append(ActivityAttempt(r[2], r[1], meta, args, details))
            timers: dict[bytes, list[tuple[int, int]]] = {}
            for r in await conn.fetch(_TIMERS_OF, keys):
                timers.setdefault(bytes(r[0]), []).append((r[2], r[1]))
            i = 0
            while i < len(keys):
                # Histories in chunks of about HISTORY_CHUNK_EVENTS events (the record knows each length).
                j, n = i, 0
                while j < len(keys) and (j == i or n + records[j].next_event_id - 1 <= HISTORY_CHUNK_EVENTS):
                    n += records[j].next_event_id - 1
                    j += 1
                envelopes: dict[bytes, list[bytes]] = {}
                for r in await conn.fetch(_HISTORY_OF, keys[i:j]):
                    envelopes.setdefault(bytes(r[0]), []).append(bytes(r[1]))
                for k in range(i, j):
                    key, rec = keys[k], records[k]
                    raws = envelopes.get(key, [])
                    bundle = RunBundle(key, rec, events_of(key, rec, raws), sum(map(len, raws)))
                    named = latest.get(key)
                    if named is not None and named[0] == rec.workflow_id:
                        bundle.index = named[1]
                    bundle.wtask = wtasks.get(key)
                    bundle.attempts = attempts.get(key, [])
                    bundle.timers = timers.get(key, [])
                    yield bundle
                i = j

    async def workflow_ids(self, chunk: int) -> AsyncIterator[list[str]]:
        """Every workflow id of the index, ``chunk`` at a time."""
        after = ""
        while True:
            rows = await self._conn.fetch(_IDS_PAGE, after, chunk)
            if not rows:
                return
            ids = [r[0] for r in rows]
            after = ids[-1]
            yield ids

    async def workflow_id_count(self) -> int:
        """How many workflow ids the index holds."""
        return int(await self._conn.fetchval("SELECT count(*) FROM workflows"))

    async def finish(self) -> bool:
        """End the snapshot; whether the store's state moved since it began (compared outside the snapshot)."""
        if self._tr is None:
            return False
        await self._tr.rollback()
        self._tr = None
        return tuple(await self._conn.fetchrow(_FINGERPRINT)) != self._fingerprint

    async def close(self) -> None:
        """Close the connection (the server rolls back a snapshot still open)."""
        self._tr = None
        if not self._conn.is_closed():
            await self._conn.close()


class PgSink:
    """Writes runs into a PostgreSQL store, a batch per transaction of its group commit.

    Args:
        store: the open store (its schema created or migrated on opening).
    """

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self.description = describe(store.settings)

    async def is_empty(self) -> bool:
        """Whether it holds no run and no workflow id."""
        return not await self.store.aread(self.store.pool.fetchval, _ANY_WORKFLOWS)

    async def existing_ids(self, workflow_ids: list[str]) -> list[str]:
        """Those of ``workflow_ids`` it holds already."""
        rows = await self.store.aread(self.store.pool.fetch, _EXISTING_IDS, workflow_ids)
        found = {r[0] for r in rows}
        return [w for w in workflow_ids if w in found]

    async def write(self, bundles: list[RunBundle]) -> None:
        """Write the runs in one transaction (committed before this returns)."""
        await self.store.apply(_op_write, bundles)

    async def set_current_builds(self, builds: dict[str, str]) -> int:
        """Give each queue of ``builds`` that has no current build here that one; how many it set."""
        return await set_missing_builds(self.store, builds)

    async def close(self) -> None:
        """Release this reference to the store."""
        await self.store.close()


def _op_write(tx: PgTx, fx: Effects, bundles: list[RunBundle]) -> None:
    # On the writer thread. Read ahead (and lock) the rows write_bundles checks, in one statement
    # per table rather than a round trip per run; a bundle with an index entry needs its
    # workflow id's row known (PgTx inserts new ids, updates known ones).
    tx.prefetch([b.run_key for b in bundles], [], [b.record.workflow_id for b in bundles if b.index is not None])
    write_bundles(tx, bundles)
