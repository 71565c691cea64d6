"""``duro schedule ...`` on each store, with an in-process worker firing the schedules (and ``duro check`` of them).

``duro.cli.main`` runs its work with ``asyncio.run``, so it is called in a thread of this process (it
shares the store, and wakes the worker's schedule loop as a client here would).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import pytest

import duro
from duro.cli import main
from duro.stores.check import check_store
from tests.engine.test_schedules import WORKFLOWS
from tests.waiting import eventually

Q = "cli-sched"


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Coroutine[Any, Any, Result]]


@pytest.fixture
def cli(store: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    async def run(*argv: str) -> Result:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["--store", store, *argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    async with duro.Worker(client, task_queue=Q, workflows=WORKFLOWS) as w:
        yield w


async def test_schedule_commands(cli: Cli, client: duro.Client, worker: duro.Worker) -> None:
    r = await cli("schedule", "create", "fast", "sched_probe", "--task-queue", Q, "--every", "0.2",
                  "--overlap", "allow_all", "--note", "from the shell")
    assert r.code == 0 and r.out.startswith("created schedule 'fast'; next run "), r
    sh = client.get_schedule_handle("fast")

    async def fired() -> bool:
        return (await sh.describe()).fired_count >= 2

    await eventually(fired, "the worker to fire the schedule")
    r = await cli("schedule", "pause", "fast", "--note", "enough")
    assert (r.code, r.out.strip()) == (0, "paused schedule 'fast'")
    r = await cli("schedule", "list")
    assert r.code == 0 and "fast" in r.out and "every 0.2s" in r.out and "paused" in r.out, r
    r = await cli("schedule", "describe", "fast")
    assert r.code == 0 and "note:        enough" in r.out and "recent runs:" in r.out and "fast-" in r.out, r
    r = await cli("schedule", "describe", "fast", "--json")
    desc = json.loads(r.out)
    assert (desc["paused"], desc["spec"]["every"], desc["overlap"]) == (True, 0.2, "allow_all")
    assert desc["fired"] >= 2 and desc["recent_runs"][0]["workflow_id"].startswith("fast-")
    r = await cli("schedule", "trigger", "fast")
    assert r.code == 0 and r.out.startswith("started workflow fast-"), r
    triggered = r.out.split()[-1]
    assert await client.get_handle(triggered).result() == "main"
    r = await cli("schedule", "backfill", "fast", "--start", "2026-01-01T00:00:00", "--end", "2026-01-01T00:00:01")
    assert r.code == 0 and r.out.startswith("started 5 run(s): fast-2026-01-01T00:00:00Z, "), r
    r = await cli("schedule", "trigger", "fast", "--json")
    assert r.code == 0 and json.loads(r.out)["schedule_id"] == "fast", r
    assert await client.get_handle(json.loads(r.out)["workflow_id"]).result() == "main"
    r = await cli("schedule", "backfill", "fast", "--start", "2026-01-02T00:00:00", "--end", "2026-01-02T00:00:00.5",
                  "--json")
    assert json.loads(r.out) == {"schedule_id": "fast", "workflow_ids": [
        "fast-2026-01-02T00:00:00Z", "fast-2026-01-02T00:00:00.200000Z", "fast-2026-01-02T00:00:00.400000Z"]}, r
    r = await cli("schedule", "unpause", "fast")
    assert (r.code, r.out.strip()) == (0, "unpaused schedule 'fast'")
    r = await cli("schedule", "create", "nightly", "sched_probe", "--task-queue", Q, "--cron", "0 3 * * *",
                  "--time-zone", "Europe/Paris", "--paused")
    assert (r.code, r.out.strip()) == (0, "created schedule 'nightly' (paused)")
    r = await cli("schedule", "list", "--json")
    page = json.loads(r.out)
    assert [d["id"] for d in page["items"]] == ["fast", "nightly"] and page["next_page_token"] is None
    assert page["items"][1]["spec"] == {"cron": "0 3 * * *", "every": None, "time_zone": "Europe/Paris",
                                        "start_at": None, "end_at": None, "jitter": None}
    assert check_store(client.store.url).ok
    for sid in ("fast", "nightly"):
        r = await cli("schedule", "delete", sid)
        assert (r.code, r.out.strip()) == (0, f"deleted schedule {sid!r}")
    r = await cli("schedule", "list")
    assert (r.code, r.out.strip()) == (0, "no schedules")


async def test_bad_schedule_commands_say_what_is_wrong_and_write_nothing(cli: Cli, client: duro.Client) -> None:
    await client.create_schedule("one", "sched_probe", task_queue=Q, every=60)
    create = ("schedule", "create", "x", "sched_probe", "--task-queue", Q)
    cases: list[tuple[tuple[str, ...], int, str]] = [
        ((*create, "--cron", "61 * * * *"), 2, "cron expression '61 * * * *' is malformed: Bad minute"),
        ((*create, "--every", "0"), 2, "argument --every: expected a positive number of seconds"),
        ((*create, "--every", "-5"), 2, "argument --every: expected a positive number of seconds"),
        (create, 2, "one of the arguments --cron --every is required"),
        ((*create, "--cron", "* * * * *", "--every", "5"), 2, "not allowed with argument"),
        ((*create, "--every", "5", "--start-at", "2027-01-01", "--end-at", "2026-01-01"), 2,
         "end_at (2026-01-01T00:00:00+00:00) is before start_at (2027-01-01T00:00:00+00:00)"),
        ((*create, "--every", "5", "--overlap", "never"), 2, "argument --overlap: invalid choice"),
        ((*create, "--cron", "0 3 * * *", "--time-zone", "Mars/Olympus"), 2, "not a known IANA time zone"),
        (("schedule", "create", "one", "sched_probe", "--task-queue", Q, "--every", "5"), 1,
         "a schedule with id 'one' exists already"),
        (("schedule", "describe", "nope"), 1, "schedule 'nope' is not in this store"),
        (("schedule", "pause", "nope"), 1, "schedule 'nope' is not in this store"),
        (("schedule", "unpause", "nope"), 1, "schedule 'nope' is not in this store"),
        (("schedule", "trigger", "nope"), 1, "schedule 'nope' is not in this store"),
        (("schedule", "delete", "nope"), 1, "schedule 'nope' is not in this store"),
        (("schedule", "backfill", "nope", "--start", "2026-01-01", "--end", "2026-01-02"), 1,
         "schedule 'nope' is not in this store"),
        (("schedule", "backfill", "one", "--start", "2026-01-02", "--end", "2026-01-01"), 2, "must be after start"),
        (("schedule", "backfill", "one", "--start", "2026-01-01", "--end", "2026-02-01"), 2,
         "more than 1000 due times in the range"),
    ]
    before = await client.get_schedule_handle("one").describe()
    for argv, code, message in cases:
        r = await cli(*argv)
        assert (r.code, r.out) == (code, ""), (argv, r)
        assert r.err.startswith("duro: error: ") and message in r.err, (argv, r.err)
        assert "Traceback" not in r.err
    assert [d.id for d in await client.list_schedules()] == ["one"]
    assert await client.get_schedule_handle("one").describe() == before


@pytest.mark.lmdb_only
async def test_check_finds_a_damaged_due_index(store: str) -> None:
    async with duro.Client.connect(store) as client:
        await client.create_schedule("one", "sched_probe", task_queue=Q, every=60)
        assert check_store(store).ok
        lmdb = client.store
        from duro.stores.lmdb import LmdbStore
        from duro.stores.lmdb_schedules import due_prefix

        assert isinstance(lmdb, LmdbStore)
        with lmdb.env.begin(write=True) as txn:
            cur = txn.cursor(db=lmdb.dbs.sched)
            assert cur.set_range(due_prefix(Q))
            cur.delete()
    report = check_store(store)
    assert not report.ok
    assert any("schedule 'one': the due index has None" in p.message for p in report.problems), report.problems
