"""duro.testing.WorkflowEnvironment: in-process store, time skipping."""

from __future__ import annotations

import asyncio
import time

import duro
from tests.engine import features_wfs as f


async def test_time_skipping_runs_a_day_long_sleep_at_once() -> None:
    async with duro.testing.WorkflowEnvironment(time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=f.WORKFLOWS, activities=f.ACTIVITIES):
            t0 = time.monotonic()
            assert await env.client.execute_workflow(f.sleeper, 86_400.0, id="day", task_queue="t") == "woke"
            assert time.monotonic() - t0 < 5
            assert env.skipped >= 86_000
            history = await env.client.get_handle("day").fetch_history()
            fired = next(e for e in history if e.event_type == "TimerFired")
            assert (fired.timestamp - history[0].timestamp).total_seconds() >= 86_400


async def test_no_skipping_while_waiting_for_a_signal() -> None:
    async with duro.testing.WorkflowEnvironment(time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="t", workflows=f.WORKFLOWS, activities=f.ACTIVITIES):
            handle = await env.client.start_workflow(f.waiting_child, id="w", task_queue="t")
            await handle.signal("go", "x")
            assert await handle.result(timeout=5) == "got x"
            assert env.skipped == 0


async def test_manual_sleep_without_skipping() -> None:
    async with duro.testing.WorkflowEnvironment() as env:
        async with duro.Worker(env.client, task_queue="t", workflows=f.WORKFLOWS, activities=f.ACTIVITIES):
            handle = await env.client.start_workflow(f.sleeper, 600.0, id="m", task_queue="t")
            while not any(e.event_type == "TimerStarted" for e in await handle.fetch_history()):
                await asyncio.sleep(0.01)
            await env.sleep(601)
            assert await handle.result(timeout=5) == "woke"
