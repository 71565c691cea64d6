"""Workflows and activities used by the engine tests (importable by subprocess workers too)."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import duro


@dataclass
class Order:
    order_id: str
    amount: int


@dataclass
class Receipt:
    order_id: str
    tracking: str
    charged: int


CALLS: dict[str, int] = {}


def _count(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


@duro.activity
async def validate(ctx: duro.ActivityContext, order: Order) -> dict[str, Any]:
    assert isinstance(order, Order)
    _count("validate")
    return {"ok": order.amount > 0}


@duro.activity
async def reserve(ctx: duro.ActivityContext, order: Order) -> dict[str, Any]:
    _count("reserve")
    return {"reserved": order.order_id}


@duro.activity
def charge(ctx: duro.ActivityContext, order: Order) -> dict[str, Any]:
    """A sync activity: runs in the worker's thread pool."""
    _count("charge")
    return {"charged": order.amount}


@duro.activity
async def ship(ctx: duro.ActivityContext, order: Order) -> dict[str, Any]:
    _count("ship")
    return {"tracking": "T-" + order.order_id}


@duro.workflow
async def order_workflow(ctx: duro.WorkflowContext, order: Order) -> Receipt:
    ok = await ctx.execute_activity(validate, order, start_to_close_timeout=10,
                                    retry_policy=duro.RetryPolicy(maximum_attempts=3))
    if not ok["ok"]:
        raise duro.ApplicationError("invalid order", type="ValidationError", non_retryable=True)
    _, charged = await asyncio.gather(ctx.execute_activity(reserve, order), ctx.execute_activity(charge, order))
    approval = await ctx.wait_signal("approve")
    shipped = await ctx.execute_activity(ship, order)
    assert approval["by"]
    return Receipt(order_id=order.order_id, tracking=shipped["tracking"], charged=charged["charged"])


@duro.activity
async def flaky(ctx: duro.ActivityContext, fail_times: int, non_retryable: bool = False) -> int:
    if ctx.info.attempt <= fail_times:
        raise duro.ApplicationError(f"attempt {ctx.info.attempt} failed", type="Flaky", non_retryable=non_retryable)
    return ctx.info.attempt


@duro.workflow
async def retry_workflow(ctx: duro.WorkflowContext, fail_times: int, max_attempts: int, non_retryable: bool) -> int:
    policy = duro.RetryPolicy(initial_interval=0.01, maximum_attempts=max_attempts)
    return await ctx.execute_activity(flaky, fail_times, non_retryable, retry_policy=policy)  # type: ignore[no-any-return]


@duro.activity
async def slow(ctx: duro.ActivityContext, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


@duro.activity
def slow_sync(ctx: duro.ActivityContext, seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@duro.workflow
async def timeout_workflow(ctx: duro.WorkflowContext, seconds: float, sync: bool) -> str:
    act = slow_sync if sync else slow
    return await ctx.execute_activity(act, seconds, start_to_close_timeout=0.2,  # type: ignore[no-any-return]
                                      retry_policy=duro.RetryPolicy(initial_interval=0.01, maximum_attempts=2))


@duro.activity
async def heartbeating(ctx: duro.ActivityContext, steps: int) -> list[Any]:
    start = ctx.info.heartbeat_details or 0
    for i in range(start, steps):
        ctx.heartbeat(i + 1)
        await asyncio.sleep(0.01)
    return [ctx.info.attempt, start]


@duro.activity
async def heartbeat_then_fail(ctx: duro.ActivityContext) -> Any:
    """Fails its first attempt right after a heartbeat: the failure and the heartbeat race to the store."""
    if ctx.info.attempt == 1:
        ctx.heartbeat({"sent by": 1})
        raise duro.ApplicationError("fails right after its heartbeat", type="Retry")
    return ctx.info.heartbeat_details


@duro.activity
def heartbeat_then_fail_sync(ctx: duro.ActivityContext) -> Any:
    """``heartbeat_then_fail`` on the thread pool."""
    if ctx.info.attempt == 1:
        ctx.heartbeat({"sent by": 1})
        raise duro.ApplicationError("fails right after its heartbeat", type="Retry")
    return ctx.info.heartbeat_details


@duro.workflow
async def heartbeat_then_fail_workflow(ctx: duro.WorkflowContext, sync: bool) -> Any:
    return await ctx.execute_activity(heartbeat_then_fail_sync if sync else heartbeat_then_fail,
                                      retry_policy=duro.RetryPolicy(initial_interval=0.01))


@duro.workflow
async def heartbeat_workflow(ctx: duro.WorkflowContext, steps: int) -> list[Any]:
    return await ctx.execute_activity(heartbeating, steps, heartbeat_timeout=5)  # type: ignore[no-any-return]


@duro.workflow
async def timer_workflow(ctx: duro.WorkflowContext, seconds: float) -> dict[str, Any]:
    t0 = ctx.now()
    await ctx.sleep(seconds)
    await asyncio.sleep(seconds)
    return {"elapsed": (ctx.now() - t0).total_seconds(), "r": ctx.random(), "u": str(ctx.uuid4())}


@duro.workflow
async def signal_workflow(ctx: duro.WorkflowContext, n: int) -> list[Any]:
    got = []
    for _ in range(n):
        got.append(await ctx.wait_signal("item"))
    return got


@duro.workflow
async def handler_workflow(ctx: duro.WorkflowContext) -> list[Any]:
    seen: list[Any] = []
    ctx.set_signal_handler("add", seen.append)
    await ctx.wait_condition(lambda: len(seen) >= 3)
    return seen


@duro.workflow
async def io_workflow(ctx: duro.WorkflowContext) -> str:
    with open("/etc/hostname") as f:  # not allowed: workflows must be deterministic
        return f.read()


@duro.workflow
async def failing_workflow(ctx: duro.WorkflowContext) -> None:
    raise duro.ApplicationError("boom", type="Boom", details={"k": 1})


@duro.activity
async def record_pid(ctx: duro.ActivityContext, path: str, step: int) -> int:
    with open(path, "a") as f:
        f.write(f"{step} {os.getpid()}\n")
    return step


@duro.activity
async def block_forever_first_time(ctx: duro.ActivityContext, marker: str) -> str:
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        await asyncio.sleep(3600)
    return "resumed"


@duro.workflow
async def crash_workflow(ctx: duro.WorkflowContext, path: str, marker: str) -> list[Any]:
    a = await ctx.execute_activity(record_pid, path, 1)
    b = await ctx.execute_activity(block_forever_first_time, marker, start_to_close_timeout=60)
    c = await ctx.execute_activity(record_pid, path, 2)
    return [a, b, c]


@duro.activity
async def echo(ctx: duro.ActivityContext, i: int) -> int:
    return i


@duro.workflow
async def long_workflow(ctx: duro.WorkflowContext, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.execute_activity(echo, i)
    return total


@duro.workflow
async def fanout_workflow(ctx: duro.WorkflowContext, n: int) -> int:
    results = await asyncio.gather(*(ctx.execute_activity(echo, i) for i in range(n)))
    return sum(results)


ALL_WORKFLOWS = [order_workflow, retry_workflow, timeout_workflow, heartbeat_workflow, heartbeat_then_fail_workflow,
                 timer_workflow, signal_workflow, handler_workflow, io_workflow, failing_workflow, crash_workflow,
                 long_workflow, fanout_workflow]
ALL_ACTIVITIES = [validate, reserve, charge, ship, flaky, slow, slow_sync, heartbeating, heartbeat_then_fail,
                  heartbeat_then_fail_sync, record_pid, block_forever_first_time, echo]


@duro.workflow
async def fanout_rounds(ctx: duro.WorkflowContext, rounds: int, k: int) -> int:
    total = 0
    for _ in range(rounds):
        total += sum(await asyncio.gather(*(ctx.execute_activity(echo, i) for i in range(k))))
    return total


ALL_WORKFLOWS.append(fanout_rounds)
