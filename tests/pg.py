"""PostgreSQL for tests: a reachable server (or a failure that says how to start it) and a fresh schema per test.

Use it as a plugin (``pytest_plugins = ("tests.pg",)``) for the fixtures ``pg_url`` (a store URL with
``?schema=`` of a new random schema, dropped after the test) and ``pg_settings`` (that URL parsed).
The server is ``DURO_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, the
cluster ``make postgres`` starts). When it cannot be reached, tests that use these fixtures FAIL
with a message saying how to start it, unless ``DURO_SKIP_POSTGRES=1`` is set, which skips them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest

from duro.errors import StoreError
from duro.stores.pg_conn import PgSettings, connect_one, parse_pg_url, quote_ident

PG_URL = os.environ.get("DURO_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SKIP_ENV = "DURO_SKIP_POSTGRES"
REACH_TIMEOUT_S = float(os.environ.get("DURO_PG_WAIT_S", "3"))

_unreachable: dict[str, str | None] = {}  # server URL -> why it cannot be reached (None: it can)


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``schema=NAME`` added to its query."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def random_schema() -> str:
    """A fresh schema name for one test."""
    return f"duro_t_{uuid.uuid4().hex[:16]}"


async def require_postgres(url: str = PG_URL) -> None:
    """Fail the calling test (skip it with DURO_SKIP_POSTGRES=1) when PostgreSQL at ``url`` cannot be reached.

    The answer is remembered for the session: a server that is down costs one wait, not one per test.
    """
    if url not in _unreachable:
        try:
            conn = await connect_one(parse_pg_url(url), timeout_s=REACH_TIMEOUT_S)
        except StoreError as e:
            _unreachable[url] = (
                f"these tests need PostgreSQL: {e}. From a checkout, `make postgres` starts the local "
                f"cluster; point DURO_PG_URL at another server, or set {SKIP_ENV}=1 to skip these tests")
        else:
            await conn.close()
            _unreachable[url] = None
    why = _unreachable[url]
    if why is not None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"PostgreSQL not reachable and {SKIP_ENV}=1")
        pytest.fail(why, pytrace=False)


async def drop_schema(schema: str, url: str = PG_URL) -> None:
    """Drop ``schema`` and everything in it (a test's cleanup)."""
    conn = await connect_one(parse_pg_url(url), timeout_s=REACH_TIMEOUT_S)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")
    finally:
        await conn.close()


async def schema_exists(schema: str, url: str = PG_URL) -> bool:
    """Whether ``schema`` exists (a command that only reads must not have created it)."""
    conn = await connect_one(parse_pg_url(url), timeout_s=REACH_TIMEOUT_S)
    try:
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema))
    finally:
        await conn.close()


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A PostgreSQL store URL whose schema is new and empty; the schema is dropped after the test."""
    await require_postgres()
    schema = random_schema()
    try:
        yield with_schema(PG_URL, schema)
    finally:
        await drop_schema(schema)


@pytest.fixture
def pg_settings(pg_url: str) -> PgSettings:
    """``pg_url`` parsed."""
    return parse_pg_url(pg_url)
