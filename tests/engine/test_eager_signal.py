"""A signal to a run a worker of this process holds idle in memory is committed with the workflow task
it wakes (one commit); whenever that cannot be done the signal goes the ordinary way, and nothing
is lost, doubled or reordered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import duro
from tests.engine import signal_wfs as s
from tests.waiting import eventually

QUEUE = s.QUEUE


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=QUEUE, workflows=s.WORKFLOWS, activities=[s.double]) as w:
        yield w


async def _types(handle: duro.WorkflowHandle) -> list[str]:
    return [e.event_type for e in await handle.fetch_history()]


async def test_a_signal_to_a_parked_workflow_is_committed_with_the_task_it_wakes(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(s.parked, id="eager", task_queue=QUEUE)
    tasks = worker.stats["workflow_tasks"]
    await handle.signal("go", {"by": "alice"})
    assert worker.stats["eager_signals"] == 1
    assert worker.stats["workflow_tasks"] == tasks + 1
    assert await handle.result() == {"by": "alice"}
    # The signal, then the marker of the task that processed it and the close, with nothing between.
    assert (await _types(handle))[-3:] == ["WorkflowExecutionSignaled", "WorkflowTaskCompleted",
                                           "WorkflowExecutionCompleted"]
    await duro.testing.Replayer(workflows=[s.parked]).replay(await handle.fetch_history())


async def test_concurrent_signals_to_one_run_all_arrive_in_the_order_sent(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(s.collects, 20, id="many", task_queue=QUEUE)
    await asyncio.gather(*(handle.signal("add", i) for i in range(20)))  # the first goes eagerly
    assert await handle.result() == list(range(20))
    assert (await _types(handle)).count("WorkflowExecutionSignaled") == 20


async def test_a_signal_whose_eager_task_raises_is_recorded_and_its_task_runs_again(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(s.fails_once_on_signal, id="fails-once", task_queue=QUEUE)
    s.FAIL_ONCE["armed"] = True
    try:
        await handle.signal("go", 7)  # acknowledged: recorded the ordinary way
        assert worker.stats["eager_signals"] == 0
        assert await handle.result(timeout=20) == 7
    finally:
        s.FAIL_ONCE["armed"] = False
    assert (await _types(handle)).count("WorkflowExecutionSignaled") == 1


async def test_local_activities_after_a_signal_run_in_the_ordinary_task(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(s.local_after_signal, id="local", task_queue=QUEUE)
    await handle.signal("go", 21)
    assert worker.stats["eager_signals"] == 0  # not inside signal(), before the signal is durable
    assert await handle.result(timeout=20) == 42
    assert (await _types(handle)).count("WorkflowExecutionSignaled") == 1


async def test_a_signal_from_the_start_handle_follows_continue_as_new(
        client: duro.Client, worker: duro.Worker) -> None:
    first = await client.start_workflow(s.parks_in_second_run, 0, id="follows", task_queue=QUEUE)
    latest = client.get_handle("follows")

    async def second_run() -> bool:
        return (await latest.describe()).run_id != first.run_id

    await eventually(second_run, "the second run")
    await first.signal("go", "to the second run")
    assert await first.result(timeout=20) == "to the second run"


@pytest.mark.parametrize("action", ["cancel", "terminate"])
async def test_cancel_and_terminate_from_the_start_handle_follow_continue_as_new(
        client: duro.Client, worker: duro.Worker, action: str) -> None:
    first = await client.start_workflow(s.parks_in_second_run, 0, id=f"follows-{action}", task_queue=QUEUE)
    latest = client.get_handle(f"follows-{action}")

    async def second_run() -> str | None:
        run_id = (await latest.describe()).run_id
        return run_id if run_id != first.run_id else None

    second = await eventually(second_run, "the second run")
    await (first.cancel() if action == "cancel" else first.terminate("stop"))
    closed = await eventually(lambda: _closed(client.get_handle(f"follows-{action}", second)), "the second run")
    assert closed == ("canceled" if action == "cancel" else "terminated")
    # The first run is left as it was: continued as new.
    assert (await client.get_handle(f"follows-{action}", first.run_id).describe()).status == "continued_as_new"
    # A handle pinned to a closed run does not follow: the store's refusal says which run and why.
    with pytest.raises(duro.WorkflowClosedError, match="continued_as_new") as refused:
        await client.get_handle(f"follows-{action}", first.run_id).cancel()
    assert refused.value.status == "continued_as_new" and refused.value.run_id == first.run_id


async def _closed(handle: duro.WorkflowHandle) -> str | None:
    status = (await handle.describe()).status
    return None if status == "running" else status


async def test_a_signal_to_a_run_held_by_no_worker_here_goes_the_ordinary_way(client: duro.Client) -> None:
    handle = await client.start_workflow(s.parked, id="no-worker", task_queue=QUEUE)
    await handle.signal("go", 1)
    async with duro.Worker(client, task_queue=QUEUE, workflows=s.WORKFLOWS) as w:
        assert await handle.result(timeout=20) == 1
        assert w.stats["eager_signals"] == 0


async def test_a_signal_to_a_closed_run_still_fails(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(s.parked, id="closed", task_queue=QUEUE)
    await handle.signal("go", 1)
    assert await handle.result() == 1
    with pytest.raises(duro.WorkflowClosedError, match="completed") as closed:
        await handle.signal("go", 2)
    assert (closed.value.workflow_id, closed.value.run_id, closed.value.status) == ("closed", handle.run_id,
                                                                                   "completed")
    # The other operations on a closed run say the same, by the same type, and write nothing.
    for refused in (handle.cancel, lambda: handle.terminate("late"), lambda: handle.execute_update("anything")):
        with pytest.raises(duro.WorkflowClosedError, match="completed"):
            await refused()
    assert [e.event_type for e in await handle.fetch_history()][-1] == "WorkflowExecutionCompleted"
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("closed", run_id="0" * 32).signal("go", 3)
