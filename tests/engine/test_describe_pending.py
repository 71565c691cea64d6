"""``describe().pending_activities`` and the built-in ``__stack_trace`` query: where a run waits now."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

import duro
from tests.test_cli import Cli, cli_process  # noqa: F401 (a fixture: pytest finds it here)
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
        client: duro.Client, cli_process: Cli) -> None:  # noqa: F811 (the fixture imported above)
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

        # The CLI shows the same, as text and as JSON.
        cli = cli_process
        text = await cli("describe", "pend-1")
        assert text.code == 0 and "flaky_then_hold (seq 1), attempt 3, started" in text.out
        assert "last failure: RuntimeError: boom 2" in text.out
        doc = json.loads((await cli("describe", "pend-1", "--json")).out)
        assert [(p["activity_type"], p["attempt"], p["state"], p["last_failure"], p["heartbeat_details"])
                for p in doc["pending_activities"]] == [
            ("flaky_then_hold", 3, "started", "RuntimeError: boom 2", {"progress": 50})]

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


async def test_each_failed_attempt_is_logged_with_its_number(client: duro.Client,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="duro.worker")
    RELEASE["k2"] = asyncio.Event()
    RELEASE["k2"].set()
    async with duro.Worker(client, task_queue="pend", workflows=[waits_everywhere], activities=[flaky_then_hold]):
        handle = await client.start_workflow(waits_everywhere, "k2", id="pend-3", task_queue="pend")
        await eventually(lambda: _waiting_for_signal(handle), "the activity to succeed on attempt 3")
        await handle.terminate()
    lines = [r.getMessage() for r in caplog.records if "flaky_then_hold" in r.getMessage()]
    assert [("attempt 1: RuntimeError: boom 1" in m, "attempt 2: RuntimeError: boom 2" in m) for m in lines] == [
        (True, False), (False, True)]
    assert all("'pend-3'" in m and m.endswith("retrying") for m in lines)
