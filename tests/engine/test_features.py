"""Cancellation, child workflows, continue-as-new, queries, updates, versioning and timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import duro
import duro._query
from tests.engine import features_wfs as f
from tests.waiting import eventually


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    f.EVENTS.clear()
    async with duro.Worker(client, task_queue="f", workflows=f.WORKFLOWS, activities=f.ACTIVITIES) as w:
        yield w


async def _status(handle: duro.WorkflowHandle) -> str:
    return (await handle.describe()).status


async def test_cancel_reaches_the_workflow_and_its_activity(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.cancellable, id="cancel-1", task_queue="f")
    await asyncio.sleep(0.2)  # the activity is heartbeating
    await handle.cancel()
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=10)
    assert isinstance(info.value.__cause__, duro.CancelledError)
    assert await _status(handle) == "canceled"
    assert "cleanup ran" in f.EVENTS
    for _ in range(100):
        if "activity saw cancel" in f.EVENTS:
            break
        await asyncio.sleep(0.02)
    assert "activity saw cancel" in f.EVENTS
    history = [e.event_type for e in await handle.fetch_history()]
    assert "WorkflowExecutionCancelRequested" in history and "ActivityTaskCancelRequested" in history
    await duro.testing.Replayer(workflows=[f.cancellable]).replay(await handle.fetch_history())


async def test_caught_cancel_and_shield(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.shielded, id="shield-1", task_queue="f")
    await asyncio.sleep(0.1)
    await handle.cancel()
    assert await handle.result(timeout=10) == "caught cancel, finished normally"
    history = [e.event_type for e in await handle.fetch_history()]
    assert "TimerCanceled" in history  # the cancelled sleep dropped its durable timer


async def test_cancel_or_terminate_closed_workflow_is_an_error(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.sleeper, 0.0, id="closed-1", task_queue="f")
    assert await handle.result(timeout=10) == "woke"
    with pytest.raises(duro.DuroError, match="already completed"):
        await handle.cancel()
    with pytest.raises(duro.DuroError, match="already completed"):
        await handle.terminate()


async def test_child_workflows(client: duro.Client, worker: duro.Worker) -> None:
    assert await client.execute_workflow(f.parent, 3, id="p1", task_queue="f") == [0, 2, 4]
    kid = await client.get_handle("p1-c2").describe()
    assert kid.status == "completed" and kid.workflow_type == "child"
    assert await client.execute_workflow(f.signalling_parent, id="p2", task_queue="f") == "got hello"
    out = await client.execute_workflow(f.failing_child_parent, id="p3", task_queue="f")
    assert out.startswith("child failed:") and "already running" in out
    assert await _status(client.get_handle("p3-dup")) == "terminated"  # parent closed: policy TERMINATE
    history = await client.get_handle("p2").fetch_history()
    await duro.testing.Replayer(workflows=[f.signalling_parent]).replay(history)


@pytest.mark.parametrize(("policy", "status"), [("terminate", "terminated"), ("abandon", "running"),
                                                ("request_cancel", "canceled")])
async def test_parent_close_policy(client: duro.Client, worker: duro.Worker, policy: str, status: str) -> None:
    await client.execute_workflow(f.abandoning_parent, policy, id=f"pc-{policy}", task_queue="f")
    kid = client.get_handle(f"pc-{policy}-kid")
    for _ in range(100):
        if await _status(kid) == status:
            break
        await asyncio.sleep(0.02)
    assert await _status(kid) == status
    if policy == "request_cancel":  # the request names its cause and the parent's run
        parent_run = (await client.get_handle(f"pc-{policy}").describe()).run_id
        [asked] = [e.data() for e in await kid.fetch_history() if e.event_type == "WorkflowExecutionCancelRequested"]
        parent = {"workflow_id": f"pc-{policy}", "run_id": parent_run}
        assert asked == {"cause": "parent_closed", "requested_by": parent}
    if status == "running":
        await kid.signal("go", 1)
        assert await kid.result(timeout=10) == "got 1"


async def test_continue_as_new_follows_to_the_last_run(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.counter, 0, 3, id="can", task_queue="f")
    assert await handle.result(timeout=10) == 3
    assert f.EVENTS.count("run 0") == 1 and "run 3" in f.EVENTS
    latest = await client.get_handle("can").describe()
    assert latest.status == "completed" and latest.run_id != handle.run_id and latest.history_length < 10
    first = await client.get_handle("can", run_id=handle.run_id).describe()
    assert first.status == "continued_as_new"
    with pytest.raises(duro.WorkflowFailedError):  # a handle pinned to the first run does not follow
        await client.get_handle("can", run_id=handle.run_id).result()


async def test_queries_live_and_by_replay(client: duro.Client, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The last query waits for a worker of another process that never answers: a second, not ten.
    monkeypatch.setattr(duro._query, "REMOTE_TIMEOUT_S", 1.0)
    async with duro.Worker(client, task_queue="f", workflows=f.WORKFLOWS, activities=f.ACTIVITIES):
        handle = await client.start_workflow(f.queried, id="q1", task_queue="f")
        await handle.signal("add", "a")
        await handle.signal("add", "b")

        async def both_seen() -> bool:
            return bool(await handle.query("items") == ["a", "b"])

        await eventually(both_seen, "the query to see both signals")
        assert await handle.query("count_plus", 10) == 12
        with pytest.raises(duro.DuroError, match="no query handler 'nope'"):
            await handle.query("nope")
        before = len(await handle.fetch_history())
    # No worker now: this process replays the history to answer (it has the code).
    offline = client.get_handle("q1", workflow=f.queried)
    assert await offline.query("items") == ["a", "b"]
    assert len(await handle.fetch_history()) == before  # queries never write
    with pytest.raises(duro.DuroError, match="does not have the code"):
        await client.get_handle("q1").query("items")


async def test_updates(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.queried, id="u1", task_queue="f")
    assert await handle.execute_update("add", "x") == 1
    before = len(await handle.fetch_history())
    with pytest.raises(duro.ApplicationError, match="empty items are rejected"):
        await handle.execute_update("add", "")
    assert len(await handle.fetch_history()) == before  # rejected: nothing written
    assert await handle.execute_update("add", "y") == 2
    assert await handle.query("items") == ["x", "y"]
    types = [e.event_type for e in await handle.fetch_history()]
    assert types.count("WorkflowExecutionUpdateAccepted") == 2 and types.count("WorkflowExecutionUpdateCompleted") == 2
    await handle.signal("add", "stop")
    assert await handle.result(timeout=10) == ["x", "y", "stop"]
    await duro.testing.Replayer(workflows=[f.queried]).replay(await handle.fetch_history())


async def test_versioning_with_patched(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="f", workflows=[f.versioned_before], activities=f.ACTIVITIES):
        old = await client.execute_workflow(f.versioned_before, id="v-old", task_queue="f")
    assert old == "old"
    old_history = await client.get_handle("v-old").fetch_history()
    async with duro.Worker(client, task_queue="f", workflows=[f.versioned], activities=f.ACTIVITIES):
        assert await client.execute_workflow(f.versioned, id="v-new", task_queue="f") == "new"
    new_history = await client.get_handle("v-new").fetch_history()
    replayer = duro.testing.Replayer(workflows=[f.versioned])
    await replayer.replay(old_history)  # the old run replays on the new code: patched() is False there
    await replayer.replay(new_history)
    assert any(e.event_type == "MarkerRecorded" and e.name == "use-new-greeting" for e in new_history)


async def test_execution_timeout(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.sleeper, 3600.0, id="to-1", task_queue="f", execution_timeout=0.2)
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=10)
    assert isinstance(info.value.__cause__, duro.TimeoutError)
    assert await _status(handle) == "timed_out"


async def test_timers_inside_asyncio_helpers(client: duro.Client, worker: duro.Worker) -> None:
    assert await client.execute_workflow(f.condition_timeout, id="ct", task_queue="f") == "timed out"
    assert await client.execute_workflow(f.timer_race, id="tr", task_queue="f") == "activity won"
    history = [e.event_type for e in await client.get_handle("tr").fetch_history()]
    assert "TimerCanceled" in history


@pytest.mark.parametrize(("policy", "first_fails", "allowed"), [
    ("allow_duplicate", False, True), ("allow_duplicate_failed_only", False, False),
    ("allow_duplicate_failed_only", True, True), ("reject_duplicate", False, False)])
async def test_id_reuse_policy(client: duro.Client, worker: duro.Worker, policy: str, first_fails: bool,
                               allowed: bool) -> None:
    wid = f"reuse-{policy}-{first_fails}"
    first = await client.start_workflow(f.sleeper, 3600.0 if first_fails else 0.0, id=wid, task_queue="f")
    if first_fails:
        await client.get_handle(wid).terminate("make it fail")
    else:
        await first.result(timeout=10)
    if allowed:
        again = await client.start_workflow(f.sleeper, 0.0, id=wid, task_queue="f", id_reuse_policy=policy)
        assert await again.result(timeout=10) == "woke"
    else:
        with pytest.raises(duro.WorkflowAlreadyStartedError):
            await client.start_workflow(f.sleeper, 0.0, id=wid, task_queue="f", id_reuse_policy=policy)


async def test_handler_arguments_arrive_as_their_annotated_types(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.typed_handlers, id="typed", task_queue="f")
    await handle.signal("item", f.Item("apple", 2))
    await handle.signal("item", f.Item("pear", 1))
    assert await handle.result(timeout=10) == ["applex2", "pearx1"]


async def test_start_handle_follows_continue_as_new(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(f.counter, 0, 2, id="can-follow", task_queue="f")
    assert await handle.result(timeout=10) == 2
    desc = await handle.describe()  # the latest run, not the first one
    assert desc.status == "completed" and desc.run_id != handle.run_id
