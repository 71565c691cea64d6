"""Where sync activities run: ``Worker(activity_executor=...)`` (a process pool, a given thread pool)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import pickle
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import duro
from duro._process_pool import SHIPPED_DETAILS, ProcessActivityContext, run_in_process
from tests.engine import executor_activities as acts
from tests.waiting import eventually

Q = "executor-q"


@duro.workflow
async def run_where(ctx: duro.WorkflowContext, x: int) -> dict[str, Any]:
    result: dict[str, Any] = await ctx.execute_activity(
        acts.where, x, start_to_close_timeout=30, retry_policy=duro.RetryPolicy(initial_interval=0.05))
    return result


@duro.workflow
async def run_on_the_loop(ctx: duro.WorkflowContext) -> dict[str, Any]:
    result: dict[str, Any] = await ctx.execute_activity(acts.on_the_loop)
    return result


@duro.workflow
async def run_until_cancelled(ctx: duro.WorkflowContext, on_cancel: str) -> str:
    try:
        return str(await ctx.execute_activity(acts.until_cancelled, on_cancel, heartbeat_timeout=10,
                                              cancellation_type="wait_cancellation_completed"))
    except duro.ActivityError as e:
        return f"{type(e.__cause__).__name__}: {e.__cause__}"


@duro.workflow
async def run_named(ctx: duro.WorkflowContext, name: str, arg: Any) -> dict[str, Any]:
    try:
        return {"value": await ctx.execute_activity(name, arg, start_to_close_timeout=30)}
    except duro.ActivityError as e:
        cause = e.__cause__
        return {"attempt": e.attempt, "type": getattr(cause, "type", None), "message": str(cause),
                "non_retryable": getattr(cause, "non_retryable", None)}


WORKFLOWS = [run_where, run_on_the_loop, run_until_cancelled, run_named]


@pytest.fixture(scope="module")
def pool() -> Iterator[concurrent.futures.ProcessPoolExecutor]:
    # "spawn": the test process has threads (the LMDB writer, the thread pool), which fork would copy.
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as p:
        yield p


@pytest.fixture
async def worker(client: duro.Client, pool: concurrent.futures.ProcessPoolExecutor) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activity_executor=pool,
                           activities=[acts.where, acts.until_cancelled, acts.on_the_loop, acts.takes_locked]) as w:
        yield w


async def test_a_sync_activity_runs_in_a_pool_process_and_its_heartbeats_reach_the_worker(
        client: duro.Client, worker: duro.Worker) -> None:
    result = await client.execute_workflow(run_where, 7, id="where", task_queue=Q)
    assert result["pid"] != os.getpid() and result["x"] == 7
    assert result["type"] == "ProcessActivityContext" and result["activity_type"] == "where"
    # The first attempt's heartbeat crossed to the worker and was recorded: the retry reads it.
    assert result["attempt"] == 2 and result["previous"]["attempt"] == 1, result
    handle = client.get_handle("where")
    await duro.testing.Replayer(workflows=WORKFLOWS).replay(await handle.fetch_history())


def test_a_failure_in_the_pool_process_takes_its_last_heartbeat_along() -> None:
    # run_in_process is what the pool's process runs; called here with an in-process queue.
    info = duro.ActivityInfo(activity_id=1, activity_type="where", attempt=1, workflow_id="w", workflow_run_id="r",
                             workflow_type="run_where", task_queue=Q, scheduled_time=0.0, heartbeat_details=None,
                             start_to_close_timeout=None, heartbeat_timeout=None)
    q: queue.Queue[Any] = queue.Queue()
    ctx = ProcessActivityContext(info, "k", q, {})
    with pytest.raises(duro.ApplicationError) as raised:
        run_in_process(acts.where, ctx, (7,))
    details = {"attempt": 1, "pid": os.getpid()}
    assert q.get_nowait() == ("k", details)
    assert pickle.loads(pickle.dumps(raised.value)).__dict__[SHIPPED_DETAILS] == details


def test_a_reraised_exception_object_does_not_carry_an_earlier_attempts_details() -> None:
    info = duro.ActivityInfo(activity_id=1, activity_type="fails", attempt=1, workflow_id="w", workflow_run_id="r",
                             workflow_type="t", task_queue=Q, scheduled_time=0.0, heartbeat_details=None,
                             start_to_close_timeout=None, heartbeat_timeout=None)
    error = duro.ApplicationError("the same object each time")

    def fails(ctx: duro.ActivityContext, beats: list[Any]) -> None:
        for details in beats:
            ctx.heartbeat(details)
        raise error

    q: queue.Queue[Any] = queue.Queue()
    with pytest.raises(duro.ApplicationError):
        run_in_process(fails, ProcessActivityContext(info, "a", q, {}), ([{"n": 1}, None],))
    assert error.__dict__[SHIPPED_DETAILS] == {"n": 1}  # a heartbeat without details keeps the last ones
    with pytest.raises(duro.ApplicationError):
        run_in_process(fails, ProcessActivityContext(info, "b", q, {}), ([],))
    assert SHIPPED_DETAILS not in error.__dict__


async def test_an_async_activity_still_runs_on_the_loop(client: duro.Client, worker: duro.Worker) -> None:
    result = await client.execute_workflow(run_on_the_loop, id="loop", task_queue=Q)
    assert result == {"pid": os.getpid(), "thread": threading.current_thread().name}


@pytest.mark.parametrize(("on_cancel", "expected"), [
    ("raise", "CancelledError: activity 'until_cancelled' was cancelled"),
    ("return", "stopped in process"),
])
async def test_cancellation_reaches_a_pool_process_through_its_heartbeat(
        client: duro.Client, worker: duro.Worker, on_cancel: str, expected: str) -> None:
    handle = await client.start_workflow(run_until_cancelled, on_cancel, id=f"cancel-{on_cancel}", task_queue=Q)

    async def heartbeating() -> bool:
        return any(p.last_heartbeat_time is not None for p in (await handle.describe()).pending_activities)

    await eventually(heartbeating, "the pool process to heartbeat")
    await handle.cancel()
    # "wait_cancellation_completed": the workflow gets the activity's own end.
    result = await handle.result(timeout=30)
    assert result.startswith(expected), result
    if on_cancel == "return":
        assert result.endswith("is_cancelled=True") and f"process {os.getpid()}," not in result, result
    types = [e.event_type for e in await handle.fetch_history()]
    assert ("ActivityTaskCanceled" if on_cancel == "raise" else "ActivityTaskCompleted") in types, types


async def test_what_cannot_be_pickled_fails_the_activity_for_good(
        client: duro.Client, pool: concurrent.futures.ProcessPoolExecutor) -> None:
    @duro.activity
    def local_fn(ctx: duro.ActivityContext, x: int) -> int:
        return x

    async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activity_executor=pool,
                           activities=[local_fn, acts.takes_locked]):
        fn = await client.execute_workflow(run_named, "local_fn", 1, id="unpicklable-fn", task_queue=Q)
        arg = await client.execute_workflow(run_named, "takes_locked", {"name": "x"}, id="unpicklable-arg",
                                            task_queue=Q)
    for got in (fn, arg):
        assert got["type"] == "PicklingError" and got["non_retryable"] is True and got["attempt"] == 1, got
        assert "runs on a process pool" in got["message"], got
    assert "its function" in fn["message"] and "local_fn" in fn["message"], fn
    assert "argument 1 (a Locked)" in arg["message"], arg


async def test_a_given_thread_pool_runs_sync_activities_and_is_left_running(client: duro.Client) -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="mine") as threads:
        async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=[acts.where],
                               activity_executor=threads):
            result = await client.execute_workflow(run_where, 1, id="threads", task_queue=Q)
        assert result["pid"] == os.getpid() and result["thread"].startswith("mine"), result
        assert result["type"] == "ActivityContext"
        assert await asyncio.wrap_future(threads.submit(lambda: "still running")) == "still running"


async def test_the_default_is_the_worker_s_thread_pool(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS, activities=[acts.where]):
        result = await client.execute_workflow(run_where, 1, id="default", task_queue=Q)
    assert result["pid"] == os.getpid() and result["thread"].startswith(f"duro-act-{Q}"), result


async def test_activity_executor_must_be_an_executor(client: duro.Client) -> None:
    with pytest.raises(TypeError, match=r"activity_executor must be a concurrent\.futures\.Executor"):
        duro.Worker(client, task_queue=Q, activities=[acts.where], activity_executor="processes")  # type: ignore[arg-type]
