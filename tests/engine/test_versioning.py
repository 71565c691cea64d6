"""Worker versioning: build ids, pinned and auto-upgrade runs, a task queue's current build (both stores).

Each build's code (tests.engine.versioning_wfs) returns its own build id, so a result tells which
build finished a run; ``describe()`` tells which build ran its latest workflow task.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.cli import main
from duro.errors import WorkflowNotFoundError
from duro.stores.base import run_key_of
from duro.stores.check import check_store
from duro.stores.copy import copy_store
from tests.engine import versioning_wfs as vwfs
from tests.processes import ready_process
from tests.waiting import eventually

Q = "versioned"
RESULT_TIMEOUT_S = 30.0


def worker(client: duro.Client, build: str | None, *, queue: str = Q, **options: Any) -> duro.Worker:
    """A worker of build ``build`` (None: unversioned) running that build's workflows."""
    return duro.Worker(client, task_queue=queue, workflows=vwfs.workflows(build or "unversioned"), build_id=build,
                       **options)


async def ran_on(handle: duro.WorkflowHandle, build: str | None, history_length: int = 2) -> duro.WorkflowExecution:
    """Wait until the run's latest workflow task ran on ``build`` (and its history is that long); its description."""

    async def check() -> duro.WorkflowExecution | None:
        try:
            desc = await handle.describe()
        except WorkflowNotFoundError:  # a child not started yet
            return None
        return desc if desc.build_id == build and desc.history_length >= history_length else None

    found: duro.WorkflowExecution = await eventually(check, f"a workflow task of {handle.id} on build {build}")
    return found


async def test_pinned_runs_stay_on_their_build(client: duro.Client) -> None:
    async with worker(client, "v1"):
        old = await client.start_workflow("pinned_wf", id="old", task_queue=Q)
        desc = await ran_on(old, "v1")
        assert desc.versioning_behavior == duro.VersioningBehavior.PINNED
        async with worker(client, "v2"):
            await client.set_current_build_id(Q, "v2")
            assert await client.get_current_build_id(Q) == "v2"
            new = await client.start_workflow("pinned_wf", id="new", task_queue=Q)
            await ran_on(new, "v2")
            for _ in range(3):  # each signal is a workflow task: every one on the run's own build
                await old.signal("go", "more")
                await new.signal("go", "more")
            # An update is delivered through a worker of the run's build (it runs a workflow task).
            assert await old.execute_update("build") == "v1"
            assert await new.execute_update("build") == "v2"
            await old.signal("go", "stop")
            await new.signal("go", "stop")
            assert await old.result(timeout=RESULT_TIMEOUT_S) == "v1"
            assert await new.result(timeout=RESULT_TIMEOUT_S) == "v2"
    old_desc, new_desc = await old.describe(), await new.describe()
    assert (old_desc.build_id, old_desc.versioning_behavior) == ("v1", "pinned")
    assert (new_desc.build_id, new_desc.versioning_behavior) == ("v2", "pinned")


async def test_auto_upgrade_runs_move_to_the_current_build(client: duro.Client) -> None:
    async with worker(client, "v1"):
        run = await client.start_workflow("upgrading_wf", id="up", task_queue=Q)
        assert (await ran_on(run, "v1")).versioning_behavior == "auto_upgrade"
        async with worker(client, "v2"):
            await client.set_current_build_id(Q, "v2")
            await run.signal("go", "more")
            assert (await ran_on(run, "v2", 4)).versioning_behavior == "auto_upgrade"
            await client.set_current_build_id(Q, "v1")  # a rollback moves it back
            await run.signal("go", "stop")
            assert await run.result(timeout=RESULT_TIMEOUT_S) == "v1"


async def test_new_runs_start_on_the_current_build(client: duro.Client) -> None:
    assert await client.get_current_build_id(Q) is None
    async with worker(client, "v1"), worker(client, "v2"):
        runs: dict[str, list[duro.WorkflowHandle]] = {}
        for build in ("v1", "v2", "v1"):
            await client.set_current_build_id(Q, build)
            started = [await client.start_workflow("pinned_wf", id=f"{build}-{len(runs)}-{i}", task_queue=Q)
                       for i in range(3)]
            for h in started:
                await ran_on(h, build)
            runs[f"{build}-{len(runs)}"] = started
        for key, handles in runs.items():
            for h in handles:
                await h.signal("go", "stop")
                assert await h.result(timeout=RESULT_TIMEOUT_S) == key.split("-")[0]


async def test_claims_follow_the_current_build(client: duro.Client) -> None:
    """The store's claims themselves (no worker here): what each kind of worker may take."""
    store = client.store
    h = await client.start_workflow("pinned_wf", id="claimed", task_queue="claims")
    key = run_key_of(str(h.run_id))
    await client.set_current_build_id("claims", "v2")
    assert not await store.ahas_pending_wtasks("claims", None)
    assert not await store.ahas_pending_wtasks("claims", "v1")
    assert await store.ahas_pending_wtasks("claims", "v2")
    assert await store.claim_workflow_tasks("claims", 10, None) == []
    assert await store.claim_workflow_tasks("claims", 10, "v1") == []
    assert await store.claim_workflow_tasks("claims", 10, "v2") == [key]
    assert await store.return_workflow_tasks("claims", [key]) == 1
    await client.set_current_build_id("claims", None)  # no current build: any worker, versioned or not
    assert await client.get_current_build_id("claims") is None
    assert await store.ahas_pending_wtasks("claims", None)
    assert await store.ahas_pending_wtasks("claims", "v1")
    assert await store.claim_workflow_tasks("claims", 10, "v1") == [key]


async def test_unversioned_workers_beside_versioned_ones(client: duro.Client) -> None:
    async with worker(client, None):
        old = await client.start_workflow("pinned_wf", id="unversioned", task_queue=Q)
        desc = await ran_on(old, None)
        assert desc.versioning_behavior is None
        async with worker(client, "v1"):
            await client.set_current_build_id(Q, "v1")
            new = await client.start_workflow("pinned_wf", id="current", task_queue=Q)
            await ran_on(new, "v1")
            # An unversioned run goes to the current build too, at its next workflow task (as in Temporal).
            await old.signal("go", "stop")
            assert await old.result(timeout=RESULT_TIMEOUT_S) == "v1"
            await new.signal("go", "stop")
            assert await new.result(timeout=RESULT_TIMEOUT_S) == "v1"
            await client.set_current_build_id(Q, None)
        # Without a current build, the unversioned worker takes new runs again.
        again = await client.start_workflow("pinned_wf", id="again", task_queue=Q)
        await again.signal("go", "stop")
        assert await again.result(timeout=RESULT_TIMEOUT_S) == "unversioned"


async def test_continue_as_new_and_children_keep_the_pin(client: duro.Client) -> None:
    async with worker(client, "v1"):
        first = await client.start_workflow("parent_wf", id="parent", task_queue=Q)
        await ran_on(first, "v1")
        async with worker(client, "v2"):
            await client.set_current_build_id(Q, "v2")
            await first.signal("go", "x")  # continues as new: the new run and its child start on v1
            child = client.get_handle("parent-child")
            desc = await ran_on(child, "v1")
            assert desc.versioning_behavior == "pinned"
            await child.signal("go", "x")
            assert await client.get_handle("parent").result(timeout=RESULT_TIMEOUT_S) == ["v1", "v1"]


async def test_a_task_finished_after_the_build_changed_runs_again_on_the_current_build(client: duro.Client) -> None:
    """An auto-upgrade run whose activity ends after the switch: its old build's worker may not commit."""
    vwfs.GATES["switch"] = asyncio.Event()
    async with worker(client, "v1", activities=[vwfs.gate]):
        run = await client.start_workflow("gated_wf", "switch", id="gated", task_queue=Q)
        await ran_on(run, "v1")
        async with worker(client, "v2"):
            await client.set_current_build_id(Q, "v2")
            vwfs.GATES["switch"].set()
            assert await run.result(timeout=RESULT_TIMEOUT_S) == "v2"
    assert (await run.describe()).build_id == "v2"


@pytest.fixture
def v1_process(store: str) -> Iterator[subprocess.Popen[bytes]]:
    """A worker of build v1 in another process."""
    with ready_process("tests/integration/versioned_worker.py", store, Q, "v1") as proc:
        yield proc


async def test_a_pinned_run_stays_with_its_build_in_another_process(
        client: duro.Client, v1_process: subprocess.Popen[bytes]) -> None:
    remote = await client.start_workflow("pinned_wf", id="remote", task_queue=Q)  # only v1 (the other process) runs
    await ran_on(remote, "v1")
    async with worker(client, "v2"):
        await client.set_current_build_id(Q, "v2")
        local = await client.start_workflow("pinned_wf", id="local", task_queue=Q)
        await ran_on(local, "v2")
        for _ in range(3):  # the worker here claims none of these: they are the other process's build's
            await remote.signal("go", "more")
        # Through the store, to the worker of the run's build in the other process (this one's declines).
        assert await remote.execute_update("build") == "v1"
        await remote.signal("go", "stop")
        assert await remote.result(timeout=RESULT_TIMEOUT_S) == "v1"
        await local.signal("go", "stop")
        assert await local.result(timeout=RESULT_TIMEOUT_S) == "v2"


async def cli(store: str, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """``duro --store STORE ARGV...`` in a thread (it shares the store); what it printed."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["--store", store, *argv])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), (code, out, err)
    return out


async def test_the_build_commands_and_describe(client: duro.Client, store: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shown = json.loads(await cli(store, capsys, "build", "show", Q, "--json"))
    assert shown == {"task_queue": Q, "current_build_id": None, "set_time": None, "running": []}
    assert "no current build" in await cli(store, capsys, "build", "show", Q)
    async with worker(client, "v1"):
        run = await client.start_workflow("pinned_wf", id="described", task_queue=Q)
        await ran_on(run, "v1")
        done = json.loads(await cli(store, capsys, "build", "set-current", Q, "v2", "--json"))
        assert (done["task_queue"], done["current_build_id"]) == (Q, "v2") and done["set_time"]
        assert await client.get_current_build_id(Q) == "v2"
        shown = json.loads(await cli(store, capsys, "build", "show", Q, "--json"))
        assert shown["current_build_id"] == "v2"
        assert shown["running"] == [{"build_id": "v1", "versioning_behavior": "pinned", "count": 1}]
        text = await cli(store, capsys, "build", "show", Q)
        assert "current build v2" in text and "1 running on build v1 (pinned)" in text
        desc = json.loads(await cli(store, capsys, "describe", "described", "--json"))
        assert (desc["build_id"], desc["versioning_behavior"]) == ("v1", "pinned")
        assert "v1 (pinned)" in await cli(store, capsys, "describe", "described")
        report = json.loads(await cli(store, capsys, "check", "--json"))  # nothing of it looks damaged
        assert (report["ok"], report["problems"]) == (True, [])
        unset = json.loads(await cli(store, capsys, "build", "unset-current", Q, "--json"))
        assert unset["current_build_id"] is None and await client.get_current_build_id(Q) is None
        await run.signal("go", "stop")
        assert await run.result(timeout=RESULT_TIMEOUT_S) == "v1"


async def test_bad_versioning_options_are_refused(client: duro.Client) -> None:
    with pytest.raises(ValueError, match="versioning_behavior"):
        duro.workflow(versioning_behavior="sticky")
    with pytest.raises(ValueError, match="default_versioning_behavior"):
        duro.Worker(client, task_queue=Q, workflows=vwfs.workflows("x"), build_id="x",
                    default_versioning_behavior="never")
    with pytest.raises(ValueError, match="build_id"):
        duro.Worker(client, task_queue=Q, workflows=vwfs.workflows("x"), build_id="")
    with pytest.raises(ValueError, match="build_id"):
        await client.set_current_build_id(Q, "")


async def test_copy_keeps_the_pinning(tmp_path: Path, pg_url: str) -> None:
    """LMDB to PostgreSQL: the pinned run, its pending task and the queue's current build come along."""
    source = f"lmdb://{tmp_path / 'source'}"
    async with duro.Client.connect(source) as src:
        async with worker(src, "v1"):
            run = await src.start_workflow("pinned_wf", id="copied", task_queue=Q)
            await ran_on(run, "v1")
        await run.signal("go", "stop")  # no worker: the task waits, pinned to v1
        await src.set_current_build_id(Q, "v2")
    report = await asyncio.to_thread(copy_store, source, pg_url)
    assert (report.runs, report.workflow_tasks, report.current_builds) == (1, 1, 1)
    for url in (source, pg_url):  # `duro check` takes the new fields for what they are
        checked = await asyncio.to_thread(check_store, url)
        assert checked.ok, checked.problems
    async with duro.Client.connect(pg_url) as dst:
        desc = await dst.get_handle("copied").describe()
        assert (desc.build_id, desc.versioning_behavior) == ("v1", "pinned")
        assert await dst.get_current_build_id(Q) == "v2"
        assert not await dst.store.ahas_pending_wtasks(Q, "v2")
        assert await dst.store.ahas_pending_wtasks(Q, "v1")
        async with worker(dst, "v2"), worker(dst, "v1"):
            fresh = await dst.start_workflow("pinned_wf", id="fresh", task_queue=Q)
            await ran_on(fresh, "v2")
            assert await dst.get_handle("copied").result(timeout=RESULT_TIMEOUT_S) == "v1"
            await fresh.signal("go", "stop")
            assert await fresh.result(timeout=RESULT_TIMEOUT_S) == "v2"
