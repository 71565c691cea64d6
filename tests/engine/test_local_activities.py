"""ctx.execute_local_activity: run in the worker within the workflow task, recorded as a marker, replayed."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import duro
from tests.waiting import eventually

RUNS: Counter[str] = Counter()


@duro.activity
async def lookup(actx: duro.ActivityContext, key: str) -> dict[str, Any]:
    RUNS[f"lookup {key}"] += 1
    return {"key": key, "attempt": actx.info.attempt}


@duro.activity
def shout(actx: duro.ActivityContext, text: str) -> str:  # sync: the worker's thread pool
    RUNS[f"shout {text}"] += 1
    return text.upper()


@duro.activity
async def flaky(actx: duro.ActivityContext, key: str, fail_times: int) -> int:
    RUNS[f"flaky {key}"] += 1
    if actx.info.attempt <= fail_times:
        raise RuntimeError(f"attempt {actx.info.attempt} fails")
    return actx.info.attempt


FAST = duro.RetryPolicy(initial_interval=0.01, maximum_attempts=3)


@duro.workflow
async def uses_locals(ctx: duro.WorkflowContext, key: str) -> list[Any]:
    first = await ctx.execute_local_activity(lookup, key, start_to_close_timeout=5)
    # Two at once, beside a timer: resolved together, in order, live and in replay.
    both = await asyncio.gather(ctx.execute_local_activity(shout, "a"), ctx.execute_local_activity(lookup, "b"),
                                ctx.sleep(0.01))
    retried = await ctx.execute_local_activity(flaky, key, 2, retry_policy=FAST)
    try:
        await ctx.execute_local_activity(flaky, key + "-never", 9, retry_policy=FAST)
        gave_up = "no"
    except duro.ActivityError as e:
        gave_up = f"{type(e.__cause__).__name__}: {e.__cause__}"
    try:
        await ctx.execute_local_activity("nobody_registered_this", 1)
        missing = "no"
    except duro.ActivityError as e:
        missing = getattr(e.__cause__, "type", "?")
    note = await ctx.wait_signal("go")
    return [first, both[:2], retried, gave_up, missing, note]


async def test_local_activities_run_in_the_task_are_recorded_as_markers_and_are_not_rerun_by_replay(
        client: duro.Client) -> None:
    RUNS.clear()
    key = f"k-{id(client)}"
    async with duro.Worker(client, task_queue="la", workflows=[uses_locals]) as first:
        handle = await client.start_workflow(uses_locals, key, id="la-1", task_queue="la")
        await eventually(lambda: _waiting(handle), "the workflow to wait for its signal")
        assert first.stats["replays"] == 0
    runs_before = dict(RUNS)
    # A fresh worker rebuilds the run: the recorded outcomes come from the markers, nothing runs again.
    async with duro.Worker(client, task_queue="la", workflows=[uses_locals]) as second:
        await handle.signal("go", "now")
        result = await handle.result()
        assert second.stats["replays"] == 1
    assert dict(RUNS) == runs_before
    assert result == [{"key": key, "attempt": 1}, ["A", {"key": "b", "attempt": 1}], 3,
                      "ApplicationError: attempt 3 fails", "ActivityNotRegistered", "now"]
    assert RUNS[f"flaky {key}"] == 3 and RUNS[f"flaky {key}-never"] == 3
    hist = await handle.fetch_history()
    names = [e.name for e in hist if e.event_type == "MarkerRecorded"]
    assert names == ["duro:local_activity:1:lookup", "duro:local_activity:2:shout", "duro:local_activity:3:lookup",
                     "duro:local_activity:5:flaky", "duro:local_activity:6:flaky",
                     "duro:local_activity:7:nobody_registered_this"]
    assert not [e for e in hist if e.event_type == "ActivityTaskScheduled"]
    await duro.testing.Replayer(workflows=[uses_locals]).replay(hist)
    assert dict(RUNS) == runs_before


async def _waiting(handle: duro.WorkflowHandle) -> bool:
    return "signal 'go'" in await handle.query("__stack_trace")


async def test_request_eager_start_is_accepted(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="la", workflows=[uses_locals]):
        h = await client.start_workflow(uses_locals, "e", id="la-eager", task_queue="la", request_eager_start=True)
        await eventually(lambda: _waiting(h), "the workflow to wait for its signal")
        await h.terminate()
    try:
        await client.start_workflow(uses_locals, "e", id="la-eager-2", task_queue="la",
                                    request_eager_start="yes")  # type: ignore[arg-type]
    except TypeError as e:
        assert "request_eager_start must be a bool" in str(e)
    else:
        raise AssertionError("a non-bool request_eager_start was accepted")
