"""Fork and process safety: owner tokens and stores are per process; liveness sees zombies and reused pids."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.stores import lmdb as lmdb_store

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")

DEADLINE_S = 30.0
FORK = multiprocessing.get_context("fork")


@duro.activity
async def note_pid(ctx: duro.ActivityContext, directory: str, i: int) -> int:
    """Writes this process's pid; the first attempt in the doomed worker then hangs until it is killed."""
    Path(directory, f"{i}.{ctx.info.attempt}.{os.getpid()}").touch()
    if os.environ.get("DURO_TEST_DOOMED") == "1" and ctx.info.attempt == 1:
        await asyncio.Event().wait()
    return i


@duro.workflow
async def one_note(ctx: duro.WorkflowContext, directory: str, i: int) -> int:
    got: int = await ctx.execute_activity(note_pid, directory, i, start_to_close_timeout=300)
    return got


def _worker_main(url: str, doomed: bool) -> None:
    os.environ["DURO_TEST_DOOMED"] = "1" if doomed else "0"

    async def main() -> None:
        async with duro.Client.connect(url) as client:
            async with duro.Worker(client, task_queue="f", workflows=[one_note], activities=[note_pid]):
                await asyncio.Event().wait()

    asyncio.run(main())


def _owner_of_child(conn: Any) -> None:
    conn.send(lmdb_store.OWNER)
    conn.close()


@pytest.fixture
def processes() -> Iterator[list[Any]]:
    procs: list[Any] = []
    yield procs
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)


def test_a_forked_child_has_its_own_owner_token() -> None:
    parent, child = FORK.Pipe()
    p = FORK.Process(target=_owner_of_child, args=(child,))
    p.start()
    token = parent.recv()
    p.join(DEADLINE_S)
    assert token != lmdb_store.OWNER
    assert token.split(":")[1] == str(p.pid)


async def test_a_forked_child_opens_the_store_anew(tmp_path: Path) -> None:
    url = f"lmdb://{tmp_path / 's'}"
    async with duro.Client.connect(url) as client:
        await client.start_workflow(one_note, str(tmp_path), 0, id="before", task_queue="f")
        pid = os.fork()
        if pid == 0:  # the child: the parent's store (no writer thread here) must not be reused
            code = 1
            try:
                async def child() -> None:
                    async with duro.Client.connect(url) as c:
                        await c.start_workflow(one_note, str(tmp_path), 1, id="from-child", task_queue="f")
                        assert len(await c.list_workflows()) == 2

                asyncio.run(asyncio.wait_for(child(), 20))
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + DEADLINE_S
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            assert time.monotonic() < deadline, "the forked child hung"
            await asyncio.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (await client.get_handle("from-child").describe()).status == "running"


async def test_a_fork_started_worker_takes_over_a_killed_siblings_tasks(tmp_path: Path,
                                                                         processes: list[Any]) -> None:
    url = f"lmdb://{tmp_path / 's'}"
    notes = tmp_path / "notes"
    notes.mkdir()
    doomed = FORK.Process(target=_worker_main, args=(url, True))
    doomed.start()
    processes.append(doomed)
    async with duro.Client.connect(url) as client:
        handles = [await client.start_workflow(one_note, str(notes), i, id=f"f{i}", task_queue="f")
                   for i in range(10)]
        # The doomed worker holds every first attempt, hanging.
        deadline = time.monotonic() + DEADLINE_S
        while len(list(notes.glob(f"*.1.{doomed.pid}"))) < 10:
            assert time.monotonic() < deadline, "the first worker did not take the activities"
            await asyncio.sleep(0.02)
        sibling = FORK.Process(target=_worker_main, args=(url, False))
        sibling.start()
        processes.append(sibling)
        os.kill(doomed.pid, signal.SIGKILL)
        # Its leases (start_to_close 300 s) are taken over at once: its owner is dead.
        results = [await asyncio.wait_for(h.result(), DEADLINE_S) for h in handles]
        assert results == list(range(10))
        assert len(list(notes.glob(f"*.2.{sibling.pid}"))) == 10


def test_liveness_sees_zombies_and_reused_pids() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    token_start = lmdb_store._start_time(proc.pid)
    host = lmdb_store._HOST
    deadline = time.monotonic() + DEADLINE_S
    # Not reaped yet: a zombie once it exited.
    while True:
        try:
            state = Path(f"/proc/{proc.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
        except FileNotFoundError:
            pytest.skip("no /proc on this platform")
        if state == b"Z":
            break
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert not lmdb_store.owner_alive(f"{host}:{proc.pid}:{token_start}:abcd1234")
    proc.wait()
    me = lmdb_store._start_time(os.getpid())
    parent = os.getppid()
    assert lmdb_store.owner_alive(f"{host}:{parent}:{lmdb_store._start_time(parent)}:abcd1234")
    # Same pid, another start time: the pid was reused by a later process.
    assert not lmdb_store.owner_alive(f"{host}:{parent}:{me}1:abcd1234")
    # Another token with our own pid is an earlier process that had it.
    assert not lmdb_store.owner_alive(f"{host}:{os.getpid()}:{me}:00000000")
    assert lmdb_store.owner_alive(f"other-host:{parent}:1:abcd1234")
    # The same host name in another pid namespace (a container with the host's network): not ours to judge.
    assert lmdb_store.owner_alive(f"{socket.gethostname()}~00000000:{os.getpid()}:{me}1:abcd1234")
