"""``describe().pending_activities`` and the built-in ``__stack_trace`` query: where a run waits now."""

from __future__ import annotations

import asyncio
from typing import Any

import duro
from tests.waiting import eventually

RELEASE: dict[str, asyncio.Event] = {}


@duro.activity
async def flaky_then_hold(actx: duro.ActivityContext, key: str) -> str:
    if actx.info.attempt < 3:
        raise RuntimeError(f"boom {actx.info.attempt}")
    actx.heartbeat({"progress": 50})
    await RELEASE[key].wait()
    return "held"


@duro.workflow
async def waits_everywhere(ctx: duro.WorkflowContext, key: str) -> list[Any]:
    act = ctx.execute_activity(flaky_then_hold, key, start_to_close_timeout=60,
                               retry_policy=duro.RetryPolicy(initial_interval=0.01, maximum_attempts=5))
    got = await act
    note = await ctx.wait_signal("go")
    return [got, note]


async def test_describe_shows_attempts_last_failure_and_heartbeat_and_the_stack_trace_where_it_waits(
        client: duro.Client) -> None:
    RELEASE["k1"] = asyncio.Event()
    async with duro.Worker(client, task_queue="pend", workflows=[waits_everywhere], activities=[flaky_then_hold]):
        handle = await client.start_workflow(waits_everywhere, "k1", id="pend-1", task_queue="pend")

        async def third_attempt_heartbeat() -> bool:
            acts = (await handle.describe()).pending_activities
            return bool(acts) and acts[0].attempt == 3 and acts[0].last_heartbeat_time is not None

        await eventually(third_attempt_heartbeat, "the third attempt to heartbeat")
        (pa,) = (await handle.describe()).pending_activities
        assert (pa.activity_id, pa.activity_type, pa.task_queue, pa.state) == (1, "flaky_then_hold", "pend", "started")
        assert pa.last_failure == "RuntimeError: boom 2"
        assert pa.heartbeat_details == {"progress": 50}
        assert pa.next_attempt_time is None and pa.scheduled_time.tzinfo is not None

        trace = await handle.query("__stack_trace")
        assert "workflow-main:" in trace and "test_describe_pending.py" in trace and "in waits_everywhere" in trace
        assert "activity 'flaky_then_hold' (seq 1, task queue 'pend')" in trace

        RELEASE["k1"].set()
        await eventually(lambda: _waiting_for_signal(handle), "the workflow to wait for its signal")
        assert (await handle.describe()).pending_activities == []
        await handle.signal("go", "now")
        assert await handle.result() == ["held", "now"]
        assert (await handle.describe()).pending_activities == []


async def _waiting_for_signal(handle: duro.WorkflowHandle) -> bool:
    return "signal 'go'" in await handle.query("__stack_trace")


@duro.workflow
async def own_trace(ctx: duro.WorkflowContext) -> None:
    ctx.set_query_handler("__stack_trace", lambda: "mine")
    await ctx.wait_signal("never")


async def test_a_workflow_may_answer_stack_trace_itself(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="pend", workflows=[own_trace]):
        handle = await client.start_workflow(own_trace, id="pend-2", task_queue="pend")
        assert await handle.query("__stack_trace") == "mine"
        await handle.terminate()
