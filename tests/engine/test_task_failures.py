"""No stranded task: a workflow task that raises is recorded and retried; own leases expire.

Each test runs on every store through the ``store`` fixture.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import duro
from duro.stores.base import Clock, run_key_of
from tests.waiting import eventually

DEADLINE_S = 20.0





@duro.workflow(name="greet")
async def greet_fixed(ctx: duro.WorkflowContext, name: str) -> str:
    return f"hello {name}"


@duro.workflow
async def two_args(ctx: duro.WorkflowContext, a: int, b: int) -> int:
    return a + b


async def task_failures(handle: duro.WorkflowHandle) -> list[Any]:
    return [e for e in await handle.fetch_history() if e.event_type == "WorkflowTaskFailed"]


async def test_a_raising_task_is_recorded_and_fixed_code_completes_it(client: duro.Client) -> None:
    # A deploy bug: the worker of the queue lacks the workflow (it fails the task, not the run).
    async with duro.Worker(client, task_queue="t", workflows=[two_args]):
        handle = await client.start_workflow("greet", "bob", id="g1", task_queue="t")
        failures = await eventually(lambda: task_failures(handle), "a WorkflowTaskFailed event")
        assert failures[0].name == "WorkflowTaskError" and "not registered" in failures[0].data()["message"]
        desc = await handle.describe()
        assert desc.status == "running" and desc.task_failures >= 1
        # Retries of the same failure count but do not grow the history.
        await eventually(lambda: client.store.run_state(run_key_of(handle.run_id or "")).get("wtf", 0) >= 2,
                         "a second attempt")
        assert len(await task_failures(handle)) == 1
    async with duro.Worker(client, task_queue="t", workflows=[greet_fixed]):
        assert await asyncio.wait_for(handle.result(), DEADLINE_S) == "hello bob"
    history = await handle.fetch_history()
    assert history[-1].event_type == "WorkflowExecutionCompleted"
    assert (await handle.describe()).task_failures == 0
    await duro.testing.Replayer(workflows=[greet_fixed]).replay(history)


async def test_start_by_name_with_wrong_arguments_is_not_stranded(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[two_args]) as worker:
        handle = await client.start_workflow("two_args", "a", id="w1", task_queue="t")
        failures = await eventually(lambda: task_failures(handle), "a WorkflowTaskFailed event")
        assert failures[0].name == "TypeError" or "argument" in failures[0].data()["message"]
        assert worker.stats["task_failures"] >= 1
        # The run can still be closed.
        await handle.terminate("wrong arguments")
        assert (await handle.describe()).status == "terminated"


async def test_unregistered_type_can_still_be_closed(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[two_args]):
        handle = await client.start_workflow("nobody_has_this", 1, id="u1", task_queue="t")
        failures = await eventually(lambda: task_failures(handle), "a WorkflowTaskFailed event")
        assert failures[0].event_id == 2
        await handle.cancel()  # signal/cancel/terminate all still work on it
        await handle.terminate()


class OffsetClock(Clock):
    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset


@duro.activity
async def wait_for_release(ctx: duro.ActivityContext, token: str) -> str:
    await RELEASE.wait()
    return token


RELEASE = asyncio.Event()


@duro.activity(name="wait_for_release")
async def quick(ctx: duro.ActivityContext, token: str) -> str:
    return token + "!"


@duro.workflow
async def one_activity(ctx: duro.WorkflowContext, token: str) -> str:
    result: str = await ctx.execute_activity(wait_for_release, token, start_to_close_timeout=60)
    return result


async def test_a_lease_of_this_process_expires_like_any_other(client: duro.Client) -> None:
    """A worker that went away mid-activity leaves a lease of this very process: it still expires."""
    store: Any = client.store
    clock = OffsetClock()
    store.clock = clock
    global RELEASE
    RELEASE = asyncio.Event()  # an Event binds to the loop of its first waiter: one per test
    async with duro.Worker(client, task_queue="t", workflows=[one_activity], activities=[wait_for_release]) as w:
        handle = await client.start_workflow(one_activity, "x", id="l1", task_queue="t")
        await eventually(lambda: w._act_live, "the activity to start")
    # That worker is gone; its attempt's lease (this process's) runs 60 s + slack.
    async with duro.Worker(client, task_queue="t", workflows=[one_activity], activities=[quick]):
        clock.offset += 120.0
        await store.reap()
        assert await asyncio.wait_for(handle.result(), DEADLINE_S) == "x!"
    attempts = [e for e in await handle.fetch_history() if e.event_type == "ActivityTaskCompleted"]
    assert [e.attempt for e in attempts] == [2]


@pytest.mark.parametrize("policy", [
    {"backoff_coefficient": float("nan")}, {"initial_interval": float("inf")}, {"maximum_interval": -1.0},
])
def test_retry_policies_that_would_hang_are_refused(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        duro.RetryPolicy(**policy)


STARTED: list[tuple[str, int]] = []


@duro.activity
async def gate_then_note(ctx: duro.ActivityContext, token: str) -> str:
    STARTED.append((token, ctx.info.attempt))
    if token == "first":
        await RELEASE.wait()
    return token


@duro.workflow
async def two_in_a_row(ctx: duro.WorkflowContext) -> list[str]:
    a = ctx.execute_activity(gate_then_note, "first", start_to_close_timeout=60)
    b = ctx.execute_activity(gate_then_note, "second", start_to_close_timeout=60)
    return list(await asyncio.gather(a, b))


@pytest.mark.lmdb_only
async def test_an_attempt_whose_lease_was_lost_is_not_started(client: duro.Client) -> None:
    """A paused worker that wakes up must not start attempts another worker has taken over."""
    store: Any = client.store
    global RELEASE
    RELEASE = asyncio.Event()  # an Event binds to the loop of its first waiter: one per test
    STARTED.clear()
    async with duro.Worker(client, task_queue="t", workflows=[two_in_a_row], activities=[gate_then_note],
                           max_concurrent_activities=1) as w:
        handle = await client.start_workflow(two_in_a_row, id="s1", task_queue="t")
        await eventually(lambda: STARTED == [("first", 1)] and len(w._act_backlog) == 1, "one running, one queued")
        # Meanwhile the queued attempt's lease passes to another process (as after a pause).
        queued = w._act_backlog[0]

        def take_over(txn: Any, batch: Any) -> None:
            import orjson

            from duro.stores.base import pack, unpack
            key = queued.task_queue.encode() + b"\x00" + queued.run_key + queued.seq.to_bytes(8, "big")
            meta_b, args, hbd = unpack(txn.get(key, db=store._atask))
            meta = orjson.loads(meta_b)
            meta["o"] = "elsewhere:1:2:3"
            txn.put(key, pack(orjson.dumps(meta), args, hbd), db=store._atask)

        await store._submit(take_over)
        queued.received -= 60.0  # as if this worker had been paused for a minute since it got the task
        RELEASE.set()
        await eventually(lambda: w.stats["stale_activities"] == 1, "the stale attempt to be skipped")
        assert STARTED == [("first", 1)]
        await handle.terminate()


@duro.workflow
async def returns_nan(ctx: duro.WorkflowContext) -> float:
    return float("nan")


async def test_a_completion_recorded_under_older_rules_still_replays(client: duro.Client) -> None:
    """duro 0.1 stored a NaN result as null; replaying that closed run must not diverge."""
    import orjson

    from duro._core import codec
    from duro._core.codec import Event
    from duro.stores.base import pack

    meta = orjson.dumps({"wid": "old", "queue": "t", "first_run": "0" * 32})
    history = duro.History("old", "0" * 32, [
        Event(codec.WORKFLOW_STARTED, 1, 1_000_000, 0, 1, "returns_nan", pack(meta, b"[]")),
        Event(codec.WORKFLOW_TASK_COMPLETED, 2, 1_000_001, 1, 0, "", b""),
        Event(codec.WORKFLOW_COMPLETED, 3, 1_000_001, 0, 0, "", b"null"),
    ])
    await duro.testing.Replayer(workflows=[returns_nan]).replay(history)
