"""Workflows for the feature tests (cancellation, children, continue-as-new, queries, updates...)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import duro

EVENTS: list[str] = []


@duro.activity
async def note(ctx: duro.ActivityContext, text: str) -> str:
    EVENTS.append(text)
    return text


@duro.activity
async def long_heartbeating(ctx: duro.ActivityContext, seconds: float) -> str:
    try:
        for _ in range(int(seconds / 0.02)):
            ctx.heartbeat()
            await asyncio.sleep(0.02)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    except asyncio.CancelledError:  # delivered at its await once a heartbeat learned of it
        EVENTS.append("activity saw cancel" if ctx.is_cancelled else "cancelled without is_cancelled")
        raise
    return "finished"


@duro.workflow
async def cancellable(ctx: duro.WorkflowContext) -> str:
    try:
        await ctx.execute_activity(long_heartbeating, 30.0, heartbeat_timeout=5)
        return "not cancelled"
    except duro.ActivityError as e:  # the cancelled activity's await raises this, as in Temporal
        assert isinstance(e.__cause__, duro.CancelledError)
        await ctx.execute_activity(note, "cleanup ran")
        raise


@duro.workflow
async def shielded(ctx: duro.WorkflowContext) -> str:
    try:
        await asyncio.shield(ctx.execute_activity(note, "shielded part"))
        await ctx.sleep(3600)
        return "slept"
    except asyncio.CancelledError:
        return "caught cancel, finished normally"


@duro.workflow
async def child(ctx: duro.WorkflowContext, x: int) -> int:
    await ctx.execute_activity(note, f"child {x}")
    return x * 2


@duro.workflow
async def waiting_child(ctx: duro.WorkflowContext) -> str:
    got = await ctx.wait_signal("go")
    return f"got {got}"


@duro.workflow
async def parent(ctx: duro.WorkflowContext, n: int) -> list[int]:
    results = await asyncio.gather(*(ctx.execute_child_workflow(child, i, id=f"{ctx.info.workflow_id}-c{i}")
                                     for i in range(n)))
    return list(results)


@duro.workflow
async def signalling_parent(ctx: duro.WorkflowContext) -> str:
    handle = await ctx.start_child_workflow(waiting_child, id=f"{ctx.info.workflow_id}-kid")
    await handle.signal("go", "hello")
    return await handle.result()  # type: ignore[no-any-return]


@duro.workflow
async def abandoning_parent(ctx: duro.WorkflowContext, policy: str) -> str:
    await ctx.start_child_workflow(waiting_child, id=f"{ctx.info.workflow_id}-kid", parent_close_policy=policy)
    return "parent done"


@duro.workflow
async def failing_child_parent(ctx: duro.WorkflowContext) -> str:
    dup = f"{ctx.info.workflow_id}-dup"
    await ctx.start_child_workflow(waiting_child, id=dup)
    try:
        await ctx.execute_child_workflow(waiting_child, id=dup)  # that id is running: the start fails
    except duro.WorkflowFailedError as e:
        return f"child failed: {e.__cause__}"
    return "?"


@duro.workflow
async def counter(ctx: duro.WorkflowContext, start: int, stop: int) -> int:
    await ctx.execute_activity(note, f"run {start}")
    if start < stop:
        ctx.continue_as_new(start + 1, stop)
    return start


@duro.workflow
async def queried(ctx: duro.WorkflowContext) -> list[str]:
    items: list[str] = []
    ctx.set_query_handler("items", lambda: list(items))
    ctx.set_query_handler("count_plus", lambda k: len(items) + k)

    def validate(item: str) -> None:
        if not item:
            raise duro.ApplicationError("empty items are rejected", type="Rejected")

    async def add(item: str) -> int:
        await ctx.execute_activity(note, f"added {item}")
        items.append(item)
        return len(items)

    ctx.set_update_handler("add", add, validator=validate)
    ctx.set_signal_handler("add", items.append)
    await ctx.wait_condition(lambda: "stop" in items)
    return items


@duro.workflow
async def versioned(ctx: duro.WorkflowContext) -> str:
    if ctx.patched("use-new-greeting"):
        return await ctx.execute_activity(note, "new")  # type: ignore[no-any-return]
    return await ctx.execute_activity(note, "old")  # type: ignore[no-any-return]


@duro.workflow(name="versioned")
async def versioned_before(ctx: duro.WorkflowContext) -> str:
    return await ctx.execute_activity(note, "old")  # type: ignore[no-any-return]


@duro.workflow
async def sleeper(ctx: duro.WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "woke"


@duro.workflow
async def condition_timeout(ctx: duro.WorkflowContext) -> str:
    try:
        await ctx.wait_condition(lambda: False, timeout=0.05)
    except TimeoutError:
        return "timed out"
    return "?"


@duro.workflow
async def timer_race(ctx: duro.WorkflowContext) -> str:
    try:
        await asyncio.wait_for(ctx.execute_activity(note, "fast"), timeout=60)
    except TimeoutError:
        return "timeout"
    return "activity won"


WORKFLOWS: list[Any] = [cancellable, shielded, child, waiting_child, parent, signalling_parent, abandoning_parent,
                        failing_child_parent, counter, queried, versioned, sleeper, condition_timeout, timer_race]
ACTIVITIES: list[Any] = [note, long_heartbeating]


@dataclasses.dataclass
class Item:
    name: str
    qty: int


@duro.workflow
async def typed_handlers(ctx: duro.WorkflowContext) -> list[str]:
    seen: list[str] = []

    def on_item(item: Item) -> None:
        assert isinstance(item, Item), type(item)
        seen.append(f"{item.name}x{item.qty}")

    ctx.set_signal_handler("item", on_item)
    ctx.set_query_handler("count", lambda item: sum(1 for s in seen if s.startswith(item.name)))
    await ctx.wait_condition(lambda: len(seen) >= 2)
    return seen


WORKFLOWS.append(typed_handlers)
