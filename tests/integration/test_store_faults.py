"""The LMDB store under faults: an op failing half-way in a group commit, keys past LMDB's limit,
a full map, a full disk (a small tmpfs), another process growing the map, file modes.

These exercise the group-commit machinery of ``LmdbStore`` itself, so they use its internals where
a fault must be injected at an exact point; everything else goes through the public API.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.stores.base import StartRequest, new_run_id, pack
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


@duro.activity
async def gate(ctx: duro.ActivityContext, i: int) -> int:
    await GATE.wait()
    return i


GATE = asyncio.Event()


@duro.activity
async def double(ctx: duro.ActivityContext, i: int) -> int:
    return i * 2


@duro.workflow
async def gated(ctx: duro.WorkflowContext, i: int) -> int:
    got: int = await ctx.execute_activity(gate, i, start_to_close_timeout=120)
    return got


@duro.workflow
async def waits(ctx: duro.WorkflowContext, i: int) -> int:
    n = await ctx.wait_signal("go")
    doubled: int = await ctx.execute_activity(double, i + int(n), start_to_close_timeout=60)
    return doubled


@duro.workflow
async def quick(ctx: duro.WorkflowContext, blob: str) -> int:
    return len(blob)


RAN: list[int] = []


@duro.activity
async def counted(ctx: duro.ActivityContext, i: int) -> int:
    RAN.append(i)
    return i + 1


@duro.workflow
async def one_step(ctx: duro.WorkflowContext, i: int) -> int:
    got: int = await ctx.execute_activity(counted, i, start_to_close_timeout=30)
    return got


def _request(workflow_id: str, task_queue: str = "t") -> StartRequest:
    return StartRequest(workflow_id=workflow_id, workflow_type="quick", task_queue=task_queue,
                        args=pack(b'["x"]'), run_id=new_run_id())


# ------------------------------------------------------------------ atomic ops in a group commit


async def test_an_op_failing_half_way_leaves_nothing_and_fails_alone(tmp_path: Path) -> None:
    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        hold, release = threading.Event(), threading.Event()

        def blocker(txn: Any, batch: Any) -> None:
            hold.set()
            release.wait(10)

        def half_way(txn: Any, batch: Any) -> None:
            txn.put(b"half-way", b"written", db=store._meta)
            raise RuntimeError("failed after writing")

        first = store._submit(blocker)
        await asyncio.get_running_loop().run_in_executor(None, hold.wait, 10)
        # These three queue up behind the blocker and so share the next batch.
        bad = store._submit(half_way)
        good = client.start_workflow(quick, "x", id="good", task_queue="t")
        good_task = asyncio.ensure_future(good)
        await eventually(lambda: store._queue.qsize() >= 2, "ops queued behind the blocker")
        release.set()
        await first
        with pytest.raises(duro.StoreError, match="failed after writing"):
            await bad
        handle = await good_task
        assert (await handle.describe()).status == "running"
        with store.env.begin() as txn:
            assert txn.get(b"half-way", db=store._meta) is None


async def test_an_activity_handed_out_before_a_commit_that_fails_runs_again_and_nothing_is_lost(
        tmp_path: Path) -> None:
    # Activities start while the commit that schedules them is in flight. Make that commit fail
    # after the hand-out: the attempt ran for nothing (its result finds no attempt and is dropped),
    # the caller is told, and the activity runs again when the workflow does: at least once.
    RAN.clear()
    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        store.early_activities = True
        real = store._hand_out_activities
        failed: list[bool] = []

        def hand_out_then_fail(batch: Any, early: set[Any]) -> None:
            before = len(early)
            real(batch, early)
            if len(early) > before and not failed:  # an attempt was handed out: now the commit fails
                failed.append(True)
                raise OSError(5, "Input/output error (injected: the commit fails after the hand-out)")

        store._hand_out_activities = hand_out_then_fail
        async with duro.Worker(client, task_queue="t", workflows=[one_step], activities=[counted]):
            # The first workflow task runs with the start, in its commit: the start fails as a whole.
            with pytest.raises(duro.StoreError, match="injected"):
                await client.start_workflow(one_step, 41, id="early", task_queue="t")
            await eventually(lambda: RAN == [41], "the attempt handed out before the failed commit to run")
            with pytest.raises(duro.WorkflowNotFoundError):
                await client.get_handle("early").describe()
            # Nothing of it was recorded (its result found no attempt); a new start runs it again.
            handle = await client.start_workflow(one_step, 41, id="early", task_queue="t")
            assert await asyncio.wait_for(handle.result(), DEADLINE_S) == 42
        assert failed == [True]
        assert RAN == [41, 41]
        history = await handle.fetch_history()
        assert [e.event_type for e in history].count("ActivityTaskScheduled") == 1
        assert [e.event_type for e in history].count("ActivityTaskCompleted") == 1


class _SyncFails:
    """An LMDB environment whose sync (the meta page's fsync, after the write lock) fails: an I/O error."""

    def __init__(self, env: Any) -> None:
        self._env = env

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    def sync(self) -> None:
        raise OSError(5, "Input/output error (injected: fsync failed)")


async def test_a_failed_sync_acknowledges_nothing_and_refuses_later_writes(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 's'}"
    async with duro.Client.connect(url) as client:
        await client.start_workflow(waits, 1, id="durable", task_queue="t")
        store: Any = client.store
        waiting = asyncio.ensure_future(client.get_handle("durable").result())
        await eventually(lambda: store._waiters, "the result waiter to be registered")
        store.env = _SyncFails(store.env)
        with pytest.raises(duro.StoreCorruptedError, match=r"could not sync a commit to disk .*fsync failed"):
            await client.start_workflow(waits, 2, id="unsynced", task_queue="t")
        # Nothing will answer a waiter now: it is told so (workers stop retrying their reports alike).
        with pytest.raises(duro.StoreCorruptedError, match="could not sync"):
            await asyncio.wait_for(waiting, DEADLINE_S)
        # After a failed fsync the page cache cannot be trusted: no later write is accepted here.
        with pytest.raises(duro.StoreError, match="accepts no more writes in this process"):
            await client.get_handle("durable").signal("go", 1)
        store.env = store.env._env
    # A new process (here: a new store on the same files) reads what is durable and goes on.
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="t", workflows=[waits], activities=[double]):
            handle = client.get_handle("durable")
            await handle.signal("go", 1)
            assert await asyncio.wait_for(handle.result(), DEADLINE_S) == 4


async def test_every_answer_a_client_reads_is_synced_first(tmp_path: Path) -> None:
    # A commit is visible a moment before its meta page is synced. result() (waiting, or with
    # timeout=0), describe(), fetch_history() and the listings answer from reads: each one read
    # from a commit not known synced (here: the store is made to forget it) syncs before it answers.
    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        async with duro.Worker(client, task_queue="t", workflows=[quick]):
            handle = await client.start_workflow(quick, "abc", id="q", task_queue="t")
            assert await handle.result() == 3
        store: Any = client.store
        last = store.env.last_txnid()
        reads = {"describe": handle.describe, "result": handle.result, "result now": lambda: handle.result(timeout=0),
                 "fetch_history": handle.fetch_history, "list": lambda: client.list_workflows(),
                 "count": lambda: client.count_workflows()}
        for name, read in reads.items():
            store._synced_txn = 0  # as if the commits it reads were not synced yet
            syncs = store.time_in_sync
            await read()
            assert store._synced_txn >= last, name
            assert store.time_in_sync > syncs, name  # it synced (the commits were its own: no later one)
        # A store that could not sync answers no read: what it would read may be lost.
        store._synced_txn = 0
        store._sync_failure = duro.StoreCorruptedError("injected: could not sync", path=store.path)
        for read in reads.values():
            with pytest.raises(duro.StoreCorruptedError, match="injected"):
                await read()
        store._sync_failure = None


async def test_the_syncer_thread_outlives_an_unexpected_error(tmp_path: Path) -> None:
    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        real = store._sync_and_answer
        broken = threading.Event()

        def fails_once(items: Any) -> None:
            if not broken.is_set():
                broken.set()
                raise RuntimeError("injected: answering failed")
            real(items)

        store._sync_and_answer = fails_once
        # The first batch answered (by the syncer, or the writer itself) fails with the error, and
        # neither thread dies: the batches after it go through.
        starts = [client.start_workflow(waits, i, id=f"w{i}", task_queue="t") for i in range(20)]
        done = await asyncio.gather(*starts, return_exceptions=True)
        failed = [d for d in done if isinstance(d, BaseException)]
        assert broken.is_set()
        assert all(isinstance(d, duro.StoreError) and "injected" in str(d) for d in failed), failed
        handle = await client.start_workflow(waits, 99, id="after", task_queue="t")
        assert (await handle.describe()).status == "running"


def test_a_change_mark_key_stays_short_whatever_the_queue() -> None:
    from duro.stores.lmdb import mark_key

    assert mark_key("wtask:q") == b"chg\x00wtask:q"
    long_a, long_b = mark_key("wtask:" + "a" * 500), mark_key("wtask:" + "a" * 499 + "b")
    assert len(long_a) < 64 and long_a != long_b


async def test_a_key_past_lmdbs_limit_writes_nothing(tmp_path: Path) -> None:
    """Below the API's own checks: the store alone keeps a start with a 600-byte queue atomic."""
    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        with pytest.raises(duro.StoreLimitError, match="511 bytes"):
            await store.start_workflow(_request("long-queue", task_queue="q" * 600))
        with pytest.raises(duro.WorkflowNotFoundError):
            await client.get_handle("long-queue").describe()
        await store.start_workflow(_request("long-queue"))  # the id is free: nothing was left behind
        assert (await client.get_handle("long-queue").describe()).status == "running"


async def test_an_eager_start_that_fails_in_packing_leaves_no_half_run(tmp_path: Path) -> None:
    """duro 0.1: a timer of 1e300 s failed after the history was written; the run could never close."""
    from duro._core import codec
    from duro._core.codec import Event
    from duro.stores.base import WorkflowTaskCompletion, run_key_of

    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        req = _request("eager")
        timer = Event(codec.TIMER_STARTED, 0, 0, 1, 0, "", b"")
        first = WorkflowTaskCompletion(run_key=run_key_of(req.run_id), task_queue="t", epoch=0, processed_through=1,
                                       commands=[timer], timers=[(1, 1e300)])
        with pytest.raises(duro.StoreError):
            await store.start_workflow_eager(req, int(store.clock.now() * 1e6), first)
        with pytest.raises(duro.WorkflowNotFoundError):
            await client.get_handle("eager").describe()
        assert store.read_history(run_key_of(req.run_id)) == []
        handle = await client.start_workflow(quick, "x", id="eager", task_queue="t")
        await handle.terminate("closable")
        assert (await handle.describe()).status == "terminated"


async def test_a_run_whose_history_cannot_be_decoded_fails_alone(tmp_path: Path) -> None:
    from duro._core import codec
    from duro._core.log import event_key
    from duro.stores.base import run_key_of

    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        damaged = await client.start_workflow(waits, 1, id="damaged", task_queue="t")
        healthy = await client.start_workflow(waits, 2, id="healthy", task_queue="t")
        run_key = run_key_of(damaged.run_id or "")

        def damage(txn: Any, batch: Any) -> None:
            txn.put(event_key(run_key, 1), b"\xffnot an event", db=store._history_db)

        await store._submit(damage)
        async with duro.Worker(client, task_queue="t", workflows=[waits], activities=[double]) as worker:
            await damaged.signal("go", 1)
            await healthy.signal("go", 1)
            assert await asyncio.wait_for(healthy.result(), DEADLINE_S) == 6
            await eventually(lambda: worker.stats["task_failures"] >= 1, "the damaged run's task to fail")
        assert (await damaged.describe()).status == "running"
        with store.env.begin() as txn:
            failed = [e for e in store.log.read(txn, run_key, 2) if e.type == codec.WORKFLOW_TASK_FAILED]
        assert failed and f"run {run_key.hex()} event 1" in failed[0].payload.decode()
        await damaged.terminate("damaged history")  # it can still be closed


@duro.workflow
async def naps(ctx: duro.WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "rested"


async def test_a_damaged_run_record_does_not_stop_the_other_timers(tmp_path: Path) -> None:
    from duro.stores.base import run_key_of

    async with duro.Client.connect(f"lmdb://{tmp_path / 's'}") as client:
        store: Any = client.store
        async with duro.Worker(client, task_queue="t", workflows=[naps]):
            damaged = await client.start_workflow(naps, 0.3, id="damaged", task_queue="t")
            healthy = await client.start_workflow(naps, 0.3, id="healthy", task_queue="t")
            await eventually(lambda: all(len(store.read_history(run_key_of(h.run_id or ""))) >= 3
                                         for h in (damaged, healthy)), "both timers to be set")
            key = run_key_of(damaged.run_id or "")

            def damage(txn: Any, batch: Any) -> None:
                txn.put(key, b"{not json", db=store._runs)
                store._wcache.records.pop(key, None)

            await store._submit(damage)
            assert await asyncio.wait_for(healthy.result(), DEADLINE_S) == "rested"


# ------------------------------------------------------------------ a full map


async def test_the_map_grows_by_itself(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 's'}?map_size=262144"
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="t", workflows=[quick]):
            handles = [await client.start_workflow(quick, "x" * 2000, id=f"m{i}", task_queue="t") for i in range(300)]
            assert [await h.result() for h in handles] == [2000] * 300
        store: Any = client.store
        assert store.map_growths >= 2
        assert store.env.info()["map_size"] > 262144


async def test_a_map_at_its_maximum_says_so_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with duro.Client.connect(f"lmdb://{path}?map_size=262144&max_map_size=524288") as client:
        acknowledged = []
        with pytest.raises(duro.StoreFullError, match="max_map_size"):
            for i in range(10_000):
                await client.start_workflow(quick, "y" * 4000, id=f"f{i}", task_queue="t")
                acknowledged.append(f"f{i}")
        assert acknowledged
    # Reopened with room to grow: every acknowledged start is there and runs to the end.
    async with duro.Client.connect(f"lmdb://{path}") as client:
        async with duro.Worker(client, task_queue="t", workflows=[quick]):
            for wid in acknowledged:
                assert await asyncio.wait_for(client.get_handle(wid).result(), DEADLINE_S) == 4000


async def test_another_process_growing_the_map_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with duro.Client.connect(f"lmdb://{path}?map_size=262144&max_map_size=262144") as client:
        await client.start_workflow(quick, "a", id="before", task_queue="t")
        script = (
            "import asyncio, duro\n"
            "async def main():\n"
            f"    async with duro.Client.connect('lmdb://{path}') as c:\n"
            "        for i in range(200):\n"
            "            await c.start_workflow('quick', 'z' * 4000, id=f'other{i}', task_queue='t')\n"
            "asyncio.run(main())\n"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO)
        assert await asyncio.wait_for(proc.wait(), DEADLINE_S) == 0
        # This process's map (256 KiB, not allowed to grow) is now smaller than the data.
        assert len(await client.list_workflows(limit=1000)) == 201
        store: Any = client.store
        assert store.env.resizes >= 1 and store._watcher.is_alive()


# ------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs, mounted for the test (skipped where this process may not mount)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    with open(filler, "wb") as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


async def test_a_full_disk_fails_clearly_and_everything_finishes_once_space_is_back(small_disk: Path) -> None:
    global GATE
    GATE = asyncio.Event()  # an Event binds to the loop of its first waiter: one per test
    async with duro.Client.connect(f"lmdb://{small_disk / 's'}") as client:
        async with duro.Worker(client, task_queue="t", workflows=[gated, waits], activities=[gate, double]) as worker:
            in_activity = [await client.start_workflow(gated, i, id=f"g{i}", task_queue="t") for i in range(7)]
            waiting = [await client.start_workflow(waits, i, id=f"w{i}", task_queue="t") for i in range(3)]
            await eventually(lambda: len(worker._act_live) == 7, "7 activities running")
            filler = _fill(small_disk)
            # Nothing new is accepted, each with an error that says what to do.
            with pytest.raises(duro.StoreFullError, match="full"):
                for _i in range(200):  # a few may still fit into free pages of the map
                    await client.start_workflow(quick, "x" * 20000, id=f"new{uuid.uuid4()}", task_queue="t")
            GATE.set()  # the 7 activities end now: their results cannot be committed yet
            await eventually(lambda: not worker._act_live, "the activities to end")
            filler.unlink()
            # Space is back: without a restart, every acknowledged run finishes.
            assert [await asyncio.wait_for(h.result(), DEADLINE_S) for h in in_activity] == list(range(7))
            for h in waiting:
                await h.signal("go", 1)
            assert [await asyncio.wait_for(h.result(), DEADLINE_S) for h in waiting] == [2, 4, 6]


# ------------------------------------------------------------------ files


async def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        async with duro.Client.connect(f"lmdb://{tmp_path / 'private'}") as client:
            await client.start_workflow(quick, "secret card 4111", id="p", task_queue="t")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "private").stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((tmp_path / "private" / name).stat().st_mode) == 0o600
