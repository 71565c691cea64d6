"""The workflows behind the golden histories: ``generate.py`` records them, ``test_golden.py`` replays them.

Changing a workflow here that a committed history records is exactly what the golden test is
for: if the change is not replay-compatible, the test fails. Add new cases; do not edit old ones
(except ``nondeterministic_order``, which is meant to diverge).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import duro
from duro.workflow import get_workflow_definition
from tests.waiting import eventually

# --- activities ------------------------------------------------------------------------------------


@duro.activity
async def greet(ctx: duro.ActivityContext, name: str) -> str:
    return f"hello {name}"


@duro.activity
async def add(ctx: duro.ActivityContext, a: int, b: int) -> int:
    return a + b


@duro.activity
async def flaky_once(ctx: duro.ActivityContext, what: str) -> str:
    if ctx.info.attempt == 1:
        raise duro.ApplicationError(f"{what}: attempt 1 fails", type="Flaky")
    return f"{what} succeeded on attempt {ctx.info.attempt}"


@duro.activity
async def refuse(ctx: duro.ActivityContext, what: str) -> str:
    raise duro.ApplicationError(f"{what} refused", type="Refused", non_retryable=True, details={"what": what})


@duro.activity
async def undo(ctx: duro.ActivityContext, ref: str) -> str:
    return f"undid {ref}"


#: Names of the activities that have started (in this process): the cancel case waits for its
#: activity to be running before it cancels, so the recording does not depend on a sleep.
STARTED: set[str] = set()


@duro.activity
async def wait_for_cancel(ctx: duro.ActivityContext, limit_s: float) -> str:
    STARTED.add("wait_for_cancel")
    for _ in range(int(limit_s / 0.01)):
        ctx.heartbeat()
        if ctx.is_cancelled:
            return "saw the cancel"
        await asyncio.sleep(0.01)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    raise duro.ApplicationError("no cancel arrived", type="NoCancel", non_retryable=True)


@duro.activity
async def until_cancelled(ctx: duro.ActivityContext, limit_s: float) -> str:
    """Heartbeats until the cancellation reaches its await (asyncio.CancelledError), and lets it through."""
    STARTED.add("until_cancelled")
    for _ in range(int(limit_s / 0.01)):
        ctx.heartbeat()
        await asyncio.sleep(0.01)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    raise duro.ApplicationError("no cancel arrived", type="NoCancel", non_retryable=True)


ACTIVITIES: list[Callable[..., Any]] = [greet, add, flaky_once, refuse, undo, wait_for_cancel, until_cancelled]

# --- workflows (their current code: what the histories are replayed against) ----------------------


@duro.workflow
async def sequential(ctx: duro.WorkflowContext, name: str) -> list[Any]:
    first = await ctx.execute_activity(greet, name, start_to_close_timeout=10)
    second = await ctx.execute_activity(greet, first)
    total = await ctx.execute_activity(add, len(first), len(second))
    return [first, second, total]


@duro.workflow
async def parallel(ctx: duro.WorkflowContext, n: int) -> list[int]:
    return list(await asyncio.gather(*(ctx.execute_activity(add, i, i) for i in range(n))))


@duro.workflow
async def signal(ctx: duro.WorkflowContext) -> dict[str, Any]:
    before = await ctx.execute_activity(greet, "before the signal")
    approval = await ctx.wait_signal("approve")
    after = await ctx.execute_activity(greet, approval["by"])
    return {"before": before, "approval": approval, "after": after}


@duro.workflow
async def timer(ctx: duro.WorkflowContext, seconds: float) -> dict[str, Any]:
    t0 = ctx.now()
    await ctx.sleep(seconds)
    await asyncio.sleep(seconds)  # the same durable timer
    done = await ctx.execute_activity(greet, "after the timers")
    return {"slept_at_least": (ctx.now() - t0).total_seconds() >= 2 * seconds, "done": done}


@duro.workflow
async def retry(ctx: duro.WorkflowContext) -> str:
    policy = duro.RetryPolicy(initial_interval=0.01, maximum_attempts=3)
    return await ctx.execute_activity(flaky_once, "charge", retry_policy=policy)  # type: ignore[no-any-return]


@duro.workflow
async def failure(ctx: duro.WorkflowContext) -> None:
    greeting = await ctx.execute_activity(greet, "doomed")
    raise duro.ApplicationError(f"failed after {greeting!r}", type="GoldenFailure", details={"step": 2})


@duro.workflow
async def saga(ctx: duro.WorkflowContext) -> None:
    async with duro.Saga(ctx) as s:
        flight = await ctx.execute_activity(greet, "flight")
        s.add_compensation(undo, flight)
        hotel = await ctx.execute_activity(greet, "hotel")
        s.add_compensation(undo, hotel)
        await ctx.execute_activity(refuse, "car")


@duro.workflow
async def nondeterministic_order(ctx: duro.WorkflowContext) -> list[Any]:
    """The CURRENT code: ``add`` now comes before ``greet``; the history recorded the opposite order."""
    total = await ctx.execute_activity(add, 1, 2)  # golden: diverges here
    greeting = await ctx.execute_activity(greet, "order")
    return [total, greeting]


@duro.workflow
async def cancelled(ctx: duro.WorkflowContext) -> str:
    """Cancelled by the client while its activity runs; cleans up in ``except asyncio.CancelledError``."""
    try:
        await ctx.execute_activity(wait_for_cancel, 30.0, heartbeat_timeout=5)
        return "not cancelled"
    except asyncio.CancelledError:
        await ctx.execute_activity(undo, "cleanup")
        raise


@duro.workflow
async def activity_cancelled(ctx: duro.WorkflowContext, cancellation_type: str) -> str:
    """Cancelled while its activity runs (recorded with its cancellation type): the await raises
    ``duro.ActivityError`` caused by ``duro.CancelledError``; it cleans up and re-raises (canceled)."""
    try:
        await ctx.execute_activity(until_cancelled, 30.0, heartbeat_timeout=5, cancellation_type=cancellation_type)
        return "not cancelled"
    except duro.ActivityError as e:
        assert isinstance(e.__cause__, duro.CancelledError)
        await ctx.execute_activity(undo, "cleanup")
        raise


@duro.workflow
async def child_double(ctx: duro.WorkflowContext, x: int) -> int:
    total = await ctx.execute_activity(add, x, x)
    return total  # type: ignore[no-any-return]


@duro.workflow
async def child_waiting(ctx: duro.WorkflowContext) -> str:
    got = await ctx.wait_signal("go")
    return await ctx.execute_activity(greet, got)  # type: ignore[no-any-return]


@duro.workflow
async def children(ctx: duro.WorkflowContext, n: int) -> dict[str, Any]:
    doubled = await asyncio.gather(*(ctx.execute_child_workflow(child_double, i, id=f"{ctx.info.workflow_id}-c{i}")
                                     for i in range(n)))
    kid = await ctx.start_child_workflow(child_waiting, id=f"{ctx.info.workflow_id}-kid")
    await kid.signal("go", "from the parent")
    return {"doubled": list(doubled), "kid": await kid.result()}


@duro.workflow
async def continue_as_new(ctx: duro.WorkflowContext, run: int, last: int) -> dict[str, Any]:
    greeting = await ctx.execute_activity(greet, f"run {run}")
    if run < last:
        ctx.continue_as_new(run + 1, last)
    return {"run": run, "greeting": greeting}


@duro.workflow
async def patched(ctx: duro.WorkflowContext) -> str:
    """The code AFTER the patch; ``patched.json`` was recorded before it (``patched_as_recorded``)."""
    if ctx.patched("greet-twice"):
        first = await ctx.execute_activity(greet, "patched")
        return await ctx.execute_activity(greet, first)  # type: ignore[no-any-return]
    return await ctx.execute_activity(greet, "unpatched")  # type: ignore[no-any-return]


@duro.workflow
async def update(ctx: duro.WorkflowContext) -> list[str]:
    items: list[str] = []

    def validate(item: str) -> None:
        if not item:
            raise duro.ApplicationError("empty items are rejected", type="Rejected")

    async def add_item(item: str) -> int:
        items.append(await ctx.execute_activity(greet, item))
        return len(items)

    ctx.set_update_handler("add", add_item, validator=validate)
    await ctx.wait_condition(lambda: len(items) >= 2)
    return items


@duro.workflow
async def timer_canceled(ctx: duro.WorkflowContext) -> str:
    """``asyncio.wait_for``'s durable timer is cancelled when the activity finishes first."""
    try:
        return await asyncio.wait_for(ctx.execute_activity(greet, "before the deadline"), timeout=3600)
    except TimeoutError:
        return "timed out"


@duro.workflow
async def signal_handler(ctx: duro.WorkflowContext) -> str:
    items: list[str] = []
    ctx.set_signal_handler("add", items.append)
    ctx.set_query_handler("items", lambda: list(items))
    await ctx.wait_condition(lambda: "stop" in items)
    return await ctx.execute_activity(greet, ",".join(items))  # type: ignore[no-any-return]


@duro.workflow
async def cancels_children(ctx: duro.WorkflowContext) -> dict[str, str]:
    """Signals one child through an external handle, cancels one through its own handle and one
    through an external handle; both cancelled children end canceled (what the parent sees is kept)."""
    wid = ctx.info.workflow_id
    signalled = await ctx.start_child_workflow(child_waiting, id=f"{wid}-signalled")
    kid = await ctx.start_child_workflow(child_waiting, id=f"{wid}-kid")
    other = await ctx.start_child_workflow(child_waiting, id=f"{wid}-other")
    await ctx.get_external_workflow_handle(f"{wid}-signalled").signal("go", "from outside")
    await kid.cancel()
    await ctx.get_external_workflow_handle(f"{wid}-other").cancel()
    outcomes = {"signalled": await signalled.result()}
    for name, child in (("kid", kid), ("other", other)):
        try:
            await child.result()
            outcomes[name] = "completed"
        except duro.WorkflowFailedError as e:
            outcomes[name] = f"{type(e).__name__} caused by {type(e.__cause__).__name__}"
    return outcomes


WORKFLOWS: list[Callable[..., Any]] = [
    sequential, parallel, signal, timer, retry, failure, saga, nondeterministic_order,
    cancelled, child_double, child_waiting, children, continue_as_new, patched, update, timer_canceled,
    signal_handler, activity_cancelled, cancels_children,
]

# --- what the generator records ---------------------------------------------------------------------


@duro.workflow(name="nondeterministic_order")
async def nondeterministic_order_as_recorded(ctx: duro.WorkflowContext) -> list[Any]:
    """The version ``nondeterministic_order.json`` was recorded with (greet, then add)."""
    greeting = await ctx.execute_activity(greet, "order")
    total = await ctx.execute_activity(add, 1, 2)
    return [total, greeting]


@duro.workflow(name="patched")
async def patched_as_recorded(ctx: duro.WorkflowContext) -> str:
    """The version ``patched.json`` was recorded with: before ``ctx.patched("greet-twice")`` existed."""
    return await ctx.execute_activity(greet, "unpatched")  # type: ignore[no-any-return]


# --- drivers: what the client does while a case runs (after the start, before the result) ----------

Driver = Callable[[duro.Client, duro.WorkflowHandle], Awaitable[None]]
Pick = Callable[[duro.Client, duro.WorkflowHandle], duro.WorkflowHandle]


async def _eventually(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    await eventually(check, f"golden driver: {what}", timeout_s)


async def cancel_while_the_activity_runs(client: duro.Client, handle: duro.WorkflowHandle) -> None:
    STARTED.discard("wait_for_cancel")

    async def running() -> bool:
        return "wait_for_cancel" in STARTED

    await _eventually("the activity runs", running)
    await handle.cancel()


async def cancel_once_until_cancelled_runs(client: duro.Client, handle: duro.WorkflowHandle) -> None:
    STARTED.discard("until_cancelled")

    async def running() -> bool:
        return "until_cancelled" in STARTED

    await _eventually("the activity runs", running)
    await handle.cancel()


async def updates(client: duro.Client, handle: duro.WorkflowHandle) -> None:
    assert await handle.execute_update("add", "x") == 1
    try:
        await handle.execute_update("add", "")
    except duro.ApplicationError as e:
        assert "empty items are rejected" in str(e), e
    else:
        raise AssertionError("the validator did not reject the empty item")
    assert await handle.execute_update("add", "y") == 2


async def signals_and_a_query(client: duro.Client, handle: duro.WorkflowHandle) -> None:
    await handle.signal("add", "a")
    await handle.signal("add", "b")

    async def seen() -> bool:
        return await handle.query("items") == ["a", "b"]  # type: ignore[no-any-return]

    await _eventually("both signals reached the handler", seen)
    await handle.signal("add", "stop")


def last_run(client: duro.Client, handle: duro.WorkflowHandle) -> duro.WorkflowHandle:
    return client.get_handle(handle.id)  # no run id: the latest run, after every continue-as-new


def signalled_child(client: duro.Client, handle: duro.WorkflowHandle) -> duro.WorkflowHandle:
    return client.get_handle(f"{handle.id}-kid")


@dataclass(frozen=True)
class Case:
    """One golden history: the workflow to record, its arguments and the signals to send it.

    ``drive`` runs client steps after the start (cancel, updates, queries...); ``record`` picks the
    run whose history is written (default: the run ``start_workflow`` started); ``closing`` is the
    history's last event type when it is neither completed nor failed; ``expect`` lists event types
    the history must contain (checked when recording and when replaying); ``workflow_type`` is the
    recorded run's type when it is not ``workflow``'s (a child's history).
    """

    name: str
    workflow: Callable[..., Any]
    args: tuple[Any, ...] = ()
    signals: list[tuple[str, Any]] = field(default_factory=list)
    fails: bool = False
    nondeterministic: bool = False
    drive: Driver | None = None
    record: Pick | None = None
    closing: str | None = None
    expect: tuple[str, ...] = ()
    workflow_type: str | None = None

    @property
    def closing_event(self) -> str:
        """The event type the recorded history ends with."""
        if self.closing is not None:
            return self.closing
        return "WorkflowExecutionFailed" if self.fails else "WorkflowExecutionCompleted"

    @property
    def recorded_type(self) -> str:
        """The workflow type named by the history's first event."""
        return self.workflow_type or get_workflow_definition(self.workflow).name


CASES = [
    Case("sequential", sequential, ("golden",)),
    Case("parallel", parallel, (3,)),
    Case("signal", signal, signals=[("approve", {"by": "alice"})]),
    Case("timer", timer, (0.05,)),
    Case("retry", retry),
    Case("failure", failure, fails=True),
    Case("saga", saga, fails=True),
    Case("nondeterministic_order", nondeterministic_order_as_recorded, nondeterministic=True),
    Case("cancelled", cancelled, drive=cancel_while_the_activity_runs, fails=True, closing="WorkflowExecutionCanceled",
         expect=("WorkflowExecutionCancelRequested", "ActivityTaskCancelRequested")),
    Case("children", children, (2,), expect=("StartChildWorkflowExecutionInitiated", "ChildWorkflowExecutionCompleted",
                                              "SignalExternalWorkflowExecutionInitiated")),
    Case("child_signalled", children, (1,), record=signalled_child, workflow_type="child_waiting",
         expect=("WorkflowExecutionSignaled",)),
    Case("continue_as_new_first_run", continue_as_new, (0, 2), closing="WorkflowExecutionContinuedAsNew"),
    Case("continue_as_new", continue_as_new, (0, 2), record=last_run),
    Case("patched", patched_as_recorded),
    Case("patched_new", patched, expect=("MarkerRecorded",)),
    Case("update", update, drive=updates, expect=("WorkflowExecutionUpdateAccepted",
                                                  "WorkflowExecutionUpdateCompleted")),
    Case("timer_canceled", timer_canceled, expect=("TimerStarted", "TimerCanceled")),
    Case("signal_handler", signal_handler, drive=signals_and_a_query, expect=("WorkflowExecutionSignaled",)),
    # Activity cancellation types (flags of ActivityTaskScheduled), recorded since duro 0.2.
    Case("activity_try_cancel", activity_cancelled, ("try_cancel",), drive=cancel_once_until_cancelled_runs,
         fails=True, closing="WorkflowExecutionCanceled",
         expect=("WorkflowExecutionCancelRequested", "ActivityTaskCancelRequested")),
    Case("activity_wait_cancellation", activity_cancelled, ("wait_cancellation_completed",),
         drive=cancel_once_until_cancelled_runs, fails=True, closing="WorkflowExecutionCanceled",
         expect=("WorkflowExecutionCancelRequested", "ActivityTaskCancelRequested", "ActivityTaskCanceled")),
    # Cancel requests to other runs and cancelled children, as duro 0.2.0.dev0 recorded them before
    # they had event types of their own: a SignalExternalWorkflowExecutionInitiated with flags bit 0
    # and a ChildWorkflowExecutionFailed named "canceled". It cannot be recorded again (the current
    # engine writes the types below); it must keep replaying.
    Case("cancel_requests_as_signals", cancels_children,
         expect=("SignalExternalWorkflowExecutionInitiated", "ChildWorkflowExecutionFailed")),
    # The same workflow recorded with RequestCancelExternalWorkflowExecutionInitiated and
    # ChildWorkflowExecutionCanceled (since duro 0.2).
    Case("cancel_requests", cancels_children,
         expect=("SignalExternalWorkflowExecutionInitiated", "RequestCancelExternalWorkflowExecutionInitiated",
                 "ChildWorkflowExecutionCanceled")),
]
