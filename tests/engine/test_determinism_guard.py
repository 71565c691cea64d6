"""The determinism guard end to end: a workflow that reads the clock or a random source.

Each test runs on every store through the ``store`` fixture. The calls themselves, one by one,
are covered in tests/unit/test_determinism.py.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import sys
import time
import uuid

import pytest

import duro
from duro import _determinism
from tests.processes import run_command
from tests.waiting import task_failure

DEADLINE_S = 20.0


@duro.activity
def stamp_activity(actx: duro.ActivityContext) -> str:
    # Outside workflow code (an activity, in the worker's thread pool): the real clock, a real uuid.
    return f"{time.time():.0f}-{uuid.uuid4()}-{datetime.datetime.now():%Y}"


@duro.workflow(name="clocked")
async def clocked(ctx: duro.WorkflowContext) -> float:
    return time.time()


@duro.workflow(name="clocked")
async def clocked_fixed(ctx: duro.WorkflowContext) -> float:
    return ctx.now().timestamp()


@duro.workflow
async def swallows(ctx: duro.WorkflowContext) -> str:
    try:
        return str(uuid.uuid4())
    except duro.NonDeterminismError:
        return "swallowed"


@duro.workflow(determinism="warn")
async def warned(ctx: duro.WorkflowContext) -> int:
    return random.randint(1, 6)


@duro.workflow(determinism="raise")
async def strict(ctx: duro.WorkflowContext) -> str:
    return datetime.datetime.now().isoformat()


@duro.workflow
async def lenient(ctx: duro.WorkflowContext) -> str:
    return datetime.datetime.now().isoformat()


@duro.workflow
async def deliberate(ctx: duro.WorkflowContext) -> list[str]:
    with ctx.unsafe():
        started = time.time()  # for a metric: it decides nothing
    ctx.logger.info("started at %.0f", started)
    logging.getLogger("tests.determinism").info("plain logging works in workflow code")
    stamp = await ctx.execute_activity(stamp_activity, start_to_close_timeout=10)
    return [stamp, str(ctx.uuid4()), ctx.now().isoformat(), f"{ctx.random():.3f}"]


async def test_a_clock_read_fails_the_task_not_the_run_and_fixed_code_completes_it(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[clocked]):
        handle = await client.start_workflow(clocked, id="c1", task_queue="t")
        message = await task_failure(handle)
        assert message.startswith("time.time() in workflow 'clocked' at ")
        assert "test_determinism_guard.py:" in message and "ctx.now()" in message and "ctx.unsafe()" in message
        assert (await handle.describe()).status == "running"
    async with duro.Worker(client, task_queue="t", workflows=[clocked_fixed]):
        assert await asyncio.wait_for(handle.result(), DEADLINE_S) > 0


@duro.workflow
async def hands_over(ctx: duro.WorkflowContext) -> None:
    ctx.set_signal_handler("roll", random.random)  # the handler itself draws: duro calls it directly
    await ctx.wait_condition(lambda: False)


async def test_a_guarded_function_given_as_a_signal_handler_is_refused(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[hands_over]):
        handle = await client.start_workflow(hands_over, id="h1", task_queue="t")
        await handle.signal("roll")
        message = await task_failure(handle)
        assert message.startswith("random.random() in workflow 'hands_over' (given to duro as a handler or "
                                  "callback, called at "), message
        assert (await handle.describe()).status == "running"


@duro.workflow
async def two_errors(ctx: duro.WorkflowContext) -> None:
    loop = asyncio.get_running_loop()
    loop.call_soon(random.random)  # refused by the guard...
    loop.call_soon(divmod, 1, 0)  # ...and, in the same activation, an error of its own
    await ctx.wait_condition(lambda: False)


async def test_the_refusal_is_the_tasks_failure_and_other_errors_are_kept_as_notes(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[two_errors]):
        handle = await client.start_workflow(two_errors, id="e2", task_queue="t")
        assert (await task_failure(handle)).startswith("random.random() in workflow 'two_errors'")
        [failed] = [e.data() for e in await handle.fetch_history() if e.event_type == "WorkflowTaskFailed"]
        assert "also in this workflow task: Exception in callback divmod(1, 0)" in failed["stack"], failed


async def test_catching_the_error_does_not_hide_it(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[swallows]):
        handle = await client.start_workflow(swallows, id="s1", task_queue="t")
        assert (await task_failure(handle)).startswith("uuid.uuid4() in workflow 'swallows'")
        assert (await handle.describe()).status == "running"


async def test_warn_mode_logs_and_completes(client: duro.Client, caplog: pytest.LogCaptureFixture) -> None:
    _determinism._warned.clear()  # each place is logged once per process; another store's run came first
    with caplog.at_level(logging.WARNING, logger="duro.determinism"):
        async with duro.Worker(client, task_queue="t", workflows=[warned]):
            rolled = await asyncio.wait_for(client.execute_workflow(warned, id="w1", task_queue="t"), DEADLINE_S)
    assert 1 <= rolled <= 6
    logged = [r.getMessage() for r in caplog.records if r.name == "duro.determinism"]
    assert any("random.randint() in workflow 'warned'" in m for m in logged), logged


async def test_worker_mode_applies_where_the_workflow_sets_none(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[lenient, strict], determinism="off"):
        done = await asyncio.wait_for(client.execute_workflow(lenient, id="l1", task_queue="t"), DEADLINE_S)
        assert datetime.datetime.fromisoformat(done).year >= 2024
        handle = await client.start_workflow(strict, id="st1", task_queue="t")
        assert (await task_failure(handle)).startswith("datetime.now() in workflow 'strict'")


class StampingHandler(logging.Handler):
    """A handler that stamps each record itself, as many do: it is not workflow code."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{datetime.datetime.now():%Y} {record.getMessage()}")


async def test_unsafe_block_logging_and_activities_are_not_refused(client: duro.Client) -> None:
    handler = StampingHandler()
    log = logging.getLogger("tests.determinism")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        async with duro.Worker(client, task_queue="t", workflows=[deliberate], activities=[stamp_activity]):
            handle = await client.start_workflow(deliberate, id="d1", task_queue="t")
            stamp, ident, now, rnd = await asyncio.wait_for(handle.result(), DEADLINE_S)
    finally:
        log.removeHandler(handler)
    assert handler.lines and handler.lines[0].endswith(" plain logging works in workflow code")
    assert stamp.count("-") >= 5 and uuid.UUID(ident).version == 4 and now and rnd
    history = await handle.fetch_history()
    assert not [e for e in history if e.event_type == "WorkflowTaskFailed"]
    # The replay of the run (recovery, a query, a deploy check) passes the guard the same way.
    await duro.testing.Replayer(workflows=[deliberate]).replay(history)


@duro.workflow
async def loose(ctx: duro.WorkflowContext) -> float:
    started = time.time()  # allowed: the worker's determinism is "off"
    ctx.set_query_handler("started", lambda: started > 0)
    await ctx.sleep(0)
    return started


async def test_queries_answered_by_replay_take_the_workers_mode(client: duro.Client) -> None:
    _determinism.install_determinism_guard()  # as another worker or Replayer of the process would
    async with duro.Worker(client, task_queue="t", workflows=[loose], determinism="off"):
        handle = await client.start_workflow(loose, id="q1", task_queue="t")
        await asyncio.wait_for(handle.result(), DEADLINE_S)
        # A closed run is not cached: both queries replay its history here, as the worker would.
        assert await handle.query("started") is True
        last = len(await handle.fetch_history())
        assert await handle.query("started", at_event=last) is True


# A client-only process: nothing there installed the guard before the query replays the run.
QUERY_BY_REPLAY = """
import asyncio, sys
import duro
from tests.engine.test_determinism_guard import loose

async def main():
    async with duro.Client.connect(sys.argv[1]) as client:
        try:
            print(await client.get_handle("q2", workflow=loose).query("started"))
        except duro.NonDeterminismError as e:
            print("refused:", e)

asyncio.run(main())
"""


async def test_a_query_replayed_by_a_client_process_is_guarded_as_a_replayer_is(store: str,
                                                                                client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[loose], determinism="off"):
        handle = await client.start_workflow(loose, id="q2", task_queue="t")
        await asyncio.wait_for(handle.result(), DEADLINE_S)
    # The workflow sets no mode and no worker there registers it: the replay takes "raise", the
    # default of Worker and Replayer, whatever else the process did before.
    result = await run_command([sys.executable, "-c", QUERY_BY_REPLAY, store])
    assert result.code == 0, result.err
    assert result.out.startswith("refused: time.time() in workflow 'loose'"), result.out + result.err


async def test_replaying_a_history_against_code_that_reads_the_clock_is_refused(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[clocked_fixed]):
        handle = await client.start_workflow(clocked_fixed, id="r1", task_queue="t")
        await asyncio.wait_for(handle.result(), DEADLINE_S)
    history = await handle.fetch_history()
    with pytest.raises(duro.NonDeterminismError, match=r"^time\.time\(\) in workflow 'clocked'"):
        await duro.testing.Replayer(workflows=[clocked]).replay(history)


async def test_bad_modes_are_refused_with_the_choices(client: duro.Client) -> None:
    with pytest.raises(ValueError, match=r"determinism must be one of 'raise', 'warn', 'off', not 'loud'"):
        duro.Worker(client, task_queue="t", workflows=[lenient], determinism="loud")
    with pytest.raises(ValueError, match=r"determinism must be one of 'raise', 'warn', 'off', not True"):
        duro.workflow(determinism=True)  # type: ignore[call-overload]
