"""Schedules in the PostgreSQL store: the ``schedules`` table, the ``ScheduleTx`` operations and the store's methods.

Table (``pg_schema`` migration 2): ``schedules(schedule_id, task_queue, fire_at_us, record)``, one row
per schedule; ``record`` is the ``ScheduleRecord`` (jsonb, its own field names) and ``fire_at_us``
its ``fire_at_us`` (NULL while paused or with no time left), indexed per task queue for the workers.

``PgTx`` reads a schedule row ``FOR UPDATE`` and buffers its writes in the op's overlay layer, like
the run records, so a schedule command or a fire is atomic with the runs it starts. A worker
selects its queue's due rows ``FOR UPDATE SKIP LOCKED`` inside the batch's transaction and fires
each (``duro.engine.schedules.Schedules.fire``): two workers never fire one schedule at once, and
the second to look finds the row advanced (the fire committed) or still due (it did not).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from duro.engine.schedules import (
    ScheduleChange,
    ScheduleCommand,
    ScheduleRecord,
    Schedules,
    decode_schedule,
    encode_schedule,
)

if TYPE_CHECKING:
    import asyncio

    import asyncpg

    from duro.engine.machine import Effects, Machine

__all__ = ["PgScheduleOps", "PgSchedules", "schedule_row", "schedule_statements"]

log = logging.getLogger("duro.store.pg")

_FIRE_LIMIT = 100  # schedules one sweep fires (more: the worker sweeps again at once)
_SELECT = "SELECT schedule_id, task_queue, fire_at_us, record FROM schedules WHERE schedule_id = $1::text"
_DELETE = "DELETE FROM schedules WHERE schedule_id = ANY($1::text[])"
_UPSERT = """
INSERT INTO schedules (schedule_id, task_queue, fire_at_us, record)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::jsonb[])
ON CONFLICT (schedule_id) DO UPDATE SET task_queue = excluded.task_queue, fire_at_us = excluded.fire_at_us,
    record = excluded.record
"""
_DUE = """
SELECT schedule_id FROM schedules
WHERE task_queue = $1::text AND fire_at_us <= $2::bigint
ORDER BY fire_at_us
LIMIT $3::integer
FOR UPDATE SKIP LOCKED
"""
_NEXT_OF_QUEUE = """
SELECT min(fire_at_us) FROM schedules
WHERE task_queue = $1::text AND fire_at_us IS NOT NULL AND schedule_id <> ALL($2::text[])
"""
_NEXT = "SELECT min(fire_at_us) FROM schedules"
_NEXT_QUEUE = "SELECT min(fire_at_us) FROM schedules WHERE task_queue = $1::text"
_DISABLE = "UPDATE schedules SET fire_at_us = NULL WHERE schedule_id = $1::text"
_READ = "SELECT record FROM schedules WHERE schedule_id = $1::text"
_LIST = "SELECT record FROM schedules ORDER BY schedule_id"


def schedule_row(rec: ScheduleRecord) -> tuple[Any, ...]:
    """The ``schedules`` row of a record (the overlay keeps rows: id, queue, fire time, record as JSON text)."""
    return (rec.schedule_id, rec.task_queue, rec.fire_at_us, encode_schedule(rec).decode())


def schedule_statements(rows: dict[str, tuple[Any, ...] | None]) -> list[tuple[str, list[Any]]]:
    """The statements that write an overlay's schedule rows (None: delete), for ``PgTx.flush``."""
    stmts: list[tuple[str, list[Any]]] = []
    dels = [sid for sid, row in rows.items() if row is None]
    puts = [row for row in rows.values() if row is not None]
    if dels:
        stmts.append((_DELETE, [dels]))
    if puts:
        stmts.append((_UPSERT, [[row[i] for row in puts] for i in range(4)]))
    return stmts


class PgScheduleOps:
    """The ``ScheduleTx`` operations of ``PgTx`` (a mixin: it uses the transaction's layers and reads).

    A record read in an op is cached for that op (keyed by its overlay layer), which gives a
    transition the same object for the same schedule, as ``ScheduleTx`` demands.
    """

    _schedules_of_layer: tuple[object, dict[str, ScheduleRecord]]

    def _schedule_cache(self: Any) -> dict[str, ScheduleRecord]:
        top = self.layers[-1]
        held: tuple[object, dict[str, ScheduleRecord]] | None = getattr(self, "_schedules_of_layer", None)
        if held is None or held[0] is not top:
            held = (top, {})
            self._schedules_of_layer = held
        return held[1]

    def schedule(self: Any, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record (its row locked for this transaction when read from the database)."""
        cache = self._schedule_cache()
        rec: ScheduleRecord | None = cache.get(schedule_id)
        if rec is not None:
            return rec
        found, row = self._find("schedules", schedule_id)
        if not found:
            row = self._fetchrow(_SELECT + self._suffix, schedule_id)
        if row is None:
            return None
        rec = cache[schedule_id] = decode_schedule(row[3])
        return rec

    def put_schedule(self: Any, rec: ScheduleRecord) -> None:
        """Store the record (buffered), and wake other processes' workers (their due times may move)."""
        self.layers[-1].schedules[rec.schedule_id] = schedule_row(rec)
        self._schedule_cache()[rec.schedule_id] = rec
        self.notes.add(("timer", ""))

    def delete_schedule(self: Any, schedule_id: str) -> None:
        """Drop the record (buffered)."""
        self.layers[-1].schedules[schedule_id] = None
        self._schedule_cache().pop(schedule_id, None)

    def pending_schedules(self: Any) -> dict[str, tuple[Any, ...] | None]:
        """The schedule rows written in this batch and not flushed yet, the newest of each."""
        out: dict[str, tuple[Any, ...] | None] = {}
        for layer in self.layers:
            out.update(layer.schedules)
        return out


class _PgStoreLike(Protocol):
    machine: Machine

    @property
    def pool(self) -> asyncpg.Pool: ...

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]: ...
    async def _aread(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any: ...


def _op_change_schedule(store: _PgStoreLike, tx: Any, fx: Effects, command: ScheduleCommand) -> ScheduleChange:
    return Schedules(store.machine).apply(tx, fx, command)


def _op_fire_schedules(store: _PgStoreLike, tx: Any, fx: Effects, task_queue: str) -> float | None:
    """Fire the queue's due schedules, each in its own overlay layer (one that fails is logged and disabled)."""
    from duro.stores.postgres import _DB_ERRORS  # loaded already: this runs in the store's batch

    now_us = store.machine.now_us()
    tx.flush()  # the selection must see what earlier ops of the batch wrote
    schedules = Schedules(store.machine)
    for (sid,) in tx.fetch(_DUE, task_queue, now_us, _FIRE_LIMIT):
        mark = fx.mark()
        tx.push()
        try:
            schedules.fire(tx, fx, sid, now_us)
        except _DB_ERRORS:
            raise
        except Exception as e:
            tx.drop()
            fx.rollback(mark)
            # Out of the due index, or it would be due again at once, forever; an update re-enables it.
            tx.fetch(_DISABLE, sid)
            log.error("schedule %r could not fire (%s: %s) and is disabled until it is updated or unpaused; "
                      "a damaged record?", sid, type(e).__name__, e)
        else:
            tx.merge()
    pending = tx.pending_schedules()
    due = [row[2] for row in pending.values() if row is not None and row[1] == task_queue and row[2] is not None]
    in_db = tx.fetchval(_NEXT_OF_QUEUE, task_queue, list(pending))
    if in_db is not None:
        due.append(in_db)
    return min(due) / 1e6 if due else None


class PgSchedules:
    """The schedule methods of ``PostgresStore`` (a mixin over its group commit and pool)."""

    async def change_schedule(self: _PgStoreLike, command: ScheduleCommand) -> ScheduleChange:
        """Carry out a schedule command (create, pause, trigger, backfill, update, delete) in one commit."""
        change: ScheduleChange = await self._submit(functools.partial(_op_change_schedule, self), command)
        return change

    async def fire_schedules(self: _PgStoreLike, task_queue: str) -> float | None:
        """Fire the due schedules of ``task_queue``; when its next one is due (None: none)."""
        due: float | None = await self._submit(functools.partial(_op_fire_schedules, self), task_queue)
        return due

    async def aread_schedule(self: _PgStoreLike, schedule_id: str) -> ScheduleRecord | None:
        """The schedule record as committed, or None."""
        raw = await self._aread(self.pool.fetchval, _READ, schedule_id)
        return None if raw is None else decode_schedule(raw)

    async def alist_schedules(self: _PgStoreLike) -> list[ScheduleRecord]:
        """Every schedule record, by id."""
        rows = await self._aread(self.pool.fetch, _LIST)
        return [decode_schedule(r[0]) for r in rows]

    async def anext_schedule_due(self: _PgStoreLike, task_queue: str | None = None) -> float | None:
        """When the earliest schedule (of ``task_queue``, or of any queue) fires, in seconds; None: none."""
        if task_queue is None:
            due = await self._aread(self.pool.fetchval, _NEXT)
        else:
            due = await self._aread(self.pool.fetchval, _NEXT_QUEUE, task_queue)
        return None if due is None else float(due) / 1e6
