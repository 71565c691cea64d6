"""Faults that belong to PostgreSQL: connections killed under load, and a statement timeout.

- The server ends every connection of the store's processes (``pg_terminate_backend``) again and
  again while order workflows run: each batch in flight rolls back and runs again on a new
  connection, the listener reconnects, reads retry. Every workflow completes, each step once.
- A row lock held elsewhere makes the store's statements run into ``statement_timeout``: the call
  fails with a ``StoreError`` that says so, nothing of it is applied, and once the lock goes the
  same call succeeds and the run goes on.
"""

from __future__ import annotations

import asyncio
import collections
import uuid

import pytest

import duro
from duro.errors import StoreError
from duro.stores.base import run_key_of
from duro.stores.pg_conn import connect_one, parse_pg_url
from tests.engine import wfs
from tests.engine.wfs import Order, Receipt
from tests.waiting import eventually

pytest_plugins = ("tests.pg",)

QUEUE = "pg-faults"
N = 40
KILL_ROUNDS = 4


async def test_connections_killed_under_load_lose_and_double_nothing(pg_url: str) -> None:
    app = f"duro-faults-{uuid.uuid4().hex[:8]}"
    url = f"{pg_url}&application_name={app}"
    admin = await connect_one(parse_pg_url(pg_url))
    try:
        async with duro.Client.connect(url) as client, duro.Worker(
                client, task_queue=QUEUE, workflows=[wfs.order_workflow],
                activities=[wfs.validate, wfs.reserve, wfs.charge, wfs.ship]):
            handles = [await client.start_workflow(wfs.order_workflow, Order(f"o{i}", i + 1), id=f"o{i}",
                                                   task_queue=QUEUE) for i in range(N)]
            killed = 0
            for round_ in range(KILL_ROUNDS):
                # Signal a slice of the workflows, then end every connection the store has.
                await asyncio.gather(*(h.signal("approve", {"by": f"r{round_}"})
                                       for h in handles[round_ * N // KILL_ROUNDS:(round_ + 1) * N // KILL_ROUNDS]))
                killed += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app)
            assert killed >= KILL_ROUNDS  # the pool and the listener were there to be killed
            results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 60)
            assert all(isinstance(r, Receipt) for r in results)
            for h in handles:
                counts = collections.Counter(e.event_type for e in await h.fetch_history())
                assert counts["WorkflowExecutionSignaled"] == 1, (h.id, counts)
                assert counts["WorkflowExecutionCompleted"] == 1, (h.id, counts)
                assert counts["ActivityTaskCompleted"] == 4, (h.id, counts)
    finally:
        await admin.close()


async def test_a_statement_timeout_fails_the_call_cleanly_and_the_run_goes_on(pg_url: str) -> None:
    url = f"{pg_url}&statement_timeout_ms=300"
    admin = await connect_one(parse_pg_url(pg_url))
    try:
        async with duro.Client.connect(url) as client, duro.Worker(client, task_queue=QUEUE,
                                                                  workflows=[wfs.signal_workflow]):
            handle = await client.start_workflow(wfs.signal_workflow, 1, id="held", task_queue=QUEUE)

            async def waiting() -> bool:
                return any(e.event_type == "WorkflowTaskCompleted" for e in await handle.fetch_history())

            await eventually(waiting, "the workflow to wait for its signal")
            lock = admin.transaction()
            await lock.start()
            await admin.execute("SELECT 1 FROM runs WHERE run_key = $1 FOR UPDATE",
                                run_key_of(handle.run_id or ""))
            try:
                with pytest.raises(StoreError, match="statement timeout"):
                    await handle.signal("item", "first")
            finally:
                await lock.rollback()
            history = await handle.fetch_history()
            assert not any(e.event_type == "WorkflowExecutionSignaled" for e in history)  # nothing applied
            await handle.signal("item", "second")
            assert await asyncio.wait_for(handle.result(), 30) == ["second"]
    finally:
        await admin.close()
