"""A workflow task leased to this process just as its worker stopped is given back, not stranded."""

from __future__ import annotations

from typing import Any

import duro
from duro._local import local_dispatch
from duro.engine.machine import WTASK_LEASE_S
from duro.stores.base import Effect, WorkflowTaskReady
from tests.waiting import eventually


@duro.workflow
async def waits_for_go(ctx: duro.WorkflowContext) -> str:
    return str(await ctx.wait_signal("go"))


async def test_a_task_whose_worker_stopped_before_its_delivery_goes_to_the_next_worker(client: duro.Client) -> None:
    dispatch = local_dispatch(client.store)
    first = duro.Worker(client, task_queue="handoff", workflows=[waits_for_go])
    async with first:
        handle = await client.start_workflow(waits_for_go, id="handoff-1", task_queue="handoff")
        await eventually(lambda: _tasks_done(handle), "the first task to complete")
        deliver = dispatch.deliver

        def late(effects: list[Effect]) -> None:
            # The stop happens between the signal's commit (which leased the task to this process,
            # a worker being attached then) and the delivery of that commit's effects.
            if any(isinstance(e, WorkflowTaskReady) for e in effects) and first in dispatch.workers:
                dispatch.detach(first)
            deliver(effects)

        dispatch.deliver = late  # type: ignore[method-assign]
        try:
            await handle.signal("go", "now")
        finally:
            dispatch.deliver = deliver  # type: ignore[method-assign]
    async with duro.Worker(client, task_queue="handoff", workflows=[waits_for_go]):
        # Well before the lease would end: the task was given back when it found no worker.
        assert await eventually(lambda: _result(handle), "the next worker to finish the run",
                                timeout=WTASK_LEASE_S / 3) == "now"


async def _tasks_done(handle: duro.WorkflowHandle) -> bool:
    return any(e.event_type == "WorkflowTaskCompleted" for e in await handle.fetch_history())


async def _result(handle: duro.WorkflowHandle) -> Any:
    desc = await handle.describe()
    return await handle.result() if desc.status == "completed" else None
