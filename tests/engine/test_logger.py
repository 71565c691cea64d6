"""``ctx.logger`` in workflows (silent while replaying) and ``actx.logger`` in activities."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import duro
from tests.waiting import eventually


@duro.activity
async def greet(actx: duro.ActivityContext, name: str) -> str:
    actx.logger.info("greeting %s", name)
    if actx.info.attempt == 1:
        raise RuntimeError("first attempts fail")
    return f"hello {name}"


@duro.workflow
async def chatty(ctx: duro.WorkflowContext, name: str) -> str:
    ctx.logger.info("starting for %s", name)
    greeting = await ctx.execute_activity(greet, name, start_to_close_timeout=10,
                                          retry_policy=duro.RetryPolicy(initial_interval=0.01, maximum_attempts=2))
    ctx.logger.warning("got %r", greeting, extra={"step": "greeted"})
    await ctx.wait_signal("go")
    ctx.logger.info("signalled: %d%% done", 100)
    return str(greeting)


def lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def test_records_carry_the_ids_and_replay_logs_nothing(client: duro.Client,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="duro")
    wid = "chat-50%-off"  # a % in an id must not break %-formatting
    async with duro.Worker(client, task_queue="log", workflows=[chatty], activities=[greet]) as first:
        handle = await client.start_workflow(chatty, "ada", id=wid, task_queue="log")
        await eventually(lambda: any(r.getMessage().endswith("got 'hello ada'")
                                     for r in lines(caplog, "duro.workflow")), "the workflow to reach its signal")
        assert first.stats["replays"] == 0
    # A new worker has an empty cache: the next task replays the history, re-running the code
    # that logged "starting" and "got ..."; they must not be logged again.
    async with duro.Worker(client, task_queue="log", workflows=[chatty], activities=[greet]) as second:
        await handle.signal("go")
        assert await handle.result() == "hello ada"
        assert second.stats["replays"] == 1

    run_id = handle.run_id
    wf = lines(caplog, "duro.workflow")
    prefix = f"[workflow_type=chatty workflow_id={wid} run_id={run_id} task_queue=log] "
    assert [r.getMessage() for r in wf] == [f"{prefix}starting for ada", f"{prefix}got 'hello ada'",
                                            f"{prefix}signalled: 100% done"]
    for r in wf:
        assert (r.workflow_id, r.run_id, r.workflow_type, r.task_queue) == (wid, run_id, "chatty", "log")  # type: ignore[attr-defined]
        assert r.filename == "test_logger.py" and r.funcName == "chatty"  # the caller, not the adapter
    assert wf[1].levelno == logging.WARNING and wf[1].step == "greeted"  # type: ignore[attr-defined]

    acts = lines(caplog, "duro.activity")
    assert [(r.attempt, r.getMessage()) for r in acts] == [  # type: ignore[attr-defined]
        (n, f"[activity_type=greet activity_id=1 attempt={n} workflow_type=chatty workflow_id={wid} run_id={run_id} "
            "task_queue=log] greeting ada") for n in (1, 2)]
    for r in acts:
        assert (r.activity_type, r.activity_id, r.workflow_id, r.run_id) == ("greet", 1, wid, run_id)  # type: ignore[attr-defined]
        assert r.funcName == "greet"

    # The Replayer re-runs the code from history alone: silent too.
    caplog.clear()
    await duro.testing.Replayer(workflows=[chatty]).replay(await handle.fetch_history())
    assert lines(caplog, "duro.workflow") == []


@duro.workflow
async def to_a_file(ctx: duro.WorkflowContext) -> bool:
    ctx.logger.info("written from workflow code")
    return ctx.logger.isEnabledFor(logging.INFO)


async def test_handlers_may_do_io_and_levels_are_respected(client: duro.Client, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A handler that opens a file on first use works under the workflow loop's I/O guard."""
    logger = logging.getLogger("duro.workflow")
    handler = logging.FileHandler(tmp_path / "wf.log", delay=True)  # opens the file inside workflow code
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    try:
        async with duro.Worker(client, task_queue="file", workflows=[to_a_file]):
            assert await client.execute_workflow(to_a_file, id="file", task_queue="file") is True
            logger.setLevel(logging.WARNING)
            assert await client.execute_workflow(to_a_file, id="file-quiet", task_queue="file") is False
    finally:
        logger.removeHandler(handler)
        handler.close()
        logger.setLevel(old)
    text = (tmp_path / "wf.log").read_text()
    assert "workflow_id=file run_id=" in text and text.count("written from workflow code") == 1, text


@duro.activity
def sync_logs(actx: duro.ActivityContext) -> None:
    actx.logger.error("from a thread", extra={"order": 7})


@duro.workflow
async def runs_sync(ctx: duro.WorkflowContext) -> None:
    await ctx.execute_activity(sync_logs, start_to_close_timeout=10)


async def test_activity_logger_in_a_sync_activity(client: duro.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="duro")
    async with duro.Worker(client, task_queue="sync", workflows=[runs_sync], activities=[sync_logs]):
        await client.execute_workflow(runs_sync, id="sync", task_queue="sync")
    [r] = lines(caplog, "duro.activity")
    rec: Any = r
    assert rec.levelno == logging.ERROR and rec.order == 7 and rec.activity_type == "sync_logs"
    assert rec.getMessage().endswith("] from a thread") and rec.funcName == "sync_logs"
