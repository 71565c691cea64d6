"""Crash safety with real worker processes (``worker_main.py``) killed with SIGKILL.

The pytest process is the client; workers run in subprocesses on the same store (for LMDB the same
path: LMDB is safe across processes on one machine). Every test kills what it started, whatever
happens (the ``spawn`` fixture's teardown).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import duro
from tests.engine import wfs
from tests.engine.wfs import Order, Receipt

REPO = Path(__file__).resolve().parents[2]
WORKER_MAIN = Path(__file__).resolve().with_name("worker_main.py")
READY_TIMEOUT_S = 30.0
RESULT_TIMEOUT_S = 30.0


class WorkerProcess:
    """One ``worker_main.py`` subprocess; its stdout and stderr go to files under ``log_dir``."""

    def __init__(self, store: str, task_queue: str, log_dir: Path, name: str) -> None:
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER_MAIN), store, task_queue],
                cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def describe(self) -> str:
        return f"worker {self.name} (pid {self.pid}, exit code {self.proc.poll()}); stderr:\n{self.stderr()}"

    async def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the worker printed "ready" (its Worker polls the queue)."""
        deadline = time.monotonic() + timeout
        while True:
            if b"ready" in self.out_path.read_bytes():
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited before it was ready: {self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker was not ready within {timeout}s: {self.describe()}")
            await asyncio.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL the process (if it still runs) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


Spawn = Callable[..., WorkerProcess]


@pytest.fixture
def spawn(store: str, tmp_path: Path) -> Iterator[Spawn]:
    """Start worker subprocesses on the test's store; all of them are killed at teardown."""
    started: list[WorkerProcess] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(task_queue: str = "t") -> WorkerProcess:
        w = WorkerProcess(store, task_queue, logs, f"w{len(started) + 1}")
        started.append(w)
        return w

    try:
        yield start
    finally:
        for w in started:
            try:
                w.kill()
            except Exception:  # pragma: no cover - keep killing the others
                pass


async def _wait_for(predicate: Callable[[], bool], timeout: float, what: str,
                    workers: tuple[WorkerProcess, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            details = "\n".join(w.describe() for w in workers)
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{details}")
        await asyncio.sleep(0.01)


async def _result(handle: duro.WorkflowHandle, *workers: WorkerProcess) -> Any:
    """``handle.result()`` bounded by RESULT_TIMEOUT_S; on timeout, say what the store and workers show."""
    try:
        return await handle.result(timeout=RESULT_TIMEOUT_S)
    except TimeoutError:  # asyncio.TimeoutError is the builtin TimeoutError on 3.11+
        status = (await handle.describe()).status
        details = "\n".join(w.describe() for w in workers)
        raise AssertionError(
            f"handle.result() of {handle.id!r} timed out after {RESULT_TIMEOUT_S}s; the run's status in the "
            f"store is now {status!r}" + (" (completed, but the waiting client was never woken)"
                                          if status != "running" else "") + f"\n{details}") from None


async def test_killed_worker_resumes_in_a_new_process(client: duro.Client, spawn: Spawn, tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    marker = tmp_path / "marker.txt"
    w1 = spawn("crash")
    await w1.wait_ready()
    handle = await client.start_workflow(wfs.crash_workflow, str(record), str(marker), id="crash-1",
                                         task_queue="crash")
    # The second activity writes its pid to the marker, then blocks forever (the first time).
    await _wait_for(lambda: marker.exists() and marker.read_text() != "", RESULT_TIMEOUT_S,
                    "the blocking activity to start", (w1,))
    assert marker.read_text() == str(w1.pid)
    assert record.read_text().splitlines() == [f"1 {w1.pid}"]

    w1.kill()
    assert w1.proc.returncode == -signal.SIGKILL
    desc = await handle.describe()
    assert desc.status == "running"

    t0 = time.monotonic()
    w2 = spawn("crash")
    await w2.wait_ready()
    result = await _result(handle, w2)
    took = time.monotonic() - t0
    assert result == [1, "resumed", 2]
    # Step 1's completion was recorded before the crash: it never ran again. Step 2 ran in the new worker.
    assert record.read_text().splitlines() == [f"1 {w1.pid}", f"2 {w2.pid}"]
    # The dead worker's lease was taken over because its pid is gone, not after the lease ran out (90 s).
    assert took < 20, f"taking over the dead worker's activity took {took:.1f}s"

    history = await handle.fetch_history()
    scheduled = [(e.ref, e.name) for e in history if e.event_type == "ActivityTaskScheduled"]
    assert scheduled == [(1, "record_pid"), (2, "block_forever_first_time"), (3, "record_pid")]
    completed = {e.ref: e.attempt for e in history if e.event_type == "ActivityTaskCompleted"}
    assert completed[1] == 1 and completed[3] == 1
    assert completed[2] == 2, "the killed attempt of the blocking activity counts as a failed attempt"
    assert not [e for e in history if e.event_type == "ActivityTaskFailed"]
    await duro.testing.Replayer(workflows=[wfs.crash_workflow]).replay(history)


async def test_kill_in_the_middle_of_many_workflows_loses_none(client: duro.Client, spawn: Spawn) -> None:
    n_workflows, n_steps = 50, 20
    w1 = spawn("many")
    await w1.wait_ready()
    handles = [await client.start_workflow(wfs.long_workflow, n_steps, id=f"long-{i}", task_queue="many")
               for i in range(n_workflows)]

    # Kill once the worker is well under way (about a sixth of all events written), not before it started.
    async def progress() -> int:
        return sum([(await h.describe()).history_length for h in handles])

    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while await progress() < n_workflows * 10:
        if time.monotonic() > deadline:
            raise AssertionError(f"the first worker made no progress\n{w1.describe()}")
        await asyncio.sleep(0.005)
    w1.kill()
    running_at_kill = len(await client.list_workflows(status="running", limit=1000))
    assert running_at_kill > 0, "every workflow finished before the kill: the test proved nothing"

    w2 = spawn("many")
    await w2.wait_ready()
    try:
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), RESULT_TIMEOUT_S)
    except TimeoutError:
        left = await client.list_workflows(status="running", limit=1000)
        raise AssertionError(f"handle.result() timed out; {len(left)} workflows are still running in the store "
                             f"(running at the kill: {running_at_kill})\n{w2.describe()}") from None
    assert results == [sum(range(n_steps))] * n_workflows

    done = await client.list_workflows(status="completed", workflow_type="long_workflow", limit=1000)
    assert sorted(d.workflow_id for d in done) == sorted(f"long-{i}" for i in range(n_workflows))
    assert await client.list_workflows(status="running", limit=1000) == []
    replayer = duro.testing.Replayer(workflows=[wfs.long_workflow])
    for h in handles:
        history = await h.fetch_history()
        scheduled = [e.ref for e in history if e.event_type == "ActivityTaskScheduled"]
        completed = [e.ref for e in history if e.event_type == "ActivityTaskCompleted"]
        assert scheduled == list(range(1, n_steps + 1)), h
        assert completed == list(range(1, n_steps + 1)), h
        assert history[-1].event_type == "WorkflowExecutionCompleted"
        await replayer.replay(history)


async def test_client_and_worker_in_different_processes(client: duro.Client, spawn: Spawn) -> None:
    w = spawn("xproc")
    await w.wait_ready()
    # Started by this process, run by the other one: the worker notices the foreign commit.
    h = await client.start_workflow(wfs.long_workflow, 5, id="x-long", task_queue="xproc")
    assert await _result(h, w) == 10
    h = await client.start_workflow(wfs.long_workflow, 3, id="x-long-2", task_queue="xproc")
    assert await _result(h, w) == 3

    # Signals from this process reach the workflow in the other one, in order.
    handle = await client.start_workflow(wfs.signal_workflow, 3, id="x-signals", task_queue="xproc")
    for item in ("a", {"b": 1}, [2]):
        await handle.signal("item", item)
    assert await _result(handle, w) == ["a", {"b": 1}, [2]]

    # Dataclass arguments and results cross the process boundary as their annotated types.
    order = await client.start_workflow(wfs.order_workflow, Order("X1", 7), id="x-order", task_queue="xproc")
    await order.signal("approve", {"by": "bob"})
    assert await _result(order, w) == Receipt(order_id="X1", tracking="T-X1", charged=7)

    # Round trips one after the other: each one waits for a cross-process notice both ways.
    t0 = time.monotonic()
    for i in range(10):
        h = await client.start_workflow(wfs.long_workflow, 1, id=f"x-rt-{i}", task_queue="xproc")
        assert await _result(h, w) == 0
    assert time.monotonic() - t0 < RESULT_TIMEOUT_S

    # A failure crosses too, with its cause.
    failing = await client.start_workflow(wfs.failing_workflow, id="x-fail", task_queue="xproc")
    with pytest.raises(duro.WorkflowFailedError) as info:
        await failing.result(timeout=RESULT_TIMEOUT_S)
    cause = info.value.__cause__
    assert isinstance(cause, duro.ApplicationError) and cause.type == "Boom" and cause.details == {"k": 1}
