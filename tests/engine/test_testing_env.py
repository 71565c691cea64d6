"""duro.testing.WorkflowEnvironment: in-process store, time skipping; on a temporary LMDB store and on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import duro
from duro.stores.base import Clock
from duro.testing import SkippingClock, WorkflowEnvironment
from tests.engine import features_wfs as f
from tests.engine import wfs
from tests.waiting import eventually


@duro.workflow
async def remind_later(ctx: duro.WorkflowContext, hours: float) -> list[str]:
    """An activity, a long sleep, an activity: time is skipped only while nothing but the timer is pending."""
    before = await ctx.execute_activity(f.note, "before", start_to_close_timeout=30)
    t0 = ctx.now()
    await ctx.sleep(hours * 3600)
    after = await ctx.execute_activity(f.note, "after", start_to_close_timeout=30)
    return [before, after, str((ctx.now() - t0).total_seconds() >= hours * 3600)]


WORKFLOWS = [*f.WORKFLOWS, remind_later, wfs.signal_workflow]


@pytest.fixture(params=["temporary", "postgresql"])
def env_store(request: pytest.FixtureRequest) -> str | None:
    """``WorkflowEnvironment(store=...)``: None (its own temporary LMDB store) or a fresh PostgreSQL schema."""
    if request.param == "temporary":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_time_skipping_runs_a_day_long_sleep_at_once(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
            t0 = time.monotonic()
            assert await env.client.execute_workflow(f.sleeper, 86_400.0, id="day", task_queue="t") == "woke"
            assert time.monotonic() - t0 < 5
            assert env.skipped >= 86_000
            history = await env.client.get_handle("day").fetch_history()
            fired = next(e for e in history if e.event_type == "TimerFired")
            assert (fired.timestamp - history[0].timestamp).total_seconds() >= 86_400


async def test_time_skipping_waits_for_activities(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
            result = await env.client.execute_workflow(remind_later, 5.0, id="remind", task_queue="t")
            assert result == ["before", "after", "True"]
            assert 5 * 3600 - 60 < env.skipped < 5 * 3600 + 60  # real time passed meanwhile counts too


async def test_time_skipping_fires_a_run_timeout(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
            handle = await env.client.start_workflow(wfs.signal_workflow, 1, id="late", task_queue="t",
                                                     run_timeout=3600)
            with pytest.raises(duro.WorkflowFailedError):
                await handle.result(timeout=10)
            assert (await handle.describe()).status == "timed_out"
            assert env.skipped > 3600 - 60  # the real time that passed meanwhile counts too


async def test_no_skipping_while_waiting_for_a_signal(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
            handle = await env.client.start_workflow(f.waiting_child, id="w", task_queue="t")
            await handle.signal("go", "x")
            assert await handle.result(timeout=5) == "got x"
            assert env.skipped == 0


async def test_manual_sleep_without_skipping(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
            handle = await env.client.start_workflow(f.sleeper, 600.0, id="m", task_queue="t")

            async def timer_started() -> bool:
                return any(e.event_type == "TimerStarted" for e in await handle.fetch_history())

            await eventually(timer_started, "the workflow to start its timer")
            await env.sleep(601)
            assert await handle.result(timeout=5) == "woke"
            assert env.skipped == pytest.approx(601, abs=1)


async def test_a_given_store_keeps_its_data_and_gets_its_clock_back(pg_url: str) -> None:
    async with duro.Client.connect(pg_url) as other:  # opened first: the environment shares this store
        async with WorkflowEnvironment(store=pg_url, time_skipping=True) as env:
            assert env.client.store is other.store and other.store.clock is env.clock
            async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
                assert await env.client.execute_workflow(f.sleeper, 7200.0, id="kept", task_queue="t") == "woke"
        # The store stays open for `other`, back on the real clock, and the run is still there.
        assert type(other.store.clock) is Clock
        desc = await other.get_handle("kept").describe()
        assert desc.status == "completed" and desc.history_length > 0
    async with duro.Client.connect(pg_url) as again:  # and in a store opened anew
        assert (await again.get_handle("kept").describe()).status == "completed"


async def test_a_given_lmdb_directory_is_left_in_place(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 'store'}"
    async with WorkflowEnvironment(store=url, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=WORKFLOWS, activities=f.ACTIVITIES):
            assert await env.client.execute_workflow(f.sleeper, 60.0, id="lm", task_queue="t") == "woke"
    assert (tmp_path / "store" / "data.mdb").is_file()
    async with duro.Client.connect(url) as client:
        assert (await client.get_handle("lm").describe()).status == "completed"


async def test_two_environments_on_one_store_are_refused(pg_url: str) -> None:
    async with WorkflowEnvironment(store=pg_url) as env:
        with pytest.raises(RuntimeError, match="already runs on this store"):
            async with WorkflowEnvironment(store=pg_url):
                pass
        assert isinstance(env.client.store.clock, SkippingClock)  # the first one is untouched
        await env.client.start_workflow(f.sleeper, 1.0, id="still-works", task_queue="nobody")


async def test_bad_store_arguments() -> None:
    with pytest.raises(TypeError, match="store URL"):
        WorkflowEnvironment(store=Path("/tmp/x"))  # type: ignore[arg-type]
    with pytest.raises(duro.DuroError, match="unsupported store URL"):
        async with WorkflowEnvironment(store="redis://localhost"):
            pass


@duro.workflow
async def sleeps_an_hour(ctx: duro.WorkflowContext) -> float:
    t0 = ctx.now()
    await ctx.sleep(3600)
    return (ctx.now() - t0).total_seconds()


async def test_time_is_skipped_only_while_the_test_waits_for_a_result(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="ts", workflows=[sleeps_an_hour]):
            handle = await env.client.start_workflow(sleeps_an_hour, id="ts-1", task_queue="ts")
            await eventually(lambda: _has_event(handle, "TimerStarted"), "the timer to start")
            await env._settle()  # quiet now: it would have skipped here if it skipped when idle
            assert env.skipped == 0 and (await handle.describe()).status == "running"
            with env.auto_time_skipping_disabled(), pytest.raises(TimeoutError):
                await handle.result(timeout=0.2)  # waiting, but skipping is off in this block
            assert env.skipped == 0
            assert await handle.result() >= 3600  # waiting for the result: skipped
            assert env.skipped >= 3600 - 5


@duro.activity
async def fails_once(actx: duro.ActivityContext) -> int:
    if actx.info.attempt == 1:
        raise RuntimeError("first attempt fails")
    return actx.info.attempt


@duro.workflow
async def retries_after_an_hour(ctx: duro.WorkflowContext) -> int:
    return int(await ctx.execute_activity(fails_once, start_to_close_timeout=30,
                                          retry_policy=duro.RetryPolicy(initial_interval=3600)))


async def test_an_activity_retry_backoff_is_skipped(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store, time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="ts", workflows=[retries_after_an_hour], activities=[fails_once]):
            assert await env.client.execute_workflow(retries_after_an_hour, id="ts-2", task_queue="ts") == 2
        assert env.skipped >= 3600 - 5


@duro.workflow
async def three_months(ctx: duro.WorkflowContext) -> list[float]:
    t0 = ctx.now()
    marks = []
    for _ in range(3):
        await ctx.sleep(30 * 86400)
        marks.append((ctx.now() - t0).total_seconds() / 86400)
    return marks


async def test_env_sleep_fires_every_timer_in_its_window_in_order(env_store: str | None) -> None:
    async with WorkflowEnvironment(store=env_store) as env:  # no automatic skipping: env.sleep alone
        async with duro.Worker(env.client, task_queue="ts", workflows=[three_months]):
            handle = await env.client.start_workflow(three_months, id="ts-3", task_queue="ts")
            await eventually(lambda: _has_event(handle, "TimerStarted"), "the first timer to start")
            await env.sleep(90 * 86400 + 60)
            assert (await handle.describe()).status == "completed"
            marks = await handle.result()
    assert [round(m) for m in marks] == [30, 60, 90]


async def _has_event(handle: duro.WorkflowHandle, event_type: str) -> bool:
    return any(e.event_type == event_type for e in await handle.fetch_history())
