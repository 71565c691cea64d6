"""Many worker processes on one PostgreSQL schema (issue 8, B.3, B.4, B.7): kill -9 and a server restart.

Three ``worker_main.py`` subprocesses serve one schema; the pytest process is the client and runs
``order_workflow`` (four activities and an ``approve`` signal) on them.

- ``test_three_workers_one_killed_midway``: one worker is SIGKILLed once a good part of the
  workflows completed; the other two take over its tasks. Every workflow completes, each exactly
  once (one start, one signal, one close, one completion per activity, the right receipt).
- ``test_postgres_restart_mid_run``: the cluster is restarted (``pg_ctlcluster ... restart``) while
  starts and signals flow and the workers run; clients and workers reconnect. Every acknowledged
  start completes, each exactly once. A start or signal that raised ``CommitUnknownError`` during the
  restart is looked up by id afterwards: it may or may not have happened, but never twice; one that
  raised ``StoreUnavailableError`` must not have happened at all.

The URL carries ``lease_s=2`` so that leases are short. Every subprocess is SIGKILLed and reaped at
teardown, and the cluster is running again (``pg_isready``) when the restart test ends, whatever
happened. There are no bare sleeps: every wait polls a condition under a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import duro
from duro.stores.pg_conn import CommitUnknownError, StoreUnavailableError
from tests.engine import wfs
from tests.engine.wfs import Order, Receipt
from tests.integration.pg_cluster import cluster_cmd, restartable_cluster  # noqa: F401 - a fixture
from tests.integration.pg_open_runs import open_runs
from tests.waiting import eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
WORKER_MAIN = Path(__file__).resolve().with_name("worker_main.py")
READY_TIMEOUT_S = 30.0
# 1,000 order workflows as the issue asks. The store runs ~160 W1 workflows/s; an order workflow
# (4 activities + a signal) over three processes, plus one kill, takes well under the 60 s budget.
N_KILL = 1000
# The restart test needs fewer: what it proves is that nothing acknowledged around the restart is
# lost or doubled, and its run time is dominated by the restart and the reconnect back-off.
N_RESTART_BEFORE = 150  # acknowledged starts before the restart
N_RESTART_AFTER = 150  # acknowledged starts after the cluster is back
QUEUE = "pgmp"
ACTIVITIES = ("validate", "reserve", "charge", "ship")


class Proc:
    """One ``worker_main.py`` subprocess; stdout/stderr go to files under ``log_dir``."""

    def __init__(self, url: str, log_dir: Path, name: str) -> None:
        self.name = name
        self.out_path = log_dir / f"{name}.out"
        self.err_path = log_dir / f"{name}.err"
        self.killed = False
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER_MAIN), url, QUEUE], cwd=REPO, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def ready(self) -> bool:
        try:
            return b"ready" in self.out_path.read_bytes()
        except OSError:
            return False

    def describe(self) -> str:
        try:
            err = self.err_path.read_text(errors="replace")[-3000:]
        except OSError:
            err = ""
        return f"{self.name} (pid {self.proc.pid}, exit code {self.proc.poll()}); stderr:\n{err}"

    def kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it."""
        if self.proc.poll() is None:
            self.killed = True
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)


Spawn = Callable[[str], Proc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start worker subprocesses; every one is SIGKILLed and reaped at teardown."""
    started: list[Proc] = []
    logs = tmp_path / "logs"
    logs.mkdir()

    def start(url: str) -> Proc:
        p = Proc(url, logs, f"w{len(started) + 1}")
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            try:
                p.kill()
            except Exception:  # keep killing the others
                pass


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str,
                     procs: list[Proc] | None = None) -> None:
    """``eventually``, saying what the worker processes were doing if it times out."""
    await eventually(predicate, what, timeout, details=lambda: "\n".join(p.describe() for p in procs or []))


async def start_workers(spawn: Spawn, url: str, n: int) -> list[Proc]:
    procs = [spawn(url) for _ in range(n)]

    async def ready() -> bool:
        dead = [p for p in procs if p.proc.poll() is not None]
        if dead:
            raise AssertionError("a worker exited before it was ready:\n" + "\n".join(p.describe() for p in dead))
        return all(p.ready() for p in procs)

    await wait_until(ready, READY_TIMEOUT_S, "the workers to be ready", procs)
    return procs


async def wait_all_done(client: duro.Client, url: str, all_done: Callable[[], Awaitable[bool]], timeout: float,
                        n: int, workers: list[Proc]) -> None:
    """Wait until every workflow completed; on a timeout, say what the open runs are waiting for."""
    try:
        await wait_until(all_done, timeout, f"all {n} workflows to complete", workers)
    except AssertionError as e:
        without_task, others = await open_runs(client, url)
        raise AssertionError(f"open runs: {len(without_task)} with no task after a recorded activity result "
                             f"{without_task[:5]}; others:\n" + "\n".join(others[:10])
                             + f"\nworker logs: {workers[0].out_path.parent}\n{e}") from None


def assert_alive(procs: list[Proc]) -> None:
    """No worker died that the test did not kill."""
    dead = [p for p in procs if not p.killed and p.proc.poll() is not None]
    assert not dead, "workers exited by themselves:\n" + "\n".join(p.describe() for p in dead)


def order_for(wfid: str, i: int) -> Order:
    return Order(order_id=wfid, amount=i + 1)


def receipt_for(wfid: str, i: int) -> Receipt:
    return Receipt(order_id=wfid, tracking="T-" + wfid, charged=i + 1)


async def count_status(client: duro.Client, status: str) -> int:
    return len(await client.list_workflows(status=status, limit=1 << 20))


async def check_exactly_once(client: duro.Client, expected: dict[str, int],
                             notes: dict[str, str] | None = None) -> list[str]:
    """Check every run of ``expected`` (workflow id -> order index); return the problems found."""
    problems: list[str] = []
    sem = asyncio.Semaphore(16)

    async def one(wfid: str, i: int) -> None:
        async with sem:
            handle = client.get_handle(wfid, result_type=Receipt)
            desc = await handle.describe()
            if desc.status != "completed":
                problems.append(f"{wfid}: status {desc.status!r}")
                return
            history = await handle.fetch_history()
            types = Counter(e.event_type for e in history)
            once = {t: types[t] for t in ("WorkflowExecutionStarted", "WorkflowExecutionCompleted",
                                           "WorkflowExecutionSignaled")}
            if once != dict.fromkeys(once, 1):
                problems.append(f"{wfid}: {once} ({(notes or {}).get(wfid, 'no error seen by the client')})")
            scheduled = Counter((e.ref, e.name) for e in history if e.event_type == "ActivityTaskScheduled")
            completed = Counter(e.ref for e in history if e.event_type == "ActivityTaskCompleted")
            if sorted(name for _, name in scheduled) != sorted(ACTIVITIES) or any(n != 1 for n in scheduled.values()):
                problems.append(f"{wfid}: activities scheduled {dict(scheduled)}")
            if completed != Counter(ref for ref, _ in scheduled):
                problems.append(f"{wfid}: activity completions per seq {dict(completed)}, "
                                f"scheduled {dict(scheduled)}")
            result = await handle.result(timeout=10)
            if result != receipt_for(wfid, i):
                problems.append(f"{wfid}: result {result!r}")

    await asyncio.gather(*(one(w, i) for w, i in expected.items()))
    return problems


# ---------------------------------------------------------------------------------------- kill -9


async def test_three_workers_one_killed_midway(pg_url: str, spawn: Spawn) -> None:
    url = f"{pg_url}&lease_s=2"
    workers = await start_workers(spawn, url, 3)
    ids = {f"order-{i}": i for i in range(N_KILL)}
    async with duro.Client.connect(url) as client:
        sem = asyncio.Semaphore(32)

        async def drive(wfid: str, i: int) -> None:
            async with sem:
                h = await client.start_workflow(wfs.order_workflow, order_for(wfid, i), id=wfid, task_queue=QUEUE)
                await h.signal("approve", {"by": "test"})

        t0 = time.monotonic()
        load = asyncio.ensure_future(asyncio.gather(*(drive(w, i) for w, i in ids.items())))
        try:
            # "Midway": a quarter of the workflows completed, and the victim surely holds tasks.
            async def quarter_done() -> bool:
                if load.done():
                    load.result()
                assert_alive(workers)
                return await count_status(client, "completed") >= N_KILL // 4

            await wait_until(quarter_done, 60, "a quarter of the workflows to complete", workers)
            workers[0].kill()
            assert workers[0].proc.returncode == -signal.SIGKILL
            running_at_kill = await count_status(client, "running")
            await load
        finally:
            if not load.done():
                load.cancel()
        assert running_at_kill > 0, "every workflow had completed before the kill: the test proved nothing"

        async def all_done() -> bool:
            assert_alive(workers)
            return await count_status(client, "completed") == N_KILL

        await wait_all_done(client, url, all_done, 60, N_KILL, workers)
        took = time.monotonic() - t0
        in_store = {d.workflow_id for d in await client.list_workflows(limit=1 << 20)}
        assert in_store == set(ids)
        problems = await check_exactly_once(client, ids)
        assert not problems, f"{len(problems)} runs wrong, e.g.:\n" + "\n".join(problems[:20])
        assert_alive(workers)
        print(f"{N_KILL} order workflows on 3 workers, one killed with {running_at_kill} running: {took:.1f}s")


# ---------------------------------------------------------------------------------------- restart


@dataclass
class Outcomes:
    """What the client was told during the restart test."""

    acked: dict[str, int] = field(default_factory=dict)  # start acknowledged: id -> index
    signalled: set[str] = field(default_factory=set)  # signal acknowledged
    start_unknown: dict[str, int] = field(default_factory=dict)  # start raised CommitUnknownError
    start_unavailable: dict[str, int] = field(default_factory=dict)  # start raised StoreUnavailableError
    signal_uncertain: set[str] = field(default_factory=set)  # signal raised one of the two, or READ_FAILED
    notes: dict[str, str] = field(default_factory=dict)  # id -> what its start or signal raised
    other_errors: list[str] = field(default_factory=list)


@pytest.mark.usefixtures("restartable_cluster")
async def test_postgres_restart_mid_run(pg_url: str, spawn: Spawn) -> None:
    url = f"{pg_url}&lease_s=2"
    workers = await start_workers(spawn, url, 3)
    out = Outcomes()
    stop = asyncio.Event()
    restarted = asyncio.Event()
    acked_after_restart = 0
    counter = iter(range(1 << 30))

    async with duro.Client.connect(url) as client:

        async def starter() -> None:
            nonlocal acked_after_restart
            while not stop.is_set():
                i = next(counter)
                wfid = f"order-{i}"
                after = restarted.is_set()
                try:
                    h = await client.start_workflow(wfs.order_workflow, order_for(wfid, i), id=wfid,
                                                    task_queue=QUEUE, id_reuse_policy="reject_duplicate")
                except CommitUnknownError:
                    out.start_unknown[wfid] = i
                    continue
                except StoreUnavailableError:
                    out.start_unavailable[wfid] = i
                    continue
                except Exception as e:
                    out.other_errors.append(f"start {wfid}: {type(e).__name__}: {e}")
                    continue
                out.acked[wfid] = i
                if after:
                    acked_after_restart += 1
                try:
                    await h.signal("approve", {"by": "test"})
                except (CommitUnknownError, StoreUnavailableError) as e:
                    out.signal_uncertain.add(wfid)
                    out.notes[wfid] = f"signal raised {type(e).__name__}: {e}"[:200]
                except Exception as e:
                    out.other_errors.append(f"signal {wfid}: {type(e).__name__}: {e}")
                    out.signal_uncertain.add(wfid)
                else:
                    out.signalled.add(wfid)

        tasks = [asyncio.ensure_future(starter()) for _ in range(8)]
        try:
            async def acked_before() -> bool:
                assert_alive(workers)
                return len(out.acked) >= N_RESTART_BEFORE

            await wait_until(acked_before, 60, f"{N_RESTART_BEFORE} acknowledged starts", workers)
            running_at_restart = await count_status(client, "running")
            t_restart = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*cluster_cmd("restart"), stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.STDOUT)
            restart_out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, f"pg_ctlcluster restart failed: {restart_out.decode(errors='replace')}"
            restarted.set()
            restart_s = time.monotonic() - t_restart

            async def acked_after() -> bool:
                assert_alive(workers)
                return acked_after_restart >= N_RESTART_AFTER

            await wait_until(acked_after, 60, f"{N_RESTART_AFTER} acknowledged starts after the restart", workers)
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
        assert not out.other_errors, "\n".join(out.other_errors[:20])
        assert running_at_restart > 0, "nothing was running when PostgreSQL restarted: the test proved nothing"

        # Starts whose outcome is unknown: each may exist (then it is exactly one run, which still
        # needs its signal) or not; a start refused as unavailable must not exist.
        expected = dict(out.acked)
        for wfid, i in out.start_unknown.items():
            try:
                await client.get_handle(wfid).describe()
            except duro.WorkflowNotFoundError:
                continue
            expected[wfid] = i
            out.signal_uncertain.add(wfid)
        for wfid in out.start_unavailable:
            with pytest.raises(duro.WorkflowNotFoundError):
                await client.get_handle(wfid).describe()
        # Signals whose outcome is unknown: sent again only if the history does not hold them.
        for wfid in out.signal_uncertain:
            history = await client.get_handle(wfid).fetch_history()
            if not any(e.event_type == "WorkflowExecutionSignaled" for e in history):
                await client.get_handle(wfid).signal("approve", {"by": "test"})

        async def all_done() -> bool:
            assert_alive(workers)
            return await count_status(client, "completed") == len(expected)

        await wait_all_done(client, url, all_done, 60, len(expected), workers)
        in_store = {d.workflow_id for d in await client.list_workflows(limit=1 << 20)}
        assert in_store == set(expected), f"unexpected runs: {sorted(in_store - set(expected))[:10]}"
        resent = sorted(w for w in out.signal_uncertain if w in out.notes)
        problems = await check_exactly_once(client, expected, out.notes)
        assert not problems, f"{len(problems)} runs wrong (signals re-sent after a check: {resent}), e.g.:\n" + \
            "\n".join(problems[:20])
        assert_alive(workers)
        print(f"restart took {restart_s:.1f}s with {running_at_restart} running; {len(out.acked)} acknowledged, "
              f"{len(out.start_unknown)} starts unknown ({len(expected) - len(out.acked)} exist), "
              f"{len(out.start_unavailable)} unavailable, {len(out.signal_uncertain)} signals uncertain")

