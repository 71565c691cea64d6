"""Stores: where histories, queues and timers live. ``open_store(url)`` picks one by URL scheme."""

from __future__ import annotations

import os

from duro.errors import StoreURLError
from duro.stores.base import Store
from duro.stores.lmdb import LmdbStore, open_lmdb_store, parse_lmdb_url
from duro.stores.lmdb_files import DATA_FILE
from duro.stores.urls import display_url

__all__ = ["LmdbStore", "Store", "missing_store", "open_store", "store_kind"]


def store_kind(url: str, what: str = "store") -> str:
    """``"lmdb"`` or ``"postgresql"``: the kind of store a URL names, by its scheme (the rest is not parsed).

    Raises:
        StoreURLError: ``url`` is not a string, or its scheme is neither (the message, for the
            ``what`` URL, says which forms are accepted).
    """
    if not isinstance(url, str):
        raise StoreURLError(f"a {what} URL must be a string such as 'lmdb://./duro-data', not {type(url).__name__}")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "lmdb":
        return "lmdb"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise StoreURLError(
        f"unsupported {what} URL {display_url(url)!r}: expected lmdb://PATH (for example lmdb://./duro-data) "
        "or postgresql://USER@HOST:PORT/DATABASE")


def open_store(url: str) -> Store:
    """Open the store a URL names: ``lmdb://PATH`` (embedded) or ``postgresql://...`` (distributed)."""
    if store_kind(url) == "lmdb":
        return open_lmdb_store(url)
    from duro.stores.postgres import open_postgres_store

    return open_postgres_store(url)


async def missing_store(url: str) -> str | None:
    """Why the store a URL names does not exist yet, or None when it does; creates nothing.

    Opening a store creates it (``open_store``), as a worker or a first start should. A command
    that only reads (a deploy check, a listing) asks this first, so that a mistyped path or
    ``?schema=`` is reported instead of checked as an empty store.

    Raises:
        StoreURLError: the URL is not one ``open_store`` accepts.
        StoreUnavailableError: the PostgreSQL server could not be reached.
        StoreError: the login or database is wrong.
    """
    if store_kind(url) == "lmdb":
        path = parse_lmdb_url(url)[0]
        return None if os.path.isfile(os.path.join(path, DATA_FILE)) else f"no duro store at {path!r}"
    from duro.stores.pg_conn import connect_one, parse_pg_url
    from duro.stores.pg_schema import schema_version

    settings = parse_pg_url(url)
    conn = await connect_one(settings)
    try:
        version = await schema_version(conn, settings.schema)
    finally:
        await conn.close()
    return None if version is not None else f"no duro store in schema {settings.schema!r} at {settings.where}"
