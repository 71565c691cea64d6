"""The PostgreSQL store end to end, through the public API, on a real server (a fresh schema per test).

Workflows of ``tests.engine.wfs`` run against ``postgresql://`` URLs: activities with retries,
signals, real short timers, children, continue-as-new, cancel and terminate; queries and updates
answered by a worker in another process; two worker processes sharing one schema; and a killed
worker (taken over at once: its process is gone) and a hung one (taken over when its lease ran out).

Run as a script (``python test_pg_store.py URL QUEUE``) this file is a worker process of its own
workflows (the take-over test starts two).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pytest  # noqa: E402

import duro  # noqa: E402
from tests import pg  # noqa: E402
from tests.engine import wfs  # noqa: E402
from tests.engine.wfs import Order, Receipt  # noqa: E402
from tests.waiting import eventually  # noqa: E402

pg_url = pg.pg_url  # the fixture of tests.pg, requested by name below

RESULT_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------------------------------- workflows

@duro.activity
async def stall_once(ctx: duro.ActivityContext, marker: str) -> int:
    """The first attempt writes its pid to ``marker`` and hangs (its worker gets killed); later ones return."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        await asyncio.Event().wait()  # hangs until its worker is killed
    return ctx.info.attempt


@duro.workflow
async def takeover_workflow(ctx: duro.WorkflowContext, marker: str) -> dict[str, Any]:
    attempt = await ctx.execute_activity(stall_once, marker, start_to_close_timeout=2,
                                         retry_policy=duro.RetryPolicy(initial_interval=0.05))
    return {"attempt": attempt}


@duro.workflow
async def child_workflow(ctx: duro.WorkflowContext, x: int) -> int:
    await ctx.sleep(0.05)
    return x * 2


@duro.workflow
async def parent_workflow(ctx: duro.WorkflowContext, n: int) -> list[int]:
    return list(await asyncio.gather(*(ctx.execute_child_workflow(child_workflow, i, id=f"{ctx.info.workflow_id}-c{i}")
                                       for i in range(n))))


@duro.workflow
async def countdown(ctx: duro.WorkflowContext, n: int, total: int) -> int:
    if n == 0:
        return total
    total += await ctx.execute_activity(wfs.echo, n)
    ctx.continue_as_new(n - 1, total)
    raise AssertionError("continue_as_new returns only by raising")


@duro.workflow
async def waits_forever(ctx: duro.WorkflowContext) -> str:
    await ctx.wait_signal("never")
    return "signalled"


WORKFLOWS: list[Callable[..., Any]] = [takeover_workflow, child_workflow, parent_workflow, countdown, waits_forever]
WORKFLOWS += cast("list[Callable[..., Any]]", wfs.ALL_WORKFLOWS)
ACTIVITIES: list[Callable[..., Any]] = [stall_once]
ACTIVITIES += cast("list[Callable[..., Any]]", wfs.ALL_ACTIVITIES)


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture
async def client(pg_url: str) -> AsyncIterator[duro.Client]:
    async with duro.Client.connect(pg_url) as c:
        yield c


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue="q", workflows=WORKFLOWS, activities=ACTIVITIES) as w:
        yield w


class Proc:
    """A worker subprocess (this file run as a script); killed at teardown whatever happens."""

    def __init__(self, url: str, queue: str, log_dir: Path, name: str, script: Path | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.out = log_dir / f"{name}.out"
        self.err = log_dir / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(script or Path(__file__)), url, queue], cwd=REPO,
                                         env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    async def ready(self) -> None:
        await eventually(lambda: b"ready" in self.out.read_bytes() or self.proc.poll() is not None, "ready")
        assert self.proc.poll() is None, self.err.read_text()[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    procs: list[Proc] = []

    def start(url: str, queue: str, name: str, script: Path | None = None) -> Proc:
        p = Proc(url, queue, tmp_path, name, script)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


# ---------------------------------------------------------------------------------------------- in one process

async def test_the_store_opens_by_url_and_creates_its_schema(client: duro.Client) -> None:
    assert type(client.store).__name__ == "PostgresStore"
    assert await client.list_workflows() == []


async def test_order_with_activities(client: duro.Client, worker: duro.Worker) -> None:
    order = Order(order_id="A1", amount=5)
    handle = await client.start_workflow(wfs.order_workflow, order, id="order-A1", task_queue="q")
    await handle.signal("approve", {"by": "alice"})
    receipt = await handle.result(timeout=RESULT_TIMEOUT_S)
    assert isinstance(receipt, Receipt) and receipt.order_id == "A1"
    history = await client.get_handle("order-A1").fetch_history()
    assert [e.event_id for e in history] == list(range(1, len(history) + 1))
    desc = await client.get_handle("order-A1").describe()
    assert desc.status == "completed"


async def test_activity_retries_then_succeeds_and_final_failure_fails_the_run(
        client: duro.Client, worker: duro.Worker) -> None:
    assert await client.execute_workflow(wfs.retry_workflow, 2, 5, False, id="r-ok", task_queue="q") == 3
    with pytest.raises(duro.WorkflowFailedError):
        await client.execute_workflow(wfs.retry_workflow, 5, 2, False, id="r-fail", task_queue="q")


async def test_signals_and_durable_timers(client: duro.Client, worker: duro.Worker) -> None:
    handle = await client.start_workflow(wfs.signal_workflow, 2, id="sig", task_queue="q")
    await handle.signal("item", {"n": 1})
    await handle.signal("item", {"n": 2})
    assert await handle.result(timeout=RESULT_TIMEOUT_S) == [{"n": 1}, {"n": 2}]
    out = await client.execute_workflow(wfs.timer_workflow, 0.05, id="timer", task_queue="q")
    assert out["elapsed"] >= 0.1


async def test_children_and_continue_as_new(client: duro.Client, worker: duro.Worker) -> None:
    assert await client.execute_workflow(parent_workflow, 3, id="parent", task_queue="q") == [0, 2, 4]
    assert (await client.get_handle("parent-c1").describe()).status == "completed"
    assert await client.execute_workflow(countdown, 3, 0, id="cd", task_queue="q") == 6
    runs = [r for r in await client.list_workflows() if r.workflow_id == "cd"]
    assert len(runs) == 1 and runs[0].status == "completed"


async def test_cancel_and_terminate(client: duro.Client, worker: duro.Worker) -> None:
    a = await client.start_workflow(waits_forever, id="cancel-me", task_queue="q")
    b = await client.start_workflow(waits_forever, id="terminate-me", task_queue="q")
    await a.cancel()
    await b.terminate("enough")
    with pytest.raises(duro.WorkflowFailedError):
        await a.result(timeout=RESULT_TIMEOUT_S)
    with pytest.raises(duro.WorkflowFailedError):
        await b.result(timeout=RESULT_TIMEOUT_S)
    assert (await a.describe()).status == "canceled"
    assert (await b.describe()).status == "terminated"


async def test_a_second_start_of_a_running_id_is_refused(client: duro.Client, worker: duro.Worker) -> None:
    await client.start_workflow(waits_forever, id="dup", task_queue="q")
    with pytest.raises(duro.WorkflowAlreadyStartedError):
        await client.start_workflow(waits_forever, id="dup", task_queue="q")


async def test_many_concurrent_workflows_share_batches(client: duro.Client, worker: duro.Worker) -> None:
    handles = [await client.start_workflow(wfs.long_workflow, 3, id=f"many-{i}", task_queue="q") for i in range(50)]
    results = await asyncio.gather(*(h.result(timeout=RESULT_TIMEOUT_S) for h in handles))
    assert results == [3] * 50
    store: Any = client.store
    assert store.ops_committed > store.commits  # some batches carried several ops


# ---------------------------------------------------------------------------------------------- across processes

async def test_client_without_worker_gets_results_from_a_worker_process(
        pg_url: str, spawn: Callable[..., Proc]) -> None:
    p = spawn(pg_url, "q", "w1")
    await p.ready()
    async with duro.Client.connect(pg_url) as client:
        handle = await client.start_workflow("signal_workflow", 1, id="remote-sig", task_queue="q")
        await handle.signal("item", "x")
        assert await handle.result(timeout=RESULT_TIMEOUT_S) == ["x"]


async def test_query_and_update_through_a_worker_in_another_process(
        pg_url: str, spawn: Callable[..., Proc]) -> None:
    p = spawn(pg_url, "remote", "fw", REPO / "tests/integration/feature_worker.py")
    await p.ready()
    async with duro.Client.connect(pg_url) as client:
        handle = await client.start_workflow("queried", id="remote-q", task_queue="remote")
        await handle.signal("add", "a")

        async def has_a() -> bool:
            try:
                return bool(await handle.query("items") == ["a"])
            except duro.DuroError:  # no workflow task has run yet
                return False

        await eventually(has_a, "the query answer")
        assert await handle.query("count_plus", 5) == 6
        assert await handle.execute_update("add", "b") == 2
        await handle.signal("add", "stop")
        assert await handle.result(timeout=RESULT_TIMEOUT_S) == ["a", "b", "stop"]


async def test_two_worker_processes_share_one_schema(pg_url: str, spawn: Callable[..., Proc]) -> None:
    procs = [spawn(pg_url, "q", f"w{i}") for i in range(2)]
    for p in procs:
        await p.ready()
    async with duro.Client.connect(pg_url) as client:
        handles = [await client.start_workflow("long_workflow", 4, id=f"shared-{i}", task_queue="q")
                   for i in range(40)]
        results = await asyncio.gather(*(h.result(timeout=RESULT_TIMEOUT_S) for h in handles))
    assert results == [6] * 40


@pytest.mark.parametrize("how", ["kill", "hang"])
async def test_a_lost_workers_activity_is_taken_over(
        pg_url: str, spawn: Callable[..., Proc], tmp_path: Path, how: str) -> None:
    """kill -9: its owner token names a dead process here, so the next reap takes it back at once.

    A hung worker (SIGSTOP) is alive: its attempt is taken back only when its lease ran out (the
    attempt's 2 s timeout plus lease_s=1), then retried per the policy.
    """
    url = f"{pg_url}&lease_s=1"
    marker = tmp_path / "marker"
    first = spawn(url, "q", "first")
    await first.ready()
    async with duro.Client.connect(url) as client:
        handle = await client.start_workflow("takeover_workflow", str(marker), id="takeover", task_queue="q")
        await eventually(marker.exists, "the first attempt started")
        assert int(marker.read_text()) == first.proc.pid
        t0 = time.monotonic()
        if how == "kill":
            first.kill()
        else:
            os.kill(first.proc.pid, signal.SIGSTOP)
        second = spawn(url, "q", "second")
        await second.ready()
        assert await handle.result(timeout=RESULT_TIMEOUT_S) == {"attempt": 2}
        if how == "hang":
            assert time.monotonic() - t0 >= 2.5  # not before the lease ran out


async def _worker_main(url: str, queue: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with duro.Client.connect(url) as client, \
            duro.Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=ACTIVITIES):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_worker_main(sys.argv[1], sys.argv[2]))
