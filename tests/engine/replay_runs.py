"""Stored runs for the replay tests: version 1 of ``replay_v1``'s workflows run to three ends, plus one
run of a type the checked modules do not define."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

import duro
from tests.engine import replay_v1 as v1
from tests.waiting import eventually

QUEUE = "replay"
V1_WORKFLOWS = [v1.greeting, v1.failing, v1.waiting]
# The workflow ids of replay_v1's runs, newest first: the order replay takes them in.
NEWEST_FIRST = ["waiting-1", "failing-1", "greeting-1"]


@duro.workflow(name="replay_other")
async def other(ctx: duro.WorkflowContext) -> str:
    """A workflow type that neither replay_v1 nor replay_v2 defines: replay skips its runs."""
    return "other"


@dataclass
class Runs:
    """The recorded runs by role ("greeting", "failing", "waiting", "other"), with their histories."""

    handles: dict[str, duro.WorkflowHandle]
    histories: dict[str, duro.History]

    def run_id(self, role: str) -> str:
        return self.histories[role].run_id


async def _waits_for_go(handle: duro.WorkflowHandle) -> bool:
    # Its second workflow task (after greet) completed: the run now waits for "go", nothing pending.
    return sum(e.event_type == "WorkflowTaskCompleted" for e in await handle.fetch_history()) >= 2


async def record_runs(client: duro.Client) -> Runs:
    """Run version 1: greeting completes, failing fails, waiting stays running (waiting for "go"), then other."""
    async with duro.Worker(client, task_queue=QUEUE, workflows=[*V1_WORKFLOWS, other],
                           activities=[v1.greet, v1.shout]):
        greeting = await client.start_workflow(v1.greeting, "ann", id="greeting-1", task_queue=QUEUE)
        assert await greeting.result() == "HELLO ANN / hello hello ann"
        failing = await client.start_workflow(v1.failing, "bob", id="failing-1", task_queue=QUEUE)
        with pytest.raises(duro.WorkflowFailedError):
            await failing.result()
        waiting = await client.start_workflow(v1.waiting, "cy", id="waiting-1", task_queue=QUEUE)
        await eventually(lambda: _waits_for_go(waiting), "waiting-1 to wait for its signal")
        other_run = await client.start_workflow(other, id="other-1", task_queue=QUEUE)
        assert await other_run.result() == "other"
    handles = {"greeting": greeting, "failing": failing, "waiting": waiting, "other": other_run}
    histories = {role: await h.fetch_history() for role, h in handles.items()}
    assert (await waiting.describe()).status == "running"
    return Runs(handles, histories)
