"""Updates as Temporal users expect them, on each store: update handles and stages, update ids (a repeated
id is applied once, across workers, processes and restarts), update-with-start, handler lookups and
dynamic (catch-all) signal, query and update handlers."""

from __future__ import annotations

import asyncio
import enum
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.interceptor import ClientOutboundInterceptor, Interceptor, UpdateWorkflowInput
from tests.engine import updates_wfs as u
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
QUEUE = u.QUEUE


class _Amount(enum.IntEnum):
    THREE = 3


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS) as w:
        yield w


async def _accepted_ids(handle: duro.WorkflowHandle) -> list[str]:
    return [e.data()["meta"]["id"] for e in await handle.fetch_history()
            if e.event_type == "WorkflowExecutionUpdateAccepted"]


async def _completed_ids(handle: duro.WorkflowHandle) -> list[str]:
    return [e.name for e in await handle.fetch_history() if e.event_type == "WorkflowExecutionUpdateCompleted"]


async def _finish(handle: duro.WorkflowHandle) -> Any:
    await handle.signal("finish")
    return await handle.result(timeout=20)


# ---------------------------------------------------------------------------------------------- handles, stages


async def test_start_update_returns_once_accepted_and_the_handle_waits_for_the_result(
        client: duro.Client, worker: duro.Worker) -> None:
    h = await client.start_workflow(u.counter, id="stages", task_queue=QUEUE)
    uh = await h.start_update("slow_add", 5)
    assert isinstance(uh, duro.WorkflowUpdateHandle)
    assert (uh.workflow_id, uh.run_id, uh.workflow_run_id) == ("stages", h.run_id, h.run_id)
    assert await _accepted_ids(h) == [uh.id]  # recorded before start_update returned...
    assert await _completed_ids(h) == []  # ...and not completed: the handler waits for "release"
    with pytest.raises(asyncio.TimeoutError):
        await uh.result(timeout=0.05)
    await h.signal("release")
    assert await uh.result(timeout=20) == 5
    assert await uh.result() == 5  # the outcome is kept

    done = await h.start_update("add", 2, wait_for_stage=duro.WorkflowUpdateStage.COMPLETED, id="c")
    assert done.id == "c"
    assert await _completed_ids(h) == [uh.id, "c"]  # completed before start_update returned
    assert await done.result() == 7
    assert await h.start_update("add", 1, wait_for_stage="completed") is not None
    assert await _finish(h) == 8


async def test_stages_and_ids_are_checked_before_anything_is_sent(client: duro.Client, worker: duro.Worker) -> None:
    h = await client.start_workflow(u.counter, id="bad-stage", task_queue=QUEUE)
    with pytest.raises(ValueError, match=r"ADMITTED is not supported.*use WorkflowUpdateStage\.ACCEPTED"):
        await h.start_update("add", 1, wait_for_stage=duro.WorkflowUpdateStage.ADMITTED)
    with pytest.raises(ValueError, match="wait_for_stage must be"):
        await h.start_update("add", 1, wait_for_stage="done")
    with pytest.raises(ValueError, match="update id"):
        await h.execute_update("add", 1, id="")
    with pytest.raises(ValueError, match="update id"):
        h.get_update_handle("x" * 300)
    assert await _accepted_ids(h) == []
    assert await _finish(h) == 0


async def test_rejections_and_handler_failures(client: duro.Client, worker: duro.Worker) -> None:
    h = await client.start_workflow(u.counter, id="failures", task_queue=QUEUE)
    with pytest.raises(duro.ApplicationError, match="negative amounts"):
        await h.start_update("add", -1, id="neg")  # rejected at start_update: nothing written
    assert await _accepted_ids(h) == []
    uh = await h.start_update("add", 13, id="thirteen")
    with pytest.raises(duro.ApplicationError, match="13 is unlucky"):
        await uh.result()
    with pytest.raises(duro.ApplicationError, match="13 is unlucky"):  # a retry gets the same failure
        await h.execute_update("add", 13, id="thirteen")
    assert await h.execute_update("add", 1, id="neg") == 1  # a rejected id was never recorded: it may be used
    assert await _accepted_ids(h) == ["thirteen", "neg"]
    assert await _finish(h) == 1


async def test_get_update_handle_reads_or_waits_for_the_outcome(client: duro.Client, worker: duro.Worker) -> None:
    h = await client.start_workflow(u.counter, id="by-id", task_queue=QUEUE)
    assert await h.execute_update("add", 3, id="first") == 3
    other = client.get_handle("by-id")  # the latest run, found when result() is called
    assert await other.get_update_handle("first").result() == 3
    pending = await h.start_update("slow_add", 4, id="slow")
    waiting = asyncio.ensure_future(client.get_handle("by-id", h.run_id).get_update_handle("slow").result())
    await h.signal("release")
    assert await waiting == 7
    assert await pending.result() == 7
    with pytest.raises(duro.DuroError, match="no update with id 'nope' was accepted"):
        await other.get_update_handle("nope").result()
    three = await h.get_update_handle("first", result_type=_Amount).result()
    assert three is _Amount.THREE
    assert await _finish(h) == 7
    # A closed run keeps its updates' outcomes: a handle and a retried id still get them.
    assert await other.get_update_handle("slow").result() == 7
    assert await h.execute_update("slow_add", 4, id="slow") == 7
    with pytest.raises(duro.DuroError, match="completed; updates need a running workflow"):
        await h.execute_update("add", 1, id="new-after-close")


async def test_a_run_that_closes_first_fails_the_update_result(client: duro.Client, worker: duro.Worker) -> None:
    h = await client.start_workflow(u.counter, id="closes-first", task_queue=QUEUE)
    uh = await h.start_update("slow_add", 1)
    await h.terminate("enough")
    with pytest.raises(duro.DuroError, match=r"closed \(WorkflowExecutionTerminated\) before update"):
        await uh.result(timeout=20)


# ---------------------------------------------------------------------------------------------- update ids


async def test_a_repeated_update_id_is_applied_once(client: duro.Client, worker: duro.Worker) -> None:
    h = await client.start_workflow(u.counter, id="dedupe", task_queue=QUEUE)
    assert await h.execute_update("add", 5, id="u1") == 5
    assert await h.execute_update("add", 5, id="u1") == 5  # the first call's result; not applied again
    assert await h.execute_update("add", 100, id="u1") == 5  # same id, other arguments: still the first one
    # While the first is still running, a retry waits for its result.
    first = await h.start_update("slow_add", 1, id="s1")
    again = await h.start_update("slow_add", 50, id="s1")
    assert again.id == first.id == "s1"
    retried = asyncio.ensure_future(h.execute_update("slow_add", 1, id="s1"))
    await h.signal("release")
    assert await first.result() == await again.result() == await retried == 6
    # Concurrent calls with one id: one is accepted, all get its result.
    results = await asyncio.gather(*(h.execute_update("add", 10, id="c1") for _ in range(5)))
    assert results == [16] * 5
    assert await h.query("n") == 16
    assert await _accepted_ids(h) == ["u1", "s1", "c1"]
    assert await _finish(h) == 16


async def test_two_workers_racing_on_one_update_id_record_it_once(client: duro.Client) -> None:
    """Two workers of one queue, each with its own cache, accept the same id at the same time."""
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS) as w1, \
            duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS) as w2:
        h = await client.start_workflow(u.counter, id="race", task_queue=QUEUE)
        assert await h.execute_update("add", 1, id="warm") == 1  # both may now hold the run
        run_key = bytes.fromhex(h.run_id or "")
        args = client.converter.encode_args((7,))
        for i in range(5):
            uid = f"r{i}"
            firsts = await asyncio.gather(w1.accept_update(run_key, "add", args, None, uid),
                                          w2.accept_update(run_key, "add", args, None, uid))
            assert firsts[0] >= 1 and firsts[1] >= 1
            assert await h.get_update_handle(uid).result() == 1 + 7 * (i + 1)
        assert await _accepted_ids(h) == ["warm", "r0", "r1", "r2", "r3", "r4"]
        assert await _finish(h) == 36


async def test_an_update_id_survives_a_worker_restart(client: duro.Client) -> None:
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS):
        h = await client.start_workflow(u.counter, id="restart", task_queue=QUEUE)
        assert await h.execute_update("add", 2, id="once") == 2
        pending = await h.start_update("slow_add", 3, id="later")
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS):  # a fresh cache: it replays
        assert await h.execute_update("add", 2, id="once") == 2
        again = await h.start_update("slow_add", 3, id="later")
        await h.signal("release")
        assert await again.result(timeout=20) == await pending.result() == 5
        assert await _accepted_ids(h) == ["once", "later"]
        assert await _finish(h) == 5


# ---------------------------------------------------------------------------------------------- across processes


class _WorkerProcess:
    """update_worker.py in a subprocess: a worker of QUEUE that also sends updates when told."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, store: str) -> _WorkerProcess:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "tests/engine/update_worker.py"), store, QUEUE, cwd=REPO, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)  # its log goes to stderr, as ours
        self = cls(proc)
        first = await self._line()
        assert first == "ready", first
        return self

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        return line.decode().strip()

    async def update(self, wid: str, name: str, args: list[Any], update_id: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"wid": wid, "name": name, "args": args, "id": update_id}) + "\n").encode())
        await self.proc.stdin.drain()
        answer = json.loads(await self._line())
        assert "result" in answer, answer
        return answer["result"]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


@pytest.fixture
async def remote(store: str) -> AsyncIterator[_WorkerProcess]:
    proc = await _WorkerProcess.start(store)
    try:
        yield proc
    finally:
        await proc.stop()


async def test_update_ids_across_processes(client: duro.Client, store: str, remote: _WorkerProcess) -> None:
    """No worker here: updates go through the store to the other process, outcomes come back by the history."""
    h = await client.start_workflow("counter", id="xproc", task_queue=QUEUE)
    assert await h.execute_update("add", 4, id="x1") == 4
    results = await asyncio.gather(*(h.execute_update("add", 4, id="x2") for _ in range(3)),
                                   remote.update("xproc", "add", [4], "x2"))
    assert results == [8, 8, 8, 8]
    # A retry sent from the worker's own process finds the id the remote request recorded.
    assert await remote.update("xproc", "add", [4], "x1") == 4
    uh = await h.start_update("slow_add", 1, id="x3")
    await h.signal("release")
    assert await uh.result(timeout=20) == 9  # completed by the other process's workflow task
    # The worker process is replaced: the new one replays and still knows the ids.
    await remote.stop()
    replacement = await _WorkerProcess.start(store)
    try:
        assert await h.execute_update("add", 4, id="x2") == 8
        assert await replacement.update("xproc", "add", [4], "x3") == 9
        assert await h.query("n") == 9
        assert await _accepted_ids(h) == ["x1", "x2", "x3"]
        await h.signal("finish")
        assert await h.result(timeout=20) == 9
    finally:
        await replacement.stop()


async def test_one_update_id_sent_from_two_processes_at_once(client: duro.Client, store: str,
                                                             remote: _WorkerProcess) -> None:
    """A worker here and one in another process each take the same id: it is recorded once."""
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS):
        h = await client.start_workflow(u.counter, id="two-procs", task_queue=QUEUE)
        for i in range(3):
            uid = f"p{i}"
            here, there = await asyncio.gather(h.execute_update("add", 3, id=uid),
                                               remote.update("two-procs", "add", [3], uid))
            assert here == there == 3 * (i + 1)
        assert await _accepted_ids(h) == ["p0", "p1", "p2"]
        assert await _finish(h) == 9


# ---------------------------------------------------------------------------------------------- update-with-start


async def test_update_with_start_returns_the_update_handle(client: duro.Client, worker: duro.Worker) -> None:
    uh = await client.start_update_with_start(u.counter, id="uws", task_queue=QUEUE, update="slow_add",
                                              update_args=[2], update_id="w1")
    assert (uh.id, uh.workflow_id) == ("w1", "uws")
    h = client.get_handle("uws")
    assert await _completed_ids(h) == []
    again = await client.start_update_with_start(u.counter, id="uws", task_queue=QUEUE, update="slow_add",
                                                 update_args=[2], update_id="w1")
    assert again.run_id == uh.run_id
    await h.signal("release")
    assert await uh.result() == await again.result() == 2
    assert await client.execute_update_with_start(u.counter, id="uws", task_queue=QUEUE, update="add",
                                                  update_args=[1], update_id="w2") == 3
    assert await client.execute_update_with_start(u.counter, id="uws", task_queue=QUEUE, update="add",
                                                  update_args=[1], update_id="w2") == 3
    done = await client.start_update_with_start(u.counter, id="uws", task_queue=QUEUE, update="add",
                                                update_args=[1], wait_for_stage="completed")
    assert await done.result() == 4
    assert len(await _accepted_ids(h)) == 3
    assert await _finish(h) == 4


# ---------------------------------------------------------------------------------------------- interceptors


class _SeeUpdates(Interceptor):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def intercept_client(self, next: ClientOutboundInterceptor) -> ClientOutboundInterceptor:
        seen = self.seen

        class Out(ClientOutboundInterceptor):
            async def update_workflow(self, input: UpdateWorkflowInput) -> duro.WorkflowUpdateHandle:
                seen.append((input.update, input.id, str(input.wait_for_stage)))
                return await self.next.update_workflow(input)

        return Out(next)


async def test_interceptors_see_the_update_id_and_stage(store: str) -> None:
    spy = _SeeUpdates()
    async with duro.Client.connect(store, interceptors=[spy]) as client, \
            duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS):
        h = await client.start_workflow(u.counter, id="icpt-upd", task_queue=QUEUE)
        assert await h.execute_update("add", 1, id="a") == 1
        uh = await h.start_update("add", 1)
        assert await uh.result() == 2
        assert spy.seen == [("add", "a", "completed"), ("add", uh.id, "accepted")]
        assert await _finish(h) == 2


# ---------------------------------------------------------------------------------------------- dynamic handlers


async def test_dynamic_handlers_and_handler_lookups_replay_the_same(client: duro.Client) -> None:
    h = await client.start_workflow(u.dynamic, id="dyn", task_queue=QUEUE)
    for name, arg in (("x", 1), ("y", 2), ("x", 3), ("start", None)):  # before any worker: all buffered
        await h.signal(name, arg)
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS):

        async def waits_for_w() -> bool:
            return "signal 'w'" in await h.query("__stack_trace")

        await eventually(waits_for_w, "the workflow to wait for signal 'w'")
        await h.signal("w", "for the waiter")

        async def has_dynamic_query() -> bool:
            try:
                await h.query("anything", 1)
            except duro.DuroError:
                return False
            return True

        await eventually(has_dynamic_query, "the dynamic query handler")
        await h.signal("named", "n1")
        await h.signal("other", "o1", "o2")

        async def seen() -> int:
            answer = await h.query("whatever", 1, 2)
            assert answer["query"] == "whatever" and answer["args"] == [1, 2]
            return int(answer["seen"])

        await eventually(lambda: _equals(seen(), 6), "both signals to be handled")
        assert await h.execute_update("dyn_up", "a", id="d1") == ["dyn_up", "a"]
        with pytest.raises(duro.ApplicationError, match="bad_one is refused"):
            await h.execute_update("bad_one")
    # A fresh worker (nothing cached) replays everything above and carries on.
    async with duro.Worker(client, task_queue=QUEUE, workflows=u.WORKFLOWS):
        assert await h.execute_update("dyn_up", "a", id="d1") == ["dyn_up", "a"]  # replayed, not applied again
        await h.signal("phase2")
        await h.signal("late", "kept")  # no dynamic handler any more: buffered, then waited for
        await h.signal("finish")
        result = await h.result(timeout=20)
    assert result == {
        "seen": [["x", 1], ["y", 2], ["x", 3], ["waited", "for the waiter"], ["by-name", "n1"], ["other", "o1", "o2"],
                 ["update:dyn_up", "a"], ["buffered", "kept"]],
        "checks": {"get_named": True, "get_unknown": True, "get_dynamic": True, "get_query": True,
                   "get_update": True, "removed": True, "named_removed": True},
    }
    await duro.testing.Replayer(workflows=[u.dynamic]).replay(await h.fetch_history())
    # A query answered by replay in this process sees the same state.
    assert await client.get_handle("dyn", workflow=u.dynamic).query("q") == {"query": "q", "args": [], "seen": 8}


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
