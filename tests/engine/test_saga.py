"""``duro.Saga``: compensations run as activities, in reverse (or in parallel), on a real store."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import duro
from duro.saga import SagaError
from tests.waiting import eventually

# What the activities did, in order (module global, like wfs.CALLS): cleared by every test.
LOG: list[str] = []

ONCE = duro.RetryPolicy(initial_interval=0.01, maximum_attempts=1)


@pytest.fixture(autouse=True)
def _clear_log() -> None:
    LOG.clear()


@duro.activity
async def book(ctx: duro.ActivityContext, what: str) -> str:
    LOG.append(f"book {what}")
    return f"{what}-ref"


@duro.activity
async def book_failing(ctx: duro.ActivityContext, what: str) -> str:
    LOG.append(f"book {what} failed")
    raise duro.ApplicationError(f"no {what} available", type="Unavailable", non_retryable=True)


@duro.activity
async def cancel(ctx: duro.ActivityContext, ref: str) -> None:
    await asyncio.sleep(0.01)  # lets parallel compensations overlap
    LOG.append(f"cancel {ref}")


@duro.activity
async def cancel_failing(ctx: duro.ActivityContext, ref: str) -> None:
    LOG.append(f"cancel {ref} failed")
    raise duro.ApplicationError(f"cannot cancel {ref}", type="CancelFailed", non_retryable=True)


def not_an_activity(ref: str) -> None:
    """A plain function: not durable, so add_compensation refuses it."""


@duro.workflow
async def trip(ctx: duro.WorkflowContext, items: list[str], fail_at: str | None, parallel: bool) -> list[str]:
    """Books each item, registering its cancellation; ``fail_at`` is booked with a failing activity."""
    refs = []
    async with duro.Saga(ctx, parallel=parallel) as saga:
        for item in items:
            act = book_failing if item == fail_at else book
            ref = await ctx.execute_activity(act, item)
            saga.add_compensation(cancel, ref)
            refs.append(ref)
    return refs


@duro.workflow
async def trip_bad_compensations(ctx: duro.WorkflowContext, parallel: bool) -> None:
    """Four steps; the compensations of the 1st and 3rd fail, then step 5 fails the saga."""
    async with duro.Saga(ctx, parallel=parallel) as saga:
        for i, undo in enumerate([cancel_failing, cancel, cancel_failing, cancel], start=1):
            ref = await ctx.execute_activity(book, f"s{i}")
            saga.add_compensation(undo, ref, retry_policy=ONCE)
        await ctx.execute_activity(book_failing, "s5")


@duro.workflow
async def trip_caught(ctx: duro.WorkflowContext) -> dict[str, Any]:
    """The workflow itself catches the saga's error and reports what it saw."""
    try:
        async with duro.Saga(ctx) as saga:
            ref = await ctx.execute_activity(book, "a")
            saga.add_compensation(cancel_failing, ref, retry_policy=ONCE)
            ref = await ctx.execute_activity(book, "b")
            saga.add_compensation(cancel, ref)
            raise ValueError("workflow logic failed")
    except SagaError as e:
        cause = e.__cause__
        return {"type": e.type, "details": e.details, "n": len(e.compensation_errors),
                "first": type(e.compensation_errors[0]).__name__, "cause": f"{type(cause).__name__}: {cause}"}
    raise AssertionError("the saga block always raises")


@duro.workflow
async def trip_timeout(ctx: duro.WorkflowContext) -> str:
    """The saga block is cancelled by a timeout (a durable timer): compensations still run."""
    try:
        # Long enough for both bookings on any store (a PostgreSQL commit takes tens of ms).
        async with asyncio.timeout(1.0):
            async with duro.Saga(ctx) as saga:
                ref = await ctx.execute_activity(book, "a")
                saga.add_compensation(cancel, ref)
                ref = await ctx.execute_activity(book, "b")
                saga.add_compensation(cancel, ref)
                await ctx.wait_signal("never")
    except TimeoutError:
        return "timed out"
    return "unreachable"


@duro.workflow
async def trip_task_cancelled(ctx: duro.WorkflowContext) -> list[Any]:
    """A task running a saga is cancelled twice (the 2nd time mid-compensation): all compensations run."""
    started = asyncio.Event()

    async def booking() -> None:
        async with duro.Saga(ctx) as saga:
            for item in ("x", "y"):
                ref = await ctx.execute_activity(book, item)
                saga.add_compensation(cancel, ref)
            saga.add_compensation(cancel_failing, "z", retry_policy=ONCE)
            started.set()
            await ctx.wait_signal("never")

    task = asyncio.get_running_loop().create_task(booking())
    await started.wait()
    task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    task.cancel()  # while the compensations run: they are shielded
    try:
        await task
    except asyncio.CancelledError as e:
        # The 2nd cancellation is the one that propagates; the 1st, which started the compensation, is its context.
        return ["cancelled", getattr(e, "__notes__", []), type(e.__context__).__name__]
    return ["not cancelled"]


@duro.workflow
async def trip_waiting(ctx: duro.WorkflowContext, who: str) -> None:
    """Waits inside the saga block, so an evicted instance drops its coroutine there (GeneratorExit)."""
    async with duro.Saga(ctx) as saga:
        ref = await ctx.execute_activity(book, who)
        saga.add_compensation(cancel, ref)
        await ctx.wait_signal("go")
        await ctx.execute_activity(book_failing, f"{who}'s car")


@duro.workflow
async def explicit_compensate(ctx: duro.WorkflowContext, approve: bool) -> str:
    """A workflow that rolls back on a decision rather than an error."""
    async with duro.Saga(ctx) as saga:
        ref = await ctx.execute_activity(book, "a")
        saga.add_compensation(cancel, ref)
        if not approve:
            await saga.compensate()
            return "rolled back"
    return "kept"


@duro.workflow
async def bad_registration(ctx: duro.WorkflowContext) -> list[str]:
    errors = []
    saga = duro.Saga(ctx)
    for bad in (not_an_activity, 42):
        try:
            saga.add_compensation(bad, "r")  # type: ignore[arg-type]
        except TypeError as e:
            errors.append(str(e))
    try:
        saga.add_compensation(cancel, "r", start_to_close_timeout="soon")  # type: ignore[arg-type]
    except TypeError as e:
        errors.append(str(e))
    return errors


@duro.workflow(name="trip")
async def trip_changed(ctx: duro.WorkflowContext, items: list[str], fail_at: str | None, parallel: bool) -> None:
    """``trip`` with a different compensation: its recorded histories no longer replay."""
    async with duro.Saga(ctx, parallel=parallel) as saga:  # the divergence is reported here
        for item in items:
            ref = await ctx.execute_activity(book_failing if item == fail_at else book, item)
            saga.add_compensation(cancel_failing, ref)


WORKFLOWS: list[Callable[..., Any]] = [
    trip, trip_bad_compensations, trip_caught, trip_timeout, trip_task_cancelled, trip_waiting,
    explicit_compensate, bad_registration,
]
ACTIVITIES: list[Callable[..., Any]] = [book, book_failing, cancel, cancel_failing]


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue="saga", workflows=WORKFLOWS, activities=ACTIVITIES) as w:
        yield w


async def replay(handle: duro.WorkflowHandle) -> duro.History:
    """Replay the run's history (through JSON, as a file would be) against the current code."""
    history = duro.History.from_json((await handle.fetch_history()).to_json())
    await duro.testing.Replayer(workflows=WORKFLOWS).replay(history)
    return history


def scheduled(history: duro.History) -> list[str]:
    return [e.name for e in history if e.event_type == "ActivityTaskScheduled"]


async def test_success_runs_no_compensation(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip, ["flight", "hotel"], None, False, id="ok", task_queue="saga")
    assert await handle.result() == ["flight-ref", "hotel-ref"]
    assert LOG == ["book flight", "book hotel"]
    assert scheduled(await replay(handle)) == ["book", "book"]


async def test_compensations_run_in_reverse_then_the_error_propagates(client: duro.Client,
                                                                      worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip, ["flight", "hotel", "car", "tour"], "car", False, id="rev",
                                         task_queue="saga")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    assert LOG == ["book flight", "book hotel", "book car failed", "cancel hotel-ref", "cancel flight-ref"]
    # Every compensation succeeded: the workflow fails with the original error, unchanged.
    cause = info.value.__cause__
    assert isinstance(cause, duro.ActivityError) and cause.activity_type == "book_failing"
    root = cause.__cause__
    assert isinstance(root, duro.ApplicationError) and root.type == "Unavailable" and root.message == "no car available"
    history = await replay(handle)
    assert scheduled(history) == ["book", "book", "book_failing", "cancel", "cancel"]
    assert history[-1].event_type == "WorkflowExecutionFailed"


async def test_changed_compensation_is_a_nondeterminism_error(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip, ["a", "b"], "b", False, id="changed", task_queue="saga")
    with pytest.raises(duro.WorkflowFailedError):
        await handle.result()
    with pytest.raises(duro.NonDeterminismError) as info:
        await duro.testing.Replayer(workflows=[trip_changed]).replay(await handle.fetch_history())
    message = str(info.value)
    assert "recorded ActivityTaskScheduled(seq=3, name='cancel')" in message
    assert "name='cancel_failing')" in message
    lines, first = inspect.getsourcelines(trip_changed)
    saga_line = first + next(i for i, line in enumerate(lines) if "async with duro.Saga" in line)
    assert message.endswith(f"{__file__}:{saga_line}"), message


async def test_parallel_runs_all_compensations(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip, ["a", "b", "c", "d"], "d", True, id="par", task_queue="saga")
    with pytest.raises(duro.WorkflowFailedError):
        await handle.result()
    assert LOG[:4] == ["book a", "book b", "book c", "book d failed"]
    assert sorted(LOG[4:]) == ["cancel a-ref", "cancel b-ref", "cancel c-ref"]
    history = await replay(handle)
    assert scheduled(history) == ["book", "book", "book", "book_failing", "cancel", "cancel", "cancel"]
    # All three were scheduled by one workflow task, before any of them completed.
    events = [(e.event_type, e.name) for e in history]
    first_cancel = events.index(("ActivityTaskScheduled", "cancel"))
    assert events[first_cancel:first_cancel + 3] == [("ActivityTaskScheduled", "cancel")] * 3


@pytest.mark.parametrize("parallel", [False, True])
async def test_failing_compensations_do_not_stop_the_others(client: duro.Client, worker: duro.Worker,
                                                            parallel: bool) -> None:
    handle = await client.start_workflow(trip_bad_compensations, parallel, id=f"bad-{parallel}", task_queue="saga")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    undo = LOG[5:]
    expected = ["cancel s4-ref", "cancel s3-ref failed", "cancel s2-ref", "cancel s1-ref failed"]
    assert undo == expected if not parallel else sorted(undo) == sorted(expected)
    saga_error = info.value.__cause__
    assert isinstance(saga_error, duro.ApplicationError) and saga_error.type == "SagaError"
    assert "2 compensations failed (cancel_failing, cancel_failing)" in saga_error.message
    assert "no s5 available" in saga_error.message
    details = saga_error.details
    assert isinstance(details, list) and len(details) == 2
    assert all(d.startswith("cancel_failing: ActivityError:") for d in details)
    assert "cannot cancel s3-ref" in details[0] and "cannot cancel s1-ref" in details[1]
    # The original error is chained under the SagaError, across the process boundary too.
    original = saga_error.__cause__
    assert isinstance(original, duro.ActivityError) and original.activity_type == "book_failing"
    assert isinstance(original.__cause__, duro.ApplicationError) and original.__cause__.type == "Unavailable"
    history = await replay(handle)
    assert scheduled(history)[5:] == ["cancel", "cancel_failing", "cancel", "cancel_failing"]


async def test_saga_error_inside_the_workflow(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip_caught, id="caught", task_queue="saga")
    got = await handle.result()
    assert got["type"] == "SagaError" and got["n"] == 1 and got["first"] == "ActivityError"
    assert got["cause"] == "ValueError: workflow logic failed"
    assert len(got["details"]) == 1 and got["details"][0].startswith("cancel_failing: ActivityError:")
    assert LOG == ["book a", "book b", "cancel b-ref", "cancel a-ref failed"]
    await replay(handle)


async def test_cancelled_block_still_compensates(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip_timeout, id="timeout", task_queue="saga")
    assert await handle.result() == "timed out"
    assert LOG == ["book a", "book b", "cancel b-ref", "cancel a-ref"]
    await replay(handle)


async def test_compensations_are_shielded_from_repeated_cancellation(client: duro.Client,
                                                                     worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip_task_cancelled, id="cancel2", task_queue="saga")
    status, notes, context = await handle.result()
    assert status == "cancelled" and context == "CancelledError"
    assert LOG == ["book x", "book y", "cancel z failed", "cancel y-ref", "cancel x-ref"]
    assert len(notes) == 1 and notes[0].startswith("saga compensation failed: cancel_failing: ActivityError:")
    await replay(handle)


async def test_cancelled_workflow_compensates_then_ends_cancelled(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(trip_waiting, "cy", id="wf-cancel", task_queue="saga")

    async def booked() -> bool:  # recorded, so the compensation is registered: not just run
        return "ActivityTaskCompleted" in [e.event_type for e in await handle.fetch_history()]

    await eventually(booked, "the booking to be recorded")
    await handle.cancel()
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result(timeout=10)
    assert isinstance(info.value.__cause__, duro.CancelledError)
    assert (await handle.describe()).status == "canceled"
    assert LOG == ["book cy", "cancel cy-ref"]
    history = await replay(handle)
    assert scheduled(history) == ["book", "cancel"]
    assert history[-1].event_type == "WorkflowExecutionCanceled"


async def test_eviction_inside_the_block_does_not_compensate(client: duro.Client) -> None:
    # One cached instance for two runs: each evicts the other, closing its coroutine inside the
    # saga block. That is not a failure: nothing may run then. After replay, the runs fail and compensate.
    async with duro.Worker(client, task_queue="saga", workflows=WORKFLOWS, activities=ACTIVITIES,
                           max_cached_workflows=1) as w:
        handles = [await client.start_workflow(trip_waiting, who, id=f"evict-{who}", task_queue="saga")
                   for who in ("ann", "bob")]
        for _ in range(200):
            if sorted(LOG) == ["book ann", "book bob"] and w.stats["workflow_tasks"] >= 4:
                break
            await asyncio.sleep(0.01)
        assert sorted(LOG) == ["book ann", "book bob"]
        for h in handles:
            await h.signal("go")
            with pytest.raises(duro.WorkflowFailedError):
                await h.result()
        assert w.stats["replays"] >= 1, w.stats
    assert LOG.count("cancel ann-ref") == 1 and LOG.count("cancel bob-ref") == 1
    for h in handles:
        await replay(h)


@pytest.mark.parametrize(("approve", "expected"), [(True, ["book a"]), (False, ["book a", "cancel a-ref"])])
async def test_explicit_compensate(client: duro.Client, worker: duro.Worker, approve: bool,
                                   expected: list[str]) -> None:
    handle = await client.start_workflow(explicit_compensate, approve, id=f"explicit-{approve}", task_queue="saga")
    assert await handle.result() == ("kept" if approve else "rolled back")
    assert LOG == expected
    await replay(handle)


async def test_add_compensation_accepts_only_activities(client: duro.Client, worker: duro.Worker) -> None:
    errors = await client.execute_workflow(bad_registration, id="bad-reg", task_queue="saga")
    assert len(errors) == 3
    assert "'not_an_activity' is not one: decorate it with @duro.activity" in errors[0]
    assert "42 is not one" in errors[1]
    assert "start_to_close_timeout must be seconds" in errors[2]


def test_saga_needs_a_workflow_context() -> None:
    with pytest.raises(TypeError, match="WorkflowContext"):
        duro.Saga(object())  # type: ignore[arg-type]
