"""``result_type=`` on queries, updates, activities and child workflows, and typed values end to end."""

from __future__ import annotations

import dataclasses
import enum

import duro


class Stage(enum.IntEnum):
    NEW = 1
    PAID = 2


@dataclasses.dataclass
class Receipt:
    order: str
    stage: Stage
    tags: set[str]


@duro.activity(name="pay")
async def pay(actx: duro.ActivityContext, order: str) -> dict[str, object]:
    return {"order": order, "stage": 2, "tags": ["card"]}  # plain JSON: the caller says what it is


@duro.workflow(name="kid_receipt")
async def kid_receipt(ctx: duro.WorkflowContext, order: str) -> dict[str, object]:
    return {"order": order, "stage": 1, "tags": []}


@duro.workflow
async def typed(ctx: duro.WorkflowContext, order: str) -> list[str]:
    state = {"stage": 1}
    ctx.set_query_handler("state", lambda: dict(state))

    def set_stage(stage: Stage) -> dict[str, object]:
        state["stage"] = int(stage)
        return {"order": order, "stage": int(stage), "tags": ["upd"]}

    ctx.set_update_handler("stage", set_stage)
    paid = await ctx.execute_activity("pay", order, start_to_close_timeout=10, result_type=Receipt)
    child = await ctx.execute_child_workflow("kid_receipt", order, result_type=Receipt)
    await ctx.wait_condition(lambda: state["stage"] == 2)
    return [type(paid).__name__, repr(paid.stage), type(child).__name__, repr(child.tags)]


@dataclasses.dataclass
class State:
    stage: Stage


async def test_result_type_decodes_queries_updates_activities_and_children(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="rt", workflows=[typed, kid_receipt], activities=[pay]):
        h = await client.start_workflow(typed, "o-1", id="rt-1", task_queue="rt")
        assert await h.query("state") == {"stage": 1}
        assert await h.query("state", result_type=State) == State(Stage.NEW)
        receipt = await h.execute_update("stage", Stage.PAID, result_type=Receipt)
        assert receipt == Receipt("o-1", Stage.PAID, {"upd"}) and type(receipt.stage) is Stage
        assert await h.result() == ["Receipt", "<Stage.PAID: 2>", "Receipt", "set()"]
