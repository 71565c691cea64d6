"""Replaying a store's runs against code: ``Replayer.replay_store`` and ``replay_workflows`` (a deploy check).

Version 1 of the workflows (tests/engine/replay_v1.py) records runs that complete, fail and stay
running; version 2 (replay_v2.py) and the variants below are the next deploy, replayed against them.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

import duro
from duro.errors import NonDeterminismError
from duro.testing import Replayer, WorkflowReplayResult, WorkflowReplayResults
from tests import pg
from tests.engine import replay_v2 as v2
from tests.engine.replay_runs import NEWEST_FIRST, V1_WORKFLOWS, Runs, record_runs
from tests.engine.replay_v1 import greet, shout

V2_WORKFLOWS = [v2.greeting, v2.failing, v2.waiting]


@pytest.fixture
async def runs(client: duro.Client) -> Runs:
    return await record_runs(client)


def _line(fn: Any, mark: str = "# DIVERGES") -> int:
    """The line number of the line of ``fn``'s source holding ``mark``."""
    lines, first = inspect.getsourcelines(fn)
    (offset,) = [i for i, line in enumerate(lines) if mark in line]
    return first + offset


def _event_ids(history: duro.History, event_type: str) -> list[int]:
    return [e.event_id for e in history if e.event_type == event_type]


def _scheduled(history: duro.History) -> dict[int, int]:
    """The ActivityTaskScheduled event ids by activity seq."""
    return {e.ref: e.event_id for e in history if e.event_type == "ActivityTaskScheduled"}


def _by_id(results: WorkflowReplayResults) -> dict[str, WorkflowReplayResult]:
    return {r.workflow_id: r for r in results}


# ------------------------------------------------------------------ the same code: everything replays


async def test_the_same_code_replays_every_stored_run(store: str, client: duro.Client, runs: Runs) -> None:
    results = await Replayer(workflows=V1_WORKFLOWS).replay_store(store)
    assert results.ok and not results.failures and results.replay_failures == {}
    assert [r.workflow_id for r in results] == NEWEST_FIRST and len(results) == 3
    assert [(r.run_id, r.workflow_type, r.status, r.ok, r.diverged) for r in results] == [
        (runs.run_id("waiting"), "replay_waiting", "running", True, False),
        (runs.run_id("failing"), "replay_failing", "failed", True, False),
        (runs.run_id("greeting"), "replay_greeting", "completed", True, False),
    ]
    assert results.skipped == 1  # other-1: its type is not one of the Replayer's
    assert results.left_out == 0
    # A connected client does as well as a URL (and stays open).
    again = await Replayer(workflows=V1_WORKFLOWS).replay_store(client)
    assert [(r.workflow_id, r.ok) for r in again] == [(r.workflow_id, True) for r in results]
    assert (await client.get_handle("waiting-1").describe()).status == "running"


async def test_a_running_run_replays_whatever_the_code_does_past_the_point_it_reached(store: str,
                                                                                     runs: Runs) -> None:
    @duro.workflow(name="replay_waiting")
    async def waiting_changed_after_the_signal(ctx: duro.WorkflowContext, name: str) -> str:
        hello = await ctx.execute_activity(greet, name)
        await ctx.wait_signal("go")
        await ctx.sleep(5)  # new, after the point the stored run reached
        return str(await ctx.execute_activity(greet, hello))

    results = await Replayer(workflows=[waiting_changed_after_the_signal]).replay_store(store)
    assert [(r.workflow_id, r.status, r.ok) for r in results] == [("waiting-1", "running", True)]
    assert results.skipped == 3


# ------------------------------------------------------------------ the next deploy: changed runs reported


async def test_changed_code_is_reported_run_by_run(store: str, runs: Runs) -> None:
    results = await Replayer(workflows=V2_WORKFLOWS).replay_store(store)
    assert not results.ok
    assert [r.workflow_id for r in results] == NEWEST_FIRST
    assert [r.workflow_id for r in results.failures] == ["waiting-1", "greeting-1"]
    by_id = _by_id(results)
    assert by_id["failing-1"].ok  # unchanged in version 2
    assert set(results.replay_failures) == {runs.run_id("waiting"), runs.run_id("greeting")}

    greeting = by_id["greeting-1"]
    assert greeting.diverged and greeting.status == "completed" and greeting.run_id == runs.run_id("greeting")
    err = greeting.replay_failure
    assert isinstance(err, NonDeterminismError)
    assert err.event_id == _scheduled(runs.histories["greeting"])[1]
    assert err.recorded == "ActivityTaskScheduled(seq=1, name='greet')"
    assert err.requested == f"ActivityTaskScheduled(seq=1, name='shout') at {v2.__file__}:{_line(v2.greeting)}"
    assert f"{v2.__file__}:{_line(v2.greeting)}" in str(err)

    # The running run finishes in the workflow task where version 1 waited (and recorded nothing).
    waiting = by_id["waiting-1"]
    assert waiting.diverged and waiting.status == "running"
    err = waiting.replay_failure
    assert isinstance(err, NonDeterminismError)
    assert err.event_id == _event_ids(runs.histories["waiting"], "WorkflowTaskCompleted")[1]
    assert err.recorded == "(nothing)"
    assert err.requested.startswith("WorkflowExecutionCompleted(seq=0) at return from the workflow function at "
                                    f"{v2.__file__}:")


async def test_raise_on_failure_raises_the_first_divergence(store: str, runs: Runs) -> None:
    with pytest.raises(NonDeterminismError) as info:
        await Replayer(workflows=V2_WORKFLOWS).replay_store(store, raise_on_failure=True)
    assert info.value.event_id == _event_ids(runs.histories["waiting"], "WorkflowTaskCompleted")[1]  # the newest
    with pytest.raises(NonDeterminismError, match="'replay_greeting' diverged"):
        await Replayer(workflows=V2_WORKFLOWS).replay_workflows([runs.histories["greeting"]], raise_on_failure=True)


# ------------------------------------------------------------------ which runs: type, since, limit


async def test_type_since_and_limit_choose_the_runs(store: str, runs: Runs) -> None:
    replayer = Replayer(workflows=V2_WORKFLOWS)
    only = await replayer.replay_store(store, workflow_type="replay_failing")
    assert [(r.workflow_id, r.ok) for r in only] == [("failing-1", True)] and only.ok
    assert only.skipped == 0 and only.left_out == 0

    newest = await replayer.replay_store(store, limit=1)
    assert [r.workflow_id for r in newest] == ["waiting-1"] and newest.left_out == 2 and newest.skipped == 1

    # since is inclusive: a run started at that very microsecond is taken.
    started = {role: (await runs.handles[role].describe()).start_time for role in ("greeting", "failing")}
    from_failing = await replayer.replay_store(store, since=started["failing"])
    assert [r.workflow_id for r in from_failing] == ["waiting-1", "failing-1"]
    assert from_failing.skipped == 1  # other-1 started after them
    from_greeting = await replayer.replay_store(store, since=started["greeting"])
    assert [r.workflow_id for r in from_greeting] == NEWEST_FIRST
    later = await replayer.replay_store(store, since=datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
    assert len(later) == 0 and later.ok and later.skipped == 0 and later.left_out == 0


async def test_replay_store_refuses_bad_arguments(tmp_path: Any) -> None:
    replayer = Replayer(workflows=V1_WORKFLOWS)
    url = f"lmdb://{tmp_path / 'never-made'}"
    with pytest.raises(ValueError, match=r"'nope' is not one of this Replayer's workflows .*replay_greeting"):
        await replayer.replay_store(url, workflow_type="nope")
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="limit must be a positive int"):
            await replayer.replay_store(url, limit=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timezone-aware"):
        await replayer.replay_store(url, since=datetime.datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="since must be"):
        await replayer.replay_store(url, since="2026-01-01")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"store must be a store URL or a duro\.Client"):
        await replayer.replay_store(42)  # type: ignore[arg-type]
    assert not (tmp_path / "never-made").exists()
    assert replayer.workflow_types == ["replay_failing", "replay_greeting", "replay_waiting"]


async def test_replay_store_refuses_a_url_that_names_no_store(tmp_path: Any) -> None:
    # A deploy check with a mistyped path or schema must fail, not pass on an empty store it made.
    replayer = Replayer(workflows=V1_WORKFLOWS)
    missing = (tmp_path / "typo").resolve()
    expected = f"no duro store at '{missing}': replay_store reads a store"
    with pytest.raises(duro.StoreURLError, match=re.escape(expected)):
        await replayer.replay_store(f"lmdb://{missing}")
    assert not missing.exists()
    await pg.require_postgres()
    schema = pg.random_schema()
    with pytest.raises(duro.StoreURLError, match=re.escape(f"no duro store in schema '{schema}' at ")):
        await replayer.replay_store(pg.with_schema(pg.PG_URL, schema))
    assert not await pg.schema_exists(schema)


def test_the_result_types_are_public() -> None:
    assert {"Replayer", "WorkflowReplayResult", "WorkflowReplayResults"} <= set(duro.testing.__all__)
    assert duro.testing.WorkflowReplayResults().ok  # nothing replayed: nothing diverged


# ------------------------------------------------------------------ replay_workflows over histories


async def test_replay_workflows_reports_each_history_in_order(runs: Runs) -> None:
    histories = [runs.histories[role] for role in ("greeting", "other", "failing")]
    results = await Replayer(workflows=V2_WORKFLOWS).replay_workflows(histories)
    assert [(r.workflow_id, r.workflow_type, r.status, r.ok) for r in results] == [
        ("greeting-1", "replay_greeting", "completed", False),
        ("other-1", "replay_other", "completed", False),
        ("failing-1", "replay_failing", "failed", True),
    ]
    assert results.skipped == 0
    unknown = results.results[1].replay_failure
    assert isinstance(unknown, ValueError) and "'replay_other'" in str(unknown) and not results.results[1].diverged

    async def from_files() -> AsyncIterator[duro.History]:  # an async iterable, as Temporal's takes
        for h in histories:
            yield duro.History.from_json(h.to_json())

    again = await Replayer(workflows=V1_WORKFLOWS).replay_workflows(from_files())
    assert [(r.workflow_id, r.ok) for r in again] == [("greeting-1", True), ("other-1", False), ("failing-1", True)]


# ------------------------------------------------------------------ every kind of change is caught
# Each variant is registered under version 1's name and changes one thing. A stored closed run
# (greeting: completed; failing: failed) or running run (waiting) must report it at the right event.


@duro.workflow(name="replay_greeting")
async def other_activity(ctx: duro.WorkflowContext, name: str) -> str:
    hello: str = await ctx.execute_activity(shout, name)  # DIVERGES
    return hello


@duro.workflow(name="replay_greeting")
async def timer_instead(ctx: duro.WorkflowContext, name: str) -> str:
    await ctx.sleep(1)  # DIVERGES
    return name


@duro.workflow(name="replay_greeting")
async def other_order(ctx: duro.WorkflowContext, name: str) -> str:
    hello = await ctx.execute_activity(greet, name)
    again, loud = await asyncio.gather(ctx.execute_activity(greet, hello),  # DIVERGES
                                       ctx.execute_activity(shout, hello))
    return f"{loud} / {again}"


@duro.workflow(name="replay_greeting")
async def finishes_early(ctx: duro.WorkflowContext, name: str) -> str:
    return str(await ctx.execute_activity(greet, name))


@duro.workflow(name="replay_greeting")
async def fewer_commands(ctx: duro.WorkflowContext, name: str) -> str:
    hello = await ctx.execute_activity(greet, name)
    return str(await ctx.execute_activity(shout, hello))  # greet(hello) beside it is gone


@duro.workflow(name="replay_greeting")
async def more_commands(ctx: duro.WorkflowContext, name: str) -> str:
    hello = await ctx.execute_activity(greet, name)
    loud, again = await asyncio.gather(ctx.execute_activity(shout, hello), ctx.execute_activity(greet, hello))
    await ctx.execute_activity(shout, again)  # DIVERGES
    return f"{loud} / {again}"


@duro.workflow(name="replay_greeting")
async def raises_a_bug(ctx: duro.WorkflowContext, name: str) -> str:
    await ctx.execute_activity(greet, name)
    raise KeyError("a bug in the new code")


@duro.workflow(name="replay_failing")
async def fails_later(ctx: duro.WorkflowContext, name: str) -> str:
    await ctx.execute_activity(greet, name)
    await ctx.execute_activity(greet, name)  # DIVERGES
    raise duro.ApplicationError("refused", type="Refused", non_retryable=True)


@duro.workflow(name="replay_waiting")
async def timer_before_waiting(ctx: duro.WorkflowContext, name: str) -> str:
    hello = await ctx.execute_activity(greet, name)
    await ctx.sleep(1)  # DIVERGES
    by = await ctx.wait_signal("go")
    return f"{hello} by {by}"


def _at(fn: Any) -> str:
    return f" at {__file__}:{_line(fn)}"


async def test_every_kind_of_change_is_caught_at_its_event(runs: Runs) -> None:
    g, f, w = runs.histories["greeting"], runs.histories["failing"], runs.histories["waiting"]
    g_scheduled = _scheduled(g)
    # (variant, history, event id, recorded, requested)
    cases: list[tuple[Any, duro.History, int, str, str]] = [
        (other_activity, g, g_scheduled[1], "ActivityTaskScheduled(seq=1, name='greet')",
         "ActivityTaskScheduled(seq=1, name='shout')" + _at(other_activity)),
        (timer_instead, g, g_scheduled[1], "ActivityTaskScheduled(seq=1, name='greet')",
         "TimerStarted(seq=1)" + _at(timer_instead)),
        (other_order, g, g_scheduled[2], "ActivityTaskScheduled(seq=2, name='shout')",
         "ActivityTaskScheduled(seq=2, name='greet')" + _at(other_order)),
        (finishes_early, g, g_scheduled[2], "ActivityTaskScheduled(seq=2, name='shout')",
         "WorkflowExecutionCompleted(seq=0) at return from the workflow function at "
         f"{__file__}:{inspect.getsourcelines(finishes_early)[1]}"),
        (fewer_commands, g, g_scheduled[3], "ActivityTaskScheduled(seq=3, name='greet')", "(nothing)"),
        (more_commands, g, _event_ids(g, "WorkflowExecutionCompleted")[0], "WorkflowExecutionCompleted(seq=0)",
         "ActivityTaskScheduled(seq=4, name='shout')" + _at(more_commands)),
        (fails_later, f, _event_ids(f, "WorkflowExecutionFailed")[0], "WorkflowExecutionFailed(seq=0)",
         "ActivityTaskScheduled(seq=2, name='greet')" + _at(fails_later)),
        (timer_before_waiting, w, _event_ids(w, "WorkflowTaskCompleted")[1], "(nothing)",
         "TimerStarted(seq=2)" + _at(timer_before_waiting)),
    ]
    for variant, history, event_id, recorded, requested in cases:
        name = variant.__name__
        results = await Replayer(workflows=[variant]).replay_workflows([history])
        (result,) = results
        assert not results.ok and result.diverged, (name, result)
        err = result.replay_failure
        assert isinstance(err, NonDeterminismError)
        assert (err.event_id, err.recorded, err.requested) == (event_id, recorded, requested), name
        with pytest.raises(NonDeterminismError):  # replay() raises the same
            await Replayer(workflows=[variant]).replay(history)

    # New code that raises where the old one went on: a replay failure, not a divergence.
    (result,) = await Replayer(workflows=[raises_a_bug]).replay_workflows([g])
    assert not result.ok and not result.diverged
    assert isinstance(result.replay_failure, KeyError) and "a bug in the new code" in str(result.replay_failure)
