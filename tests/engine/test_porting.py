"""What ported Temporal code relies on: activities as methods of an object, ctx.all_handlers_finished()."""

from __future__ import annotations

import asyncio

import pytest

import duro
from tests.waiting import eventually, task_failure


class Payments:
    """Activities as methods: the worker calls them on the instance that holds their dependencies."""

    def __init__(self, bank: dict[str, int]) -> None:
        self.bank = bank

    @duro.activity
    async def charge(self, actx: duro.ActivityContext, who: str, amount: int) -> int:
        self.bank[who] = self.bank.get(who, 0) - amount
        return self.bank[who]

    @duro.activity(name="refund")
    def refund(self, actx: duro.ActivityContext, who: str, amount: int) -> int:  # sync: the thread pool
        self.bank[who] += amount
        return self.bank[who]


@duro.workflow
async def pay_and_refund(ctx: duro.WorkflowContext, who: str) -> list[int]:
    after_charge = await ctx.execute_activity(Payments.charge, who, 30, start_to_close_timeout=10)
    after_refund = await ctx.execute_activity(Payments.refund, who, 10, start_to_close_timeout=10)
    return [after_charge, after_refund]


async def test_activities_registered_as_bound_methods_run_on_their_instance(client: duro.Client) -> None:
    bank = {"ada": 100}
    acts = Payments(bank)
    async with duro.Worker(client, task_queue="port", workflows=[pay_and_refund],
                           activities=[acts.charge, acts.refund]):
        assert await client.execute_workflow(pay_and_refund, "ada", id="port-1", task_queue="port") == [70, 80]
    assert bank == {"ada": 80}


async def test_a_method_activity_must_be_registered_bound_and_called_with_its_arguments(client: duro.Client) -> None:
    with pytest.raises(TypeError, match=r"activity 'charge' is a method: register it bound to an instance, "
                                        r"activities=\[obj\.charge\]"):
        duro.Worker(client, task_queue="port", activities=[Payments.charge])

    @duro.workflow
    async def too_few(ctx: duro.WorkflowContext) -> None:
        await ctx.execute_activity(Payments.charge, "ada", start_to_close_timeout=10)

    acts = Payments({})
    async with duro.Worker(client, task_queue="port", workflows=[too_few], activities=[acts.charge]):
        h = await client.start_workflow(too_few, id="port-2", task_queue="port")
        message = await task_failure(h)  # a TypeError: a bug, so the task fails and the run stays open
        await h.terminate()
    assert "charge" in message and "amount" in message


GATES: dict[str, asyncio.Event] = {}


@duro.activity
async def record(actx: duro.ActivityContext, what: str) -> str:
    gate = GATES.get(what)
    if gate is not None:
        await gate.wait()
    return what


@duro.workflow
async def drains_handlers(ctx: duro.WorkflowContext) -> list[str]:
    done: list[str] = []

    async def on_note(text: str) -> None:
        done.append(await ctx.execute_activity(record, f"note {text}", start_to_close_timeout=10))

    async def gated_update(key: str) -> str:
        done.append(await ctx.execute_activity(record, key, start_to_close_timeout=10))
        return key.upper()

    ctx.set_signal_handler("note", on_note)
    ctx.set_update_handler("gated", gated_update)
    await ctx.wait_signal("finish")
    seen_running = not ctx.all_handlers_finished()
    await ctx.wait_condition(ctx.all_handlers_finished)
    return [*done, f"was running: {seen_running}"]


async def test_all_handlers_finished_waits_for_signal_handlers_started_in_the_same_task(client: duro.Client) -> None:
    # No worker yet: the first workflow task sees the start, both notes and "finish" together, so
    # the note handlers are still running when the main code gets "finish".
    h = await client.start_workflow(drains_handlers, id="port-3", task_queue="port",
                                    start_signal="note", start_signal_args=["a"])
    await h.signal("note", "b")
    await h.signal("finish")
    async with duro.Worker(client, task_queue="port", workflows=[drains_handlers], activities=[record]):
        assert await h.result() == ["note a", "note b", "was running: True"]


async def test_all_handlers_finished_waits_for_a_running_update(client: duro.Client) -> None:
    GATES["upd-gate"] = asyncio.Event()
    async with duro.Worker(client, task_queue="port", workflows=[drains_handlers], activities=[record]):
        h = await client.start_workflow(drains_handlers, id="port-4", task_queue="port")
        update = asyncio.ensure_future(h.execute_update("gated", "upd-gate"))
        await eventually(lambda: _has(h, "WorkflowExecutionUpdateAccepted"), "the update to be accepted")
        await h.signal("finish")
        # The main code got "finish" (a task completed after it) but waits for the update's handler.
        await eventually(lambda: _completed_after_finish(h), "the workflow to process finish")
        assert (await h.describe()).status == "running"
        GATES["upd-gate"].set()
        assert await update == "UPD-GATE"
        assert await h.result() == ["upd-gate", "was running: True"]


async def _has(h: duro.WorkflowHandle, event_type: str) -> bool:
    return any(e.event_type == event_type for e in await h.fetch_history())


async def _completed_after_finish(h: duro.WorkflowHandle) -> bool:
    types = [(e.event_type, e.name) for e in await h.fetch_history()]
    if ("WorkflowExecutionSignaled", "finish") not in types:
        return False
    return "WorkflowTaskCompleted" in [t for t, _ in types[types.index(("WorkflowExecutionSignaled", "finish")):]]


@duro.workflow
async def counts_history(ctx: duro.WorkflowContext, loops: int) -> list[object]:
    seen: list[object] = []
    ctx.set_query_handler("seen", lambda: list(seen))
    for i in range(loops):
        await ctx.execute_activity(record, f"step {i}", start_to_close_timeout=10)
        seen.append(ctx.info.get_current_history_length())
    if ctx.patched("v2"):
        seen.append(ctx.info.get_current_history_length())
    await ctx.wait_signal("go")
    seen.append(ctx.info.get_current_history_length())
    seen.append(ctx.info.is_continue_as_new_suggested())
    seen.append([t.total_seconds() if t else None for t in (ctx.info.run_timeout, ctx.info.execution_timeout)])
    return seen


async def test_history_length_is_the_same_live_and_in_replay_and_timeouts_are_in_info(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="port", workflows=[counts_history], activities=[record]) as first:
        h = await client.start_workflow(counts_history, 3, id="port-5", task_queue="port", run_timeout=3600,
                                        execution_timeout=7200)
        await eventually(lambda: _has(h, "MarkerRecorded"), "the workflow to wait for its signal")
        live = await h.query("seen")
    # A fresh worker replays the run: its lengths must be those the live run saw (or replay diverges).
    async with duro.Worker(client, task_queue="port", workflows=[counts_history], activities=[record]) as second:
        await h.signal("go")
        seen = await h.result()
        assert second.stats["replays"] == 1 and first.stats["replays"] == 0
    assert seen[:4] == live  # what the live run computed, the replay computed again
    lengths = seen[:5]
    assert lengths == sorted(lengths) and len(set(lengths)) == 5  # grows with each step
    hist = await h.fetch_history()
    # Counted: inputs, commands and one event per workflow task, so at most the real length.
    assert 0 < lengths[-1] <= len(hist)
    assert seen[5] is False
    assert seen[6] == [3600.0, 7200.0]


# The worked example of docs/migrating-from-temporal.md (Temporal's "hello update" sample, ported).
@duro.workflow(name="GreetingWorkflow")
async def greeting_workflow(ctx: duro.WorkflowContext) -> str:
    state = {"is_complete": False}

    async def update_workflow_status() -> str:
        state["is_complete"] = True
        return "Workflow status updated"

    ctx.set_update_handler("update_workflow_status", update_workflow_status)
    await ctx.wait_condition(lambda: state["is_complete"])
    await ctx.wait_condition(ctx.all_handlers_finished)  # let the update's handler return first
    return "Hello, World!"


async def test_the_migration_pages_worked_example(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="update-workflow-task-queue", workflows=[greeting_workflow]):
        handle = await client.start_workflow(greeting_workflow, id="update-workflow-id",
                                             task_queue="update-workflow-task-queue")
        assert await handle.execute_update("update_workflow_status") == "Workflow status updated"
        assert await handle.result() == "Hello, World!"
