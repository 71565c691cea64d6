"""End-to-end behaviour of workflows on a real store (each store through the ``store`` fixture)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator

import pytest

import duro
from tests.engine import wfs
from tests.engine.wfs import Order, Receipt
from tests.waiting import task_failure


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue="t", workflows=wfs.ALL_WORKFLOWS,
                           activities=wfs.ALL_ACTIVITIES) as w:
        yield w


async def test_order_workflow_end_to_end(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.order_workflow, Order("A1", 5), id="order-A1", task_queue="t")
    await handle.signal("approve", {"by": "alice"})
    receipt = await handle.result()
    assert receipt == Receipt(order_id="A1", tracking="T-A1", charged=5)
    desc = await handle.describe()
    assert desc.status == "completed" and desc.workflow_type == "order_workflow"
    history = await handle.fetch_history()
    types = [e.event_type for e in history]
    assert types[0] == "WorkflowExecutionStarted" and types[-1] == "WorkflowExecutionCompleted"
    assert [e.name for e in history if e.event_type == "ActivityTaskScheduled"] == ["validate", "reserve", "charge",
                                                                                   "ship"]
    assert types.count("WorkflowExecutionSignaled") == 1
    again = duro.History.from_json(history.to_json())
    assert [e.event_id for e in again] == [e.event_id for e in history]
    assert [e.payload for e in again] == [e.payload for e in history]
    await duro.testing.Replayer(workflows=[wfs.order_workflow]).replay(again)


async def test_invalid_order_fails_with_application_error(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.order_workflow, Order("A2", 0), id="order-A2", task_queue="t")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    cause = info.value.__cause__
    assert isinstance(cause, duro.ApplicationError) and cause.type == "ValidationError" and cause.non_retryable


async def test_result_by_registered_name_and_handle(client: duro.Client, worker: duro.Worker) -> None:
    await client.start_workflow("signal_workflow", 2, id="by-name", task_queue="t")
    handle = client.get_handle("by-name")
    await handle.signal("item", "a")
    await handle.signal("item", {"b": 2})
    assert await handle.result() == ["a", {"b": 2}]


async def test_signals_before_first_task_are_kept_in_order(client: duro.Client) -> None:
    handle = await client.start_workflow(wfs.signal_workflow, 3, id="early", task_queue="t")
    for i in range(3):
        await handle.signal("item", i)
    async with duro.Worker(client, task_queue="t", workflows=[wfs.signal_workflow]):
        assert await handle.result() == [0, 1, 2]


async def test_signal_handler_and_wait_condition(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.handler_workflow, id="h", task_queue="t")
    for x in ("x", "y", "z"):
        await handle.signal("add", x)
    assert await handle.result() == ["x", "y", "z"]


async def test_signal_to_closed_workflow_is_an_error(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.signal_workflow, 0, id="closed", task_queue="t")
    assert await handle.result() == []
    with pytest.raises(duro.DuroError, match="completed"):
        await handle.signal("item", 1)


async def test_durable_timers_and_deterministic_context(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.timer_workflow, 0.05, id="timer", task_queue="t")
    out = await handle.result(timeout=10)
    assert out["elapsed"] >= 0.1
    history = await handle.fetch_history()
    assert sum(1 for e in history if e.event_type == "TimerFired") == 2
    await duro.testing.Replayer(workflows=[wfs.timer_workflow]).replay(history)


async def test_timer_due_while_no_worker_fires_on_start(client: duro.Client) -> None:
    handle = await client.start_workflow(wfs.timer_workflow, 0.05, id="late-timer", task_queue="t")
    async with duro.Worker(client, task_queue="t", workflows=[wfs.timer_workflow]):
        await asyncio.sleep(0.02)  # first task runs, first timer is stored
    await asyncio.sleep(0.2)  # the timer comes due with no worker running
    async with duro.Worker(client, task_queue="t", workflows=[wfs.timer_workflow]):
        out = await handle.result(timeout=10)
    assert out["elapsed"] >= 0.1


@pytest.mark.parametrize(("fail_times", "max_attempts", "non_retryable", "expected"), [
    (2, 5, False, 3),
    (5, 3, False, None),
    (1, 5, True, None),
])
async def test_activity_retries(client: duro.Client, worker: duro.Worker, fail_times: int, max_attempts: int,
                                non_retryable: bool, expected: int | None) -> None:
    handle = await client.start_workflow(wfs.retry_workflow, fail_times, max_attempts, non_retryable,
                                         id=f"retry-{fail_times}-{max_attempts}-{non_retryable}", task_queue="t")
    if expected is not None:
        assert await handle.result(timeout=10) == expected
        return
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=10)
    act = info.value.__cause__
    assert isinstance(act, duro.ActivityError)
    assert act.attempt == (1 if non_retryable else max_attempts)
    assert isinstance(act.__cause__, duro.ApplicationError) and act.__cause__.type == "Flaky"


@pytest.mark.parametrize("sync", [False, True])
async def test_start_to_close_timeout_retries_then_fails(client: duro.Client, worker: duro.Worker,
                                                         sync: bool) -> None:
    handle = await client.start_workflow(wfs.timeout_workflow, 5.0, sync, id=f"to-{sync}", task_queue="t")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=10)
    act = info.value.__cause__
    assert isinstance(act, duro.ActivityError) and act.attempt == 2
    assert isinstance(act.__cause__, duro.TimeoutError) and act.__cause__.timeout_type == "start_to_close"


async def test_heartbeat_details_reach_the_activity(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.heartbeat_workflow, 3, id="hb", task_queue="t")
    assert await handle.result(timeout=10) == [1, 0]


@pytest.mark.parametrize("sync", [False, True])
async def test_a_heartbeat_just_before_a_failure_reaches_the_retry(
        client: duro.Client, worker: duro.Worker, sync: bool) -> None:
    # The failure carries the attempt's last details, so the retry sees them whichever write lands first.
    for i in range(5):
        handle = await client.start_workflow(wfs.heartbeat_then_fail_workflow, sync, id=f"hbf-{sync}-{i}",
                                             task_queue="t")
        assert await handle.result(timeout=10) == {"sent by": 1}


async def test_failed_workflow_carries_its_error(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.failing_workflow, id="fail", task_queue="t")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    cause = info.value.__cause__
    assert isinstance(cause, duro.ApplicationError)
    assert (cause.type, cause.details) == ("Boom", {"k": 1})
    assert (await handle.describe()).status == "failed"


async def test_io_inside_workflow_code_is_refused(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.io_workflow, id="io", task_queue="t")
    await asyncio.sleep(0.3)
    desc = await handle.describe()
    assert desc.status == "running"  # the task failed, the run stays open for a fixed deployment
    await handle.terminate("test over")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    assert isinstance(info.value.__cause__, duro.TerminatedError)


async def test_fanout_and_long_history(client: duro.Client, worker: duro.Worker) -> None:
    assert await client.execute_workflow(wfs.fanout_workflow, 100, id="fan", task_queue="t") == sum(range(100))
    assert await client.execute_workflow(wfs.long_workflow, 200, id="long", task_queue="t") == sum(range(200))


async def test_replay_after_cache_eviction(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[wfs.order_workflow], activities=wfs.ALL_ACTIVITIES,
                           max_cached_workflows=1) as w:
        handles = [await client.start_workflow(wfs.order_workflow, Order(f"E{i}", 1), id=f"evict-{i}", task_queue="t")
                   for i in range(5)]
        await asyncio.sleep(0.2)
        for h in handles:
            await h.signal("approve", {"by": "bob"})
        results = [await h.result(timeout=10) for h in handles]
        assert [r.order_id for r in results] == [f"E{i}" for i in range(5)]
        assert w.stats["replays"] > 5


async def test_already_started_and_not_found(client: duro.Client, worker: duro.Worker) -> None:
    await client.start_workflow(wfs.signal_workflow, 1, id="dup", task_queue="t")
    with pytest.raises(duro.WorkflowAlreadyStartedError):
        await client.start_workflow(wfs.signal_workflow, 1, id="dup", task_queue="t")
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("nope").describe()
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("nope").signal("x", 1)


async def test_list_workflows(client: duro.Client, worker: duro.Worker) -> None:
    for i in range(3):
        await client.execute_workflow(wfs.signal_workflow, 0, id=f"list-{i}", task_queue="t")
    await client.start_workflow(wfs.signal_workflow, 1, id="list-open", task_queue="t")
    done = await client.list_workflows(status="completed")
    assert sorted(w.workflow_id for w in done) == ["list-0", "list-1", "list-2"]
    running = await client.list_workflows(status="running", workflow_type="signal_workflow")
    assert [w.workflow_id for w in running] == ["list-open"]
    assert isinstance(running[0].start_time, datetime.datetime)


async def test_bad_input_is_rejected_before_anything_is_stored(client: duro.Client) -> None:
    with pytest.raises(TypeError, match="cannot encode"):
        await client.start_workflow(wfs.signal_workflow, object(), id="bad-arg", task_queue="t")
    with pytest.raises(TypeError, match="do not fit"):
        await client.start_workflow(wfs.signal_workflow, 1, 2, id="bad-arity", task_queue="t")
    with pytest.raises(TypeError, match="not a workflow"):
        await client.start_workflow(print, id="x", task_queue="t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="id_reuse_policy"):
        await client.start_workflow(wfs.signal_workflow, 1, id="x", task_queue="t", id_reuse_policy="sometimes")
    with pytest.raises(ValueError, match="positive"):
        await client.start_workflow(wfs.signal_workflow, 1, id="x", task_queue="t", execution_timeout=-1)
    assert await client.list_workflows() == []


async def test_unregistered_workflow_name_stays_pending(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow("no_such_workflow", id="unknown", task_queue="t")
    with pytest.raises(asyncio.TimeoutError):
        await handle.result(timeout=0.3)
    assert (await handle.describe()).status == "running"


async def test_negative_timeout_in_workflow_fails_its_task_clearly(client: duro.Client) -> None:
    @duro.workflow(name="negative_timeout")
    async def negative(ctx: duro.WorkflowContext) -> None:
        await ctx.execute_activity(wfs.echo, 1, start_to_close_timeout=-1)

    async with duro.Worker(client, task_queue="t", workflows=[negative], activities=[wfs.echo]):
        handle = await client.start_workflow(negative, id="neg", task_queue="t")
        # A ValueError is a bug, not a failure: the task fails (and is retried), the run stays open.
        assert "start_to_close_timeout must be zero or positive" in await task_failure(handle)
        assert (await handle.describe()).status == "running"
        await handle.terminate("fixed elsewhere")
    assert (await handle.describe()).status == "terminated"


def test_worker_and_policy_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="maximum_attempts"):
        duro.RetryPolicy(maximum_attempts=-1)
    with pytest.raises(ValueError, match="backoff_coefficient"):
        duro.RetryPolicy(backoff_coefficient=0.5)
    with pytest.raises(TypeError, match="async def"):
        duro.workflow(lambda ctx: None)


async def test_malformed_store_urls() -> None:
    for url in ("lmdb://", "sqlite:///x.db", "no-scheme", "lmdb:///tmp/x?map_size=big", "lmdb:///tmp/x?color=red"):
        with pytest.raises(duro.StoreURLError):
            async with duro.Client.connect(url):
                pass


async def test_history_longer_than_temporals_cap(client: duro.Client, worker: duro.Worker) -> None:
    # Temporal stops a run at 51,200 events; duro has no cap (and no per-event cost that grows).
    handle = await client.start_workflow(wfs.fanout_rounds, 15, 2000, id="huge", task_queue="t")
    assert await handle.result(timeout=60) == 15 * sum(range(2000))
    history = await handle.fetch_history()
    assert len(history) > 51_200
    await duro.testing.Replayer(workflows=[wfs.fanout_rounds]).replay(history)


async def test_worker_shuts_down_promptly_while_woken(client: duro.Client) -> None:
    worker = duro.Worker(client, task_queue="t", workflows=[wfs.signal_workflow], activities=[wfs.echo])
    await worker.start()
    await asyncio.sleep(0.05)
    for _ in range(3):  # wake-ups racing with the cancellation of the poll loops
        worker._wake_wf.set()
        worker._wake_act.set()
        worker._wake_timer.set()
        worker._on_foreign_request()
    await asyncio.wait_for(worker.shutdown(), 5)


async def test_worker_raises_the_gc_threshold_while_it_runs(client: duro.Client) -> None:
    import gc

    before = gc.get_threshold()
    async with duro.Worker(client, task_queue="t", workflows=[wfs.signal_workflow], gc_threshold=123_456):
        assert gc.get_threshold()[0] == max(before[0], 123_456)
    assert gc.get_threshold() == before
    with pytest.raises(ValueError, match="gc_threshold"):
        duro.Worker(client, task_queue="t", workflows=[wfs.signal_workflow], gc_threshold=0)
