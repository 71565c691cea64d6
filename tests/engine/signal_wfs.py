"""Workflows of tests.engine.test_eager_signal."""

from __future__ import annotations

from typing import Any

import duro

QUEUE = "signals"

# Read by fails_once_on_signal's code: armed, its first activation after the signal raises.
FAIL_ONCE = {"armed": False}


@duro.workflow
async def parked(ctx: duro.WorkflowContext) -> Any:
    return await ctx.wait_signal("go")


@duro.workflow
async def collects(ctx: duro.WorkflowContext, n: int) -> list[Any]:
    seen: list[Any] = []
    ctx.set_signal_handler("add", seen.append)
    await ctx.wait_condition(lambda: len(seen) >= n)
    return seen


@duro.workflow
async def fails_once_on_signal(ctx: duro.WorkflowContext) -> Any:
    value = await ctx.wait_signal("go")
    if FAIL_ONCE["armed"]:
        FAIL_ONCE["armed"] = False
        raise RuntimeError("the first activation after the signal fails")  # fails the task, not the run
    return value


@duro.activity
async def double(ctx: duro.ActivityContext, x: int) -> int:
    return 2 * x


@duro.workflow
async def local_after_signal(ctx: duro.WorkflowContext) -> int:
    x = await ctx.wait_signal("go")
    return int(await ctx.execute_local_activity(double, x, start_to_close_timeout=10))


@duro.workflow
async def parks_in_second_run(ctx: duro.WorkflowContext, run: int) -> Any:
    if run == 0:
        ctx.continue_as_new(1)
    return await ctx.wait_signal("go")


WORKFLOWS = [parked, collects, fails_once_on_signal, local_after_signal, parks_in_second_run]
