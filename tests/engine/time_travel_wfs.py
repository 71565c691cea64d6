"""A workflow whose state moves with a signal, an activity and a timer, for time-travel queries."""

from __future__ import annotations

import dataclasses
from typing import Any

import duro

QUEUE = "time-travel"


@dataclasses.dataclass
class Snapshot:
    stage: str
    value: int


@duro.activity
async def double(ctx: duro.ActivityContext, x: int) -> int:
    return x * 2


@duro.workflow
async def stepper(ctx: duro.WorkflowContext) -> dict[str, Any]:
    """Stages: started -> signalled (signal "add") -> doubled (activity) -> slept (timer) -> done ("finish")."""
    state: dict[str, Any] = {"stage": "started", "value": 0, "added": []}
    finished: list[bool] = []

    def add(x: int) -> None:
        state["added"].append(x)
        state["value"] += x

    ctx.set_query_handler("state", lambda: dict(state, added=list(state["added"])))
    ctx.set_query_handler("value_plus", lambda n: state["value"] + n)
    ctx.set_query_handler("snapshot", lambda: Snapshot(state["stage"], state["value"]))
    ctx.set_signal_handler("add", add)
    ctx.set_signal_handler("finish", lambda: finished.append(True))
    await ctx.wait_condition(lambda: bool(state["added"]))
    state["stage"] = "signalled"
    state["value"] = await ctx.execute_activity(double, state["value"], start_to_close_timeout=30)
    state["stage"] = "doubled"
    await ctx.sleep(0.01)
    state["stage"] = "slept"
    await ctx.wait_condition(lambda: bool(finished))
    state["stage"] = "done"
    return state


@duro.workflow
async def late_handler(ctx: duro.WorkflowContext) -> str:
    """Sets its query handler only after its first workflow task: earlier points have no handler."""
    await ctx.sleep(0.01)
    ctx.set_query_handler("ready", lambda: True)
    return "ok"


WORKFLOWS: list[Any] = [stepper, late_handler]
ACTIVITIES: list[Any] = [double]
