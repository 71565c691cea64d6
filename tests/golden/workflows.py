"""The workflows behind the golden histories: ``generate.py`` records them, ``test_golden.py`` replays them.

Changing a workflow here that a committed history records is exactly what the golden test is
for: if the change is not replay-compatible, the test fails. Add new cases; do not edit old ones
(except ``nondeterministic_order``, which is meant to diverge).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import duro

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


ACTIVITIES: list[Callable[..., Any]] = [greet, add, flaky_once, refuse, undo]

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


WORKFLOWS: list[Callable[..., Any]] = [
    sequential, parallel, signal, timer, retry, failure, saga, nondeterministic_order,
]

# --- what the generator records ---------------------------------------------------------------------


@duro.workflow(name="nondeterministic_order")
async def nondeterministic_order_as_recorded(ctx: duro.WorkflowContext) -> list[Any]:
    """The version ``nondeterministic_order.json`` was recorded with (greet, then add)."""
    greeting = await ctx.execute_activity(greet, "order")
    total = await ctx.execute_activity(add, 1, 2)
    return [total, greeting]


@dataclass(frozen=True)
class Case:
    """One golden history: the workflow to record, its arguments and the signals to send it."""

    name: str
    workflow: Callable[..., Any]
    args: tuple[Any, ...] = ()
    signals: list[tuple[str, Any]] = field(default_factory=list)
    fails: bool = False
    nondeterministic: bool = False


CASES = [
    Case("sequential", sequential, ("golden",)),
    Case("parallel", parallel, (3,)),
    Case("signal", signal, signals=[("approve", {"by": "alice"})]),
    Case("timer", timer, (0.05,)),
    Case("retry", retry),
    Case("failure", failure, fails=True),
    Case("saga", saga, fails=True),
    Case("nondeterministic_order", nondeterministic_order_as_recorded, nondeterministic=True),
]
