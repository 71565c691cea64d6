"""Start options on each store: id conflict policies, signal-with-start, and external workflow handles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

import duro
from tests.engine import features_wfs, wfs
from tests.waiting import eventually

QUEUE = "start-options"


@duro.workflow
async def pinger(ctx: duro.WorkflowContext, target: str, cancel: bool) -> str:
    """Signals (or cancels) another workflow by id, twice if it can: replay must not send them again."""
    ext = ctx.get_external_workflow_handle(target)
    if cancel:
        await ext.cancel()
        return "cancel sent"
    await ext.signal("item", {"from": ctx.info.workflow_id})
    await ctx.sleep(0.01)  # a second workflow task: the signal above is replayed, not re-sent
    await ext.signal("item", "second")
    return "sent"


@duro.workflow
async def bad_external(ctx: duro.WorkflowContext, run_id: Any) -> str:
    try:
        ctx.get_external_workflow_handle("target", run_id)
    except ValueError as e:
        return str(e)
    return "accepted"


@duro.workflow
async def cancellable(ctx: duro.WorkflowContext) -> str:
    try:
        await ctx.wait_signal("never")
    except asyncio.CancelledError:
        return "cancelled"
    return "signalled"


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.signal_workflow, pinger, cancellable, bad_external,
                                                               features_wfs.queried],
                           activities=[features_wfs.note],
                           max_cached_workflows=1) as w:  # a tiny cache: tasks replay, so a re-sent command would show
        yield w


async def _signals(handle: duro.WorkflowHandle) -> list[Any]:
    return [e.payload for e in await handle.fetch_history() if e.event_type == "WorkflowExecutionSignaled"]


async def test_a_conflicting_start_fails_by_default_and_changes_nothing(client: duro.Client) -> None:
    first = await client.start_workflow(wfs.signal_workflow, 1, id="c1", task_queue=QUEUE)
    with pytest.raises(duro.WorkflowAlreadyStartedError):
        await client.start_workflow(wfs.signal_workflow, 1, id="c1", task_queue=QUEUE, id_conflict_policy="fail")
    assert (await client.get_handle("c1").describe()).run_id == first.run_id


async def test_use_existing_returns_a_handle_on_the_open_run(client: duro.Client, worker: duro.Worker) -> None:
    first = await client.start_workflow(wfs.signal_workflow, 1, id="c2", task_queue=QUEUE)
    second = await client.start_workflow(wfs.signal_workflow, 1, id="c2", task_queue=QUEUE,
                                         id_conflict_policy="use_existing")
    assert second.run_id == first.run_id
    await second.signal("item", "x")
    assert await first.result() == ["x"]


async def test_terminate_existing_replaces_the_open_run(client: duro.Client, worker: duro.Worker) -> None:
    first = await client.start_workflow(wfs.signal_workflow, 1, id="c3", task_queue=QUEUE)
    second = await client.start_workflow(wfs.signal_workflow, 1, id="c3", task_queue=QUEUE,
                                         id_conflict_policy="terminate_existing")
    assert second.run_id != first.run_id
    assert (await client.get_handle("c3", run_id=first.run_id).describe()).status == "terminated"
    await second.signal("item", "y")
    assert await second.result() == ["y"]


async def test_signal_with_start_starts_or_signals(client: duro.Client, worker: duro.Worker) -> None:
    # No run yet: started, and its first task sees the signal.
    h = await client.start_workflow(wfs.signal_workflow, 2, id="sws", task_queue=QUEUE,
                                    start_signal="item", start_signal_args=[{"n": 1}])
    history = [e.event_type for e in await h.fetch_history()]
    assert history[:2] == ["WorkflowExecutionStarted", "WorkflowExecutionSignaled"]
    # Running: the same call signals it (use_existing is the default with a start signal).
    again = await client.start_workflow(wfs.signal_workflow, 2, id="sws", task_queue=QUEUE,
                                        start_signal="item", start_signal_args=[{"n": 2}])
    assert again.run_id == h.run_id
    assert await h.result() == [{"n": 1}, {"n": 2}]


async def test_external_handles_signal_and_cancel_any_workflow(client: duro.Client, worker: duro.Worker) -> None:
    target = await client.start_workflow(wfs.signal_workflow, 2, id="target", task_queue=QUEUE)
    sender = await client.start_workflow(pinger, "target", False, id="sender", task_queue=QUEUE)
    assert await sender.result() == "sent"
    assert await target.result() == [{"from": "sender"}, "second"]
    assert len(await _signals(target)) == 2  # exactly once each, although the sender replayed every task
    victim = await client.start_workflow(cancellable, id="victim", task_queue=QUEUE)

    async def waiting() -> bool:
        return any(e.event_type == "WorkflowTaskCompleted" for e in await victim.fetch_history())

    await eventually(waiting, "the victim to wait for its signal")
    assert await (await client.start_workflow(pinger, "victim", True, id="canceller",
                                              task_queue=QUEUE)).result() == "cancel sent"
    assert await victim.result() == "cancelled"
    # A target that is not open does not stop the sender.
    assert await (await client.start_workflow(pinger, "nobody", False, id="lonely",
                                              task_queue=QUEUE)).result() == "sent"


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"id_conflict_policy": "replace"}, ValueError, "id_conflict_policy must be one of"),
    ({"start_signal_args": [1]}, ValueError, "start_signal_args given without start_signal"),
    ({"start_signal": ""}, ValueError, "start_signal"),
    ({"start_signal": "s", "start_signal_args": "abc"}, TypeError, "start_signal_args must be a list"),
    ({"start_signal": "s", "start_signal_args": [float("nan")]}, ValueError, "NaN"),
])
async def test_bad_start_options_are_refused_and_nothing_is_stored(client: duro.Client, kwargs: dict[str, Any],
                                                                   error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        await client.start_workflow(wfs.signal_workflow, 1, id="bad", task_queue=QUEUE, **kwargs)
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("bad").describe()


async def test_update_with_start_starts_once_and_updates_each_time(client: duro.Client, worker: duro.Worker) -> None:
    assert await client.execute_update_with_start(features_wfs.queried, id="uws", task_queue=QUEUE,
                                                  update="add", update_args=["a"]) == 1
    assert await client.execute_update_with_start(features_wfs.queried, id="uws", task_queue=QUEUE,
                                                  update="add", update_args=["b"]) == 2
    history = [e.event_type for e in await client.get_handle("uws").fetch_history()]
    assert history.count("WorkflowExecutionStarted") == 1
    with pytest.raises(duro.ApplicationError, match="empty items are rejected"):
        await client.execute_update_with_start(features_wfs.queried, id="uws", task_queue=QUEUE,
                                               update="add", update_args=[""])
    with pytest.raises(TypeError, match="update_args must be a list"):
        await client.execute_update_with_start(features_wfs.queried, id="uws", task_queue=QUEUE,
                                               update="add", update_args="c")
    await client.get_handle("uws").signal("add", "stop")
    assert await client.get_handle("uws").result() == ["a", "b", "stop"]


@pytest.mark.parametrize("run_id", ["nope", 7, "ab" * 15])
async def test_an_external_handle_refuses_a_run_id_that_is_not_one(client: duro.Client, worker: duro.Worker,
                                                                   run_id: Any) -> None:
    h = await client.start_workflow(bad_external, run_id, id=f"bad-ext-{run_id!r}", task_queue=QUEUE)
    assert "run_id must be a run id (32 hex digits" in await h.result()
