"""``handle.reset(event_id=..., reason=...)`` and ``duro reset`` end to end, on each store.

A workflow runs with a "bad deploy" of its code, is reset to an earlier WorkflowTaskCompleted, and
the new run goes on with the current code: the activities after the point run again, signals that
arrived after the point reach the new run, the old run shows terminated with the reason, and the
workflow id names the new run. Nothing sleeps: conditions are polled (``tests.waiting``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import duro
from duro.cli import main
from duro.history import History, HistoryEvent
from duro.stores.check import check_store
from duro.testing import WorkflowEnvironment
from tests.waiting import eventually

QUEUE = "reset"
#: The code version the workflow runs: 1 is the bad deploy (stuck), "fail" fails, 2 is the fix.
CODE: dict[str, Any] = {"version": 2}
CALLS: list[str] = []
GATE: dict[str, asyncio.Event] = {}


@duro.activity
async def step(actx: duro.ActivityContext, name: str) -> str:
    CALLS.append(name)
    return name.upper()


@duro.activity
async def gate(actx: duro.ActivityContext, name: str) -> str:
    CALLS.append(name)
    await GATE["open"].wait()
    return name.upper()


@duro.workflow
async def pipeline(ctx: duro.WorkflowContext) -> dict[str, Any]:
    notes: list[Any] = []
    ctx.set_signal_handler("note", lambda x: notes.append(x))
    steps = [await ctx.execute_activity(step, "a", start_to_close_timeout=10)]
    steps.append(await ctx.execute_activity(step, "b", start_to_close_timeout=10))
    version = CODE["version"]
    if version == 1:
        await ctx.wait_signal("never")  # the bad deploy: stuck here
    elif version == "fail":
        raise duro.ApplicationError("the bad deploy broke it", non_retryable=True)
    steps.append(await ctx.execute_activity(step, "c", start_to_close_timeout=10))
    await ctx.wait_condition(lambda: len(notes) >= 2)
    return {"steps": steps, "notes": notes, "version": version}


@duro.workflow
async def gated(ctx: duro.WorkflowContext) -> dict[str, Any]:
    notes: list[Any] = []
    ctx.set_signal_handler("note", lambda x: notes.append(x))
    pending = ctx.execute_activity(gate, "g", start_to_close_timeout=30)
    await ctx.wait_condition(lambda: len(notes) >= 1)
    return {"gate": await pending, "notes": notes}


@duro.workflow
async def sleepy(ctx: duro.WorkflowContext) -> str:
    first = await ctx.execute_activity(step, "a", start_to_close_timeout=10)
    await ctx.sleep(3600)
    if CODE["version"] == "fail":
        raise duro.ApplicationError("the bad deploy broke it", non_retryable=True)
    return f"{first} after an hour"


@pytest.fixture(autouse=True)
def _code() -> Iterator[None]:
    CODE["version"] = 2
    CALLS.clear()
    GATE["open"] = asyncio.Event()
    yield
    CODE["version"] = 2


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=QUEUE, workflows=[pipeline, gated], activities=[step, gate]) as w:
        yield w


def point_before(history: History, seq: int) -> int:
    """The WorkflowTaskCompleted whose task scheduled activity ``seq``."""
    events = list(history)
    for ev, nxt in itertools.pairwise(events):
        if ev.event_type == "WorkflowTaskCompleted" and nxt.event_type == "ActivityTaskScheduled" and nxt.ref == seq:
            return ev.event_id
    raise AssertionError(f"no workflow task scheduled activity {seq}: {[e.event_type for e in events]}")


def of_type(history: History, event_type: str) -> list[HistoryEvent]:
    return [ev for ev in history if ev.event_type == event_type]


async def stuck_after_b(handle: duro.WorkflowHandle) -> History:
    """Wait until the bad deploy's run completed activity b and the task after it (it now waits)."""
    async def check() -> History | None:
        h = await handle.fetch_history()
        done_b = [ev.event_id for ev in h if ev.event_type == "ActivityTaskCompleted" and ev.ref == 2]
        if done_b and any(ev.event_type == "WorkflowTaskCompleted" and ev.event_id > done_b[0] for ev in h):
            return h
        return None

    history: History = await eventually(check, "the run to wait after activity b")
    return history


async def test_reset_of_an_open_run_reruns_from_the_point_with_the_current_code(client: duro.Client,
                                                                               worker: duro.Worker) -> None:
    CODE["version"] = 1
    handle = await client.start_workflow(pipeline, id="r-open", task_queue=QUEUE)
    old_run = handle.run_id
    assert old_run is not None
    await stuck_after_b(handle)
    await handle.signal("note", 1)  # after the reset point: must not be lost
    before = await handle.fetch_history()
    point = point_before(before, 2)  # the task that scheduled b: the new code decides from there
    CODE["version"] = 2
    new = await handle.reset(event_id=point, reason="bad deploy")
    assert new.id == "r-open" and new.run_id not in (None, old_run)
    await new.signal("note", 2)  # after the reset, to the new run
    assert await new.result() == {"steps": ["A", "B", "C"], "notes": [1, 2], "version": 2}
    assert CALLS == ["a", "b", "b", "c"]  # b (decided at the point) ran again, a did not
    # The old run: terminated with the reason, its history otherwise as it was.
    old = client.get_handle("r-open", run_id=old_run)
    desc = await old.describe()
    assert desc.status == "terminated"
    old_history = await old.fetch_history()
    assert [ev.event_id for ev in old_history][:len(before)] == [ev.event_id for ev in before]
    end = old_history[len(old_history) - 1]
    assert end.event_type == "WorkflowExecutionTerminated"
    assert end.data()["message"] == "reset: bad deploy"
    assert end.data()["new_run_id"] == new.run_id
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    assert isinstance(info.value.__cause__, duro.TerminatedError)
    # The id names the new run.
    latest = await client.get_handle("r-open").describe()
    assert (latest.run_id, latest.status) == (new.run_id, "completed")
    # The new run's history: the old events before the point, the reset record, the signal carried.
    new_history = await new.fetch_history()
    assert [(e.event_id, e.event_type, e.payload) for e in new_history][:point - 1] == [
        (e.event_id, e.event_type, e.payload) for e in before][:point - 1]
    mark = new_history[point - 1]
    assert (mark.event_id, mark.event_type, mark.name) == (point, "WorkflowTaskFailed", "ResetWorkflow")
    assert mark.data()["reset"] == {"run_id": old_run, "event_id": point, "reason": "bad deploy"}
    notes = [ev.data() for ev in of_type(new_history, "WorkflowExecutionSignaled")]
    assert notes == [[1], [2]]
    assert [ev.ref for ev in of_type(new_history, "ActivityTaskCompleted")] == [1, 2, 3]


async def test_reset_of_a_failed_run_moves_the_id_to_the_new_run(client: duro.Client, worker: duro.Worker) -> None:
    CODE["version"] = "fail"
    handle = await client.start_workflow(pipeline, id="r-closed", task_queue=QUEUE)
    with pytest.raises(duro.WorkflowFailedError):
        await handle.result()
    CODE["version"] = 2
    history = await handle.fetch_history()
    new = await client.get_handle("r-closed").reset(event_id=point_before(history, 2))
    await new.signal("note", "x")
    await new.signal("note", "y")
    assert await new.result() == {"steps": ["A", "B", "C"], "notes": ["x", "y"], "version": 2}
    old = await client.get_handle("r-closed", run_id=handle.run_id).describe()
    assert old.status == "failed"  # a closed run stays as it closed
    assert list(await handle.fetch_history()) == list(history)
    assert (await client.get_handle("r-closed").describe()).run_id == new.run_id


async def test_an_activity_pending_at_the_point_carries_on_in_the_new_run(client: duro.Client, worker: duro.Worker,
                                                                          store: str) -> None:
    handle = await client.start_workflow(gated, id="r-gate", task_queue=QUEUE)
    await eventually(lambda: CALLS == ["g"], "the gate activity to start")
    await handle.signal("note", "n1")

    async def task_after_signal() -> int | None:
        h = await handle.fetch_history()
        signalled = of_type(h, "WorkflowExecutionSignaled")
        done = [ev.event_id for ev in of_type(h, "WorkflowTaskCompleted")
                if signalled and ev.ref >= signalled[0].event_id]
        return done[0] if done else None

    point: int = await eventually(task_after_signal, "the task that saw the signal")
    await handle.signal("note", "n2")
    new = await handle.reset(event_id=point, reason="again")
    # The attempt running in the old run is superseded: the new run runs it again as attempt 2.
    await eventually(lambda: CALLS == ["g", "g"], "the gate activity to run again for the new run")
    GATE["open"].set()
    assert await new.result() == {"gate": "G", "notes": ["n1", "n2"]}
    assert (await client.get_handle("r-gate", run_id=handle.run_id).describe()).status == "terminated"
    scheduled = of_type(await new.fetch_history(), "ActivityTaskScheduled")
    assert [ev.ref for ev in scheduled] == [1]  # recorded once, before the point: not decided again
    (done,) = of_type(await new.fetch_history(), "ActivityTaskCompleted")
    assert done.attempt == 2
    report = await asyncio.to_thread(check_store, store)  # records, index, tasks and timers agree
    assert report.ok, report.problems


async def test_bad_resets_are_refused_and_nothing_is_written(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(pipeline, id="r-bad", task_queue=QUEUE)
    await handle.signal("note", 1)
    await handle.signal("note", 2)
    await handle.result()
    history = await handle.fetch_history()
    scheduled = of_type(history, "ActivityTaskScheduled")[0].event_id
    points = [ev.event_id for ev in of_type(history, "WorkflowTaskCompleted")]
    with pytest.raises(duro.DuroError, match=f"not a WorkflowTaskCompleted.*: {points[0]}, {points[1]}"):
        await handle.reset(event_id=scheduled)
    with pytest.raises(duro.DuroError, match=f"its history has events 1 to {len(history)}"):
        await handle.reset(event_id=len(history) + 1)
    with pytest.raises(ValueError, match="1 or more"):
        await handle.reset(event_id=0)
    with pytest.raises(TypeError, match="event_id must be an int"):
        await handle.reset(event_id="2")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reason must be a str"):
        await handle.reset(event_id=points[0], reason=3)  # type: ignore[arg-type]
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("r-nobody").reset(event_id=2)
    with pytest.raises(duro.WorkflowNotFoundError):
        await client.get_handle("r-bad", run_id="ab" * 16).reset(event_id=2)
    assert list(await handle.fetch_history()) == list(history)
    desc = await client.get_handle("r-bad").describe()
    assert (desc.run_id, desc.status) == (handle.run_id, "completed")


async def test_a_run_that_has_not_completed_a_workflow_task_cannot_be_reset(client: duro.Client) -> None:
    handle = await client.start_workflow(pipeline, id="r-new", task_queue="nobody-polls-this")
    with pytest.raises(duro.DuroError, match="no completed workflow task yet"):
        await handle.reset(event_id=1)
    assert len(await handle.fetch_history()) == 1


async def test_duro_reset_prints_the_new_run_id(client: duro.Client, worker: duro.Worker, store: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    CODE["version"] = 1
    handle = await client.start_workflow(pipeline, id="r-cli", task_queue=QUEUE)
    point = point_before(await stuck_after_b(handle), 2)
    CODE["version"] = 2

    async def cli(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["--store", store, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = await cli("reset", "r-cli", "--event-id", "3", "--reason", "x")
    assert code == 1 and out == "" and "not a WorkflowTaskCompleted" in err
    code, out, err = await cli("reset", "r-cli", "--event-id", "0")
    assert code == 2 and "--event-id" in err
    code, out, err = await cli("reset", "r-cli", "--event-id", str(point), "--run-id", str(handle.run_id),
                               "--reason", "bad deploy")
    assert (code, err) == (0, "")
    new_run = out.strip()
    assert len(new_run) == 32 and new_run != handle.run_id
    new = client.get_handle("r-cli")
    await new.signal("note", 1)
    await new.signal("note", 2)
    assert await new.result() == {"steps": ["A", "B", "C"], "notes": [1, 2], "version": 2}
    assert (await new.describe()).run_id == new_run
    old_end = list(await client.get_handle("r-cli", run_id=handle.run_id).fetch_history())[-1]
    assert old_end.data()["message"] == "reset: bad deploy"


@pytest.fixture(params=["temporary", "postgresql"])
def env_store(request: pytest.FixtureRequest) -> str | None:
    """``WorkflowEnvironment(store=...)``: None (its own temporary LMDB store) or a fresh PostgreSQL schema."""
    if request.param == "temporary":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_reset_in_a_time_skipping_environment(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue=QUEUE, workflows=[sleepy], activities=[step]):
            CODE["version"] = "fail"
            handle = await env.client.start_workflow(sleepy, id="r-skip", task_queue=QUEUE)
            with pytest.raises(duro.WorkflowFailedError):
                await handle.result()
            history = await handle.fetch_history()
            (started,) = of_type(history, "TimerStarted")
            point = started.event_id - 1  # the task that started the timer: the new code sleeps again
            assert history[point - 1].event_type == "WorkflowTaskCompleted"
            CODE["version"] = 2
            skipped = env.skipped
            new = await handle.reset(event_id=point, reason="fixed")
            assert await new.result() == "A after an hour"
            assert env.skipped >= skipped + 3600 - 60
            assert CALLS == ["a"]  # decided before the point: not run again
