"""Completing an activity from outside: ``raise duro.CompleteAsync()`` and ``client.get_async_activity_handle``."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import duro
from duro._async_completion import encode_task_token
from duro.stores.base import Clock
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]

# What the activities saw, by key: (attempt, task token, heartbeat details of earlier attempts).
SEEN: dict[str, list[tuple[int, bytes, Any]]] = {}


def _note(ctx: duro.ActivityContext, key: str) -> None:
    SEEN.setdefault(key, []).append((ctx.info.attempt, ctx.info.task_token, ctx.info.heartbeat_details))


@duro.activity
async def wait_outside(ctx: duro.ActivityContext, key: str) -> str:
    _note(ctx, key)
    raise duro.CompleteAsync()


@duro.activity
def wait_outside_sync(ctx: duro.ActivityContext, key: str) -> str:
    _note(ctx, key)
    raise duro.CompleteAsync()


@duro.workflow
async def approval(ctx: duro.WorkflowContext, key: str, opts: dict[str, Any]) -> dict[str, Any]:
    act = wait_outside_sync if opts.get("sync") else wait_outside
    try:
        result = await ctx.execute_activity(
            act, key, start_to_close_timeout=opts.get("stc"), schedule_to_close_timeout=opts.get("s2c"),
            heartbeat_timeout=opts.get("hb"),
            retry_policy=duro.RetryPolicy(initial_interval=0.05, maximum_attempts=opts.get("attempts", 1)))
    except duro.ActivityError as e:
        cause = e.__cause__
        return {"failed": type(cause).__name__, "type": getattr(cause, "type", None), "attempt": e.attempt,
                "timeout_type": getattr(cause, "timeout_type", None), "message": str(cause)}
    return {"result": result}


@duro.workflow
async def two_approvals(ctx: duro.WorkflowContext, key: str) -> list[str]:
    return list(await asyncio.gather(ctx.execute_activity(wait_outside, f"{key}-a", start_to_close_timeout=60),
                                     ctx.execute_activity(wait_outside, f"{key}-b", start_to_close_timeout=60)))


@duro.workflow
async def impatient(ctx: duro.WorkflowContext, key: str) -> str:
    try:
        return str(await asyncio.wait_for(ctx.execute_activity(wait_outside, key, start_to_close_timeout=60), 0.3))
    except duro.ActivityError as e:  # wait_for cancelled it: as in Temporal, the cancelled activity's error
        assert isinstance(e.__cause__, duro.CancelledError)
        await ctx.wait_signal("finish")
        return "gave up"


@duro.workflow
async def remote_approval(ctx: duro.WorkflowContext, path: str) -> str:
    return str(await ctx.execute_activity("remote_wait", path, start_to_close_timeout=60))


WORKFLOWS: list[Callable[..., Any]] = [approval, two_approvals, impatient, remote_approval]


class _StepClock(Clock):
    """A store clock that moves only when the test moves it (``t``, seconds since the epoch)."""

    def __init__(self) -> None:
        self.t = time.time()

    def now(self) -> float:
        return self.t


async def tokens(key: str, n: int = 1) -> list[tuple[int, bytes, Any]]:
    """The first ``n`` attempts the activity of ``key`` started, once they have."""
    seen: list[tuple[int, bytes, Any]] = await eventually(
        lambda: SEEN.get(key) if len(SEEN.get(key, ())) >= n else None, f"attempt {n} of {key!r}")
    return seen


async def start(client: duro.Client, key: str, **opts: Any) -> duro.WorkflowHandle:
    SEEN.pop(key, None)
    return await client.start_workflow(approval, key, opts, id=key, task_queue="async")


@pytest.fixture
async def worker(client: duro.Client) -> Any:
    async with duro.Worker(client, task_queue="async", workflows=WORKFLOWS,
                           activities=[wait_outside, wait_outside_sync]) as w:
        yield w


@pytest.mark.parametrize("sync", [False, True])
async def test_complete_from_outside_in_this_process(client: duro.Client, worker: duro.Worker, sync: bool) -> None:
    handle = await start(client, f"same-{sync}", stc=30, sync=sync)
    [(attempt, token, _)] = await tokens(f"same-{sync}")
    assert attempt == 1 and isinstance(token, bytes)
    await eventually(worker.idle, "the worker to let go of the attempt")  # no slot held while it waits
    h = client.get_async_activity_handle(token)
    await h.complete("approved by alice")
    assert await handle.result() == {"result": "approved by alice"}
    types = [e.event_type for e in await handle.fetch_history()]
    assert types.count("ActivityTaskCompleted") == 1


async def test_waiting_attempts_free_the_workers_slots(client: duro.Client) -> None:
    SEEN.pop("pair-a", None)
    SEEN.pop("pair-b", None)
    async with duro.Worker(client, task_queue="async", workflows=WORKFLOWS, activities=[wait_outside],
                           max_concurrent_activities=1):
        handle = await client.start_workflow(two_approvals, "pair", id="pair", task_queue="async")
        [(_, a, _)] = await tokens("pair-a")
        [(_, b, _)] = await tokens("pair-b")  # ran while the first waited: its slot was free again
        await client.get_async_activity_handle(b).complete("B")
        await client.get_async_activity_handle(a).complete("A")
        assert await handle.result() == ["A", "B"]


_COMPLETE = """
import asyncio, sys
import duro

async def main() -> None:
    async with duro.Client.connect(sys.argv[1]) as client:
        await client.get_async_activity_handle(bytes.fromhex(sys.argv[2])).complete(sys.argv[3])

asyncio.run(main())
"""


async def test_complete_from_another_process(store: str, client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "other-process", stc=30)
    [(_, token, _)] = await tokens("other-process")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _COMPLETE, store, token.hex(), "from afar",
                                                cwd=ROOT)
    assert await proc.wait() == 0
    assert await handle.result() == {"result": "from afar"}


_REMOTE_WORKER = """
import asyncio, sys
from pathlib import Path
import duro

@duro.activity(name="remote_wait")
async def remote_wait(ctx: duro.ActivityContext, path: str) -> str:
    Path(path).write_bytes(ctx.info.task_token)
    raise duro.CompleteAsync()

from tests.waiting import eventually

async def main() -> None:
    async with duro.Client.connect(sys.argv[1]) as client:
        async with duro.Worker(client, task_queue="remote", activities=[remote_wait]) as worker:
            await eventually(lambda: Path(sys.argv[2]).exists() and worker.idle(),
                             "the activity to hand its attempt off")

asyncio.run(main())
"""


async def test_the_attempt_outlives_the_worker_that_ran_it(store: str, client: duro.Client, tmp_path: Path) -> None:
    """A worker that handed the attempt off and exited does not take it along: the reaper leaves it."""
    path = tmp_path / "token"
    async with duro.Worker(client, task_queue="remote", workflows=WORKFLOWS):
        handle = await client.start_workflow(remote_approval, str(path), id="remote", task_queue="remote")
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _REMOTE_WORKER, store, str(path), cwd=ROOT)
        assert await proc.wait() == 0  # its worker ran the activity, handed the attempt off and stopped
        await client.store.reap()  # the worker's process is gone: its own leases would be taken back now
        await client.get_async_activity_handle(path.read_bytes()).complete("still there")
        assert await handle.result() == "still there"


async def test_fail_retries_then_fails_for_good(client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "fail", stc=30, attempts=2)
    [(_, first, _)] = await tokens("fail")
    await client.get_async_activity_handle(first).fail("declined")  # a message: an ApplicationError
    _, (attempt, second, _) = await tokens("fail", 2)
    assert attempt == 2 and second != first
    with pytest.raises(duro.TaskTokenError, match="superseded by attempt 2") as info:
        await client.get_async_activity_handle(first).complete("too late")
    assert info.value.reason == "superseded"
    await client.get_async_activity_handle(second).fail(duro.ApplicationError("still no", type="Declined"))
    assert await handle.result() == {"failed": "ApplicationError", "type": "Declined", "attempt": 2,
                                     "timeout_type": None, "message": "still no"}
    with pytest.raises(duro.TaskTokenError, match="already failed") as info:
        await client.get_async_activity_handle(second).complete("later still")
    assert info.value.reason == "completed"


async def test_fail_non_retryable_and_by_exception_type(client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "final", stc=30, attempts=5)
    [(_, token, _)] = await tokens("final")
    await client.get_async_activity_handle(token).fail(duro.ApplicationError("no way", non_retryable=True))
    assert (await handle.result())["attempt"] == 1
    assert len(SEEN["final"]) == 1

    handle = await start(client, "by-type", stc=30, attempts=5)
    [(_, token, _)] = await tokens("by-type")
    await client.get_async_activity_handle(token).fail(KeyError("sku"))  # the class name is the error type
    _, (_, token2, _) = await tokens("by-type", 2)
    with pytest.raises(TypeError):
        await client.get_async_activity_handle(token2).fail(42)  # type: ignore[arg-type]
    await client.get_async_activity_handle(token2).fail(duro.ApplicationError("bad", type="Bad", non_retryable=True))
    assert (await handle.result())["type"] == "Bad"


async def test_heartbeats_from_outside_keep_it_and_their_details_reach_the_retry(
        client: duro.Client, worker: duro.Worker) -> None:
    # The store's clock is driven by the test, so each step says exactly how much time passed.
    clock = _StepClock()
    store = client.store
    real, store.clock = store.clock, clock
    try:
        handle = await start(client, "beats", stc=60, hb=1, attempts=2)
        [(_, token, _)] = await tokens("beats")
        h = client.get_async_activity_handle(token)
        n = 0
        for _ in range(5):  # 4.5 s in all, each step within the 1 s heartbeat timeout of the last beat
            n += 1
            await h.heartbeat({"progress": n})
            clock.t += 0.9
            await store.reap()
        assert len(SEEN["beats"]) == 1  # never timed out: no failed attempt recorded, none retried
        assert "ActivityTaskFailed" not in [e.event_type for e in await handle.fetch_history()]
        # Now it stops heartbeating: the heartbeat timeout fails the attempt, and the retry sees the details.
        clock.t += 1.5  # past the heartbeat timeout
        await store.reap()
        clock.t += 5.0  # past the retry's backoff
        _, (attempt, token2, details) = await tokens("beats", 2)
    finally:
        store.clock = real
    assert attempt == 2 and details == {"progress": n}
    with pytest.raises(duro.TaskTokenError) as info:
        await h.heartbeat()
    assert info.value.reason == "superseded"
    await client.get_async_activity_handle(token2).complete("done")
    assert await handle.result() == {"result": "done"}


@pytest.mark.parametrize(("opts", "timeout_type"), [({"stc": 1}, "start_to_close"), ({"s2c": 1}, "schedule_to_close"),
                                                    ({"hb": 1}, "heartbeat")])
async def test_a_timeout_fires_while_it_waits(client: duro.Client, worker: duro.Worker, opts: dict[str, Any],
                                              timeout_type: str) -> None:
    handle = await start(client, f"late-{timeout_type}", **opts)
    [(_, token, _)] = await tokens(f"late-{timeout_type}")
    result = await handle.result()
    assert result["failed"] == "TimeoutError" and result["timeout_type"] == timeout_type, result
    assert "completed from outside" in result["message"] or "heartbeat" in result["message"]
    with pytest.raises(duro.TaskTokenError) as info:
        await client.get_async_activity_handle(token).complete("too late")
    assert info.value.reason == "completed"  # its failure is recorded


async def test_a_timed_out_attempt_is_retried_with_a_new_token(client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "retry", stc=1, attempts=3)
    (_, first, _), (attempt, second, _) = await tokens("retry", 2)
    assert attempt == 2
    with pytest.raises(duro.TaskTokenError, match="superseded"):
        await client.get_async_activity_handle(first).complete("old")
    await client.get_async_activity_handle(second).complete("new")
    assert await handle.result() == {"result": "new"}


async def test_cancelled_by_the_workflow(client: duro.Client, worker: duro.Worker) -> None:
    SEEN.pop("impatient", None)
    handle = await client.start_workflow(impatient, "impatient", id="impatient", task_queue="async")
    [(_, token, _)] = await tokens("impatient")
    h = client.get_async_activity_handle(token)

    async def cancel_seen() -> bool:
        try:
            await h.heartbeat("still working")
        except duro.CancelledError:
            return True
        return False

    await eventually(cancel_seen, "a heartbeat to learn that the workflow cancelled the activity")
    with pytest.raises(duro.CancelledError, match="result dropped"):
        await h.complete("too late")
    await handle.signal("finish")
    assert await handle.result() == "gave up"
    types = [e.event_type for e in await handle.fetch_history()]
    assert "ActivityTaskCompleted" not in types and "ActivityTaskCancelRequested" in types


def _forge(body: bytes) -> bytes:
    return body + hashlib.blake2b(body, digest_size=4).digest()


async def test_forged_tokens_are_refused_and_write_nothing(client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "forged", stc=30)
    [(_, token, _)] = await tokens("forged")
    run_key = bytes.fromhex(handle.run_id or "")
    seq = struct.unpack(">Q", token[17:25])[0]
    before = len(await handle.fetch_history())

    malformed = [b"garbage", b"\x01", b"\x01" * 40, token[:-1], token[:-5] + token[-4:], token + b"x",
                 token[:20] + bytes([token[20] ^ 1]) + token[21:]]
    for bad in malformed:
        with pytest.raises(duro.TaskTokenError) as info:
            client.get_async_activity_handle(bad)
        assert info.value.reason == "malformed", bad
    with pytest.raises(duro.TaskTokenError, match="version 2") as info:
        client.get_async_activity_handle(_forge(b"\x02" + token[1:-4]))
    assert info.value.reason == "version"
    with pytest.raises(TypeError, match="bytes"):
        client.get_async_activity_handle(token.hex())  # type: ignore[arg-type]

    cases = [
        (encode_task_token(os.urandom(16), "async", seq, 1), "unknown_run", "not in this store"),
        (encode_task_token(run_key, "another-queue", seq, 1), "unknown_activity", "not pending on task queue"),
        (encode_task_token(run_key, "async", seq + 7, 1), "unknown_activity", "not pending"),
        (encode_task_token(run_key, "async", seq, 9), "unknown_activity", "does not exist"),
    ]
    for bad, reason, message in cases:
        h = client.get_async_activity_handle(bad)
        for call in (h.complete("forged"), h.fail("forged"), h.heartbeat("forged")):
            with pytest.raises(duro.TaskTokenError, match=message) as info:
                await call
            assert info.value.reason == reason and "nothing was written" in str(info.value)
    assert len(await handle.fetch_history()) == before
    assert (await handle.describe()).status == "running"

    await client.get_async_activity_handle(token).complete("the real one")
    assert await handle.result() == {"result": "the real one"}


async def test_a_used_token_is_refused_and_writes_nothing(client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "used", stc=30)
    [(_, token, _)] = await tokens("used")
    h = client.get_async_activity_handle(token)
    await h.complete("one")
    assert await handle.result() == {"result": "one"}
    before = len(await handle.fetch_history())
    for call in (h.complete(2), h.fail("again"), h.heartbeat()):
        with pytest.raises(duro.TaskTokenError, match="already completed") as info:
            await call
        assert info.value.reason == "completed"
    assert len(await handle.fetch_history()) == before


async def test_a_payload_that_cannot_be_encoded_writes_nothing(client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "payload", stc=30)
    [(_, token, _)] = await tokens("payload")
    h = client.get_async_activity_handle(token)
    with pytest.raises(TypeError):
        await h.complete(object())
    with pytest.raises(ValueError):
        await h.heartbeat(float("nan"))
    await h.complete("fine")
    assert await handle.result() == {"result": "fine"}


async def test_in_the_test_environment() -> None:
    SEEN.pop("env", None)
    async with duro.testing.WorkflowEnvironment(time_skipping=True) as env:
        async with duro.Worker(env.client, task_queue="async", workflows=WORKFLOWS, activities=[wait_outside]):
            handle = await env.client.start_workflow(approval, "env", {"stc": 3600}, id="env", task_queue="async")
            [(_, token, _)] = await tokens("env")
            await env.client.get_async_activity_handle(token).complete("ok")
            assert await handle.result() == {"result": "ok"}


async def duro_cli(store: str, *argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "duro.cli", "--store", store, *argv, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_from_the_command_line(store: str, client: duro.Client, worker: duro.Worker) -> None:
    handle = await start(client, "cli", stc=30, attempts=2)
    [(_, token, _)] = await tokens("cli")
    assert await duro_cli(store, "activity", "heartbeat", token.hex(), '{"step": 1}') == (
        0, "recorded a heartbeat of the activity attempt\n", "")
    code, _, err = await duro_cli(store, "activity", "fail", token.hex(), "not yet")
    assert code == 0, err
    _, (_, token2, details) = await tokens("cli", 2)
    assert details == {"step": 1}
    code, _, err = await duro_cli(store, "activity", "complete", token.hex(), '"old"')
    assert code == 1 and "superseded" in err and err.startswith("duro: error:"), err
    code, _, err = await duro_cli(store, "activity", "complete", "zz", '"x"')
    assert code == 2 and "not a task token" in err, err
    code, _, err = await duro_cli(store, "activity", "complete", token2.hex()[:-2], '"x"')
    assert code == 2 and "not a task token" in err, err
    code, _, err = await duro_cli(store, "activity", "complete", token2.hex(), "not json")
    assert code == 2 and "not JSON" in err, err
    assert await duro_cli(store, "activity", "complete", token2.hex(), '"from the shell"') == (
        0, "completed the activity attempt\n", "")
    assert await handle.result() == {"result": "from the shell"}
