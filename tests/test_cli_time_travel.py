"""``duro query --at-event`` and ``duro history --state``, run as another process (it has no workflow code).

The worker runs in this process; the command's requests reach it through the store, as they reach a
worker in production.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator

import pytest

import duro
from tests.engine import time_travel_wfs as tt
from tests.engine.test_time_travel import run_to_slept
from tests.processes import Result, run_command
from tests.test_cli import Cli, one_error_line


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=tt.QUEUE, workflows=tt.WORKFLOWS, activities=tt.ACTIVITIES) as w:
        yield w


@pytest.fixture
def duro_cli(store: str) -> Cli:
    """Run ``python -m duro.cli --store STORE ARGS...`` as another process (the test's loop keeps running)."""

    async def run(*argv: str, timeout: float = 30) -> Result:
        return await run_command([sys.executable, "-m", "duro.cli", "--store", store, *argv], timeout=timeout)

    return run


async def test_query_at_event(client: duro.Client, worker: duro.Worker, duro_cli: Cli) -> None:
    handle = await client.start_workflow(tt.stepper, id="tt-cli", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    first, signalled, doubled = lm.tasks[:3]
    r = await duro_cli("query", "tt-cli", "state", "--at-event", str(first))
    assert r.code == 0 and json.loads(r.out) == {"stage": "started", "value": 0, "added": []}, r
    r = await duro_cli("query", "tt-cli", "value_plus", "--at-event", str(lm.activity_done), "1")
    assert r.code == 0 and json.loads(r.out) == 6, r  # the activity's result is not seen yet
    r = await duro_cli("query", "tt-cli", "value_plus", "1", "--at-event", str(doubled), "--json")
    assert r.code == 0 and json.loads(r.out) == {"workflow_id": "tt-cli", "query": "value_plus", "args": [1],
                                                 "result": 11, "at_event": doubled}, r
    r = await duro_cli("query", "tt-cli", "state", "--at-event", str(signalled), "--run", handle.run_id or "")
    assert r.code == 0 and json.loads(r.out)["stage"] == "signalled", r
    # Without --at-event: the present, as before.
    r = await duro_cli("query", "tt-cli", "state", "--json")
    assert r.code == 0 and json.loads(r.out) == {"workflow_id": "tt-cli", "query": "state", "args": [],
                                                 "result": {"stage": "slept", "value": 10, "added": [5]}}, r
    one_error_line(await duro_cli("query", "tt-cli", "state", "--at-event", "1"), 1, "had not run by event 1")
    for bad in ("0", "-2", "x", "2.5"):
        one_error_line(await duro_cli("query", "tt-cli", "state", "--at-event", bad), 2, "--at-event",
                       f"expected a positive integer, got {bad!r}")
    one_error_line(await duro_cli("query", "tt-cli", "state", "--at-event", str(lm.last + 1)), 2,
                   f"at_event must be an event id of the run, from 1 to {lm.last}")
    # A handler that raises: the error's type is said, as history --state's cells say it.
    one_error_line(await duro_cli("query", "tt-cli", "value_plus", '"x"', "--at-event", str(doubled)), 1,
                   "query 'value_plus' of workflow 'tt-cli' raised TypeError:", "unsupported operand")
    await handle.signal("finish")
    await handle.result()
    r = await duro_cli("query", "tt-cli", "state", "--at-event", str(doubled))
    assert r.code == 0 and json.loads(r.out)["stage"] == "doubled", r


async def test_history_with_state(client: duro.Client, worker: duro.Worker, duro_cli: Cli) -> None:
    handle = await client.start_workflow(tt.stepper, id="tt-hist", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    await handle.signal("finish")
    await handle.result()
    history = await handle.fetch_history()
    tasks = [e.event_id for e in history if e.event_type == "WorkflowTaskCompleted"]
    expected = [{"stage": "started", "value": 0, "added": []}, {"stage": "signalled", "value": 5, "added": [5]},
                {"stage": "doubled", "value": 10, "added": [5]}, {"stage": "slept", "value": 10, "added": [5]},
                {"stage": "done", "value": 10, "added": [5]}]
    assert len(tasks) == len(expected) and tasks[:4] == lm.tasks[:4]

    r = await duro_cli("history", "tt-hist", "--state", "state")
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].startswith("workflow 'tt-hist'") and lines[1].split()[-2:] == ["state:", "state"], lines[:2]
    rows = {int(line.split()[0]): line for line in lines[2:]}
    assert sorted(rows) == [e.event_id for e in history]
    for event_id, state in zip(tasks, expected, strict=True):
        assert rows[event_id].endswith(json.dumps(state, separators=(",", ":"))), rows[event_id]
    assert not rows[lm.signal].endswith("}")  # only workflow tasks carry a state

    r = await duro_cli("history", "tt-hist", "--state", "value_plus", "--state-arg", "100", "--json")
    assert r.code == 0, r
    doc = json.loads(r.out)
    assert doc["state"] == {"query": "value_plus", "args": [100], "answers": [
        {"event_id": t, "result": s["value"] + 100, "error": None} for t, s in zip(tasks, expected, strict=True)]}
    # The history's own keys are History.to_json's, so the document reads back as the history.
    again = duro.History.from_json(r.out)
    assert [e.event_id for e in again] == [e.event_id for e in history]
    assert [e.payload for e in again] == [e.payload for e in history]
    del doc["state"]
    assert doc == json.loads(history.to_json())

    r = await duro_cli("history", "tt-hist", "--state", "nope", "--json")
    assert r.code == 0, r
    answers = json.loads(r.out)["state"]["answers"]
    assert len(answers) == len(tasks) and all(a["result"] is None and "no query handler 'nope'" in a["error"]["message"]
                                              for a in answers)
    r = await duro_cli("history", "tt-hist", "--state", "nope")
    assert r.code == 0 and "error: DuroError: workflow 'stepper' has no query handler 'nope'" in r.out, r

    one_error_line(await duro_cli("history", "tt-hist", "--state-arg", "1"), 2, "--state QUERY")
    one_error_line(await duro_cli("history", "tt-hist", "--state", "state", "--state-arg", "{x"), 2, "not JSON")


async def test_history_state_before_any_workflow_task(client: duro.Client, duro_cli: Cli) -> None:
    """No workflow task has completed: no state to show, and no worker is asked (none runs here)."""
    await client.start_workflow(tt.stepper, id="tt-early", task_queue="nobody-here")
    r = await duro_cli("history", "tt-early", "--state", "state", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["state"] == {"query": "state", "args": [], "answers": []}
    r = await duro_cli("history", "tt-early", "--state", "state")
    assert r.code == 0 and "WorkflowExecutionStarted" in r.out and "state: state" in r.out, r
