"""Stores: where histories, queues and timers live. ``open_store(url)`` picks one by URL scheme."""

from __future__ import annotations

from duro.errors import StoreURLError
from duro.stores.base import Store
from duro.stores.lmdb import LmdbStore, open_lmdb_store

__all__ = ["LmdbStore", "Store", "open_store"]


def open_store(url: str) -> Store:
    """Open the store a URL names: ``lmdb://PATH`` (embedded) or ``postgresql://...`` (distributed)."""
    if not isinstance(url, str):
        raise StoreURLError(f"a store URL must be a string such as 'lmdb://./duro-data', not {type(url).__name__}")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "lmdb":
        return open_lmdb_store(url)
    if scheme in ("postgresql", "postgres"):
        from duro.stores.postgres import open_postgres_store

        return open_postgres_store(url)
    raise StoreURLError(
        f"unsupported store URL {url!r}: expected lmdb://PATH (for example lmdb://./duro-data) "
        "or postgresql://USER@HOST:PORT/DATABASE")
