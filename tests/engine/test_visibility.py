"""Visibility on each store: search attributes and memo, list_workflows filters and pages, count_workflows."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest

import duro
from duro.stores.base import ListQuery
from tests.engine import features_wfs, wfs
from tests.waiting import eventually

QUEUE = "visibility"


@duro.workflow
async def staged(ctx: duro.WorkflowContext, stages: list[str]) -> str:
    """Moves through stages, recording each in a search attribute; waits for a signal at the end."""
    for stage in stages:
        ctx.upsert_search_attributes({"stage": stage})
        await ctx.sleep(0.001)  # a workflow task per stage
    ctx.upsert_search_attributes({"temporary": None, "done": True})
    await ctx.wait_signal("finish")
    return ctx.info.workflow_id


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=QUEUE, workflows=[staged, wfs.signal_workflow],
                           max_cached_workflows=1) as w:  # evictions: tasks replay the upserts
        yield w


async def test_search_attributes_and_memo_at_start_and_by_the_workflow(client: duro.Client,
                                                                       worker: duro.Worker) -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    handle = await client.start_workflow(
        staged, ["packed", "shipped"], id="v1", task_queue=QUEUE,
        search_attributes={"customer": "alice", "amount": 5, "vip": True, "score": 1.5, "temporary": "x",
                           "due": when},
        memo={"note": "vip", "items": [1, 2]})

    async def done() -> bool:
        return bool((await handle.describe()).search_attributes.get("done"))

    await eventually(done, "the workflow to record its last stage")
    desc = await handle.describe()
    assert desc.search_attributes == {"customer": "alice", "amount": 5, "vip": True, "score": 1.5,
                                      "stage": "shipped", "done": True, "due": when.isoformat()}
    assert desc.memo == {"note": "vip", "items": [1, 2]}
    found = await client.list_workflows(search_attributes={"stage": "shipped", "customer": "alice"})
    assert [w.workflow_id for w in found] == ["v1"]
    assert [w.workflow_id for w in await client.list_workflows(search_attributes={"due": when})] == ["v1"]
    assert await client.list_workflows(search_attributes={"stage": "packed"}) == []
    assert await client.list_workflows(search_attributes={"amount": "5"}) == []  # 5 is not "5"
    assert await client.list_workflows(search_attributes={"temporary": "x"}) == []  # removed
    history = await handle.fetch_history()
    markers = [e for e in history if e.event_type == "MarkerRecorded" and e.name == "duro:search_attributes"]
    assert len(markers) == 3  # once each, although the tasks replayed
    await handle.signal("finish")
    assert await handle.result() == "v1"
    closed = await client.list_workflows(status="completed", search_attributes={"done": True})
    assert [w.workflow_id for w in closed] == ["v1"] and closed[0].memo == {"note": "vip", "items": [1, 2]}


async def test_filters_newest_first_pages_and_counts(client: duro.Client) -> None:
    started: list[tuple[str, datetime.datetime]] = []
    for i in range(7):
        h = await client.start_workflow(wfs.signal_workflow, 1, id=f"w{i}", task_queue=QUEUE,
                                        search_attributes={"parity": i % 2, "group": "g"})
        started.append((h.id, (await h.describe()).start_time))
        if i in (0, 3):
            await client.get_handle(h.id).terminate("done")
    newest_first = [wid for wid, _ in sorted(started, key=lambda x: (-x[1].timestamp(), x[0]))]
    everything = await client.list_workflows(limit=100)
    assert [w.workflow_id for w in everything] == newest_first
    assert everything.next_page_token is None
    # Pages of 3 go through all of them, in order, once.
    seen: list[str] = []
    token: str | None = None
    while True:
        page = await client.list_workflows(limit=3, page_token=token)
        seen += [w.workflow_id for w in page]
        token = page.next_page_token
        if token is None:
            break
    assert seen == newest_first
    odd = await client.list_workflows(search_attributes={"parity": 1, "group": "g"})
    assert sorted(w.workflow_id for w in odd) == ["w1", "w3", "w5"]
    assert await client.count_workflows(search_attributes={"parity": 1}) == 3
    assert await client.count_workflows(status="terminated") == 2
    assert await client.count_workflows(status="running", search_attributes={"parity": 0}) == 3
    assert await client.count_workflows(workflow_type="signal_workflow") == 7
    assert await client.count_workflows(workflow_type="staged") == 0
    middle = started[3][1]
    after = await client.list_workflows(started_after=middle)
    assert {w.workflow_id for w in after} == {wid for wid, t in started if t > middle}
    before = await client.list_workflows(started_before=middle.timestamp())
    assert {w.workflow_id for w in before} == {wid for wid, t in started if t < middle}
    assert await client.count_workflows(started_after=middle, started_before=middle) == 0


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"search_attributes": {"tags": ["a"]}}, TypeError, "type list is not supported"),
    ({"search_attributes": {"n": float("nan")}}, ValueError, "not a finite number"),
    ({"search_attributes": {"": 1}}, ValueError, "search attribute name"),
    ({"search_attributes": {"t": datetime.datetime(2026, 1, 1)}}, ValueError, "timezone-aware"),
    ({"search_attributes": {"s": "x" * 3000}}, ValueError, "at most 2048 bytes"),
    ({"search_attributes": ["a"]}, TypeError, "must be a dict"),
    ({"memo": {"x": object()}}, TypeError, "JSON-encodable"),
    ({"memo": "note"}, TypeError, "memo must be a dict"),
])
async def test_bad_search_attributes_and_memos_are_refused_and_nothing_is_stored(
        client: duro.Client, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        await client.start_workflow(wfs.signal_workflow, 1, id="bad", task_queue=QUEUE, **kwargs)
    assert await client.count_workflows() == 0


async def test_bad_list_arguments_are_refused(client: duro.Client) -> None:
    with pytest.raises(ValueError, match="page_token is not one"):
        await client.list_workflows(page_token="zz")
    with pytest.raises(ValueError, match="unknown status"):
        await client.count_workflows(status="done")
    with pytest.raises(ValueError, match="timezone-aware"):
        await client.list_workflows(started_after=datetime.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="epoch seconds"):
        await client.list_workflows(started_before="yesterday")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not supported"):
        await client.list_workflows(search_attributes={"k": {"a": 1}})


async def test_continue_as_new_keeps_search_attributes_and_memo(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue=QUEUE, workflows=[features_wfs.counter], activities=[features_wfs.note]):
        handle = await client.start_workflow(features_wfs.counter, 0, 3, id="can", task_queue=QUEUE,
                                             search_attributes={"k": "v"}, memo={"m": 1})
        await asyncio.wait_for(handle.result(), 20)
        desc = await client.get_handle("can").describe()
        assert desc.run_id != handle.run_id and desc.search_attributes == {"k": "v"} and desc.memo == {"m": 1}


@pytest.mark.lmdb_only
async def test_an_lmdb_store_without_the_index_is_indexed_when_opened(store: str) -> None:
    from duro.stores.lmdb import LmdbStore
    async with duro.Client.connect(store) as client:
        for i in range(3):
            await client.start_workflow(wfs.signal_workflow, 1, id=f"old{i}", task_queue=QUEUE,
                                        search_attributes={"i": i})
        lmdb = client.store
        assert isinstance(lmdb, LmdbStore)

        def wipe(txn: Any, batch: Any) -> None:  # as a store written before the index existed
            for key in list(txn.cursor(db=lmdb.dbs.vis).iternext(values=False)):
                txn.delete(key, db=lmdb.dbs.vis)

        await lmdb.apply(wipe)
        assert lmdb.count_runs(ListQuery()) == 0
    async with duro.Client.connect(store) as client:
        assert await client.count_workflows() == 3
        assert [w.workflow_id for w in await client.list_workflows(search_attributes={"i": 1})] == ["old1"]
