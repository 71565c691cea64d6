"""What a workflow's exception does, as in Temporal: failures fail the run, other exceptions fail the task."""

from __future__ import annotations

import pytest

import duro
from tests.waiting import eventually, task_failure

FIXED: dict[str, bool] = {}


@duro.activity
async def refuse(actx: duro.ActivityContext) -> None:
    raise duro.ApplicationError("no", type="Refused", non_retryable=True)


@duro.workflow(name="buggy")
async def buggy(ctx: duro.WorkflowContext, key: str) -> str:
    await ctx.sleep(0.01)
    if not FIXED.get(key):
        raise KeyError("a bug")  # not a failure: the task fails, the run waits for fixed code
    return "fixed"


@duro.workflow
async def app_failure(ctx: duro.WorkflowContext) -> None:
    raise duro.ApplicationError("out of stock", type="OutOfStock", details={"sku": 7})


@duro.workflow
async def activity_failure(ctx: duro.WorkflowContext) -> None:
    await ctx.execute_activity(refuse, start_to_close_timeout=10)


@duro.workflow(name="listed", failure_exception_types=[KeyError])
async def listed(ctx: duro.WorkflowContext) -> None:
    raise KeyError("listed on the workflow")


@duro.workflow
async def plain(ctx: duro.WorkflowContext) -> None:
    raise RuntimeError("plain")


@duro.workflow
async def predicate_raises(ctx: duro.WorkflowContext, kind: str) -> None:
    state = {"n": 0}

    def check() -> bool:
        state["n"] += 1
        if state["n"] > 1:  # raises when rechecked, after the first step
            raise duro.ApplicationError("stop") if kind == "app" else ValueError("bad predicate")
        return False

    await ctx.wait_condition(check)


async def test_a_plain_exception_fails_the_task_and_fixed_code_continues_the_run(client: duro.Client) -> None:
    FIXED["k1"] = False
    async with duro.Worker(client, task_queue="fs", workflows=[buggy]):
        h = await client.start_workflow(buggy, "k1", id="fs-1", task_queue="fs")
        assert "raised KeyError: 'a bug'" in await task_failure(h)
        assert (await h.describe()).status == "running"
        FIXED["k1"] = True  # a deploy of fixed code: the retried task gets through
        assert await h.result() == "fixed"
    assert (await h.describe()).task_failures == 0


@pytest.mark.parametrize(("wf", "cause"), [(app_failure, "OutOfStock"), (activity_failure, "ActivityError"),
                                           (listed, "KeyError")])
async def test_failures_fail_the_run(client: duro.Client, wf: object, cause: str) -> None:
    async with duro.Worker(client, task_queue="fs", workflows=[wf], activities=[refuse]):
        h = await client.start_workflow(wf, id=f"fs-{cause}", task_queue="fs")  # type: ignore[arg-type]
        with pytest.raises(duro.WorkflowFailedError) as info:
            await h.result()
    err = info.value.__cause__
    assert isinstance(err, (duro.ApplicationError, duro.ActivityError))
    assert cause in (getattr(err, "type", "") or type(err).__name__)


async def test_a_worker_can_make_every_exception_fail_the_run(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="fs", workflows=[plain], workflow_failure_exception_types=[Exception]):
        h = await client.start_workflow(plain, id="fs-w", task_queue="fs")
        with pytest.raises(duro.WorkflowFailedError, match="plain"):
            await h.result()
    with pytest.raises(TypeError, match=r"workflow_failure_exception_types\[0\] must be an exception class"):
        duro.Worker(client, task_queue="fs", workflows=[plain], workflow_failure_exception_types=["Exception"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="failure_exception_types must be a list"):
        duro.workflow(failure_exception_types=KeyError)  # type: ignore[arg-type]


async def test_a_raising_wait_condition_predicate_follows_the_same_rule(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="fs", workflows=[predicate_raises]):
        app = await client.start_workflow(predicate_raises, "app", id="fs-p1", task_queue="fs")
        other = await client.start_workflow(predicate_raises, "value", id="fs-p2", task_queue="fs")
        with pytest.raises(duro.WorkflowFailedError, match="stop"):
            await app.result()
        assert "bad predicate" in await task_failure(other)
        await other.terminate()


async def test_a_run_failed_by_a_plain_exception_before_0_2_still_replays(client: duro.Client) -> None:
    # Recorded as older duro did it (any exception failed the run), replayed by code with today's rule.
    @duro.workflow(name="old_style", failure_exception_types=[RuntimeError])
    async def old_style_then(ctx: duro.WorkflowContext) -> None:
        raise RuntimeError("old")

    @duro.workflow(name="old_style")
    async def old_style_now(ctx: duro.WorkflowContext) -> None:
        raise RuntimeError("old")

    async with duro.Worker(client, task_queue="fs", workflows=[old_style_then]):
        h = await client.start_workflow(old_style_then, id="fs-old", task_queue="fs")
        await eventually(lambda: _status(h, "failed"), "the run to fail")
    await duro.testing.Replayer(workflows=[old_style_now]).replay(await h.fetch_history())


async def _status(h: duro.WorkflowHandle, status: str) -> bool:
    return (await h.describe()).status == status
