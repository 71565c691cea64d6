"""The LMDB store's visibility index: ``list_workflows`` and ``count_workflows`` without a scan.

One named database (``vis``) holds, for each workflow id's latest run (its ``wf`` entry), a key per
way of finding it, each ordered newest first; the value is empty. Key layout (bytes):

    b"s" + desc(start_us) + workflow_id                           every workflow
    b"t" + h(status) + desc(start_us) + workflow_id               by status
    b"y" + h(workflow_type) + desc(start_us) + workflow_id        by type
    b"a" + h(name, value) + desc(start_us) + workflow_id          by search attribute (equality)

``desc(t)`` is ``2**64 - 1 - t`` big-endian (8 bytes), so a forward scan goes from the newest start;
``h(...)`` is a 16-byte BLAKE2b digest, which keeps every key under LMDB's 511-byte limit whatever
the names and values. Invariant: the keys of an id are exactly those of its current ``wf`` entry
(``put`` replaces them in the transaction that rewrites the entry). A digest can collide in
theory, so every candidate is checked against the ``wf`` entry itself before it is returned.
"""

from __future__ import annotations

import functools
import hashlib
from typing import TYPE_CHECKING, Any

import orjson

from duro.engine.records import WorkflowIndex, decode_index
from duro.stores.base import ListQuery

if TYPE_CHECKING:
    from duro._core import mdb

__all__ = ["keys_of", "matches", "rebuild", "remove", "replace", "scan"]

_MAX = (1 << 64) - 1


def _desc(start_us: int) -> bytes:
    return (_MAX - start_us).to_bytes(8, "big")


def _h(*parts: Any) -> bytes:
    return hashlib.blake2b(orjson.dumps(parts), digest_size=16).digest()


@functools.lru_cache(maxsize=1024)
def _h_name(name: str) -> bytes:
    """``_h(name)`` of a status or workflow type: few distinct values, and two digests per index write."""
    return _h(name)


def keys_of(workflow_id: str, idx: WorkflowIndex) -> list[bytes]:
    """The ``vis`` keys of a ``wf`` entry."""
    tail = _desc(idx.start_us) + workflow_id.encode()
    keys = [b"s" + tail, b"t" + _h_name(str(idx.status)) + tail, b"y" + _h_name(idx.workflow_type) + tail]
    for name, value in (idx.search_attributes or {}).items():
        keys.append(b"a" + _h(name, value) + tail)
    return keys


def replace(txn: mdb.Transaction, db: mdb.Database, workflow_id: str, old: WorkflowIndex | None,
            new: WorkflowIndex) -> None:
    """Make the ``vis`` keys of ``workflow_id`` those of ``new`` (``old``: its entry until now)."""
    old_keys = set(keys_of(workflow_id, old)) if old is not None else set()
    new_keys = keys_of(workflow_id, new)
    for key in old_keys.difference(new_keys):
        txn.delete(key, db=db)
    for key in new_keys:
        if key not in old_keys:
            txn.put(key, b"", db=db)


def remove(txn: mdb.Transaction, db: mdb.Database, workflow_id: str, old: WorkflowIndex) -> None:
    """Drop the ``vis`` keys of an entry that is deleted."""
    for key in keys_of(workflow_id, old):
        txn.delete(key, db=db)


def rebuild(txn: mdb.Transaction, wf: mdb.Database, vis: mdb.Database) -> int:
    """Write the ``vis`` keys of every ``wf`` entry (a store written before the index existed)."""
    n = 0
    for wid, raw in txn.cursor(db=wf).iternext():
        for key in keys_of(wid.decode(), decode_index(raw)):
            txn.put(key, b"", db=vis)
        n += 1
    return n


def matches(idx: WorkflowIndex, q: ListQuery) -> bool:
    """Whether a ``wf`` entry passes every filter of ``q``."""
    if q.status is not None and idx.status != q.status:
        return False
    if q.workflow_type is not None and idx.workflow_type != q.workflow_type:
        return False
    if q.started_after_us is not None and idx.start_us <= q.started_after_us:
        return False
    if q.started_before_us is not None and idx.start_us >= q.started_before_us:
        return False
    if q.search_attributes:
        have = idx.search_attributes or {}
        for name, value in q.search_attributes.items():
            if name not in have or have[name] != value or type(have[name]) is not type(value):
                return False
    return True


def _prefix(q: ListQuery) -> bytes:
    """The most selective key range for ``q``: an attribute's, else the type's, the status', or all."""
    if q.search_attributes:
        name = min(q.search_attributes)
        return b"a" + _h(name, q.search_attributes[name])
    if q.workflow_type is not None:
        return b"y" + _h(q.workflow_type)
    if q.status is not None:
        return b"t" + _h(q.status)
    return b"s"


def scan(txn: mdb.Transaction, wf: mdb.Database, vis: mdb.Database, q: ListQuery, limit: int,
         after: tuple[int, str] | None = None) -> list[tuple[str, WorkflowIndex]]:
    """Up to ``limit`` (workflow id, entry) matching ``q``, newest first, after the page position ``after``.

    ``after`` is the (start_us, workflow id) of the last entry of the previous page. ``limit`` 0
    means no limit (``count_workflows``).
    """
    prefix = _prefix(q)
    if after is not None:
        start = prefix + _desc(after[0]) + after[1].encode() + b"\x00"  # just past that entry
    elif q.started_before_us is not None:
        start = prefix + _desc(q.started_before_us - 1) if q.started_before_us > 0 else prefix + b"\xff" * 8
    else:
        start = prefix
    out: list[tuple[str, WorkflowIndex]] = []
    cur = txn.cursor(db=vis)
    if not cur.set_range(start):
        return out
    n = len(prefix)
    floor = q.started_after_us
    while True:
        key = cur.key()
        if not key.startswith(prefix):
            break
        start_us = _MAX - int.from_bytes(key[n:n + 8], "big")
        if floor is not None and start_us <= floor:
            break  # newest first: everything further is older
        wid = key[n + 8:].decode()
        raw = txn.get(wid.encode(), db=wf)
        if raw is not None:
            idx = decode_index(raw)
            if idx.start_us == start_us and matches(idx, q):
                out.append((wid, idx))
                if limit and len(out) >= limit:
                    break
        if not cur.next():
            break
    return out
