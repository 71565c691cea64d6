"""PgTx, the state machine's transaction on PostgreSQL: what a batch reads after it flushed mid-way.

A claim or a sweep flushes the batch's writes before it selects rows with SQL; the ops after it
must read what was flushed, not the rows read ahead before the batch began. (Reading the old rows
left a run with new input and no workflow task: the kill matrix on PostgreSQL found it.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from duro.engine.records import ActivityMeta, RunRecord, RunStatus, WorkflowIndex, WorkflowTaskLease
from duro.stores.pg_conn import PgSettings, connect_one
from duro.stores.pg_schema import migrate
from duro.stores.postgres_tx import PgTx, blocking_on

pytest_plugins = ("tests.pg",)

T = TypeVar("T")
RUN = bytes(range(16))
QUEUE = "q"


def _meta(owner: str = "") -> ActivityMeta:
    return ActivityMeta(workflow_id="w", workflow_type="t", name="a", attempt=1, scheduled_us=1,
                        start_to_close=5.0, schedule_to_close=None, heartbeat=None, retry={}, owner=owner)


async def _in_transaction(settings: PgSettings, body: Callable[[PgTx], T]) -> T:
    """Run ``body`` (synchronous, on a thread, as the store's writer does) in one committed transaction."""
    loop = asyncio.get_running_loop()
    conn = await connect_one(settings)
    try:
        await migrate(conn, settings.schema)
        async with conn.transaction():
            tx = PgTx(conn, blocking_on(loop), lambda: 1_000_000, 30.0)
            return await loop.run_in_executor(None, body, tx)
    finally:
        await conn.close()


async def _seed(settings: PgSettings) -> None:
    def body(tx: PgTx) -> None:
        tx.put_run(RUN, RunRecord("w", "t", QUEUE, RunStatus.RUNNING, 1, next_event_id=3, last_input=2))
        tx.put_index("w", WorkflowIndex(RUN.hex(), RunStatus.RUNNING, "t", 1))
        tx.put_wtask(QUEUE, RUN, WorkflowTaskLease("someone", 5_000_000))
        tx.put_atask(QUEUE, RUN, 1, _meta(), b"args", b"")
        tx.flush()

    await _in_transaction(settings, body)


async def test_ops_after_a_mid_batch_flush_read_what_was_flushed(pg_settings: PgSettings) -> None:
    await _seed(pg_settings)

    def body(tx: PgTx) -> tuple[object, ...]:
        tx.prefetch([RUN], [(RUN, 1)], ["w"])
        # op 1 changes every kind of row read ahead
        tx.push()
        rec = tx.run(RUN)
        assert rec is not None and rec.epoch == 0
        rec.epoch = 7
        tx.put_run(RUN, rec)
        tx.delete_wtask(QUEUE, RUN)
        tx.put_atask(QUEUE, RUN, 1, _meta(owner="me"), b"args", b"")
        tx.put_index("w", WorkflowIndex(RUN.hex(), RunStatus.COMPLETED, "t", 1, 2))
        tx.merge()
        tx.flush()  # as a claim does before it selects
        # op 2 raises: its layer is dropped, which forgets the in-memory records
        tx.push()
        tx.drop()
        # op 3 reads
        tx.push()
        got = (tx.run(RUN), tx.wtask(QUEUE, RUN), tx.atask(QUEUE, RUN, 1), tx.index("w"))
        tx.merge()
        return got

    run, wtask, atask, index = await _in_transaction(pg_settings, body)
    assert isinstance(run, RunRecord) and run.epoch == 7
    assert wtask is None
    assert isinstance(atask, tuple) and atask[0].owner == "me"
    assert isinstance(index, WorkflowIndex) and index.status == RunStatus.COMPLETED
