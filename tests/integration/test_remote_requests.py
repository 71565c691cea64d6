"""Queries and updates answered by a worker in another process (this process has no workflow code)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator

import pytest

import duro
from tests.processes import ready_process
from tests.waiting import eventually


@pytest.fixture
def remote_worker(store: str) -> Iterator[subprocess.Popen[bytes]]:
    with ready_process("tests/integration/feature_worker.py", store, "remote") as proc:
        yield proc


async def test_query_and_update_through_a_worker_in_another_process(
        client: duro.Client, remote_worker: subprocess.Popen[bytes]) -> None:
    handle = await client.start_workflow("queried", id="remote-q", task_queue="remote")
    await handle.signal("add", "a")
    for _ in range(200):
        try:
            if await handle.query("items") == ["a"]:
                break
        except duro.DuroError:  # no workflow task has run yet: no handlers are installed
            pass
        await asyncio.sleep(0.02)
    assert await handle.query("items") == ["a"]
    assert await handle.query("count_plus", 5) == 6
    with pytest.raises(duro.ApplicationError, match="empty items are rejected"):
        await handle.execute_update("add", "")
    assert await handle.execute_update("add", "b") == 2
    with pytest.raises(duro.DuroError, match="no query handler"):
        await handle.query("missing")
    await handle.signal("add", "stop")
    assert await handle.result(timeout=20) == ["a", "b", "stop"]
    # A closed run is still queryable (by replay in the worker's process).
    assert await handle.query("items") == ["a", "b", "stop"]


async def _items(handle: duro.WorkflowHandle) -> object:
    try:
        return await handle.query("items")
    except duro.DuroError:  # no workflow task has run yet: no handlers are installed
        return None


async def test_a_request_left_while_no_worker_ran_is_answered_by_the_next_one(
        client: duro.Client, store: str) -> None:
    with ready_process("tests/integration/feature_worker.py", store, "remote-late"):
        handle = await client.start_workflow("queried", id="remote-late", task_queue="remote-late")
        await handle.signal("add", "a")
        await eventually(lambda: _items(handle), "the remote worker to answer a query")
    # No worker runs now: the query waits in the store for one (up to its 10 s).
    pending = asyncio.ensure_future(handle.query("items"))
    await eventually(lambda: client.store.apending_requests("remote-late"), "the query to be left in the store")
    # A worker that starts later reads what was left before it (nothing else wakes it for that).
    with ready_process("tests/integration/feature_worker.py", store, "remote-late"):
        assert await pending == ["a"]
