"""Deleting closed runs on each store: handle.delete, client.purge, the retention setting, the CLI, flat disk."""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import duro
from duro.cli import main as duro_main
from duro.stores.base import ListQuery, run_key_of
from tests.engine import wfs
from tests.waiting import eventually

QUEUE = "retention"


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.signal_workflow]) as w:
        yield w


async def _finished(client: duro.Client, wid: str) -> duro.WorkflowHandle:
    handle = await client.start_workflow(wfs.signal_workflow, 1, id=wid, task_queue=QUEUE)
    await handle.signal("item", wid)
    assert await handle.result() == [wid]
    return handle


async def test_delete_a_closed_run_and_refuse_a_running_one(client: duro.Client, worker: duro.Worker) -> None:
    done = await _finished(client, "gone")
    running = await client.start_workflow(wfs.signal_workflow, 1, id="alive", task_queue=QUEUE)
    with pytest.raises(duro.DuroError, match="is running: cancel or terminate it"):
        await running.delete()
    assert (await running.describe()).status == "running"  # nothing deleted
    await done.delete()
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("gone").describe()
    assert client.store.read_history(run_key_of(done.run_id or "")) == []
    assert [w.workflow_id for w in await client.list_workflows()] == ["alive"]
    assert await client.count_workflows() == 1
    with pytest.raises(duro.WorkflowNotFoundError):
        await done.delete()
    # The id can be used again.
    again = await _finished(client, "gone")
    assert (await again.describe()).status == "completed"


async def test_purge_deletes_runs_closed_before_a_time(client: duro.Client, worker: duro.Worker) -> None:
    for i in range(5):
        await _finished(client, f"old{i}")
    cut = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    keep = await client.start_workflow(wfs.signal_workflow, 1, id="open", task_queue=QUEUE)
    assert await client.purge(cut, limit=3) == 3
    assert await client.purge(cut) == 2
    assert await client.purge(cut) == 0
    assert [w.workflow_id for w in await client.list_workflows()] == ["open"]
    assert (await keep.describe()).status == "running"
    with pytest.raises(ValueError, match="limit must be a positive int"):
        await client.purge(cut, limit=0)


async def test_the_retention_setting_purges_in_the_background(store: str) -> None:
    url = f"{store}{'&' if '?' in store else '?'}retention_days=0.00001"  # about 0.9 s
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.signal_workflow]):
            await _finished(client, "short-lived")
            open_run = await client.start_workflow(wfs.signal_workflow, 1, id="still-open", task_queue=QUEUE)

            async def purged() -> bool:
                await client.store.purge_expired()  # what each worker does every minute
                return await client.count_workflows(status="completed") == 0

            await eventually(purged, "the closed run to pass the retention and be purged")
            assert (await open_run.describe()).status == "running"


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "99999"])
async def test_a_bad_retention_option_is_refused(store: str, value: str) -> None:
    with pytest.raises(duro.StoreURLError, match="retention_days"):
        async with duro.Client.connect(f"{store}{'&' if '?' in store else '?'}retention_days={value}"):
            pass


@pytest.mark.lmdb_only
async def test_disk_stays_flat_while_workflows_come_and_go(store: str) -> None:
    """LMDB reuses the pages purged runs free: starting and purging in a loop does not grow the file."""
    path = Path(store.removeprefix("lmdb://")) / "data.mdb"
    async with duro.Client.connect(store) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.signal_workflow]):
            sizes = []
            for round_ in range(8):
                for i in range(60):
                    await _finished(client, f"r{round_}-{i}")
                future = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
                while await client.purge(future):
                    pass
                assert client.store.count_runs(ListQuery()) == 0
                sizes.append(os.path.getsize(path))
    # After a warm-up round the file holds its size: freed pages are reused.
    assert max(sizes[2:]) <= sizes[1] * 1.1, sizes


@pytest.mark.lmdb_only
async def test_compact_writes_a_smaller_copy_that_opens_and_works(store: str, tmp_path: Path) -> None:
    async with duro.Client.connect(store) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.signal_workflow]):
            for i in range(150):
                await _finished(client, f"c{i}")
            keep = await client.start_workflow(wfs.signal_workflow, 1, id="kept", task_queue=QUEUE)
            while await client.purge(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)):
                pass
    dest = tmp_path / "compacted"
    # the CLI runs its own event loop: call it off this one
    assert await asyncio.get_running_loop().run_in_executor(
        None, duro_main, ["--store", store, "compact", str(dest)]) == 0
    original = os.path.getsize(Path(store.removeprefix("lmdb://")) / "data.mdb")
    assert os.path.getsize(dest / "data.mdb") < original
    async with duro.Client.connect(f"lmdb://{dest}") as copy:
        async with duro.Worker(copy, task_queue=QUEUE, workflows=[wfs.signal_workflow]):
            handle = copy.get_handle("kept")
            assert (await handle.describe()).run_id == keep.run_id
            await handle.signal("item", "after")
            assert await handle.result() == ["after"]
    assert await asyncio.get_running_loop().run_in_executor(
        None, duro_main, ["--store", store, "compact", str(dest)]) == 1  # not empty: refused
