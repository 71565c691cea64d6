"""Bad inputs through the public API: each raises a clear error at the call, and nothing is written.

Two tables. The first drives the client, handles, decorators and ``RetryPolicy`` directly and
checks that the store did not commit a single transaction (and that the listed workflows and the
history of an existing run are unchanged). The second makes the bad call inside a workflow: the
error is raised in the workflow code (which catches it here), and the run's history holds no
command for it. Each test runs on every store through the ``store`` fixture.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import inspect
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import numpy
import pydantic
import pytest

import duro
from tests.waiting import task_failure

MIB = 1024 * 1024
NAN = float("nan")
INF = float("inf")
LONG = "q" * 600  # 600 bytes: past the 255-byte limit, and past LMDB's 511-byte keys
DEADLINE_S = 20.0


@duro.workflow
async def add(ctx: duro.WorkflowContext, a: int, b: int = 0) -> int:
    return a + b


@duro.activity
async def echo(ctx: duro.ActivityContext, x: Any) -> Any:
    return x


@duro.workflow
async def child(ctx: duro.WorkflowContext, x: int) -> int:
    return x


async def _plain_act(ctx: duro.ActivityContext, x: int) -> int:
    return x


async def _plain_wf(ctx: duro.WorkflowContext) -> None:
    return None


@dataclasses.dataclass
class Point:
    x: float
    y: float


class Reading(msgspec.Struct):
    value: float


class Sample(pydantic.BaseModel):
    value: float


@dataclasses.dataclass
class Env:
    """What a case may use: a client, one with a 1 MiB payload limit, and a run that exists."""

    client: duro.Client
    small: duro.Client
    existing: duro.WorkflowHandle


@pytest.fixture
async def env(client: duro.Client, store: str) -> AsyncIterator[Env]:
    # No worker polls "idle": the run stays as it was started (one event, one task).
    existing = await client.start_workflow(add, 1, id="existing", task_queue="idle")
    async with duro.Client.connect(store, max_payload_size=MIB) as small:
        yield Env(client, small, existing)


async def snapshot(env: Env) -> tuple[Any, ...]:
    """Everything a bad call could have written: the last LMDB transaction, the runs, the history."""
    store = env.client.store
    txn = store.env.last_txnid() if hasattr(store, "env") else None
    runs = [(w.workflow_id, w.run_id, w.status, w.history_length) for w in await env.client.list_workflows()]
    history = [(e.event_id, e.event_type) for e in await env.existing.fetch_history()]
    return txn, runs, history, store.has_any_tasks()


def sync(fn: Callable[[Env], Any]) -> Callable[[Env], Awaitable[Any]]:
    async def call(env: Env) -> Any:
        return fn(env)

    return call


def start(*args: Any, **kwargs: Any) -> Callable[[Env], Awaitable[Any]]:
    """``client.start_workflow(add, *args, id="new", task_queue="q", **kwargs)`` with overrides."""
    kwargs = {"id": "new", "task_queue": "q", **kwargs}
    workflow = kwargs.pop("workflow", add)

    async def call(env: Env) -> Any:
        return await env.client.start_workflow(workflow, *args, **kwargs)

    return call


def case(id: str, exc: type[BaseException], fragment: str, call: Callable[[Env], Awaitable[Any]]) -> Any:
    return pytest.param(call, exc, fragment, id=id)


API_CASES = [
    # --- ids and names ------------------------------------------------------------------------
    case("id-600-chars", ValueError, "workflow id is 600 bytes long in UTF-8; the limit is 255", start(1, id=LONG)),
    case("id-256-two-byte-chars", ValueError, "workflow id is 512 bytes", start(1, id="é" * 256)),
    case("id-empty", ValueError, "workflow id must not be empty", start(1, id="")),
    case("id-NUL", ValueError, "workflow id must not contain NUL", start(1, id="a\x00b")),
    case("id-not-str", TypeError, "workflow id must be a str, not int", start(1, id=123)),
    case("id-lone-surrogate", ValueError, "not valid Unicode", start(1, id="a\ud800")),
    case("task-queue-600-chars", ValueError, "task_queue is 600 bytes", start(1, task_queue=LONG)),
    case("task-queue-empty", ValueError, "task_queue must not be empty", start(1, task_queue="")),
    case("task-queue-NUL", ValueError, "task_queue must not contain NUL", start(1, task_queue="q\x00")),
    case("task-queue-None", TypeError, "task_queue must be a str, not NoneType", start(1, task_queue=None)),
    case("type-name-600-chars", ValueError, "workflow name is 600 bytes", start(1, workflow=LONG)),
    case("type-name-empty", ValueError, "workflow name must not be empty", start(1, workflow="")),
    case("workflow-not-a-workflow", TypeError, "not a workflow", start(1, workflow=print)),
    case("workflow-an-int", TypeError, "42 is not a workflow", start(1, workflow=42)),
    case("get-handle-600-chars", ValueError, "workflow id is 600 bytes", sync(lambda e: e.client.get_handle(LONG))),
    case("list-type-NUL", ValueError, "workflow_type must not contain NUL",
         lambda e: e.client.list_workflows(workflow_type="a\x00")),
    case("list-limit-bool", ValueError, "limit must be a positive int", lambda e: e.client.list_workflows(limit=True)),
    # --- arguments against the workflow's signature -------------------------------------------
    case("args-missing", TypeError, "arguments do not fit workflow 'add': missing a required argument: 'a'",
         start()),
    case("args-too-many", TypeError, "arguments do not fit workflow 'add': too many positional arguments",
         start(1, 2, 3)),
    # --- payloads -------------------------------------------------------------------------------
    case("arg-NaN", ValueError, "cannot encode nan at args[0]", start(NAN)),
    case("arg-inf-nested", ValueError, "cannot encode inf at args[0]['xs'][1]", start({"xs": [1.0, INF]})),
    case("arg-minus-inf-with-None", ValueError, "cannot encode -inf at args[1]", start(None, -INF)),
    case("arg-NaN-dict-key", ValueError, "(the key nan)", start({NAN: 1})),
    case("arg-NaN-in-dataclass", ValueError, "cannot encode nan at args[0].y", start(Point(1.0, NAN))),
    case("arg-inf-in-msgspec-struct", ValueError, "cannot encode inf at args[0]['value']", start(Reading(INF))),
    case("arg-NaN-in-pydantic-model", ValueError, "cannot encode nan at args[0]['value']", start(Sample(value=NAN))),
    case("arg-NaN-in-numpy-array", ValueError, "cannot encode nan at args[0][1, 0]",
         start(numpy.array([[1.0, 2.0], [NAN, 3.0]]))),
    case("arg-not-encodable", TypeError, "cannot encode", start(object())),
    case("arg-100MB-over-1MiB-limit", duro.PayloadTooLargeError, "over the limit of 1,048,576 bytes",
         lambda e: e.small.start_workflow(add, "x" * 100_000_000, id="new", task_queue="q")),
    case("arg-3MiB-over-default-limit", duro.PayloadTooLargeError, "over the limit of 2,097,152 bytes",
         start("x" * (3 * MIB))),
    # --- durations ------------------------------------------------------------------------------
    case("execution-timeout-inf", ValueError, "execution_timeout must be zero or positive, finite and at most "
         "3155760000 seconds (100 years)", start(1, execution_timeout=INF)),
    case("execution-timeout-NaN", ValueError, "execution_timeout", start(1, execution_timeout=NAN)),
    case("execution-timeout-1e300", ValueError, "got 1e+300", start(1, execution_timeout=1e300)),
    case("execution-timeout-huge-int", ValueError, "execution_timeout", start(1, execution_timeout=10**400)),
    case("execution-timeout-negative", ValueError, "got -1", start(1, execution_timeout=-1)),
    case("execution-timeout-200-years", ValueError, "execution_timeout",
         start(1, execution_timeout=datetime.timedelta(days=365 * 200))),
    case("execution-timeout-str", TypeError, "not str", start(1, execution_timeout="10")),
    case("execution-timeout-bool", TypeError, "not bool", start(1, execution_timeout=True)),
    case("run-timeout-inf", ValueError, "run_timeout", start(1, run_timeout=INF)),
    case("id-reuse-policy", ValueError, "id_reuse_policy", start(1, id_reuse_policy="sometimes")),
    # --- handles of an existing run ---------------------------------------------------------------
    case("signal-name-600-chars", ValueError, "signal name is 600 bytes", lambda e: e.existing.signal(LONG)),
    case("signal-name-empty", ValueError, "signal name must not be empty", lambda e: e.existing.signal("", 1)),
    case("signal-name-None", TypeError, "signal name must be a str", lambda e: e.existing.signal(None)),
    case("signal-NaN", ValueError, "cannot encode nan at args[0]", lambda e: e.existing.signal("go", NAN)),
    case("signal-2MiB-over-1MiB-limit", duro.PayloadTooLargeError, "over the limit of 1,048,576",
         lambda e: e.small.get_handle("existing").signal("go", "x" * (2 * MIB))),
    case("query-name-NUL", ValueError, "query name must not contain NUL", lambda e: e.existing.query("q\x00")),
    case("query-arg-inf", ValueError, "cannot encode inf", lambda e: e.existing.query("q", INF)),
    case("update-name-300-chars", ValueError, "update name is 300 bytes",
         lambda e: e.existing.execute_update("u" * 300)),
    case("result-timeout-NaN", ValueError, "result timeout", lambda e: e.existing.result(timeout=NAN)),
    case("result-timeout-inf", ValueError, "result timeout", lambda e: e.existing.result(timeout=INF)),
    case("result-timeout-negative-on-running-run", TimeoutError, "still running",
         lambda e: e.existing.result(timeout=-1)),
    case("terminate-reason-not-str", TypeError, "reason must be a str", lambda e: e.existing.terminate(5)),  # type: ignore[arg-type]
    # --- RetryPolicy, decorators, limits ------------------------------------------------------------
    case("retry-backoff-NaN", ValueError, "backoff_coefficient must be a finite number >= 1, got nan",
         sync(lambda e: duro.RetryPolicy(backoff_coefficient=NAN))),
    case("retry-backoff-inf", ValueError, "backoff_coefficient",
         sync(lambda e: duro.RetryPolicy(backoff_coefficient=INF))),
    case("retry-backoff-below-1", ValueError, "got 0.5", sync(lambda e: duro.RetryPolicy(backoff_coefficient=0.5))),
    case("retry-initial-inf", ValueError, "RetryPolicy.initial_interval must be positive",
         sync(lambda e: duro.RetryPolicy(initial_interval=INF))),
    case("retry-initial-zero", ValueError, "initial_interval must be positive",
         sync(lambda e: duro.RetryPolicy(initial_interval=0))),
    case("retry-maximum-NaN", ValueError, "RetryPolicy.maximum_interval",
         sync(lambda e: duro.RetryPolicy(maximum_interval=NAN))),
    case("retry-maximum-below-initial", ValueError, "must not be shorter than initial_interval",
         sync(lambda e: duro.RetryPolicy(initial_interval=10, maximum_interval=1))),
    case("retry-attempts-negative", ValueError, "maximum_attempts must be an int from 0",
         sync(lambda e: duro.RetryPolicy(maximum_attempts=-1))),
    case("retry-attempts-float", ValueError, "got 2.5", sync(lambda e: duro.RetryPolicy(maximum_attempts=2.5))),  # type: ignore[arg-type]
    case("retry-attempts-2**40", ValueError, "maximum_attempts",
         sync(lambda e: duro.RetryPolicy(maximum_attempts=2**40))),
    case("retry-non-retryable-one-str", TypeError, "list of error type names",
         sync(lambda e: duro.RetryPolicy(non_retryable_error_types="ValueError"))),  # type: ignore[arg-type]
    case("retry-non-retryable-int", TypeError, "non_retryable_error_types[0] must be a str",
         sync(lambda e: duro.RetryPolicy(non_retryable_error_types=[1]))),  # type: ignore[list-item]
    case("activity-default-timeout-inf", ValueError, "start_to_close_timeout",
         sync(lambda e: duro.activity(start_to_close_timeout=INF)(_plain_act))),
    case("activity-default-heartbeat-NaN", ValueError, "heartbeat_timeout",
         sync(lambda e: duro.activity(heartbeat_timeout=NAN)(_plain_act))),
    case("activity-name-300-chars", ValueError, "activity name is 300 bytes",
         sync(lambda e: duro.activity(name="a" * 300)(_plain_act))),
    case("activity-retry-policy-dict", TypeError, "retry_policy must be a duro.RetryPolicy",
         sync(lambda e: duro.activity(retry_policy={"maximum_attempts": 3})(_plain_act))),  # type: ignore[arg-type]
    case("workflow-name-empty", ValueError, "workflow name must not be empty",
         sync(lambda e: duro.workflow(name="")(_plain_wf))),
    case("workflow-name-NUL", ValueError, "workflow name must not contain NUL",
         sync(lambda e: duro.workflow(name="w\x00")(_plain_wf))),
    case("max-payload-size-zero", ValueError, "max_payload_size must be a positive int",
         sync(lambda e: duro.Client.connect("lmdb:///nonexistent", max_payload_size=0))),
    case("json-converter-limit-negative", ValueError, "max_payload_size",
         sync(lambda e: duro.JsonConverter(max_payload_size=-5))),
]


@pytest.mark.parametrize(("call", "exc", "fragment"), API_CASES)
async def test_bad_input_raises_and_writes_nothing(env: Env, call: Callable[[Env], Awaitable[Any]],
                                                   exc: type[BaseException], fragment: str) -> None:
    before = await snapshot(env)
    with pytest.raises(exc, match=re.escape(fragment)):
        await call(env)
    assert await snapshot(env) == before


# --- bad calls made by workflow code ----------------------------------------------------------------


async def _with_timeout(delay: float) -> None:
    async with asyncio.timeout(delay):
        pass


BAD_WORKFLOW_CALLS: dict[str, Callable[[duro.WorkflowContext], Any]] = {
    "sleep-1e300": lambda ctx: ctx.sleep(1e300),
    "sleep-NaN": lambda ctx: ctx.sleep(NAN),
    "sleep-inf": lambda ctx: ctx.sleep(INF),
    "sleep-negative": lambda ctx: ctx.sleep(-1),
    "sleep-str": lambda ctx: ctx.sleep("5"),
    "asyncio-sleep-1e300": lambda ctx: asyncio.sleep(1e300),
    "asyncio-timeout-1e300": lambda ctx: _with_timeout(1e300),
    "activity-start-to-close-inf": lambda ctx: ctx.execute_activity(echo, 1, start_to_close_timeout=INF),
    "activity-schedule-to-close-1e300": lambda ctx: ctx.execute_activity(echo, 1, schedule_to_close_timeout=1e300),
    "activity-heartbeat-NaN": lambda ctx: ctx.execute_activity(echo, 1, heartbeat_timeout=NAN),
    "activity-timeout-negative": lambda ctx: ctx.execute_activity(echo, 1, start_to_close_timeout=-5),
    "activity-task-queue-600": lambda ctx: ctx.execute_activity(echo, 1, task_queue=LONG),
    "activity-task-queue-NUL": lambda ctx: ctx.execute_activity(echo, 1, task_queue="a\x00"),
    "activity-name-empty": lambda ctx: ctx.execute_activity("", 1),
    "activity-args-missing": lambda ctx: ctx.execute_activity(echo),
    "activity-args-too-many": lambda ctx: ctx.execute_activity(echo, 1, 2),
    "activity-arg-NaN": lambda ctx: ctx.execute_activity(echo, [NAN]),
    "activity-arg-3MiB": lambda ctx: ctx.execute_activity(echo, "x" * (3 * MIB)),
    "activity-retry-policy-dict": lambda ctx: ctx.execute_activity(echo, 1, retry_policy={"maximum_attempts": 1}),
    "wait-condition-timeout-NaN": lambda ctx: ctx.wait_condition(lambda: False, timeout=NAN),
    "child-id-600": lambda ctx: ctx.start_child_workflow(child, 1, id=LONG),
    "child-args-missing": lambda ctx: ctx.execute_child_workflow(child),
    "child-task-queue-NUL": lambda ctx: ctx.start_child_workflow(child, 1, task_queue="\x00"),
    "child-arg-inf": lambda ctx: ctx.start_child_workflow(child, INF),
    "continue-as-new-args-missing": lambda ctx: ctx.continue_as_new(),
    "wait-signal-name-empty": lambda ctx: ctx.wait_signal(""),
    "signal-handler-name-300": lambda ctx: ctx.set_signal_handler("s" * 300, print),
    "patched-change-id-empty": lambda ctx: ctx.patched(""),
}


@duro.workflow
async def probe(ctx: duro.WorkflowContext, case: str) -> str:
    try:
        result = BAD_WORKFLOW_CALLS[case](ctx)
        if inspect.isawaitable(result):
            await result
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "no error"


def wcase(id: str, exc: type[BaseException], fragment: str) -> Any:
    assert id in BAD_WORKFLOW_CALLS
    return pytest.param(id, exc, fragment, id=id)


WORKFLOW_CASES = [
    wcase("sleep-1e300", ValueError, "ctx.sleep seconds must be zero or positive, finite and at most 3155760000"),
    wcase("sleep-NaN", ValueError, "got nan"),
    wcase("sleep-inf", ValueError, "got inf"),
    wcase("sleep-negative", ValueError, "got -1"),
    wcase("sleep-str", TypeError, "not str"),
    wcase("asyncio-sleep-1e300", ValueError, "timer delay"),
    wcase("asyncio-timeout-1e300", ValueError, "timer delay"),
    wcase("activity-start-to-close-inf", ValueError, "start_to_close_timeout"),
    wcase("activity-schedule-to-close-1e300", ValueError, "schedule_to_close_timeout"),
    wcase("activity-heartbeat-NaN", ValueError, "heartbeat_timeout"),
    wcase("activity-timeout-negative", ValueError, "got -5"),
    wcase("activity-task-queue-600", ValueError, "task_queue is 600 bytes"),
    wcase("activity-task-queue-NUL", ValueError, "task_queue must not contain NUL"),
    wcase("activity-name-empty", ValueError, "activity name must not be empty"),
    wcase("activity-args-missing", TypeError, "arguments do not fit activity 'echo': missing a required argument"),
    wcase("activity-args-too-many", TypeError, "arguments do not fit activity 'echo': too many"),
    wcase("activity-arg-NaN", ValueError, "cannot encode nan at args[0][0]"),
    wcase("activity-arg-3MiB", duro.PayloadTooLargeError, "over the limit of 2,097,152 bytes"),
    wcase("activity-retry-policy-dict", TypeError, "retry_policy must be a duro.RetryPolicy"),
    wcase("wait-condition-timeout-NaN", ValueError, "wait_condition timeout"),
    wcase("child-id-600", ValueError, "child workflow id is 600 bytes"),
    wcase("child-args-missing", TypeError, "arguments do not fit workflow 'child'"),
    wcase("child-task-queue-NUL", ValueError, "task_queue must not contain NUL"),
    wcase("child-arg-inf", ValueError, "cannot encode inf at args[0]"),
    wcase("continue-as-new-args-missing", TypeError, "arguments do not fit workflow 'probe'"),
    wcase("wait-signal-name-empty", ValueError, "signal name must not be empty"),
    wcase("signal-handler-name-300", ValueError, "signal name is 300 bytes"),
    wcase("patched-change-id-empty", ValueError, "change_id must not be empty"),
]


@pytest.mark.parametrize(("name", "exc", "fragment"), WORKFLOW_CASES)
async def test_bad_call_in_workflow_raises_there_and_records_nothing(
        client: duro.Client, name: str, exc: type[BaseException], fragment: str) -> None:
    async with duro.Worker(client, task_queue="probe", workflows=[probe, child], activities=[echo]):
        handle = await client.start_workflow(probe, name, id=f"probe-{name}", task_queue="probe")
        answer = await asyncio.wait_for(handle.result(), DEADLINE_S)
    assert answer.startswith(f"{exc.__name__}: "), answer
    assert fragment in answer, answer
    # The bad command was never recorded: the history is start, one task, completion.
    history = await handle.fetch_history()
    assert [e.event_type for e in history] == [
        "WorkflowExecutionStarted", "WorkflowTaskCompleted", "WorkflowExecutionCompleted"]
    await duro.testing.Replayer(workflows=[probe, child]).replay(history)


# --- the findings, end to end ----------------------------------------------------------------------


@duro.workflow
async def sleeps_1e300(ctx: duro.WorkflowContext) -> None:
    await ctx.sleep(1e300)


@duro.workflow(name="sleeps_1e300_fails", failure_exception_types=[ValueError])
async def sleeps_1e300_fails(ctx: duro.WorkflowContext) -> None:
    await ctx.sleep(1e300)


@duro.workflow
async def returns_nan(ctx: duro.WorkflowContext) -> float:
    return NAN


async def test_an_uncaught_bad_sleep_fails_the_task_and_the_run_can_still_be_closed(client: duro.Client) -> None:
    # Finding 1: ctx.sleep(1e300) used to crash inside the store with half the run written, after
    # which terminate, cancel and signal all raised. Now the ValueError fails the workflow task
    # (a bug, retried until fixed code runs), and the run can be signalled and terminated.
    async with duro.Worker(client, task_queue="t", workflows=[sleeps_1e300]):
        handle = await client.start_workflow(sleeps_1e300, id="s", task_queue="t")
        assert "ctx.sleep seconds" in await task_failure(handle)
        await handle.signal("anything", 1)
        await handle.terminate("bad sleep")
    desc = await handle.describe()
    history = await handle.fetch_history()
    assert desc.status == "terminated"
    assert desc.history_length == len(history)
    assert history[-1].event_type == "WorkflowExecutionTerminated"


async def test_an_uncaught_bad_sleep_listed_as_a_failure_fails_the_run_cleanly(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[sleeps_1e300_fails]):
        handle = await client.start_workflow(sleeps_1e300_fails, id="s2", task_queue="t")
        with pytest.raises(duro.WorkflowFailedError) as info:
            await asyncio.wait_for(handle.result(), DEADLINE_S)
    assert "ctx.sleep seconds" in str(info.value.__cause__)
    desc = await handle.describe()
    history = await handle.fetch_history()
    assert desc.status == "failed"
    assert desc.history_length == len(history)
    assert history[-1].event_type == "WorkflowExecutionFailed"


async def test_a_nan_result_fails_the_workflow_task(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue="t", workflows=[returns_nan]):
        handle = await client.start_workflow(returns_nan, id="n", task_queue="t")
        assert "cannot encode nan" in await task_failure(handle)
        assert (await handle.describe()).status == "running"
        await handle.terminate()


async def test_result_with_a_non_positive_timeout_returns_a_closed_runs_result(client: duro.Client) -> None:
    # Finding 8: result(timeout=-1) on a completed run raised TimeoutError.
    async with duro.Worker(client, task_queue="t", workflows=[add]):
        handle = await client.start_workflow(add, 2, 3, id="done", task_queue="t")
        assert await asyncio.wait_for(handle.result(), DEADLINE_S) == 5
    for timeout in (-1, 0, 0.0, -math.inf, datetime.timedelta(seconds=-1), datetime.timedelta(0)):
        assert await handle.result(timeout=timeout) == 5, timeout  # type: ignore[arg-type]
        assert await client.get_handle("done").result(timeout=timeout) == 5, timeout  # type: ignore[arg-type]


@duro.activity
async def big_result(ctx: duro.ActivityContext, size: int) -> str:
    return "x" * size


@duro.activity
async def big_heartbeat(ctx: duro.ActivityContext, size: int) -> str:
    try:
        ctx.heartbeat("x" * size)
    except duro.PayloadTooLargeError as e:
        return f"refused: {e}"
    return "sent"


@duro.workflow
async def calls(ctx: duro.WorkflowContext, name: str, size: int) -> str:
    policy = duro.RetryPolicy(initial_interval=0.01, maximum_attempts=3)
    try:
        return await ctx.execute_activity(name, size, retry_policy=policy, start_to_close_timeout=10)  # type: ignore[no-any-return]
    except duro.ActivityError as e:
        return f"attempt {e.attempt}: {type(e.__cause__).__name__} {getattr(e.__cause__, 'type', '')}: {e.__cause__}"


async def test_a_heartbeat_over_the_limit_raises_in_the_activity(store: str) -> None:
    async with duro.Client.connect(store, max_payload_size=MIB) as small:
        async with duro.Worker(small, task_queue="t", workflows=[calls], activities=[big_heartbeat]):
            answer = await asyncio.wait_for(small.execute_workflow(calls, "big_heartbeat", 2 * MIB, id="hb",
                                                                  task_queue="t"), DEADLINE_S)
    assert answer.startswith("refused: the encoded payload is 2,097,154 bytes"), answer


async def test_an_activity_result_over_the_limit_fails_the_attempt(store: str) -> None:
    async with duro.Client.connect(store, max_payload_size=MIB) as small:
        async with duro.Worker(small, task_queue="t", workflows=[calls], activities=[big_result]):
            answer = await asyncio.wait_for(small.execute_workflow(calls, "big_result", 2 * MIB, id="big",
                                                                  task_queue="t"), DEADLINE_S)
    assert "PayloadTooLargeError" in answer and "over the limit of 1,048,576 bytes" in answer, answer
    # Nothing of the 2 MiB result reached the history.
    async with duro.Client.connect(store) as client:
        history = await client.get_handle("big").fetch_history()
        assert all(len(e.payload) < MIB for e in history.core_events)


async def test_an_activity_result_over_the_limit_is_not_retried(store: str) -> None:
    async with duro.Client.connect(store, max_payload_size=MIB) as small:
        async with duro.Worker(small, task_queue="t", workflows=[calls], activities=[big_result]):
            answer = await asyncio.wait_for(small.execute_workflow(calls, "big_result", 2 * MIB, id="big",
                                                                  task_queue="t"), DEADLINE_S)
    assert answer.startswith("attempt 1: ApplicationError PayloadTooLargeError"), answer
