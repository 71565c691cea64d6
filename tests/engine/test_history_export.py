"""Export -> import -> replay: ``duro history --json`` keeps every event exactly, and replaying what it
printed gives the recorded outcome.

Workflows run on a real store (each kind) and produce every kind of event a history holds:
activities, a local activity's marker, a timer, a signal, an update, children (completed, signalled
through an external handle, cancelled through their handle and through an external handle), a
cancel request to a workflow that is no child, and continue-as-new. Each run's history is exported
with the CLI, read back with ``History.from_json``, compared with the store's, replayed with
``duro.testing.Replayer``, and its last workflow task run again live to compare the outcome (the
result, payload included, which the replay matcher does not compare).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import duro
from duro._cli_output import json_safe
from duro.cli import main
from tests.outcome import command_outcome, recorded_last_task, replayed_last_task
from tests.waiting import eventually

QUEUE = "export"


@duro.activity
async def shout(ctx: duro.ActivityContext, text: str) -> str:
    return text.upper()


@duro.workflow
async def doubles(ctx: duro.WorkflowContext, x: int) -> int:
    return 2 * x


@duro.workflow
async def waits_for_go(ctx: duro.WorkflowContext) -> str:
    got = await ctx.wait_signal("go")
    return f"got {got}"


@duro.workflow
async def tour(ctx: duro.WorkflowContext, run: int) -> dict[str, Any]:
    """Continues as new once; the second run does one of everything."""
    items: list[str] = []

    async def add_item(item: str) -> int:
        items.append(await ctx.execute_activity(shout, item))
        return len(items)

    ctx.set_update_handler("add", add_item)
    if run == 0:
        await ctx.execute_activity(shout, "first run", start_to_close_timeout=10)
        ctx.continue_as_new(1)
    wid = ctx.info.workflow_id
    loud = await ctx.execute_activity(shout, "activity", start_to_close_timeout=10)
    local = await ctx.execute_local_activity(shout, "local", start_to_close_timeout=10)
    await ctx.sleep(0.01)
    approval = await ctx.wait_signal("approve")
    doubled = await ctx.execute_child_workflow(doubles, 21, id=f"{wid}-double")
    signalled = await ctx.start_child_workflow(waits_for_go, id=f"{wid}-signalled")
    kid = await ctx.start_child_workflow(waits_for_go, id=f"{wid}-kid")
    other = await ctx.start_child_workflow(waits_for_go, id=f"{wid}-other")
    await ctx.get_external_workflow_handle(f"{wid}-signalled").signal("go", "from outside")
    await kid.cancel()
    await ctx.get_external_workflow_handle(f"{wid}-other").cancel()
    await ctx.get_external_workflow_handle(f"{wid}-outsider").cancel()
    children: dict[str, str] = {}
    for name, child in (("signalled", signalled), ("kid", kid), ("other", other)):
        try:
            children[name] = await child.result()
        except duro.WorkflowFailedError as e:
            children[name] = f"{type(e).__name__} caused by {type(e.__cause__).__name__}"
    await ctx.wait_condition(lambda: len(items) >= 1)
    return {"activity": loud, "local": local, "approval": approval, "doubled": doubled, "children": children,
            "items": items}


WORKFLOWS: list[Callable[..., Any]] = [tour, doubles, waits_for_go]

#: What the exported histories hold between them: every event type but those of failures, timeouts,
#: terminations and workflow-task failures (which other tests export).
EVENT_TYPES = {
    "WorkflowExecutionStarted", "WorkflowTaskCompleted", "WorkflowExecutionCompleted",
    "WorkflowExecutionContinuedAsNew", "WorkflowExecutionCancelRequested", "WorkflowExecutionCanceled",
    "ActivityTaskScheduled", "ActivityTaskCompleted", "MarkerRecorded", "TimerStarted", "TimerFired",
    "WorkflowExecutionSignaled", "WorkflowExecutionUpdateAccepted", "WorkflowExecutionUpdateCompleted",
    "StartChildWorkflowExecutionInitiated", "ChildWorkflowExecutionCompleted", "ChildWorkflowExecutionCanceled",
    "SignalExternalWorkflowExecutionInitiated", "RequestCancelExternalWorkflowExecutionInitiated",
}


async def cli_history(store: str, capsys: pytest.CaptureFixture[str], workflow_id: str, run_id: str) -> str:
    """What ``duro --store STORE history WORKFLOW_ID --run RUN_ID --json`` prints (run in a thread: it
    runs its own event loop)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--store", store, "history", workflow_id, "--run", run_id, "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and not err, err
    return out


async def run_the_tour(client: duro.Client) -> list[tuple[str, str]]:
    """Run ``tour`` to its end; the (workflow id, run id) of every run it made."""
    outsider = await client.start_workflow(waits_for_go, id="tour-outsider", task_queue=QUEUE)
    first = await client.start_workflow(tour, 0, id="tour", task_queue=QUEUE)
    latest = client.get_handle("tour")

    async def second_run() -> str | None:
        run_id = (await latest.describe()).run_id
        return run_id if run_id != first.run_id else None

    # Signals and updates go to the run that continued as new, not to the first (they would stay there).
    second = await eventually(second_run, "the second run of the tour")
    await latest.signal("approve", {"by": "alice"})
    assert await latest.execute_update("add", "update") == 1
    result = await first.result(timeout=30)
    assert result == {
        "activity": "ACTIVITY", "local": "LOCAL", "approval": {"by": "alice"}, "doubled": 42,
        "children": {"signalled": "got from outside", "kid": "WorkflowFailedError caused by CancelledError",
                     "other": "WorkflowFailedError caused by CancelledError"},
        "items": ["UPDATE"]}
    runs = [("tour", first.run_id or ""), ("tour", second), ("tour-outsider", outsider.run_id or "")]
    for suffix in ("double", "signalled", "kid", "other"):
        runs.append((f"tour-{suffix}", (await client.get_handle(f"tour-{suffix}").describe()).run_id))
    with pytest.raises(duro.WorkflowFailedError):
        await outsider.result(timeout=30)
    return runs


async def test_exported_histories_import_exactly_and_replay_to_the_recorded_outcome(
        client: duro.Client, store: str, capsys: pytest.CaptureFixture[str]) -> None:
    async with duro.Worker(client, task_queue=QUEUE, workflows=WORKFLOWS, activities=[shout]):
        runs = await run_the_tour(client)
    seen: set[str] = set()
    for workflow_id, run_id in runs:
        stored = await client.get_handle(workflow_id, run_id).fetch_history()
        printed = await cli_history(store, capsys, workflow_id, run_id)
        imported = duro.History.from_json(printed)
        # Every field of every event, exactly (Event equality: type, id, time, ref, attempt, name,
        # payload bytes, flags), and the same text when exported again.
        assert (imported.workflow_id, imported.run_id) == (workflow_id, run_id)
        assert imported.core_events == stored.core_events
        assert json_safe(imported.to_json()) + "\n" == printed
        await duro.testing.Replayer(workflows=WORKFLOWS).replay(imported)
        recorded = recorded_last_task(imported)
        assert recorded and recorded[-1].event_id == imported[-1].event_id  # the run's closing event
        replayed = [command_outcome(e) for e in replayed_last_task(WORKFLOWS, imported)]
        assert replayed == [command_outcome(e) for e in recorded], workflow_id
        seen.update(e.event_type for e in imported)
    assert EVENT_TYPES - seen == set()
    # The cancelled children and the outsider's cancellation, as the parent's last run recorded them.
    parent = duro.History.from_json(await cli_history(store, capsys, "tour", runs[1][1]))
    cancels = [e.data() for e in parent if e.event_type == "RequestCancelExternalWorkflowExecutionInitiated"]
    assert [c["id"] for c in cancels] == ["tour-kid", "tour-other", "tour-outsider"]
    child_ids = {e.ref: e.data()["meta"]["id"] for e in parent
                 if e.event_type == "StartChildWorkflowExecutionInitiated"}
    canceled = sorted(child_ids[e.ref] for e in parent if e.event_type == "ChildWorkflowExecutionCanceled")
    assert canceled == ["tour-kid", "tour-other"]
    assert not [e for e in parent if e.event_type == "ChildWorkflowExecutionFailed"]
    # Each cancelled run's WorkflowExecutionCancelRequested names who asked: the parent's run and the
    # RequestCancelExternal... event of its history (as Temporal's external initiated event id).
    asked = {e.data()["id"]: e.event_id for e in parent
             if e.event_type == "RequestCancelExternalWorkflowExecutionInitiated"}
    for target, event_id in asked.items():
        requests = [e.data() for e in await client.get_handle(target).fetch_history()
                    if e.event_type == "WorkflowExecutionCancelRequested"]
        assert requests == [{"requested_by": {"workflow_id": "tour", "run_id": runs[1][1], "event_id": event_id}}]
