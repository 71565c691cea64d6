"""Groundwork of the PostgreSQL store on a real server: URLs, pool, retries, migrations, claims, LISTEN/NOTIFY.

Every test that touches PostgreSQL gets its own random schema (``tests.pg``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from duro.errors import StoreError, StoreURLError
from duro.stores import pg_sql
from duro.stores.pg_conn import (
    CommitUnknownError,
    PgSettings,
    Reconnecting,
    StoreUnavailableError,
    connect_one,
    connect_pool,
    parse_pg_url,
    quote_ident,
    run_with_retry,
)
from duro.stores.pg_notify import KINDS, Listener, channel, notify, notify_many
from duro.stores.pg_schema import MIGRATIONS, SCHEMA_VERSION, migrate, schema_version
from tests import pg
from tests.pg import PG_URL, drop_schema, random_schema, require_postgres, with_schema
from tests.waiting import eventually

pg_url = pg.pg_url  # the fixtures of tests.pg, requested by name below
pg_settings = pg.pg_settings

ROOT = Path(__file__).resolve().parents[2]
LEASE_US = 30_000_000
NOW = 1_700_000_000_000_000


def rk(i: int) -> bytes:
    return i.to_bytes(16, "big")


@pytest.fixture
async def pool(pg_settings: PgSettings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's schema, migrated."""
    p = await connect_pool(pg_settings)
    try:
        async with p.acquire() as conn:
            await migrate(conn, pg_settings.schema)
        yield p
    finally:
        await p.close()


async def insert_run(conn: asyncpg.Connection, key: bytes, *, status: str = "running", queue: str = "q") -> None:
    await conn.execute(
        "INSERT INTO runs (run_key, workflow_id, workflow_type, task_queue, status, start_us, close_us) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7)",
        key, f"wf-{key.hex()}", "T", queue, status, NOW, None if status == "running" else NOW + 1)


async def insert_wtask(conn: asyncpg.Connection, key: bytes, queue: str, visible_at_us: int,
                       owner: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO wtasks (run_key, task_queue, owner, lease_until_us, visible_at_us) VALUES ($1, $2, $3, $4, $5)",
        key, queue, owner, visible_at_us if owner else 0, visible_at_us)


async def insert_atask(conn: asyncpg.Connection, key: bytes, seq: int, queue: str, *, visible_at_us: int = 0,
                       owner: str | None = None, lease_until_us: int = 0, lease_us: int = LEASE_US) -> None:
    await conn.execute(
        "INSERT INTO atasks (run_key, seq, task_queue, attempt, meta, args, owner, lease_until_us, lease_us, "
        "visible_at_us) VALUES ($1, $2, $3, 1, $4::jsonb, $5, $6, $7, $8, $9)",
        key, seq, queue, '{"name": "act"}', b"args", owner, lease_until_us, lease_us, visible_at_us)


# ------------------------------------------------------------------------------------------ URLs


def test_url_defaults() -> None:
    s = parse_pg_url("postgresql://postgres@127.0.0.1:5432/test")
    assert (s.schema, s.pool_min, s.pool_max, s.lease_s, s.statement_timeout_ms) == ("duro", 2, 10, 30.0, 30000)
    assert s.dsn == "postgresql://postgres@127.0.0.1:5432/test"
    assert (s.host, s.port, s.database, s.user) == ("127.0.0.1", "5432", "test", "postgres")
    assert s.server_settings() == {"search_path": '"duro"', "statement_timeout": "30000", "application_name": "duro"}


def test_url_duro_options_are_removed_and_libpq_options_pass_through() -> None:
    url = ("postgres://u:s%40cret@db.example:6543/app?sslmode=require&schema=Prod_2&pool_min=1&pool_max=4"
           "&lease_s=12.5&statement_timeout_ms=0&application_name=my%20app&options=-c%20work_mem%3D64MB")
    s = parse_pg_url(url)
    assert (s.schema, s.pool_min, s.pool_max, s.lease_s, s.statement_timeout_ms) == ("Prod_2", 1, 4, 12.5, 0)
    assert s.dsn == ("postgres://u:s%40cret@db.example:6543/app?sslmode=require&application_name=my%20app"
                     "&options=-c%20work_mem%3D64MB")
    assert s.application_name_set and "application_name" not in s.server_settings()
    assert s.server_settings()["search_path"] == '"Prod_2"'
    assert (s.host, s.port, s.database, s.user) == ("db.example", "6543", "app", "u")
    assert "s%40cret" not in repr(s) and "cret" not in s.where


@pytest.mark.parametrize(("url", "where"), [
    ("postgresql://", "localhost (default):5432, database '(default)', user '(default)'"),
    ("postgresql:///test?host=/var/run/postgresql", "/var/run/postgresql:5432, database 'test'"),
    ("postgresql://[::1]:5433/d", "[::1]:5433, database 'd'"),
    ("postgresql://h1:5432,h2:5433/d?target_session_attrs=read-write", "h1:5432,h2:5433, database 'd'"),
    ("postgresql://bob@h/?dbname=other&port=7000", "h:7000, database 'other', user 'bob'"),
])
def test_url_forms_libpq_accepts(url: str, where: str) -> None:
    s = parse_pg_url(url)
    assert s.where.startswith(where)
    assert s.dsn == url  # nothing of duro's to remove: handed to asyncpg as written


def test_url_connect_timeout_is_taken_not_sent_to_the_server() -> None:
    s = parse_pg_url("postgresql://h/d?connect_timeout=3&sslmode=disable")
    assert s.connect_timeout_s == 3.0 and s.dsn == "postgresql://h/d?sslmode=disable"


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://h/d", "not a PostgreSQL URL"),
    ("lmdb://./data", "not a PostgreSQL URL"),
    ("postgresql:h/d", "not a PostgreSQL URL"),
    ("postgresql://h/d?schema=1abc", "not a valid schema name: use ASCII letters, digits and underscores"),
    ("postgresql://h/d?schema=a-b", "at most 63 characters, not starting with a digit"),
    ("postgresql://h/d?schema=" + "a" * 64, "not a valid schema name"),
    ("postgresql://h/d?schema=", "not a valid schema name"),
    ("postgresql://h/d?schema=x%22y", "not a valid schema name"),
    ("postgresql://h/d?schema=pg_temp", "reserved by PostgreSQL"),
    ("postgresql://h/d?pool_size=3", "unknown duro option 'pool_size' in the PostgreSQL URL; duro's options are "
                                     "schema, pool_min, pool_max, lease_s, statement_timeout_ms"),
    ("postgresql://h/d?lease=3", "unknown duro option 'lease'"),
    ("postgresql://h/d?schemaname=x", "unknown duro option 'schemaname'"),
    ("postgresql://h/d?pool_mx=3", "unknown duro option 'pool_mx'"),
    ("postgresql://h/d?schema=a&schema=b", "given twice"),
    ("postgresql://h/d?pool_min=5&pool_max=2", "pool_min=5 is larger than pool_max=2"),
    ("postgresql://h/d?pool_max=0", "pool_max='0' must be a whole number between 1 and"),
    ("postgresql://h/d?pool_min=two", "pool_min='two' must be a whole number"),
    ("postgresql://h/d?lease_s=-1", "lease_s='-1' must be a number of seconds"),
    ("postgresql://h/d?lease_s=nan", "lease_s='nan'"),
    ("postgresql://h/d?lease_s=soon", "lease_s='soon'"),
    ("postgresql://h/d?statement_timeout_ms=-5", "statement_timeout_ms='-5' must be a whole number"),
    ("postgresql://h/d?statement_timeout=5", "use statement_timeout_ms=N"),
    ("postgresql://h/d?search_path=x", "choose the schema with schema=NAME"),
    ("postgresql://u:p#w@h/d", "write a '#' in a password as %23"),
    ("postgresql://u:p@w@h/d", "write an '@' in a PostgreSQL user name or password as %40"),
])
def test_bad_urls_are_refused_saying_what_is_allowed(url: str, message: str) -> None:
    with pytest.raises(StoreURLError) as e:
        parse_pg_url(url)
    assert message in str(e.value)


def test_a_url_must_be_a_string() -> None:
    with pytest.raises(StoreURLError, match="must be a string"):
        parse_pg_url(b"postgresql://h/d")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ connecting


async def test_pool_connections_use_the_schema_and_statement_timeout(pg_url: str) -> None:
    settings = parse_pg_url(pg_url + "&statement_timeout_ms=1234&pool_min=1&pool_max=3")
    pool = await connect_pool(settings)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, settings.schema)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT current_schema()") == settings.schema
            assert await conn.fetchval("SHOW statement_timeout") == "1234ms"
            assert await conn.fetchval("SHOW application_name") == "duro"
            assert await conn.fetchval("SELECT count(*) FROM runs") == 0  # unqualified names: the schema's
    finally:
        await pool.close()


async def test_libpq_options_reach_the_server(pg_url: str) -> None:
    settings = parse_pg_url(pg_url + "&sslmode=disable&application_name=mine&connect_timeout=5")
    conn = await connect_one(settings)
    try:
        assert await conn.fetchval("SHOW application_name") == "mine"
        assert await conn.fetchval("SELECT current_setting('search_path')") == f'"{settings.schema}"'
    finally:
        await conn.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_server_is_retried_then_refused_with_how_to_start_it() -> None:
    port = _closed_port()
    settings = parse_pg_url(f"postgresql://postgres:hunter2@127.0.0.1:{port}/test")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as e:
        await connect_pool(settings, timeout_s=1.0)
    assert 0.9 < time.monotonic() - started < 5
    message = str(e.value)
    assert f"127.0.0.1:{port}, database 'test', user 'postgres'" in message
    assert "pg_ctlcluster --skip-systemctl-redirect" in message and "main start" in message
    assert "hunter2" not in message


async def test_missing_database_is_refused_at_once() -> None:
    await require_postgres()
    settings = parse_pg_url(PG_URL.rsplit("/", 1)[0] + "/duro_no_such_database")
    started = time.monotonic()
    with pytest.raises(StoreError, match="database 'duro_no_such_database' does not exist") as e:
        await connect_one(settings, timeout_s=10.0)
    assert not isinstance(e.value, StoreUnavailableError)
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------------------------------ retries


async def test_a_transaction_cut_before_commit_is_run_again_and_applies_once(
        pool: asyncpg.Pool, pg_settings: PgSettings) -> None:
    calls = 0

    async def body(conn: asyncpg.Connection) -> int:
        nonlocal calls
        calls += 1
        await insert_run(conn, rk(1))
        if calls == 1:  # the server ends this session mid-transaction: nothing of it commits
            async with pool.acquire() as other:
                await other.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await conn.fetchval("SELECT 1")
        return calls

    db = Reconnecting(pool, pg_settings)
    assert await db.run(body, idempotent=False) == 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runs") == 1


async def test_other_errors_are_raised_at_once(pool: asyncpg.Pool) -> None:
    calls = 0

    async def body(conn: asyncpg.Connection) -> None:
        nonlocal calls
        calls += 1
        await insert_run(conn, rk(1))
        await insert_run(conn, rk(1))

    with pytest.raises(asyncpg.UniqueViolationError):
        await run_with_retry(pool, body, idempotent=True)
    assert calls == 1
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runs") == 0


async def test_connection_loss_past_the_deadline_gives_up(pool: asyncpg.Pool) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        async with pool.acquire() as other:
            await other.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await conn.fetchval("SELECT 1")

    gave_up = r"failed \d+ times in 1 s \(last error .*\); is PostgreSQL running"
    with pytest.raises(StoreUnavailableError, match=gave_up):
        await run_with_retry(pool, body, idempotent=True, deadline_s=1.0)


async def test_a_deadlock_is_a_definite_rollback_and_is_retried(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await insert_run(conn, rk(1))
        await insert_run(conn, rk(2))
    both_hold_one = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def body(name: str, first: bytes, second: bytes) -> Callable[[asyncpg.Connection], Any]:
        async def run(conn: asyncpg.Connection) -> None:
            attempts[name] += 1
            await conn.execute("UPDATE runs SET epoch = epoch + 1 WHERE run_key = $1", first)
            if attempts[name] == 1:
                await both_hold_one.wait()
            await conn.execute("UPDATE runs SET epoch = epoch + 1 WHERE run_key = $1", second)
        return run

    await asyncio.gather(run_with_retry(pool, body("a", rk(1), rk(2)), idempotent=False),
                         run_with_retry(pool, body("b", rk(2), rk(1)), idempotent=False))
    assert sorted(attempts.values()) == [1, 2]  # PostgreSQL aborted one; it ran again
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT sum(epoch) FROM runs") == 4


SLOW_COMMIT = """
CREATE TABLE slow (id int);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON slow DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""


async def test_a_connection_lost_during_commit_is_ambiguous(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(SLOW_COMMIT)  # COMMIT of a transaction that wrote `slow` takes a second

    async def body(conn: asyncpg.Connection) -> None:
        await insert_run(conn, rk(1))
        await conn.execute("INSERT INTO slow VALUES (1)")

    # The client gives up while COMMIT is in flight: not idempotent, so no retry and no claim of failure...
    with pytest.raises(CommitUnknownError, match="may or may not have committed"):
        await run_with_retry(pool, body, idempotent=False, attempt_timeout_s=0.3)

    async def committed() -> bool:
        async with pool.acquire() as conn:
            return bool(await conn.fetchval("SELECT count(*) FROM runs") == 1)

    # ...because the server went on and committed it.
    await eventually(committed, "the commit of the transaction whose acknowledgement was lost")


async def test_an_operation_id_makes_a_retry_after_a_lost_commit_safe(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(SLOW_COMMIT)
    attempts = 0

    async def signal_once(conn: asyncpg.Connection) -> str:
        nonlocal attempts
        attempts += 1
        if await conn.fetchval(pg_sql.RECORD_OP_ID, "signal-7", NOW) is None:
            return "applied by an earlier attempt"
        await insert_run(conn, rk(1))
        if attempts == 1:
            await conn.execute("INSERT INTO slow VALUES (1)")
        return "applied"

    result = await run_with_retry(pool, signal_once, idempotent=True, attempt_timeout_s=0.3, deadline_s=20)
    assert result == "applied by an earlier attempt" and attempts >= 2
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM runs") == 1


def test_commit_unknown_error_is_a_store_error() -> None:
    assert issubclass(CommitUnknownError, StoreError) and issubclass(StoreUnavailableError, StoreError)


# ------------------------------------------------------------------------------------------ migrations


async def test_concurrent_migrations_apply_once_and_record_the_version(pg_settings: PgSettings) -> None:
    conns = [await connect_one(pg_settings) for _ in range(5)]
    try:
        applied = await asyncio.gather(*(migrate(c, pg_settings.schema) for c in conns))
        assert sorted(applied) == [0, 0, 0, 0, SCHEMA_VERSION]
        assert await schema_version(conns[0], pg_settings.schema) == SCHEMA_VERSION == len(MIGRATIONS)
        tables = {r[0] for r in await conns[0].fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", pg_settings.schema)}
        assert tables == {"duro_meta", "runs", "workflows", "history", "wtasks", "atasks", "timers", "requests",
                          "responses", "op_ids", "schedules", "queue_builds"}
        assert await migrate(conns[1], pg_settings.schema) == 0
    finally:
        for c in conns:
            await c.close()


async def test_missing_migrations_are_applied_in_order_and_a_failing_one_changes_nothing(
        pg_settings: PgSettings) -> None:
    conn = await connect_one(pg_settings)
    try:
        assert await schema_version(conn, pg_settings.schema) is None
        assert await migrate(conn, pg_settings.schema) == len(MIGRATIONS)
        later = [*MIGRATIONS, "CREATE TABLE extra (id bigint PRIMARY KEY)", "ALTER TABLE extra ADD COLUMN note text"]
        assert await migrate(conn, pg_settings.schema, migrations=later) == 2
        assert await schema_version(conn, pg_settings.schema) == len(later)
        broken = [*later, "ALTER TABLE extra ADD COLUMN more text", "ALTER TABLE no_such_table ADD COLUMN x int"]
        with pytest.raises(StoreError, match=rf"migration {len(broken)} of the duro schema .* failed .* nothing was "
                           "changed"):
            await migrate(conn, pg_settings.schema, migrations=broken)
        assert await schema_version(conn, pg_settings.schema) == len(later)
        columns = await conn.fetchval(
            "SELECT count(*) FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'extra'",
            pg_settings.schema)
        assert columns == 2  # migration 4 (in the same transaction) was rolled back too
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused_saying_what_to_do(pg_settings: PgSettings) -> None:
    conn = await connect_one(pg_settings)
    try:
        await migrate(conn, pg_settings.schema)
        await conn.execute(f"UPDATE {quote_ident(pg_settings.schema)}.duro_meta SET value = $1 "
                           "WHERE key = 'schema_version'", str(SCHEMA_VERSION + 1))
        with pytest.raises(StoreError) as e:
            await migrate(conn, pg_settings.schema)
        assert f"at version {SCHEMA_VERSION + 1}, newer than this duro knows (version {SCHEMA_VERSION})" in str(e.value)
        assert "Upgrade duro" in str(e.value)
    finally:
        await conn.close()


async def test_schemas_are_isolated(pool: asyncpg.Pool, pg_url: str) -> None:
    other_schema = random_schema()
    other = await connect_pool(parse_pg_url(with_schema(PG_URL, other_schema)))
    try:
        async with other.acquire() as conn:
            await migrate(conn, other_schema)
            await insert_run(conn, rk(7))
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM runs") == 0
            await insert_run(conn, rk(8))
        async with other.acquire() as conn:
            assert [r[0] for r in await conn.fetch("SELECT run_key FROM runs")] == [rk(7)]
    finally:
        await other.close()
        await drop_schema(other_schema)


# ------------------------------------------------------------------------------------------ claims


async def test_concurrent_workflow_task_claims_take_disjoint_rows_then_leases_expire(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for i in range(6):
            await insert_wtask(conn, rk(i), "q", NOW - 10 + i)
        await insert_wtask(conn, rk(20), "other", 0)
        await insert_wtask(conn, rk(21), "q", NOW + 5)  # a failed task still in its backoff
    a, b = await pool.acquire(), await pool.acquire()
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        got_a = await a.fetch(pg_sql.CLAIM_WTASKS, "q", NOW, 4, "A", LEASE_US)
        async with asyncio.timeout(5):  # SKIP LOCKED: B does not wait for A's uncommitted claim
            got_b = await b.fetch(pg_sql.CLAIM_WTASKS, "q", NOW, 4, "B", LEASE_US)
        await ta.commit()
        await tb.commit()
    finally:
        await pool.release(a)
        await pool.release(b)
    keys_a, keys_b = {r["run_key"] for r in got_a}, {r["run_key"] for r in got_b}
    assert keys_a == {rk(0), rk(1), rk(2), rk(3)}  # the longest due first
    assert keys_b == {rk(4), rk(5)}
    assert all(r["previous_owner"] is None for r in [*got_a, *got_b])
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT owner, lease_until_us, visible_at_us FROM wtasks WHERE run_key = $1", rk(0))
        assert tuple(row) == ("A", NOW + LEASE_US, NOW + LEASE_US)
        assert await conn.fetch(pg_sql.CLAIM_WTASKS, "q", NOW, 10, "C", LEASE_US) == []  # all leased
        assert not await conn.fetchval(pg_sql.HAS_DUE_WTASKS, "q", NOW)
        assert await conn.fetchval(pg_sql.HAS_DUE_WTASKS, "other", NOW)
        # The leases run out: another worker takes the tasks over with the same query.
        later = await conn.fetch(pg_sql.CLAIM_WTASKS, "q", NOW + LEASE_US, 10, "C", LEASE_US)
    owners = {r["run_key"]: r["previous_owner"] for r in later}
    assert owners == {rk(0): "A", rk(1): "A", rk(2): "A", rk(3): "A", rk(4): "B", rk(5): "B", rk(21): None}


async def test_expired_workflow_task_leases_are_released(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await insert_wtask(conn, rk(1), "q", NOW - 1, owner="dead")
        await insert_wtask(conn, rk(2), "q", NOW + 100, owner="alive")
        rows = await conn.fetch(pg_sql.RELEASE_EXPIRED_WTASK_LEASES, NOW, 100)
        assert [tuple(r) for r in rows] == [(rk(1), "q", "dead")]
        row = await conn.fetchrow("SELECT owner, lease_until_us, visible_at_us FROM wtasks WHERE run_key = $1", rk(1))
        assert tuple(row) == (None, 0, NOW - 1)
        assert [r["run_key"] for r in await conn.fetch(pg_sql.CLAIM_WTASKS, "q", NOW, 10, "C", LEASE_US)] == [rk(1)]


async def test_concurrent_activity_task_claims_take_disjoint_visible_rows(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for i in range(6):
            await insert_run(conn, rk(i), status="running" if i < 5 else "completed")
            await insert_atask(conn, rk(i), 1, "aq", visible_at_us=NOW - 10 + i, lease_us=1_000 * (i + 1))
        await insert_run(conn, rk(10))
        await insert_atask(conn, rk(10), 1, "aq", owner="gone", lease_until_us=NOW - 1)  # lapsed: not claimable
        await insert_atask(conn, rk(10), 2, "aq", visible_at_us=NOW + 1)  # a retry in its backoff
        await insert_atask(conn, rk(10), 3, "other")
    a, b = await pool.acquire(), await pool.acquire()
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        got_a = await a.fetch(pg_sql.CLAIM_ATASKS, "aq", NOW, 3, "A")
        async with asyncio.timeout(5):
            got_b = await b.fetch(pg_sql.CLAIM_ATASKS, "aq", NOW, 10, "B")
        # A reaper sees the lapsed attempt; a second, concurrent one skips the locked row.
        expired = await a.fetch(pg_sql.EXPIRED_ATASK_LEASES, NOW, 10)
        async with asyncio.timeout(5):
            assert await b.fetch(pg_sql.EXPIRED_ATASK_LEASES, NOW, 10) == []
        await ta.commit()
        await tb.commit()
    finally:
        await pool.release(a)
        await pool.release(b)
    assert [r["run_key"] for r in got_a] == [rk(0), rk(1), rk(2)]
    assert [r["run_key"] for r in got_b] == [rk(3), rk(4), rk(5)]
    first = got_a[0]
    assert (first["seq"], first["task_queue"], first["attempt"], first["args"], first["heartbeat"]) == (
        1, "aq", 1, b"args", None)
    assert first["lease_until_us"] == NOW + 1_000 and got_b[0]["lease_until_us"] == NOW + 4_000
    assert [r["run_status"] for r in got_b] == ["running", "running", "completed"]  # the caller drops the last
    assert [(r["run_key"], r["seq"], r["attempt"], r["owner"]) for r in expired] == [(rk(10), 1, 1, "gone")]
    async with pool.acquire() as conn:
        assert await conn.fetch(pg_sql.CLAIM_ATASKS, "aq", NOW, 10, "C") == []
        assert [r["seq"] for r in await conn.fetch(pg_sql.CLAIM_ATASKS, "aq", NOW + 1, 10, "C")] == [2]


async def test_due_timers_are_taken_once_by_concurrent_sweepers(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for i in range(6):
            await conn.execute("INSERT INTO timers (run_key, seq, fire_us) VALUES ($1, $2, $3)", rk(i), 1, NOW - 6 + i)
        await conn.execute("INSERT INTO timers (run_key, seq, fire_us) VALUES ($1, 0, $2)", rk(9), NOW + 50)
        assert await conn.fetchval(pg_sql.NEXT_TIMER_US) == NOW - 6
    a, b = await pool.acquire(), await pool.acquire()
    try:
        ta, tb = a.transaction(), b.transaction()
        await ta.start()
        await tb.start()
        got_a = await a.fetch(pg_sql.TAKE_DUE_TIMERS, NOW, 3)
        async with asyncio.timeout(5):
            got_b = await b.fetch(pg_sql.TAKE_DUE_TIMERS, NOW, 10)
        await ta.rollback()  # A's firing failed: its timers are due again
        await tb.commit()
    finally:
        await pool.release(a)
        await pool.release(b)
    assert [(r["run_key"], r["seq"], r["fire_us"]) for r in got_a] == [(rk(i), 1, NOW - 6 + i) for i in range(3)]
    assert [r["run_key"] for r in got_b] == [rk(3), rk(4), rk(5)]
    async with pool.acquire() as conn:
        assert [r["run_key"] for r in await conn.fetch(pg_sql.TAKE_DUE_TIMERS, NOW, 10)] == [rk(0), rk(1), rk(2)]
        assert await conn.fetch(pg_sql.TAKE_DUE_TIMERS, NOW, 10) == []
        assert await conn.fetchval(pg_sql.NEXT_TIMER_US) == NOW + 50


@pytest.mark.parametrize(("query", "args", "index"), [
    (pg_sql.CLAIM_WTASKS, ("q", NOW, 10, "A", LEASE_US), "wtasks_claim"),
    (pg_sql.RELEASE_EXPIRED_WTASK_LEASES, (NOW, 10), "wtasks_leased"),
    (pg_sql.CLAIM_ATASKS, ("q", NOW, 10, "A"), "atasks_claim"),
    (pg_sql.EXPIRED_ATASK_LEASES, (NOW, 10), "atasks_leased"),
    (pg_sql.TAKE_DUE_TIMERS, (NOW, 10), "timers_due"),
    (pg_sql.NEXT_TIMER_US, (), "timers_due"),
])
async def test_claims_are_served_by_their_index(pool: asyncpg.Pool, query: str, args: tuple[Any, ...],
                                                index: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + query, *args))
    assert index in plan, plan


async def test_appends_are_guarded_by_the_expected_next_event_id(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for i in (3, 1, 2):
            await insert_run(conn, rk(i))
        async with conn.transaction():
            locked = await conn.fetch(pg_sql.LOCK_RUNS, [rk(3), rk(1), rk(2)])
            assert [r["run_key"] for r in locked] == [rk(1), rk(2), rk(3)]  # key order: no deadlocks
        async with conn.transaction():
            assert await conn.fetchrow(pg_sql.GUARD_NEXT_EVENT_ID, rk(1), 1, 3) is not None
            await conn.execute(pg_sql.APPEND_HISTORY, [rk(1), rk(1), rk(2)], [1, 2, 1], [b"e1", b"e2", b"x1"])
        # A second writer that read next_event_id = 1 (or a retry whose first attempt committed): refused.
        assert await conn.fetchrow(pg_sql.GUARD_NEXT_EVENT_ID, rk(1), 1, 2) is None
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(pg_sql.APPEND_HISTORY, [rk(1)], [2], [b"fork"])
        rows = await conn.fetch("SELECT event_id, envelope FROM history WHERE run_key = $1 ORDER BY event_id", rk(1))
        assert [(r[0], r[1]) for r in rows] == [(1, b"e1"), (2, b"e2")]
        await conn.execute("UPDATE runs SET status = 'completed', close_us = $2 WHERE run_key = $1", rk(2), NOW)
        assert await conn.fetchrow(pg_sql.GUARD_NEXT_EVENT_ID, rk(2), 1, 2) is None  # closed


async def test_operation_ids_apply_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await conn.fetchval(pg_sql.RECORD_OP_ID, "signal-1", NOW) is True
        assert await conn.fetchval(pg_sql.RECORD_OP_ID, "signal-1", NOW + 1) is None


async def test_table_invariants_are_checked(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.CheckViolationError):
            await insert_run(conn, b"short")
        with pytest.raises(asyncpg.CheckViolationError):
            await insert_run(conn, rk(1), status="sleeping")
        with pytest.raises(asyncpg.CheckViolationError):  # leased without a lease end
            await conn.execute("INSERT INTO wtasks (run_key, task_queue, owner) VALUES ($1, 'q', 'A')", rk(1))


# ------------------------------------------------------------------------------------------ LISTEN/NOTIFY


def test_channel_names_fit_the_identifier_limit() -> None:
    assert channel("duro", "wtask") == "duro_duro_wtask"
    long_a, long_b = "a" * 60 + "x", "a" * 60 + "y"
    assert len(channel(long_a, "request")) <= 63 and channel(long_a, "request") != channel(long_b, "request")


async def test_notifications_reach_the_listener_at_commit(pool: asyncpg.Pool, pg_settings: PgSettings) -> None:
    got: list[tuple[str, str | None]] = []
    async with Listener(pg_settings) as listener:
        for kind in KINDS:
            listener.subscribe(kind, lambda payload, k=kind: got.append((k, payload)))
        wtask = channel(pg_settings.schema, "wtask")
        async with pool.acquire() as a, pool.acquire() as b:
            tx = a.transaction()
            await tx.start()
            await notify(a, wtask, "in-transaction")
            await notify(b, channel(pg_settings.schema, "closed"), "autocommit")
            # Delivered in commit order: the autocommit one arrives; the uncommitted one has not.
            await eventually(lambda: ("closed", "autocommit") in got, "the autocommitted notification")
            assert ("wtask", "in-transaction") not in got
            await tx.commit()
            await eventually(lambda: ("wtask", "in-transaction") in got, "the notification of the commit")
            async with a.transaction():
                await notify_many(a, [(wtask, "q1"), (wtask, "q1"), (channel(pg_settings.schema, "timer"), "5")])
            await eventually(lambda: ("timer", "5") in got, "the batch")
            # A notification on another schema's channel does not reach this listener.
            await notify(b, channel("some_other_schema", "wtask"), "elsewhere")
            await notify(b, channel(pg_settings.schema, "atask"), "last")
            await eventually(lambda: ("atask", "last") in got, "the last notification")
    assert got == [("closed", "autocommit"), ("wtask", "in-transaction"), ("wtask", "q1"), ("timer", "5"),
                   ("atask", "last")]  # the duplicate in one transaction was folded into one


async def test_listener_reconnects_after_its_backend_is_terminated(pool: asyncpg.Pool,
                                                                   pg_settings: PgSettings) -> None:
    got: dict[str, list[str | None]] = {kind: [] for kind in KINDS}
    async with Listener(pg_settings, ping_interval_s=0.5) as listener:
        for kind in KINDS:
            listener.subscribe(kind, got[kind].append)
        pid = listener.backend_pid
        assert pid is not None and listener.connected
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
        # Every callback fires once (with None: notifications may have been missed), after LISTEN again.
        await eventually(lambda: all(got[kind] == [None] for kind in KINDS), "every callback after the reconnect")
        assert listener.reconnects == 1 and listener.connected and listener.backend_pid != pid
        async with pool.acquire() as conn:
            await notify(conn, channel(pg_settings.schema, "request"), "q")
        await eventually(lambda: got["request"] == [None, "q"], "a notification on the new connection")
    assert not listener.connected


async def test_unsubscribed_callbacks_are_not_called(pool: asyncpg.Pool, pg_settings: PgSettings) -> None:
    kept: list[str | None] = []
    dropped: list[str | None] = []
    async with Listener(pg_settings, kinds=("wtask",)) as listener:
        listener.subscribe("wtask", kept.append)
        listener.subscribe("wtask", dropped.append)()
        with pytest.raises(ValueError, match="does not listen for 'atask'"):
            listener.subscribe("atask", kept.append)
        async with pool.acquire() as conn:
            await notify(conn, channel(pg_settings.schema, "wtask"), "q")
        await eventually(lambda: kept == ["q"], "the notification")
    assert dropped == []


# ------------------------------------------------------------------------------------------ no server


@pytest.mark.parametrize("skip", ["", "1"])
def test_without_postgres_the_tests_fail_saying_how_to_start_it_unless_skipped(skip: str) -> None:
    env = {**os.environ, "DURO_PG_URL": f"postgresql://postgres@127.0.0.1:{_closed_port()}/test",
           "DURO_SKIP_POSTGRES": skip, "DURO_PG_WAIT_S": "0.5"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-rs", f"{__file__}::test_operation_ids_apply_once"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    if skip:
        assert out.returncode == 0 and "SKIPPED" in out.stdout, out.stdout + out.stderr
    else:
        assert out.returncode == 1, out.stdout + out.stderr
        assert "these tests need PostgreSQL: cannot reach PostgreSQL at 127.0.0.1:" in out.stdout
        assert "pg_ctlcluster --skip-systemctl-redirect" in out.stdout and "DURO_SKIP_POSTGRES=1" in out.stdout
