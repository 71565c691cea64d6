"""Cancelling activities as Temporal does: the cancellation types, the error the workflow's await
raises, how the activity itself learns of it, and how the run ends (on both stores)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import duro
from duro.interceptor import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor
from duro.stores.base import CANCEL_TYPES, FLAG_CANCEL_TYPE
from tests.waiting import eventually

Q = "cancel-q"
#: activity keys whose attempt has started; what each activity saw when it ended (by key).
STARTED: set[str] = set()
SAW: dict[str, str] = {}
#: set to let an abandoned activity finish.
GATE: dict[str, asyncio.Event] = {}
_BOUND = 3000  # iterations (of 10 ms) an activity runs at most, so nothing outlives a failed test


@duro.activity
async def heartbeating(ctx: duro.ActivityContext, key: str, on_cancel: str) -> str:
    """Heartbeats until cancelled; then lets the cancellation through ("raise") or returns ("return")."""
    STARTED.add(key)
    try:
        for _ in range(_BOUND):
            ctx.heartbeat()
            await asyncio.sleep(0.01)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    except asyncio.CancelledError:
        SAW[key] = f"asyncio.CancelledError is_cancelled={ctx.is_cancelled}"
        if on_cancel == "return":
            return "returned after cancel"
        raise
    SAW[key] = "never cancelled"
    return "finished"


@duro.activity
def sync_heartbeating(ctx: duro.ActivityContext, key: str, on_cancel: str) -> str:
    """A sync activity (a thread): its heartbeat raises duro.CancelledError once cancelled."""
    STARTED.add(key)
    for _ in range(_BOUND):
        try:
            ctx.heartbeat()
        except duro.CancelledError:
            SAW[key] = f"heartbeat raised duro.CancelledError is_cancelled={ctx.is_cancelled}"
            if on_cancel == "return":
                return "returned after cancel"
            raise
        time.sleep(0.01)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    SAW[key] = "never cancelled"
    return "finished"


@duro.activity
async def gated(ctx: duro.ActivityContext, key: str) -> str:
    """Heartbeats until the test opens its gate; notes whether it was ever told of a cancellation."""
    STARTED.add(key)
    gate = GATE.setdefault(key, asyncio.Event())
    while not gate.is_set():
        ctx.heartbeat()
        await asyncio.sleep(0.01)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    SAW[key] = f"finished is_cancelled={ctx.is_cancelled}"
    return "gated result"


@duro.activity
async def deaf(ctx: duro.ActivityContext, key: str, on_cancel: str) -> str:
    """Never heartbeats, so it is never told of a cancellation: it waits for the test's gate."""
    STARTED.add(key)
    await GATE.setdefault(key, asyncio.Event()).wait()
    return "deaf result"


ACTIVITIES = {"async": heartbeating, "sync": sync_heartbeating, "deaf": deaf}


def _call(ctx: duro.WorkflowContext, key: str, opts: dict[str, Any]) -> Any:
    kwargs: dict[str, Any] = {"cancellation_type": opts.get("ctype", "try_cancel")}
    if opts.get("hb"):
        kwargs["heartbeat_timeout"] = opts["hb"]
    if opts.get("queue"):
        kwargs["task_queue"] = opts["queue"]
    return ctx.execute_activity(ACTIVITIES[opts.get("kind", "async")], key, opts.get("on_cancel", "raise"), **kwargs)


@duro.workflow
async def awaits(ctx: duro.WorkflowContext, key: str, opts: dict[str, Any]) -> str:
    """Awaits the activity and does not catch anything."""
    return str(await _call(ctx, key, opts))


@duro.workflow
async def catches(ctx: duro.WorkflowContext, key: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Awaits the activity and reports what the await gave."""
    try:
        return {"value": await _call(ctx, key, opts)}
    except duro.ActivityError as e:
        return {"error": type(e).__name__, "cause": type(e.__cause__).__name__, "message": str(e)}


@duro.workflow
async def cancels_its_own(ctx: duro.WorkflowContext, key: str) -> str:
    """Cancels a task of its own that awaits an activity, and does not catch what that raises."""
    task = asyncio.ensure_future(_call(ctx, key, {}))
    await ctx.wait_signal("cancel it")
    task.cancel()
    return str(await task)


@duro.workflow
async def abandons(ctx: duro.WorkflowContext, key: str) -> dict[str, Any]:
    """Gives up on an "abandon" activity (a wait_for timeout), then waits for a signal."""
    try:
        return {"value": await asyncio.wait_for(ctx.execute_activity(gated, key, cancellation_type="abandon"), 0.2)}
    except duro.ActivityError as e:
        await ctx.wait_signal("finish")
        return {"error": type(e).__name__, "cause": type(e.__cause__).__name__}


@duro.workflow
async def raises_cancelled(ctx: duro.WorkflowContext) -> str:
    raise asyncio.CancelledError("the code's own")


@duro.workflow
async def bad_type(ctx: duro.WorkflowContext) -> str:
    try:
        await ctx.execute_activity(gated, "never", cancellation_type="try_hard")
    except ValueError as e:
        return str(e)
    return "accepted"


WORKFLOWS = [awaits, catches, cancels_its_own, abandons, raises_cancelled, bad_type]


class _PassThrough(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Link(next)


class _Link(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        return await self.next.execute_activity(input)


@pytest.fixture(params=["plain", "intercepted"])
async def worker(client: duro.Client, request: pytest.FixtureRequest) -> AsyncIterator[duro.Worker]:
    STARTED.clear()
    SAW.clear()
    GATE.clear()
    interceptors = [_PassThrough()] if request.param == "intercepted" else []
    async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS,
                           activities=[heartbeating, sync_heartbeating, gated, deaf], interceptors=interceptors) as w:
        yield w


async def _start_and_cancel(client: duro.Client, wf: Any, key: str, opts: dict[str, Any]) -> duro.WorkflowHandle:
    handle = await client.start_workflow(wf, key, opts, id=key, task_queue=Q)
    await eventually(lambda: key in STARTED, f"activity {key} to start")
    await handle.cancel()
    return handle


async def _history(handle: duro.WorkflowHandle, *workflows: Any) -> list[str]:
    history = await handle.fetch_history()
    await duro.testing.Replayer(workflows=list(workflows) or WORKFLOWS).replay(history)  # replays as it ran
    return [e.event_type for e in history]


async def _scheduled_flags(handle: duro.WorkflowHandle) -> int:
    (scheduled,) = [e for e in await handle.fetch_history() if e.event_type == "ActivityTaskScheduled"]
    return scheduled.flags & FLAG_CANCEL_TYPE


@pytest.mark.parametrize("kind", ["async", "async-watched", "sync"])
async def test_try_cancel_raises_activity_error_at_once_and_cancels_the_activity(
        client: duro.Client, worker: duro.Worker, kind: str) -> None:
    key = f"try-{kind}"
    opts = {"kind": kind.split("-")[0], "hb": 10 if kind != "async" else None}
    handle = await _start_and_cancel(client, catches, key, opts)
    # The await raised at once: the workflow completed with what it caught.
    assert await handle.result(timeout=20) == {
        "error": "ActivityError", "cause": "CancelledError",
        "message": f"activity {ACTIVITIES[opts['kind']].__name__!r} was cancelled"}
    # The activity learned of it at its next heartbeat: at its await (async), from heartbeat() (sync).
    seen = await eventually(lambda: SAW.get(key), "the activity to see the cancellation")
    assert seen == ("heartbeat raised duro.CancelledError is_cancelled=True" if kind == "sync"
                    else "asyncio.CancelledError is_cancelled=True")
    types = await _history(handle)
    assert "ActivityTaskCancelRequested" in types and types[-1] == "WorkflowExecutionCompleted"
    assert "ActivityTaskCanceled" not in types and "ActivityTaskCompleted" not in types  # its end is dropped
    assert await _scheduled_flags(handle) == CANCEL_TYPES["try_cancel"]


async def test_an_uncaught_cancelled_activity_of_a_cancelled_workflow_closes_it_as_canceled(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await _start_and_cancel(client, awaits, "uncaught", {})
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=20)
    assert isinstance(info.value.__cause__, duro.CancelledError)
    assert (await handle.describe()).status == "canceled"
    assert (await _history(handle))[-1] == "WorkflowExecutionCanceled"


async def test_an_activity_the_code_cancelled_itself_fails_the_run(client: duro.Client, worker: duro.Worker) -> None:
    # As in Temporal: no cancellation was asked of the run, so the ActivityError it did not catch fails it.
    handle = await client.start_workflow(cancels_its_own, "own", id="own", task_queue=Q)
    await eventually(lambda: "own" in STARTED, "the activity to start")
    await handle.signal("cancel it")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=20)
    cause = info.value.__cause__
    assert isinstance(cause, duro.ActivityError) and isinstance(cause.__cause__, duro.CancelledError), cause
    assert (await handle.describe()).status == "failed"
    await eventually(lambda: SAW.get("own") == "asyncio.CancelledError is_cancelled=True", "the activity cancelled")
    types = await _history(handle)
    assert "ActivityTaskCancelRequested" in types and types[-1] == "WorkflowExecutionFailed"


async def test_asyncio_cancelled_error_without_a_cancel_request_fails_the_run(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(raises_cancelled, id="own-error", task_queue=Q)
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=20)
    assert isinstance(info.value.__cause__, duro.CancelledError)
    assert "was not requested" in str(info.value.__cause__)
    assert (await handle.describe()).status == "failed"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_wait_cancellation_completed_waits_for_the_acknowledged_cancellation(
        client: duro.Client, worker: duro.Worker, kind: str) -> None:
    key = f"wait-{kind}"
    handle = await _start_and_cancel(client, catches, key, {"kind": kind, "ctype": "wait_cancellation_completed",
                                                             "hb": 10})
    result = await handle.result(timeout=20)
    assert result["error"] == "ActivityError" and result["cause"] == "CancelledError", result
    assert key in SAW  # the activity had ended when the workflow got its error
    types = await _history(handle)
    # The workflow's await ended only with the recorded ActivityTaskCanceled, after the request.
    assert types.index("ActivityTaskCancelRequested") < types.index("ActivityTaskCanceled")
    assert types[-1] == "WorkflowExecutionCompleted" and "ActivityTaskCompleted" not in types
    assert await _scheduled_flags(handle) == CANCEL_TYPES["wait_cancellation_completed"]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_wait_cancellation_completed_gets_a_result_the_activity_still_returns(
        client: duro.Client, worker: duro.Worker, kind: str) -> None:
    # As in Temporal: the activity caught the cancellation and returned; the await returns that
    # value, and the workflow that did not catch anything completes with it.
    key = f"wait-return-{kind}"
    handle = await _start_and_cancel(client, awaits, key, {"kind": kind, "ctype": "wait_cancellation_completed",
                                                           "on_cancel": "return", "hb": 10})
    assert await handle.result(timeout=20) == "returned after cancel"
    assert SAW[key].endswith("is_cancelled=True")
    types = await _history(handle)
    assert types.index("ActivityTaskCancelRequested") < types.index("ActivityTaskCompleted")
    assert types[-1] == "WorkflowExecutionCompleted"


async def test_try_cancel_drops_a_result_the_activity_still_returns(client: duro.Client, worker: duro.Worker) -> None:
    handle = await _start_and_cancel(client, catches, "try-return", {"on_cancel": "return", "hb": 10})
    assert (await handle.result(timeout=20))["cause"] == "CancelledError"
    await eventually(lambda: "try-return" in SAW, "the activity to return after its cancellation")
    types = await _history(handle)
    assert "ActivityTaskCompleted" not in types


async def test_wait_cancellation_completed_of_an_activity_that_never_started(
        client: duro.Client, worker: duro.Worker) -> None:
    # No worker serves "nobody": the attempt runs nowhere, so the request ends it at once.
    handle = await client.start_workflow(catches, "unstarted", {"ctype": "wait_cancellation_completed",
                                                                "queue": "nobody"}, id="unstarted", task_queue=Q)

    async def scheduled() -> bool:
        return "ActivityTaskScheduled" in [e.event_type for e in await handle.fetch_history()]

    await eventually(scheduled, "the activity to be scheduled")
    await handle.cancel()
    result = await handle.result(timeout=20)
    assert result["cause"] == "CancelledError" and "before it started" in result["message"], result
    types = await _history(handle)
    assert types.index("ActivityTaskCancelRequested") < types.index("ActivityTaskCanceled")


async def test_wait_cancellation_completed_uncaught_closes_the_run_as_canceled(
        client: duro.Client, worker: duro.Worker) -> None:
    handle = await _start_and_cancel(client, awaits, "wait-uncaught", {"ctype": "wait_cancellation_completed",
                                                                        "hb": 10})
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=20)
    assert isinstance(info.value.__cause__, duro.CancelledError)
    types = await _history(handle)
    assert types[-1] == "WorkflowExecutionCanceled" and "ActivityTaskCanceled" in types


async def test_a_reset_ends_an_activity_whose_cancellation_is_waited_for(
        client: duro.Client, worker: duro.Worker) -> None:
    # "deaf" never heartbeats, so it never learns of the cancellation: the workflow keeps waiting.
    handle = await client.start_workflow(catches, "reset-wait", {"ctype": "wait_cancellation_completed",
                                                                 "kind": "deaf"}, id="reset-wait", task_queue=Q)
    await eventually(lambda: "reset-wait" in STARTED, "the activity to start")

    async def tasks_completed(n: int) -> list[Any]:
        history = await handle.fetch_history()
        return [e.event_id for e in history if e.event_type == "WorkflowTaskCompleted"][n - 1:]

    await handle.cancel()
    await eventually(lambda: tasks_completed(2), "the cancellation request to be recorded")
    await handle.signal("nobody listens")  # one more workflow task, after the request: the reset point
    (point,) = await eventually(lambda: tasks_completed(3), "the signal's workflow task")
    new = await handle.reset(event_id=point, reason="test")
    result = await new.result(timeout=20)
    assert result["cause"] == "CancelledError" and "the run was reset" in result["message"], result
    types = await _history(new)
    assert types.count("ActivityTaskCancelRequested") == 1 and "ActivityTaskCanceled" in types
    GATE.setdefault("reset-wait", asyncio.Event()).set()  # let the old attempt end (its end is stale)


async def test_abandon_raises_at_once_and_leaves_the_activity_running(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(abandons, "abandoned", id="abandoned", task_queue=Q)

    async def gave_up() -> bool:
        return "TimerFired" in [e.event_type for e in await handle.fetch_history()]

    await eventually(gave_up, "the workflow's wait_for to give up")
    assert "abandoned" in STARTED and "abandoned" not in SAW  # still running, never told
    GATE.setdefault("abandoned", asyncio.Event()).set()
    await eventually(lambda: "abandoned" in SAW, "the abandoned activity to finish")
    assert SAW["abandoned"] == "finished is_cancelled=False"

    async def recorded() -> bool:
        return "ActivityTaskCompleted" in await _history(handle)

    # Its end is recorded while the run is open (a signal that closes the run first would leave
    # it nothing to be recorded in: the store drops the result of a closed run's activity).
    await eventually(recorded, "the abandoned activity's end to be recorded")
    await handle.signal("finish")
    assert await handle.result(timeout=20) == {"error": "ActivityError", "cause": "CancelledError"}
    types = await _history(handle)
    assert "ActivityTaskCancelRequested" not in types  # nothing was asked of the activity
    assert "ActivityTaskCompleted" in types  # its end is recorded, and ignored by the code
    assert await _scheduled_flags(handle) == CANCEL_TYPES["abandon"]


async def test_an_unknown_cancellation_type_raises_in_the_workflow(client: duro.Client, worker: duro.Worker) -> None:
    message = await client.execute_workflow(bad_type, id="bad-type", task_queue=Q)
    assert "cancellation_type must be one of" in message and "'try_hard'" in message
