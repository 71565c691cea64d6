"""Time-travel queries: ``handle.query(name, at_event=N)``, answered by replay here or in another process."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import orjson
import pytest

import duro
import duro.interceptor
from duro._query import query_states
from duro.stores.base import unpack
from tests.engine import time_travel_wfs as tt
from tests.processes import ready_process
from tests.waiting import eventually


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=tt.QUEUE, workflows=tt.WORKFLOWS, activities=tt.ACTIVITIES) as w:
        yield w


@dataclass
class Landmarks:
    """Where things happened in a stepper history (ids differ with timing, so they are looked up)."""

    tasks: list[int]  # the WorkflowTaskCompleted ids
    signal: int
    scheduled: int
    activity_done: int
    timer_started: int
    timer_fired: int
    last: int


def landmarks(history: duro.History) -> Landmarks:
    def first(event_type: str) -> int:
        return next(e.event_id for e in history if e.event_type == event_type)

    return Landmarks(tasks=[e.event_id for e in history if e.event_type == "WorkflowTaskCompleted"],
                     signal=first("WorkflowExecutionSignaled"), scheduled=first("ActivityTaskScheduled"),
                     activity_done=first("ActivityTaskCompleted"), timer_started=first("TimerStarted"),
                     timer_fired=first("TimerFired"), last=history[-1].event_id)


async def history_when(handle: duro.WorkflowHandle, what: str, *after: str) -> duro.History:
    """The run's history once its last event is a WorkflowTaskCompleted that follows each of ``after``."""

    async def check() -> duro.History | None:
        history = await handle.fetch_history()
        types = [e.event_type for e in history]
        return history if types[-1] == "WorkflowTaskCompleted" and all(t in types for t in after) else None

    found: duro.History = await eventually(check, what)
    return found


async def run_to_slept(handle: duro.WorkflowHandle) -> Landmarks:
    """Drive a stepper run to its "slept" stage, its first task done before the signal came (so they differ)."""
    await history_when(handle, "the first workflow task")
    await handle.signal("add", 5)
    return landmarks(await history_when(handle, "the task after the timer", "TimerFired"))


def stage(answer: dict[str, object]) -> tuple[object, object]:
    return answer["stage"], answer["value"]


async def check_the_past(handle: duro.WorkflowHandle, lm: Landmarks) -> None:
    """The states of a stepper run up to its "slept" stage, each as it stood right after an event."""

    async def at(n: int) -> tuple[object, object]:
        return stage(await handle.query("state", at_event=n))

    with pytest.raises(duro.DuroError, match="had not run by event 1"):
        await handle.query("state", at_event=1)
    first, signalled, doubled, slept = lm.tasks[:4]
    assert await at(first) == ("started", 0)
    # The signal is recorded, but no task has run the code on it yet.
    assert lm.signal < signalled and await at(lm.signal) == ("started", 0)
    assert await at(signalled) == ("signalled", 5)
    assert (await handle.query("state", at_event=signalled))["added"] == [5]
    # A command of a task: the state after that whole task (its commands were decided together).
    assert lm.scheduled == signalled + 1 and await at(lm.scheduled) == ("signalled", 5)
    assert lm.activity_done < doubled and await at(lm.activity_done) == ("signalled", 5)
    assert await at(doubled) == ("doubled", 10)
    assert await handle.query("value_plus", 1, at_event=doubled) == 11
    assert await handle.query("snapshot", at_event=doubled, result_type=tt.Snapshot) == tt.Snapshot("doubled", 10)
    assert lm.timer_started == doubled + 1 and await at(lm.timer_started) == ("doubled", 10)
    assert await at(lm.timer_fired) == ("doubled", 10)
    assert await at(slept) == ("slept", 10)


async def check_bad_event_ids(handle: duro.WorkflowHandle, last: int) -> None:
    for bad in (0, -1, last + 1, 10**30):
        with pytest.raises(ValueError, match=f"at_event must be an event id of the run, from 1 to {last} "):
            await handle.query("state", at_event=bad)
    for wrong in ("3", 2.0, True):
        with pytest.raises(TypeError, match="at_event must be an int"):
            await handle.query("state", at_event=wrong)  # type: ignore[arg-type]


async def test_query_at_event_replays_here(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(tt.stepper, id="tt-local", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    # Running: the worker holds the run live at "slept"; the past comes from a replay, not from it.
    await check_the_past(handle, lm)
    assert stage(await handle.query("state")) == ("slept", 10)
    assert stage(await handle.query("state", at_event=lm.last)) == ("slept", 10)
    await check_bad_event_ids(handle, lm.last)
    # A handle without the function, and one pinned to the run: the code of this process's worker.
    await check_the_past(client.get_handle("tt-local", run_id=handle.run_id), lm)
    await handle.signal("finish")
    assert (await handle.result())["stage"] == "done"
    # Closed: the same past, and its end.
    await check_the_past(handle, lm)
    done = landmarks(await handle.fetch_history())
    assert stage(await handle.query("state", at_event=done.last)) == ("done", 10)
    assert stage(await handle.query("state", at_event=done.tasks[-1])) == ("done", 10)
    assert stage(await handle.query("state", at_event=done.tasks[-1] - 1)) == ("slept", 10)
    await check_bad_event_ids(handle, done.last)


async def test_many_points_in_one_replay(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(tt.stepper, id="tt-many", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    points = [lm.last, 1, *lm.tasks, lm.signal, lm.tasks[0]]  # any order, repeats allowed
    answers = await query_states(handle, "state", (), points)
    assert isinstance(answers[1], duro.DuroError)
    decoded = [orjson.loads(a) for a in answers if isinstance(a, bytes)]
    assert [stage(d) for d in decoded] == [("slept", 10), ("started", 0), ("signalled", 5), ("doubled", 10),
                                           ("slept", 10), ("started", 0), ("started", 0)]
    await handle.signal("finish")
    await handle.result()


@duro.workflow(name="stepper")
async def stepper_changed(ctx: duro.WorkflowContext) -> None:
    """``stepper`` as far as its first task, then a timer where it recorded the activity."""
    state = {"stage": "started", "value": 0}
    added: list[int] = []
    ctx.set_query_handler("state", lambda: dict(state))
    ctx.set_signal_handler("add", added.append)
    await ctx.wait_condition(lambda: bool(added))
    state["stage"] = "signalled"
    await ctx.sleep(1)


async def test_points_before_a_divergence_keep_their_answers(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(tt.stepper, id="tt-diverged", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    changed = client.get_handle(handle.id, workflow=stepper_changed)  # this process replays with that code
    answers = await query_states(changed, "state", (), [lm.tasks[0], lm.tasks[1], lm.last])
    assert stage(orjson.loads(answers[0])) == ("started", 0)  # type: ignore[arg-type]
    for later in answers[1:]:
        assert isinstance(later, duro.NonDeterminismError), later
        assert f"at event {lm.scheduled}" in str(later) and "TimerStarted" in str(later)
    with pytest.raises(duro.NonDeterminismError):
        await changed.query("state", at_event=lm.last)
    await handle.signal("finish")
    await handle.result()


async def test_a_handler_set_later_is_missing_at_earlier_points(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(tt.late_handler, id="tt-late", task_queue=tt.QUEUE)
    assert await handle.result() == "ok"
    tasks = [e.event_id for e in await handle.fetch_history() if e.event_type == "WorkflowTaskCompleted"]
    with pytest.raises(duro.DuroError, match="no query handler 'ready'"):
        await handle.query("ready", at_event=tasks[0])
    assert await handle.query("ready", at_event=tasks[-1]) is True


class _Moves(duro.interceptor.Interceptor):
    """A client interceptor that records each query's at_event and moves it one task later."""

    def __init__(self, to: int) -> None:
        self.seen: list[int | None] = []
        self.to = to

    def intercept_client(self, next: duro.interceptor.ClientOutboundInterceptor
                         ) -> duro.interceptor.ClientOutboundInterceptor:
        rec = self

        class Out(duro.interceptor.ClientOutboundInterceptor):
            async def query_workflow(self, input: duro.interceptor.QueryWorkflowInput) -> object:
                rec.seen.append(input.at_event)
                if input.at_event is not None:
                    input.at_event = rec.to
                return await self.next.query_workflow(input)

        return Out(next)


async def test_client_interceptors_see_at_event(store: str, client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(tt.stepper, id="tt-intercepted", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    moves = _Moves(to=lm.tasks[2])
    async with duro.Client.connect(store, interceptors=[moves]) as other:
        seen_by = other.get_handle("tt-intercepted", workflow=tt.stepper)
        assert stage(await seen_by.query("state", at_event=lm.tasks[0])) == ("doubled", 10)
        assert stage(await seen_by.query("state")) == ("slept", 10)
    assert moves.seen == [lm.tasks[0], None]
    await handle.signal("finish")
    await handle.result()


# ------------------------------------------------------------------------------------ another process


@pytest.fixture
def remote_worker(store: str) -> Iterator[subprocess.Popen[bytes]]:
    with ready_process("tests/engine/time_travel_worker.py", store) as proc:
        yield proc


async def test_query_at_event_through_a_worker_in_another_process(
        client: duro.Client, remote_worker: subprocess.Popen[bytes]) -> None:
    # Started by name, no worker here: this process has no code to replay, the other process answers.
    handle = await client.start_workflow("stepper", id="tt-remote", task_queue=tt.QUEUE)
    lm = await run_to_slept(handle)
    await check_the_past(handle, lm)
    await check_bad_event_ids(handle, lm.last)
    answers = await query_states(handle, "state", (), [lm.tasks[1], 1, lm.last])
    assert isinstance(answers[1], duro.ApplicationError) and "had not run by event 1" in str(answers[1])
    assert [stage(orjson.loads(a)) for a in answers if isinstance(a, bytes)] == [("signalled", 5), ("slept", 10)]
    with pytest.raises(duro.DuroError, match="no query handler 'nope'"):
        await handle.query("nope", at_event=lm.last)
    await handle.signal("finish")
    assert (await handle.result())["stage"] == "done"
    await check_the_past(handle, lm)
    # A request of a kind this worker does not know is refused, not answered as a query of the present.
    info = await handle.describe()
    head = orjson.dumps({"kind": "query_from_the_future", "run": info.run_id, "name": "state"})
    reply = await client.store.request(tt.QUEUE, head, client.converter.encode_args(()), 10)
    assert reply is not None
    meta, failure = unpack(reply)
    assert orjson.loads(meta) == {"ok": False} and b"does not know requests of kind" in failure


async def test_a_worker_without_time_travel_gives_an_error_not_the_present(client: duro.Client, store: str) -> None:
    with ready_process("tests/engine/time_travel_worker.py", store, "old"):
        handle = await client.start_workflow("stepper", id="tt-old", task_queue=tt.QUEUE)
        lm = await run_to_slept(handle)
        assert stage(await handle.query("state")) == ("slept", 10)  # the present: it answers that
        with pytest.raises(duro.DuroError, match="without time-travel queries"):
            await handle.query("state", at_event=lm.tasks[0])


def test_the_points_a_request_asked_are_named_in_words() -> None:
    from duro._query import _events_phrase

    assert _events_phrase([7]) == "event 7"
    assert _events_phrase([2, 5]) == "events 2 and 5"
    assert _events_phrase([2, 5, 7, 10, 13, 16, 19]) == "events 2, 5, 7, 10, 13 and 2 more"
