"""Schedules in the LMDB store: the ``sched`` database, the ``ScheduleTx`` operations and the store's methods.

One named database, ``sched``, holds both (prefixes keep them apart; task queues hold no NUL):

- ``b"s" + schedule_id``                                    -> ScheduleRecord (JSON, duro.engine.schedules)
- ``b"d" + queue + 0x00 + fire_at µs (u64 BE) + schedule_id`` -> b"": the due index, one entry per schedule
  that fires (``ScheduleRecord.fire_at_us``: not paused, a time left), ordered by fire time per queue.

Invariant: a schedule has a due entry exactly when its record's ``fire_at_us`` is not None, and the
entry names the record's task queue and fire time (``put_schedule`` replaces it with the record).
The transitions are ``duro.engine.schedules.Schedules``; they run as ops of the group commit, so
a fire (advancing the record and starting the run) is one LMDB write transaction, serialized with
every other process's writes by LMDB's writer lock.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from duro.engine.schedules import (
    ScheduleChange,
    ScheduleCommand,
    ScheduleRecord,
    Schedules,
    decode_schedule,
    encode_schedule,
    record_problems,
)
from duro.stores.base import schedule_topic

if TYPE_CHECKING:
    import asyncio

    from duro._core import mdb
    from duro.engine.machine import Effects, Machine
    from duro.stores.base import Clock

__all__ = ["LmdbScheduleOps", "LmdbSchedules", "check_schedules", "due_key", "record_key"]

_U64 = struct.Struct(">Q")
_FIRE_LIMIT = 100  # schedules one sweep fires (more: the worker sweeps again at once)


def record_key(schedule_id: str) -> bytes:
    """Key of a schedule's record in ``sched``."""
    return b"s" + schedule_id.encode()


def due_prefix(task_queue: str) -> bytes:
    """Prefix of a queue's entries in the due index."""
    return b"d" + task_queue.encode() + b"\x00"


def due_key(task_queue: str, fire_us: int, schedule_id: str) -> bytes:
    """Key of a schedule's entry in the due index."""
    return due_prefix(task_queue) + _U64.pack(fire_us) + schedule_id.encode()


class _TxnAndDbs(Protocol):
    txn: mdb.Transaction
    dbs: Any


class LmdbScheduleOps:
    """The ``ScheduleTx`` operations of ``LmdbTx`` (a mixin: it uses the transaction's ``txn`` and ``dbs.sched``).

    Records are cached per ``LmdbTx`` (one op, or one item of a sweep), which gives a transition the
    same object for the same schedule, as ``ScheduleTx`` demands.
    """

    __slots__ = ("_schedules",)
    _schedules: dict[str, ScheduleRecord]

    def _cache(self) -> dict[str, ScheduleRecord]:
        cache: dict[str, ScheduleRecord] | None = getattr(self, "_schedules", None)
        if cache is None:
            cache = self._schedules = {}
        return cache

    def schedule(self: Any, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record, or None."""
        cache = self._cache()
        rec: ScheduleRecord | None = cache.get(schedule_id)
        if rec is None:
            raw = self.txn.get(record_key(schedule_id), db=self.dbs.sched)
            if raw is None:
                return None
            rec = cache[schedule_id] = decode_schedule(raw)
        return rec

    def put_schedule(self: Any, rec: ScheduleRecord) -> None:
        """Store the record and move its due-index entry."""
        _drop_due(self.txn, self.dbs.sched, rec.schedule_id)
        self.txn.put(record_key(rec.schedule_id), encode_schedule(rec), db=self.dbs.sched)
        fire = rec.fire_at_us
        if fire is not None:
            self.txn.put(due_key(rec.task_queue, fire, rec.schedule_id), b"", db=self.dbs.sched)
            self.marks.add(schedule_topic(rec.task_queue))  # its queue's schedule loops look again
        self._cache()[rec.schedule_id] = rec

    def delete_schedule(self: Any, schedule_id: str) -> None:
        """Drop the record and its due-index entry."""
        _drop_due(self.txn, self.dbs.sched, schedule_id)
        self.txn.delete(record_key(schedule_id), db=self.dbs.sched)
        self._cache().pop(schedule_id, None)


def _drop_due(txn: mdb.Transaction, db: mdb.Database, schedule_id: str) -> None:
    """Delete the due entry of the record as stored (before this change)."""
    raw = txn.get(record_key(schedule_id), db=db)
    if raw is None:
        return
    old = decode_schedule(raw)
    fire = old.fire_at_us
    if fire is not None:
        txn.delete(due_key(old.task_queue, fire, schedule_id), db=db)


def _next_due(txn: mdb.Transaction, db: mdb.Database, task_queue: str | None) -> float | None:
    """The earliest fire time in the due index (of one queue, or of all), in seconds."""
    cur = txn.cursor(db=db)
    prefix = b"d" if task_queue is None else due_prefix(task_queue)
    if not cur.set_range(prefix):
        return None
    best: int | None = None
    for key in cur.iternext(keys=True, values=False):
        k = bytes(key)
        if not k.startswith(prefix):
            break
        sep = k.index(b"\x00")
        fire = _U64.unpack_from(k, sep + 1)[0]
        if best is None or fire < best:
            best = fire
        if task_queue is not None:
            break  # one queue's entries are in fire order
    return None if best is None else best / 1e6


class _LmdbStoreLike(Protocol):
    env: mdb.Environment
    dbs: Any
    machine: Machine
    clock: Clock

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]: ...
    def _tx(self, txn: mdb.Transaction) -> Any: ...
    def _sweep(self, txn: mdb.Transaction, batch: Effects, items: list[Any],
               fn: Callable[[mdb.Transaction, Effects, Any], object], what: str,
               on_failure: Callable[[Any], None] | None = None) -> None: ...


def _op_change_schedule(store: _LmdbStoreLike, txn: mdb.Transaction, batch: Effects,
                        command: ScheduleCommand) -> ScheduleChange:
    return Schedules(store.machine).apply(store._tx(txn), batch, command)


def _op_fire_schedules(store: _LmdbStoreLike, txn: mdb.Transaction, batch: Effects, task_queue: str) -> float | None:
    """Fire the queue's schedules due now, each in its own nested transaction (one that fails is logged alone)."""
    now_us = store.machine.now_us()
    db = store.dbs.sched
    prefix = due_prefix(task_queue)
    due: list[bytes] = []
    cur = txn.cursor(db=db)
    if cur.set_range(prefix):
        for key in cur.iternext(keys=True, values=False):
            k = bytes(key)
            if not k.startswith(prefix) or len(due) >= _FIRE_LIMIT or _U64.unpack_from(k, len(prefix))[0] > now_us:
                break
            due.append(k)
    schedules = Schedules(store.machine)

    def fire(child: mdb.Transaction, fx: Effects, key: bytes) -> None:
        schedules.fire(store._tx(child), fx, key[len(prefix) + 8 :].decode(), now_us)

    def drop(key: bytes) -> None:  # a schedule that cannot fire must not be due again at once, forever
        txn.delete(key, db=db)

    store._sweep(txn, batch, due, fire, "schedule", drop)
    return _next_due(txn, db, task_queue)


class LmdbSchedules:
    """The schedule methods of ``LmdbStore`` (a mixin over its group commit and environment)."""

    async def change_schedule(self: _LmdbStoreLike, command: ScheduleCommand) -> ScheduleChange:
        """Carry out a schedule command (create, pause, trigger, backfill, update, delete) in one commit."""
        change: ScheduleChange = await self._submit(functools.partial(_op_change_schedule, self), command)
        return change

    async def fire_schedules(self: _LmdbStoreLike, task_queue: str) -> float | None:
        """Fire the due schedules of ``task_queue``; when its next one is due (None: none)."""
        due: float | None = await self._submit(functools.partial(_op_fire_schedules, self), task_queue)
        return due

    async def aread_schedule(self: _LmdbStoreLike, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record as committed, or None."""
        with self.env.begin() as txn:
            raw = txn.get(record_key(schedule_id), db=self.dbs.sched)
        return None if raw is None else decode_schedule(raw)

    async def alist_schedules(self: _LmdbStoreLike) -> list[ScheduleRecord]:
        """Every schedule record, by id."""
        out: list[ScheduleRecord] = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.dbs.sched)
            if cur.set_range(b"s"):
                for key, raw in cur:
                    if not bytes(key).startswith(b"s"):
                        break
                    out.append(decode_schedule(raw))
        return out

    async def anext_schedule_due(self: _LmdbStoreLike, task_queue: str | None = None) -> float | None:
        """When the earliest schedule (of ``task_queue``, or of any queue) fires, in seconds; None: none."""
        with self.env.begin() as txn:
            return _next_due(txn, self.dbs.sched, task_queue)


def check_schedules(txn: mdb.Transaction, db: mdb.Database, add: Callable[[str], None]) -> int:
    """``duro check``: every record readable, and the due index holding exactly one entry per firing record.

    Returns:
        How many schedules there are.
    """
    records: dict[str, bytes] = {}
    due: dict[str, list[tuple[str, int | None]]] = {}
    with txn.cursor(db=db) as cur:
        for key, raw in cur.iternext():
            k = bytes(key)
            if k[:1] == b"s":
                records[k[1:].decode(errors="replace")] = bytes(raw)
            elif k[:1] == b"d" and b"\x00" in k and len(k) >= k.index(b"\x00") + 9:
                sep = k.index(b"\x00")
                due.setdefault(k[sep + 9 :].decode(errors="replace"), []).append(
                    (k[1:sep].decode(errors="replace"), _U64.unpack_from(k, sep + 1)[0]))
            else:
                add(f"sched: a key that is neither a schedule nor a due-index entry: {k[:40]!r}")
    for sid, raw in records.items():
        entries = due.pop(sid, [])
        if len(entries) > 1:
            add(f"schedule {sid!r}: {len(entries)} entries in the due index, expected at most one")
        for problem in record_problems(sid, raw, entries[0] if entries else None):
            add(problem)
    for sid in due:
        add(f"the due index names schedule {sid!r}, which has no record")
    return len(records)
