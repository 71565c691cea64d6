"""``duro copy`` / ``copy_store``: workflows in every state move between real stores and continue there.

Workflows are left completed, failed, waiting for a signal (with an execution timeout: a timer of
seq 0), sleeping on a durable timer, waiting for an activity retry, as a parent waiting for a
running child, and as a continue-as-new chain; the worker stops; the store is copied (each
direction between LMDB and PostgreSQL); a worker on the destination finishes them. Histories are
compared byte for byte. Then the refusals: a destination that holds workflows, an id in both with
--merge, a source whose workers still hold leases; and the command line in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import duro
from duro.engine.records import RunStatus, WorkflowIndex, encode
from duro.stores import copy as copy_module
from duro.stores import pg_export
from duro.stores.copy import CopyError, CopyReport, copy_store
from duro.stores.export import RunBundle
from duro.stores.lmdb import open_lmdb_store
from duro.stores.lmdb_export import LmdbSource
from duro.stores.pg_conn import connect_one, parse_pg_url
from duro.stores.pg_export import PgSource
from tests import pg
from tests.processes import run_command
from tests.waiting import eventually

pg_url = pg.pg_url  # the fixture of tests.pg, requested by name below

QUEUE = "copy"
OTHER_QUEUE = "copy-activities"  # activities on a queue of their own: attempts live under two queues
RESULT_TIMEOUT_S = 30.0
PHASE = {"destination": False}  # the retried activity succeeds only on the destination
RELEASE: dict[str, asyncio.Event] = {}


# ---------------------------------------------------------------------------------------------- workflows

@duro.activity
async def fails_on_source(ctx: duro.ActivityContext) -> int:
    if not PHASE["destination"]:
        raise duro.ApplicationError(f"attempt {ctx.info.attempt} fails on the source")
    return ctx.info.attempt


@duro.activity
async def held(ctx: duro.ActivityContext) -> dict[str, Any]:
    """Heartbeats, then holds its lease until the test releases it; reports what it saw."""
    ctx.heartbeat({"step": 1})
    await RELEASE["held"].wait()
    return {"attempt": ctx.info.attempt, "details": ctx.info.heartbeat_details}


@duro.workflow
async def greet(ctx: duro.WorkflowContext, name: str) -> str:
    return f"hello {name}"


@duro.workflow
async def boom(ctx: duro.WorkflowContext) -> None:
    raise duro.ApplicationError("boom", non_retryable=True)


@duro.workflow
async def wait_go(ctx: duro.WorkflowContext) -> Any:
    return await ctx.wait_signal("go")


@duro.workflow
async def sleeper(ctx: duro.WorkflowContext, seconds: float) -> str:
    await ctx.sleep(seconds)
    return "slept"


@duro.workflow
async def retrying(ctx: duro.WorkflowContext) -> list[int]:
    policy = duro.RetryPolicy(initial_interval=1.0, backoff_coefficient=1.0)
    return list(await asyncio.gather(ctx.execute_activity(fails_on_source, retry_policy=policy),
                                     ctx.execute_activity(fails_on_source, retry_policy=policy,
                                                          task_queue=OTHER_QUEUE)))


@duro.workflow
async def deployed_later(ctx: duro.WorkflowContext) -> str:
    """Only the destination's workers have it: on the source its workflow task fails and waits for a retry."""
    return "fixed"


@duro.workflow
async def parent(ctx: duro.WorkflowContext) -> dict[str, Any]:
    return {"child": await ctx.execute_child_workflow(wait_go, id=f"{ctx.info.workflow_id}-child")}


@duro.workflow
async def chain(ctx: duro.WorkflowContext, n: int) -> Any:
    if n > 0:
        ctx.continue_as_new(n - 1)
    return await ctx.wait_signal("go")


@duro.workflow
async def holds(ctx: duro.WorkflowContext) -> dict[str, Any]:
    return await ctx.execute_activity(held, start_to_close_timeout=600)  # type: ignore[no-any-return]


WORKFLOWS: list[Callable[..., Any]] = [greet, boom, wait_go, sleeper, retrying, parent, chain, holds]
ACTIVITIES: list[Callable[..., Any]] = [fails_on_source, held]


# ---------------------------------------------------------------------------------------------- helpers

@pytest.fixture(autouse=True)
def _phase() -> None:
    PHASE["destination"] = False
    RELEASE["held"] = asyncio.Event()


@pytest.fixture
async def pg_url2() -> AsyncIterator[str]:
    """A second fresh PostgreSQL schema (for PostgreSQL to PostgreSQL)."""
    await pg.require_postgres()
    schema = pg.random_schema()
    try:
        yield pg.with_schema(pg.PG_URL, schema)
    finally:
        await pg.drop_schema(schema)


def store_urls(kinds: str, tmp_path: Path, pg_a: str, pg_b: str) -> tuple[str, str]:
    src_kind, dst_kind = kinds.split("-to-")
    src = f"lmdb://{tmp_path / 'src'}" if src_kind == "lmdb" else pg_a
    dst = f"lmdb://{tmp_path / 'dst'}" if dst_kind == "lmdb" else (pg_b if src_kind == "postgresql" else pg_a)
    return src, dst


@contextlib.asynccontextmanager
async def worker(client: duro.Client) -> AsyncIterator[None]:
    workflows = [*WORKFLOWS, deployed_later] if PHASE["destination"] else WORKFLOWS
    async with duro.Worker(client, task_queue=QUEUE, workflows=workflows, activities=ACTIVITIES), \
            duro.Worker(client, task_queue=OTHER_QUEUE, activities=ACTIVITIES):
        yield


async def dump(url: str) -> dict[str, RunBundle]:
    """Every run of a store with all its rows, read as the copy reads them (run id -> bundle)."""
    if url.startswith("lmdb://"):
        store = open_lmdb_store(url)
        source: Any = LmdbSource(store)
    else:
        source = await PgSource.open(parse_pg_url(url))
    try:
        return {b.run_key.hex(): b async for b in source.runs()}
    finally:
        await source.close()


def rows(b: RunBundle) -> tuple[Any, ...]:
    """A bundle as comparable values: events as their stored bytes, attempts as tuples."""
    return (b.record, [e.encode() for e in b.events], b.index, b.wtask,
            [(a.task_queue, a.seq, a.meta, a.args, a.details) for a in b.attempts], sorted(b.timers))


def by_type(runs: dict[str, RunBundle], workflow_type: str) -> list[RunBundle]:
    return [b for b in runs.values() if b.record.workflow_type == workflow_type]


def settled(runs: dict[str, RunBundle]) -> bool:
    """Every run got where the scenario leaves it, and no task is leased (only buggy's failed task pends)."""
    if len(runs) != 11 or any(a.meta.owner for b in runs.values() for a in b.attempts):
        return False
    (r,) = by_type(runs, "retrying")
    (s,) = by_type(runs, "sleeper")
    (f,) = by_type(runs, "deployed_later")
    if any(b.wtask is not None for b in runs.values() if b is not f):
        return False
    statuses = sorted(str(b.record.status) for b in runs.values())
    return (sorted(a.task_queue for a in r.attempts) == [QUEUE, OTHER_QUEUE]
            and all(a.meta.attempt >= 2 for a in r.attempts) and bool(s.timers)
            and f.record.task_failures >= 1 and f.wtask is not None and not f.wtask[1].owner
            and f.wtask[1].visible_us > 0
            and statuses == ["completed", "continued_as_new", "continued_as_new", "failed"] + ["running"] * 7)


async def histories(client: duro.Client, runs: dict[str, RunBundle]) -> dict[str, str]:
    """Each run's history through the public API, as JSON."""
    out = {}
    for run_id, b in runs.items():
        out[run_id] = (await client.get_handle(b.record.workflow_id, run_id).fetch_history()).to_json()
    return out


async def copy(src: str, dst: str, **kw: Any) -> CopyReport:
    return await asyncio.to_thread(copy_store, src, dst, **kw)


# ---------------------------------------------------------------------------------------------- moving live workflows

@pytest.mark.parametrize("kinds", ["lmdb-to-postgresql", "postgresql-to-lmdb", "lmdb-to-lmdb",
                                   "postgresql-to-postgresql"])
async def test_workflows_in_every_state_continue_on_the_destination(
        kinds: str, tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    src, dst = store_urls(kinds, tmp_path, pg_url, pg_url2)
    async with duro.Client.connect(src) as client:
        async with worker(client):
            assert await client.execute_workflow(greet, "x", id="greet", task_queue=QUEUE) == "hello x"
            with pytest.raises(duro.WorkflowFailedError):
                await client.execute_workflow(boom, id="boom", task_queue=QUEUE)
            await client.start_workflow(wait_go, id="waiter", task_queue=QUEUE, execution_timeout=3600)
            await client.start_workflow(sleeper, 2.0, id="sleeper", task_queue=QUEUE)
            await client.start_workflow(retrying, id="retrying", task_queue=QUEUE)
            await client.start_workflow("deployed_later", id="buggy", task_queue=QUEUE)
            await client.start_workflow(parent, id="parent", task_queue=QUEUE)
            await client.start_workflow(chain, 2, id="chain", task_queue=QUEUE)

            async def ready() -> bool:
                return settled(await dump(src))

            await eventually(ready, "every workflow settled in the source")
        before = await dump(src)  # the worker is stopped: this is what gets copied
        assert settled(before)
        source_histories = await histories(client, before)
        attempts = sorted(by_type(before, "retrying")[0].attempts, key=lambda a: a.seq)
        pending_attempts = [a.meta.attempt for a in attempts]

    progress: list[int] = []
    report = await copy(src, dst, progress=lambda r: progress.append(r.runs))
    assert (report.runs, report.running, report.workflows) == (11, 7, 9)
    assert report.events == sum(len(b.events) for b in before.values())
    assert (report.workflow_tasks, report.activity_attempts, report.timers) == (1, 2, 2)
    assert (report.leases_reset, report.dropped_attempts, report.source_changed) == (0, 0, False)
    assert progress == [11]

    after = await dump(dst)
    assert {k: rows(b) for k, b in after.items()} == {k: rows(b) for k, b in before.items()}
    assert {k: rows(b) for k, b in (await dump(src)).items()} == {k: rows(b) for k, b in before.items()}

    PHASE["destination"] = True
    async with duro.Client.connect(dst) as client:
        assert await histories(client, after) == source_histories
        listed = {(w.workflow_id, w.status) for w in await client.list_workflows()}
        assert listed == {("greet", "completed"), ("boom", "failed"), ("waiter", "running"), ("sleeper", "running"),
                          ("retrying", "running"), ("buggy", "running"), ("parent", "running"),
                          ("parent-child", "running"), ("chain", "running")}
        assert (await client.get_handle("buggy").describe()).task_failures >= 1
        async with worker(client):
            await client.get_handle("waiter").signal("go", "w")
            await client.get_handle("parent-child").signal("go", "c")
            await client.get_handle("chain").signal("go", "ch")
            assert await client.get_handle("greet").result(timeout=RESULT_TIMEOUT_S) == "hello x"
            with pytest.raises(duro.WorkflowFailedError):
                await client.get_handle("boom").result(timeout=RESULT_TIMEOUT_S)
            assert await client.get_handle("waiter").result(timeout=RESULT_TIMEOUT_S) == "w"
            assert await client.get_handle("sleeper").result(timeout=RESULT_TIMEOUT_S) == "slept"
            assert await client.get_handle("retrying").result(timeout=RESULT_TIMEOUT_S) == pending_attempts
            assert await client.get_handle("buggy").result(timeout=RESULT_TIMEOUT_S) == "fixed"
            assert await client.get_handle("parent").result(timeout=RESULT_TIMEOUT_S) == {"child": "c"}
            assert await client.get_handle("chain").result(timeout=RESULT_TIMEOUT_S) == "ch"
        finished = await dump(dst)
    # The destination went on from exactly where the source stood: each history extends the copied one.
    for run_id, b in before.items():
        old = [e.encode() for e in b.events]
        assert [e.encode() for e in finished[run_id].events][: len(old)] == old
    assert all(not b.timers and b.wtask is None and not b.attempts for b in finished.values())


async def raw_histories(url: str) -> dict[tuple[bytes, int], bytes]:
    """Every stored event envelope, read straight from the store: (run key, event id) -> bytes."""
    if url.startswith("lmdb://"):
        store = open_lmdb_store(url)
        try:
            with store.env.begin() as txn:
                keys = list(txn.cursor(db=store.dbs.runs).iternext(values=False))
                return {(k, i): raw for k in keys for i, raw in enumerate(store.log.iter_raw(txn, k), 1)}
        finally:
            await store.close()
    conn = await connect_one(parse_pg_url(url))
    try:
        rows = await conn.fetch("SELECT run_key, event_id, envelope FROM history")
        return {(bytes(r[0]), r[1]): bytes(r[2]) for r in rows}
    finally:
        await conn.close()


async def test_batches_pages_and_a_round_trip_keep_every_byte(
        tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches and pages (the defaults are hundreds): LMDB -> PostgreSQL -> LMDB changes nothing."""
    monkeypatch.setattr(copy_module, "BATCH_RUNS", 4)
    monkeypatch.setattr(pg_export, "PAGE_RUNS", 3)
    monkeypatch.setattr(pg_export, "HISTORY_CHUNK_EVENTS", 10)
    first, second = f"lmdb://{tmp_path / 'first'}", f"lmdb://{tmp_path / 'second'}"
    async with duro.Client.connect(first) as client:
        async with worker(client):
            for i in range(5):
                await client.execute_workflow(greet, str(i), id=f"greet-{i}", task_queue=QUEUE)
            for i in range(2):
                await client.start_workflow(chain, 2, id=f"chain-{i}", task_queue=QUEUE)
            for i in range(3):
                await client.start_workflow(wait_go, id=f"waiter-{i}", task_queue=QUEUE)

            async def ready() -> bool:
                runs = await dump(first)
                return len(runs) == 14 and all(b.wtask is None for b in runs.values())

            await eventually(ready, "every workflow settled")

    progress: list[int] = []
    report = await copy(first, pg_url, progress=lambda r: progress.append(r.runs))
    assert (report.runs, report.running, report.workflows, report.batches) == (14, 5, 10, 4)
    assert progress == [4, 8, 12, 14]
    assert (await copy(pg_url, second)).runs == 14

    dumps = [{k: rows(b) for k, b in (await dump(url)).items()} for url in (first, pg_url, second)]
    assert dumps[0] == dumps[1] == dumps[2]
    raws = [await raw_histories(url) for url in (first, pg_url, second)]
    assert len(raws[0]) == report.events and raws[0] == raws[1] == raws[2]


# ---------------------------------------------------------------------------------------------- refusals

async def start_some(url: str, *ids: str) -> None:
    async with duro.Client.connect(url) as client, worker(client):
        for wid in ids:
            await client.execute_workflow(greet, wid, id=wid, task_queue=QUEUE)


async def workflow_ids(url: str) -> set[str]:
    async with duro.Client.connect(url) as client:
        return {w.workflow_id for w in await client.list_workflows()}


async def test_a_destination_with_workflows_needs_merge_and_never_shares_an_id(tmp_path: Path, pg_url: str) -> None:
    src = f"lmdb://{tmp_path / 'src'}"
    await start_some(src, "a", "b")
    await start_some(pg_url, "c")

    with pytest.raises(CopyError, match=r"holds workflows already.*--merge"):
        await copy(src, pg_url)
    assert await workflow_ids(pg_url) == {"c"}

    report = await copy(src, pg_url, merge=True)
    assert (report.runs, report.workflows) == (2, 2)
    assert await workflow_ids(pg_url) == {"a", "b", "c"}

    # Now "a" and "b" are in both: refused before anything is written, naming them.
    await start_some(src, "d")
    with pytest.raises(CopyError, match=r"2 workflow id\(s\) .*'a', 'b'.*nothing was copied"):
        await copy(src, pg_url, merge=True)
    assert await workflow_ids(pg_url) == {"a", "b", "c"}


async def test_bad_pairs_are_refused(tmp_path: Path, pg_url: str) -> None:
    src = f"lmdb://{tmp_path / 'src'}"
    with pytest.raises(CopyError, match="there is no duro store"):
        await copy(src, pg_url)
    assert not (tmp_path / "src").exists()  # a missing source is not created
    await start_some(src, "a")
    with pytest.raises(CopyError, match="the same store"):
        await copy(src, f"lmdb://{tmp_path / 'src'}/")
    schema = pg.random_schema()
    with pytest.raises(CopyError, match="there is no duro store in schema"):
        await copy(pg.with_schema(pg.PG_URL, schema), src)
    conn = await connect_one(parse_pg_url(pg_url))
    try:  # a missing source schema is not created either
        assert not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema)
    finally:
        await conn.close()
    with pytest.raises(duro.StoreURLError):
        await copy("mysql://x", src)
    with pytest.raises(RuntimeError, match="outside an event loop"):
        copy_store(src, pg_url)


async def test_a_source_whose_workers_hold_leases_is_refused_unless_forced(tmp_path: Path, pg_url: str) -> None:
    src = f"lmdb://{tmp_path / 'src'}"
    async with duro.Client.connect(src) as client:
        async with worker(client):
            handle = await client.start_workflow(holds, id="holds", task_queue=QUEUE)

            async def heartbeat_stored() -> bool:
                (b,) = by_type(await dump(src), "holds")
                return bool(b.attempts and b.attempts[0].meta.owner and b.attempts[0].details)

            await eventually(heartbeat_stored, "the running attempt and its heartbeat in the source")
            with pytest.raises(CopyError, match=r"1 activity attempt\(s\) are leased.*Stop your workers first"):
                await copy(src, pg_url)
            assert await workflow_ids(pg_url) == set()

            report = await copy(src, pg_url, force=True)
            assert (report.runs, report.activity_attempts, report.leases_reset) == (1, 1, 1)
            (copied,) = (await dump(pg_url)).values()
            (attempt,) = copied.attempts
            assert (attempt.meta.owner, attempt.meta.until_us, attempt.meta.attempt) == ("", 0, 1)

            # The destination runs the attempt again (same attempt number, the heartbeat carried over).
            async with duro.Client.connect(pg_url) as dst_client, worker(dst_client):
                RELEASE["held"].set()
                assert await dst_client.get_handle("holds").result(timeout=RESULT_TIMEOUT_S) == {
                    "attempt": 1, "details": {"step": 1}}
            assert await handle.result(timeout=RESULT_TIMEOUT_S) == {"attempt": 1, "details": None}


async def test_a_damaged_source_is_reported_not_spread(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    src = f"lmdb://{tmp_path / 'src'}"
    await start_some(src, "a", "b")
    store = open_lmdb_store(src)
    try:
        # An index entry that names no run: the rest copies, and the report says what was left behind.
        with store.env.begin(write=True) as txn:
            txn.put(b"ghost", encode(WorkflowIndex("ab" * 16, RunStatus.COMPLETED, "greet", 1)), db=store.dbs.wf)
        report = await copy(src, pg_url)
        assert (report.runs, report.workflows, report.skipped_index_entries) == (2, 2, 1)
        # A history with a gap: refused, naming the run, and nothing is written.
        run_key = bytes.fromhex((await dump(src)).popitem()[0])
        with store.env.begin(write=True) as txn:
            assert txn.delete(run_key + (2).to_bytes(8, "big"), db=store.log.db)
    finally:
        await store.close()
    with pytest.raises(CopyError, match=f"the source is damaged: run {run_key.hex()} .* has event 3 where event 2"):
        await copy(src, pg_url2)
    assert await workflow_ids(pg_url2) == set()


# ---------------------------------------------------------------------------------------------- the command

async def run_cli(*argv: str) -> tuple[int, str, str]:
    r = await run_command([sys.executable, "-m", "duro.cli", *argv])
    return r.code, r.out, r.err


async def test_the_command_copies_and_refuses(tmp_path: Path, pg_url: str) -> None:
    src = f"lmdb://{tmp_path / 'src'}"
    async with duro.Client.connect(src) as client:
        async with worker(client):
            assert await client.execute_workflow(greet, "x", id="greet", task_queue=QUEUE) == "hello x"
            await client.start_workflow(wait_go, id="waiter", task_queue=QUEUE)

            async def ready() -> bool:
                return all(b.wtask is None for b in (await dump(src)).values())

            await eventually(ready, "the waiting workflow's first task done")

    code, out, err = await run_cli("copy", src, pg_url)
    assert (code, err) == (0, ""), err
    assert "copied 2 runs (1 running) of 2 workflow ids" in out
    assert "start your workers against the destination" in out
    assert "password" not in out and "postgresql://" not in out  # the URL is described, never printed

    code, out, err = await run_cli("copy", src, pg_url)
    assert code == 1 and err.startswith("duro: error: ") and "holds workflows already" in err, err
    code, out, err = await run_cli("copy", src, "nosuch://x")
    assert code == 2 and "unsupported destination URL" in err, err
    code, out, err = await run_cli("copy", f"lmdb://{tmp_path / 'missing'}", pg_url)
    assert code == 1 and "there is no duro store" in err, err

    async with duro.Client.connect(pg_url) as client, worker(client):
        await client.get_handle("waiter").signal("go", "done")
        assert await client.get_handle("waiter").result(timeout=RESULT_TIMEOUT_S) == "done"


@pytest.mark.parametrize("kind", ["lmdb", "postgresql"])
async def test_a_source_with_schedules_is_refused_unless_forced(kind: str, tmp_path: Path, pg_url: str) -> None:
    src = f"lmdb://{tmp_path / 'src'}" if kind == "lmdb" else pg_url
    dst = f"lmdb://{tmp_path / 'dst'}"
    async with duro.Client.connect(src) as client:
        await client.create_schedule("nightly", "greet", "x", task_queue="q", cron="0 3 * * *", paused=True)
        await client.start_workflow("greet", "y", id="w1", task_queue="q")
    with pytest.raises(CopyError, match=r"holds 1 schedule\(s\), and duro copy does not carry schedules"):
        await copy(src, dst)
    report = await copy(src, dst, force=True)
    assert report.runs == 1
