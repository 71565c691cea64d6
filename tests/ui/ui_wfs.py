"""Workflows and activities the UI tests run (one module, so the API and browser tests share them)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import duro

#: Gates of ``gated``: the test opens one (by key) to let the activity finish.
GATES: dict[str, asyncio.Event] = {}


@duro.activity
async def prepare(ctx: duro.ActivityContext, order: dict[str, Any]) -> dict[str, Any]:
    return {"prepared": order["id"]}


@duro.activity
async def finish(ctx: duro.ActivityContext, order: dict[str, Any]) -> str:
    return f"done-{order['id']}"


@duro.activity
async def gated(ctx: duro.ActivityContext, key: str) -> str:
    ctx.heartbeat({"waiting_for": key})
    await GATES.setdefault(key, asyncio.Event()).wait()
    return key


@duro.workflow
async def approval(ctx: duro.WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    """An activity, a short timer, then a signal awaited under a one-hour timer, then another activity.

    Its query ``stage`` says where it is (the UI's history shows it at each workflow task).
    """
    stage = "preparing"
    ctx.set_query_handler("stage", lambda: stage)
    prepared = await ctx.execute_activity(prepare, order, start_to_close_timeout=10)
    stage = "pausing"
    await ctx.sleep(0.05)
    stage = "waiting for approval"
    approved = await asyncio.wait_for(ctx.wait_signal("approve"), 3600)
    stage = "finishing"
    done = await ctx.execute_activity(finish, order, start_to_close_timeout=10)
    return {"prepared": prepared["prepared"], "approved_by": approved["by"], "done": done}


@duro.workflow
async def waits_on_gate(ctx: duro.WorkflowContext, key: str) -> str:
    """An activity that stays pending until the test opens its gate."""
    result: str = await ctx.execute_activity(gated, key, start_to_close_timeout=60)
    return result


@duro.workflow
async def parent(ctx: duro.WorkflowContext, order: dict[str, Any]) -> dict[str, Any]:
    """A child workflow that stays pending until it gets its signal."""
    result: dict[str, Any] = await ctx.execute_child_workflow(approval, order, id=f"{ctx.info.workflow_id}-child")
    return result


@duro.workflow
async def declined(ctx: duro.WorkflowContext, order: dict[str, Any]) -> None:
    raise duro.ApplicationError(f"card declined for {order['id']}", type="PaymentError", non_retryable=True)


WORKFLOWS: list[Callable[..., Any]] = [approval, waits_on_gate, parent, declined]
ACTIVITIES: list[Callable[..., Any]] = [prepare, finish, gated]
