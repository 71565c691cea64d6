"""The ``duro`` command line, against workflows run by an in-process worker.

``duro.cli.main`` runs its work with ``asyncio.run``, so it is called in a thread (``asyncio.to_thread``)
or as a subprocess (``python -m duro.cli``), never on the test's own loop. Commands that hand work to
the in-process worker's loop (``start``: eager start) or wait for another loop's commit (``result``
of a running workflow), and ``query`` (answered through the store), run as subprocesses, as they do
for real.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import re
import sys
import types
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

import duro
from duro._cli_output import history_rows
from duro.cli import EXIT_CODES, ExitCode, build_parser, main
from tests.engine import features_wfs, wfs
from tests.engine.wfs import Order
from tests.processes import Result, run_command

REPO = Path(__file__).resolve().parents[1]
QUEUE = "cli"


Cli = Callable[..., Coroutine[Any, Any, Result]]


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    workflows: list[Any] = [*wfs.ALL_WORKFLOWS, features_wfs.queried]
    activities: list[Any] = [*wfs.ALL_ACTIVITIES, features_wfs.note]
    async with duro.Worker(client, task_queue=QUEUE, workflows=workflows, activities=activities) as w:
        yield w


@pytest.fixture
def cli(store: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run ``duro --store STORE ARGS...`` in a thread of this process (it shares the store)."""

    async def run(*argv: str) -> Result:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["--store", store, *argv])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


@pytest.fixture
def cli_process(store: str) -> Cli:
    """Run ``python -m duro.cli --store STORE ARGS...`` as another process (the test's loop keeps running)."""

    async def run(*argv: str, timeout: float = 30) -> Result:
        return await run_command([sys.executable, "-m", "duro.cli", "--store", store, *argv], timeout=timeout)

    return run


def one_error_line(r: Result, code: int, *fragments: str) -> None:
    """The command failed with ``code`` and one ``duro: error:`` line holding each fragment."""
    assert r.code == code, r
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("duro: error: "), r.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


async def wait_status(client: duro.Client, workflow_id: str, status: str) -> None:
    for _ in range(500):
        if (await client.get_handle(workflow_id).describe()).status == status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{workflow_id} did not become {status}")


async def some_workflows(client: duro.Client) -> dict[str, duro.WorkflowHandle]:
    """A completed order, a failed workflow and a running one waiting for signals."""
    order = await client.start_workflow(wfs.order_workflow, Order("A1", 5), id="order-A1", task_queue=QUEUE)
    await order.signal("approve", {"by": "alice"})
    await order.result()
    failing = await client.start_workflow(wfs.failing_workflow, id="fails", task_queue=QUEUE)
    with pytest.raises(duro.WorkflowFailedError):
        await failing.result()
    waiting = await client.start_workflow(wfs.signal_workflow, 2, id="waits", task_queue=QUEUE)
    await wait_status(client, "waits", "running")
    return {"order": order, "failing": failing, "waiting": waiting}


# ------------------------------------------------------------------------------------ reading


async def test_list(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handles = await some_workflows(client)
    r = await cli("list")
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    assert lines[0].split() == ["workflow", "id", "type", "status", "started", "(UTC)", "closed", "(UTC)", "events"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"order-A1", "fails", "waits"}
    assert rows["order-A1"][1:3] == ["order_workflow", "completed"]
    assert rows["fails"][1:3] == ["failing_workflow", "failed"]
    assert rows["waits"][1:3] == ["signal_workflow", "running"] and rows["waits"][5] == "-"
    desc = await handles["order"].describe()
    assert rows["order-A1"][-1] == str(desc.history_length)

    r = await cli("list", "--status", "running")
    assert [line.split()[0] for line in r.out.splitlines()[1:]] == ["waits"]
    r = await cli("list", "--type", "failing_workflow", "--json")
    assert r.code == 0
    page = json.loads(r.out)
    assert page["next_page_token"] is None
    (doc,) = page["items"]
    assert doc["workflow_id"] == "fails" and doc["status"] == "failed" and doc["task_queue"] == QUEUE
    assert doc["run_id"] == handles["failing"].run_id and doc["close_time"] is not None
    r = await cli("list", "--limit", "2", "--json")
    page = json.loads(r.out)
    assert len(page["items"]) == 2 and isinstance(page["next_page_token"], str)
    r = await cli("list", "--status", "timed_out")
    assert r.code == 0 and r.out.strip() == "no workflows"
    assert json.loads((await cli("list", "--status", "timed_out", "--json")).out) == {"items": [],
                                                                                    "next_page_token": None}


async def test_describe(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handles = await some_workflows(client)
    r = await cli("describe", "order-A1")
    assert r.code == 0 and r.err == ""
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in r.out.splitlines())
    desc = await handles["order"].describe()
    assert fields["workflow id"] == "order-A1" and fields["run id"] == desc.run_id
    assert fields["type"] == "order_workflow" and fields["task queue"] == QUEUE
    assert fields["status"] == "completed" and fields["events"] == str(desc.history_length)
    assert fields["closed"].endswith("UTC")

    r = await cli("describe", "waits", "--json")
    doc = json.loads(r.out)
    assert doc["status"] == "running" and doc["close_time"] is None and doc["workflow_type"] == "signal_workflow"
    r = await cli("describe", "order-A1", "--run", desc.run_id, "--json")
    assert json.loads(r.out)["run_id"] == desc.run_id


async def test_history_table_and_json(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handles = await some_workflows(client)
    history = await handles["order"].fetch_history()

    r = await cli("history", "order-A1")
    assert r.code == 0 and r.err == ""
    lines = r.out.splitlines()
    assert lines[0] == f"workflow 'order-A1' run {history.run_id}: {len(history)} events"
    assert lines[1].split()[:3] == ["id", "+ms", "event"]
    body = lines[2:]
    assert len(body) == len(history)
    assert body[0].split()[:4] == ["1", "0.0", "WorkflowExecutionStarted", "order_workflow"]
    assert '[{"order_id":"A1","amount":5}]' in body[0]
    assert any(line.split()[2:5] == ["ActivityTaskScheduled", "validate", "#1"] for line in body)
    assert any("WorkflowExecutionSignaled" in line and '{"by":"alice"}' in line for line in body)
    assert body[-1].split()[2] == "WorkflowExecutionCompleted"

    r = await cli("history", "order-A1", "--json")
    assert r.code == 0
    again = duro.History.from_json(r.out)
    assert (again.workflow_id, again.run_id) == ("order-A1", history.run_id)
    assert [(e.event_id, e.event_type, e.name, e.payload) for e in again] == [
        (e.event_id, e.event_type, e.name, e.payload) for e in history]
    await duro.testing.Replayer(workflows=[wfs.order_workflow]).replay(again)

    r = await cli("history", "order-A1", "--run", history.run_id, "--json")
    assert len(duro.History.from_json(r.out)) == len(history)


# ------------------------------------------------------------------------------------ acting


async def test_signal_completes_the_workflow(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handle = await client.start_workflow(wfs.signal_workflow, 2, id="sig", task_queue=QUEUE)
    r = await cli("signal", "sig", "item", '"a"')
    assert r.code == 0 and r.err == "" and "item" in r.out
    r = await cli("signal", "sig", "item", '{"by": "alice", "n": [1, 2]}')
    assert r.code == 0
    assert await asyncio.wait_for(handle.result(), 10) == ["a", {"by": "alice", "n": [1, 2]}]

    r = await cli("result", "sig")
    assert r.code == 0 and json.loads(r.out) == ["a", {"by": "alice", "n": [1, 2]}]
    one_error_line(await cli("signal", "sig", "item", "1"), 1, "sig")  # closed: nothing to signal


async def test_signal_with_bad_json_is_a_usage_error(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    await client.start_workflow(wfs.signal_workflow, 1, id="sig", task_queue=QUEUE)
    r = await cli("signal", "sig", "item", "{by: alice}")
    one_error_line(r, 2, "argument 1", "{by: alice}", "not JSON")
    r = await cli("signal", "sig", "item", "alice")
    one_error_line(r, 2, "'alice'", "not JSON")
    assert [e.event_type for e in await client.get_handle("sig").fetch_history()].count(
        "WorkflowExecutionSignaled") == 0


async def test_terminate(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handle = await client.start_workflow(wfs.signal_workflow, 1, id="term", task_queue=QUEUE)
    await wait_status(client, "term", "running")
    r = await cli("terminate", "term", "--reason", "no longer needed")
    assert r.code == 0 and r.err == "" and "term" in r.out
    assert (await handle.describe()).status == "terminated"
    with pytest.raises(duro.WorkflowFailedError) as info:
        await handle.result()
    assert isinstance(info.value.__cause__, duro.TerminatedError)

    one_error_line(await cli("result", "term"), 1, "terminated", "no longer needed")
    one_error_line(await cli("terminate", "term"), 1, "term")  # already closed


async def test_cancel(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handle = await client.start_workflow(wfs.signal_workflow, 1, id="canc", task_queue=QUEUE)
    await wait_status(client, "canc", "running")
    r = await cli("cancel", "canc")
    assert r.code == 0 and r.err == ""
    with pytest.raises(duro.WorkflowFailedError) as info:
        await asyncio.wait_for(handle.result(), 10)
    assert isinstance(info.value.__cause__, duro.CancelledError)
    one_error_line(await cli("result", "canc"), 1, "canc", "cancel")


async def test_result(client: duro.Client, worker: duro.Worker, cli: Cli, cli_process: Cli) -> None:
    await some_workflows(client)
    r = await cli("result", "order-A1")
    assert r.code == 0 and r.err == ""
    assert json.loads(r.out) == {"order_id": "A1", "tracking": "T-A1", "charged": 5}

    r = await cli("result", "fails")
    one_error_line(r, 1, "'fails'", "failed", "boom", "ApplicationError type 'Boom'", '{"k": 1}')

    r = await cli("result", "waits", "--timeout", "0.2")
    one_error_line(r, 1, "'waits'", "did not close within 0.2 seconds")

    # Another process waits for the result; it wakes up when the worker here completes the run.
    waiting = asyncio.create_task(cli_process("result", "waits", "--timeout", "30"))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    handle = client.get_handle("waits")
    await handle.signal("item", 1)
    await handle.signal("item", [2, "x"])
    r = await waiting
    assert r.code == 0, r
    assert json.loads(r.out) == [1, [2, "x"]]


async def test_start_by_name(client: duro.Client, worker: duro.Worker, cli: Cli, cli_process: Cli) -> None:
    r = await cli_process("start", "signal_workflow", "--id", "started", "--task-queue", QUEUE, "2")
    assert r.code == 0, r
    run_id = r.out.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", run_id)
    handle = client.get_handle("started")
    desc = await handle.describe()
    assert (desc.run_id, desc.workflow_type, desc.task_queue) == (run_id, "signal_workflow", QUEUE)
    await handle.signal("item", "a")
    await handle.signal("item", "b")
    assert await asyncio.wait_for(handle.result(), 10) == ["a", "b"]

    # JSON arguments may come before and after the options.
    r = await cli_process("start", "signal_workflow", "1", "--id", "started-2", "--task-queue", QUEUE)
    assert r.code == 0, r
    r = await cli_process("start", "signal_workflow", "--id", "started-2", "--task-queue", QUEUE, "1")
    one_error_line(r, 1, "'started-2'", "already running")
    r = await cli_process("start", "signal_workflow", "--id", "x", "--task-queue", QUEUE, "[1,")
    one_error_line(r, 2, "not JSON")
    r = await cli_process("start", "signal_workflow", "--id", "x", "1")
    one_error_line(r, 2, "--task-queue")


async def test_start_options_from_the_cli(client: duro.Client, worker: duro.Worker, cli_process: Cli) -> None:
    # Signal-with-start, twice: the second call signals the open run and prints its id.
    first = await cli_process("start", "signal_workflow", "2", "--id", "sws-cli", "--task-queue", QUEUE,
                              "--start-signal", "item", "--start-signal-arg", '{"n": 1}')
    assert first.code == 0, first
    again = await cli_process("start", "signal_workflow", "2", "--id", "sws-cli", "--task-queue", QUEUE,
                              "--start-signal", "item", "--start-signal-arg", '{"n": 2}')
    assert again.code == 0 and again.out.strip() == first.out.strip(), again
    assert await asyncio.wait_for(client.get_handle("sws-cli").result(), 10) == [{"n": 1}, {"n": 2}]
    # terminate_existing replaces an open run.
    r = await cli_process("start", "signal_workflow", "1", "--id", "tx-cli", "--task-queue", QUEUE)
    r2 = await cli_process("start", "signal_workflow", "1", "--id", "tx-cli", "--task-queue", QUEUE,
                           "--id-conflict-policy", "terminate_existing")
    assert r2.code == 0 and r2.out.strip() != r.out.strip(), r2
    old = await client.get_handle("tx-cli", run_id=r.out.strip()).describe()
    assert old.status == "terminated"
    bad = await cli_process("start", "signal_workflow", "--id", "x", "--task-queue", QUEUE, "--start-signal", "s",
                            "--start-signal-arg", "[1,")
    one_error_line(bad, 2, "not JSON")


async def test_list_filters_pages_and_count(client: duro.Client, cli: Cli) -> None:
    for i in range(3):
        await client.start_workflow("signal_workflow", 1, id=f"f{i}", task_queue=QUEUE,
                                    search_attributes={"customer": "alice" if i else "bob", "n": i},
                                    memo={"note": f"m{i}"})
    r = await cli("list", "--attr", 'customer="alice"', "--json")
    assert r.code == 0, r
    listed = json.loads(r.out)["items"]
    assert sorted(w["workflow_id"] for w in listed) == ["f1", "f2"]
    assert {w["memo"]["note"] for w in listed} == {"m1", "m2"}
    r = await cli("count", "--attr", 'customer="alice"', "--attr", "n=2")
    assert (r.code, r.out.strip()) == (0, "1"), r
    r = await cli("count", "--status", "running", "--after", "2000-01-01T00:00")
    assert (r.code, r.out.strip()) == (0, "3"), r
    r = await cli("list", "--limit", "2")
    assert r.code == 0 and "more: --page " in r.out, r
    token = r.out.strip().splitlines()[-1].split("--page ")[1]
    r = await cli("list", "--limit", "2", "--page", token)
    assert r.code == 0 and r.out.count("signal_workflow") == 1, r
    r = await cli("describe", "f0")
    assert '"customer": "bob"' in r.out or '"customer":"bob"' in r.out, r
    one_error_line(await cli("count", "--attr", "customer=alice"), 2, "not JSON")
    one_error_line(await cli("list", "--after", "yesterday"), 2, "ISO 8601")


async def test_batch_actions_by_filter(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    for i in range(4):
        await client.start_workflow("signal_workflow", 1, id=f"b{i}", task_queue=QUEUE,
                                    search_attributes={"team": "a" if i < 3 else "b"})
    r = await cli("batch", "signal", "--signal", "item", '"go"', "--attr", 'team="a"')
    assert r.code == 0 and "signal: 3 workflow(s)" in r.out, r
    for i in range(3):
        assert await asyncio.wait_for(client.get_handle(f"b{i}").result(), 10) == ["go"]
    r = await cli("batch", "terminate", "--attr", 'team="b"', "--reason", "cleanup")
    assert r.code == 0 and "terminate: 1 workflow(s)" in r.out, r
    assert (await client.get_handle("b3").describe()).status == "terminated"
    r = await cli("batch", "cancel", "--attr", 'team="b"')
    assert r.code == 0 and "cancel: 0 workflow(s)" in r.out, r  # no running one left
    one_error_line(await cli("batch", "signal"), 2, "--signal NAME")
    one_error_line(await cli("batch", "cancel", '"x"'), 2, "takes no signal name")


async def test_query_answered_by_a_worker_of_another_process(client: duro.Client, worker: duro.Worker,
                                                              cli_process: Cli) -> None:
    handle = await client.start_workflow(features_wfs.queried, id="asked", task_queue=QUEUE)
    await handle.signal("add", "a")
    for _ in range(500):
        if await handle.query("items") == ["a"]:
            break
        await asyncio.sleep(0.01)
    r = await cli_process("query", "asked", "items")
    assert r.code == 0, r
    assert json.loads(r.out) == ["a"]
    r = await cli_process("query", "asked", "count_plus", "10")
    assert r.code == 0 and json.loads(r.out) == 11
    r = await cli_process("query", "asked", "count_plus", "10", "--json")
    assert r.code == 0 and json.loads(r.out) == {"workflow_id": "asked", "query": "count_plus", "args": [10],
                                                 "result": 11}
    r = await cli_process("query", "asked", "no_such_query")
    one_error_line(r, 1, "no_such_query")
    await handle.signal("add", "stop")
    assert await asyncio.wait_for(handle.result(), 10) == ["a", "stop"]


# ------------------------------------------------------------------------------------ errors


async def test_unknown_workflow_id(client: duro.Client, cli: Cli) -> None:
    for argv in (["describe", "nope"], ["history", "nope"], ["result", "nope"], ["signal", "nope", "s"],
                 ["cancel", "nope"], ["terminate", "nope"], ["query", "nope", "q"]):
        one_error_line(await cli(*argv), 1, "'nope'", "not in this store")
    await client.start_workflow(wfs.signal_workflow, 1, id="known", task_queue="nobody")
    one_error_line(await cli("describe", "known", "--run", "0" * 32), 1, "'known'", "not in this store")
    one_error_line(await cli("history", "known", "--run", "not-a-run-id"), 1, "not in this store")


# As on an install without the postgres extra: asyncpg cannot be imported.
WITHOUT_ASYNCPG = "import sys; sys.modules['asyncpg'] = None; from duro.cli import main; sys.exit(main(sys.argv[1:]))"


async def test_a_missing_lmdb_store_is_reported_without_the_postgres_extra(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    for argv in (["list"], ["describe", "x"]):
        result = await run_command([sys.executable, "-c", WITHOUT_ASYNCPG, "--store", f"lmdb://{missing}", *argv])
        one_error_line(result, 1, "no duro store at", str(missing))
    assert not missing.exists()


def test_bad_store_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("foo", "http://example.com/x", "lmdb://", "postgresql://localhost/test?schema=1bad"):
        code = main(["--store", url, "list"])
        one_error_line(Result(code, *capsys.readouterr()), 2)
    code = main(["--store", "nope://x", "list"])
    one_error_line(Result(code, *capsys.readouterr()), 2, "unsupported store URL", "'nope://x'", "lmdb://")
    code = main(["--store", "postgresq://app:s3cret@db/prod", "list"])  # a typo in the scheme: no password shown
    result = Result(code, *capsys.readouterr())
    one_error_line(result, 2, "unsupported store URL", "'postgresq://app@db/prod'")
    assert "s3cret" not in result.out + result.err

    missing = tmp_path / "missing"
    code = main(["--store", f"lmdb://{missing}", "describe", "x"])
    one_error_line(Result(code, *capsys.readouterr()), 1, "no duro store at", str(missing), "--store", "DURO_STORE")
    assert not missing.exists()  # reading does not create a store

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    code = main(["--store", f"lmdb://{not_a_dir}", "start", "t", "--id", "i", "--task-queue", "q"])
    one_error_line(Result(code, *capsys.readouterr()), 1, str(not_a_dir))


def test_store_from_the_environment(store: str, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DURO_STORE", store)
    assert main(["start", "some_type", "--id", "env-1", "--task-queue", "nobody", '{"a": 1}']) == 0
    run_id = capsys.readouterr().out.strip()
    assert main(["list", "--json"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)["items"]
    assert (doc["workflow_id"], doc["run_id"], doc["workflow_type"]) == ("env-1", run_id, "some_type")
    # --store wins over the environment, before or after the command.
    monkeypatch.setenv("DURO_STORE", "lmdb:///nonexistent/duro-store")
    assert main(["list", "--store", store]) == 0
    assert "env-1" in capsys.readouterr().out
    assert main(["--store", store, "describe", "env-1"]) == 0
    assert main(["list"]) == 1
    assert "/nonexistent/duro-store" in capsys.readouterr().err


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, fragment in (([], "COMMAND"), (["bogus"], "bogus"), (["list", "--limit", "0"], "--limit"),
                           (["list", "--status", "done"], "--status"), (["list", "--bogus"], "--bogus"),
                           (["describe"], "WORKFLOW_ID"), (["result", "x", "--timeout", "soon"], "--timeout"),
                           (["history", "x", "extra"], "extra")):
        code = main(argv)
        one_error_line(Result(code, *capsys.readouterr()), 2, fragment)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: duro") and "history" in out and "DURO_STORE" in out
    assert main(["start", "--help"]) == 0
    assert "--task-queue" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"duro {duro.__version__}"


# ------------------------------------------------------------------------------------ hygiene

# ESC sequences (SGR colour, clear screen, set title), a C1 CSI, DEL, a bidi override, a line separator.
EVIL_ID = "evil\x1b[31m\x1b[2J\x1b]0;pwned\x07\x9b1m\x7f\u202e-id"
EVIL_ID_SHOWN = "evil\\x1b[31m\\x1b[2J\\x1b]0;pwned\\x07\\x9b1m\\x7f\\u202e-id"
RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def no_raw_controls(text: str) -> None:
    found = RAW_CONTROLS.findall(text)
    assert not found, (found, text)


async def test_control_characters_are_escaped(client: duro.Client, cli: Cli) -> None:
    handle = await client.start_workflow("ty\x1bpe", {"k": "v\x1b[5m\x85"}, id=EVIL_ID, task_queue="nobody")
    await handle.signal("sig\x1b[1mnal", "x\x9by")

    r = await cli("list")
    assert r.code == 0, r
    no_raw_controls(r.out)
    assert EVIL_ID_SHOWN in r.out and "ty\\x1bpe" in r.out
    (row,) = r.out.splitlines()[1:]
    assert row.split()[0] == EVIL_ID_SHOWN

    r = await cli("describe", EVIL_ID)
    assert r.code == 0, r
    no_raw_controls(r.out)
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in r.out.splitlines())
    assert fields["workflow id"] == EVIL_ID_SHOWN and fields["type"] == "ty\\x1bpe"

    r = await cli("history", EVIL_ID)
    assert r.code == 0, r
    no_raw_controls(r.out)
    assert "sig\\x1b[1mnal" in r.out and '"x\\u009by"' in r.out and "\\u001b[5m" in r.out

    # JSON output is exact once parsed, and raw only in printable characters.
    for argv in (["list", "--json"], ["describe", EVIL_ID, "--json"], ["history", EVIL_ID, "--json"]):
        r = await cli(*argv)
        assert r.code == 0, r
        no_raw_controls(r.out)
    assert json.loads((await cli("list", "--json")).out)["items"][0]["workflow_id"] == EVIL_ID
    history = duro.History.from_json((await cli("history", EVIL_ID, "--json")).out)
    assert history.workflow_id == EVIL_ID and history[1].name == "sig\x1b[1mnal"

    # Error messages quote what came in, escaped, on one line.
    await cli("terminate", EVIL_ID, "--reason", "bye\x1b[5m\nnext line")
    r = await cli("result", EVIL_ID)
    one_error_line(r, 1, "bye\\x1b[5m\\nnext line")
    no_raw_controls(r.err)
    r = await cli("describe", "nope\x1b]0;title\x07")
    one_error_line(r, 1, "not in this store")
    no_raw_controls(r.err)


def test_clean_escapes_only_what_a_terminal_would_act_on() -> None:
    from duro.cli import clean

    assert clean("order-A1 é ✓ 日本 \\ tab") == "order-A1 é ✓ 日本 \\ tab"
    assert clean("a\tb\nc\rd\x00e\x1bf\x7fg\x85h\x9bi") == "a\\tb\\nc\\rd\\x00e\\x1bf\\x7fg\\x85h\\x9bi"
    assert clean("\u202eevil\u2066\u2028\u200f") == "\\u202eevil\\u2066\\u2028\\u200f"
    assert clean("lone \udcff surrogate") == "lone \\udcff surrogate"
    assert clean(clean("\x1b[31m")) == clean("\x1b[31m")


@pytest.mark.lmdb_only
def test_bad_input_exits_2(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, fragment in (
        (["signal", "x", "s", "NaN"], "NaN"),
        (["signal", "x", "s", "[1, Infinity]"], "Infinity"),
        (["describe", ""], "workflow id"),
        (["signal", "x", ""], "name"),
        (["start", "t", "--id", "", "--task-queue", "q"], "--id"),
        (["start", "t", "--id", "i", "--task-queue", "q" * 300], "task queue"),
        (["start", "t", "--id", "i" * 300, "--task-queue", "q"], "workflow id"),
        (["start", "t", "--id", "i", "--task-queue", "q", "--run-timeout", "1e12"], "--run-timeout"),
    ):
        code = main(["--store", store, *argv])
        one_error_line(Result(code, *capsys.readouterr()), 2, fragment)
    assert main(["--store", store, "list"]) == 1  # nothing above created the store
    capsys.readouterr()


def _damage_run_record(store: str, workflow_id: str) -> None:
    """Overwrite a run record with bytes that are not JSON (the store must be closed)."""
    from duro._core import mdb

    path = store.removeprefix("lmdb://")
    env = mdb.Environment(path, map_size=1 << 36, max_dbs=16, max_readers=1024)
    try:
        wf, runs = env.open_db(b"wf"), env.open_db(b"runs")
        with env.begin(write=True) as txn:
            index = txn.get(workflow_id.encode(), db=wf)
            assert index is not None
            txn.put(bytes.fromhex(json.loads(index)["run"]), b"{not json", db=runs)
    finally:
        env.close()


@pytest.mark.lmdb_only
def test_a_failing_store_operation_exits_1(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def start() -> None:
        async with duro.Client.connect(store) as c:
            await c.start_workflow("t", id="broken", task_queue="nobody")
            await c.start_workflow("t", id="fine", task_queue="nobody")

    asyncio.run(start())
    _damage_run_record(store, "broken")

    assert main(["--store", store, "describe", "fine"]) == 0
    capsys.readouterr()
    code = main(["--store", store, "describe", "broken"])
    r = Result(code, *capsys.readouterr())
    one_error_line(r, 1, "unexpected", f"duro --store {store} check", "--traceback")
    assert "Traceback" not in r.err

    code = main(["--store", store, "--traceback", "describe", "broken"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("duro: error: unexpected")

    code = main(["--store", store, "check"])
    r = Result(code, *capsys.readouterr())
    assert r.code == 1 and "(workflow 'broken')" not in r.out and "the run record is not a JSON object" in r.out


@pytest.mark.lmdb_only
async def test_check_with_the_store_open_in_this_process(client: duro.Client, worker: duro.Worker, cli: Cli,
                                                         cli_process: Cli) -> None:
    await some_workflows(client)
    for run in (cli, cli_process):  # in this process it shares the open environment
        r = await run("check")
        assert r.code == 0 and r.err == "", r
        assert r.out.startswith("store ") and "3 runs" in r.out and r.out.rstrip().endswith("no problems found")
    await client.start_workflow(wfs.signal_workflow, 1, id="after", task_queue=QUEUE)  # the store still works
    r = await cli("check", "--json")
    assert r.code == 0 and json.loads(r.out)["runs"] == 4


async def test_describe_shows_a_failing_workflow_task(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    """A run started by name with arguments its code cannot take is visible from the shell."""
    r = await cli("start", "order_workflow", "--id", "bad-args", "--task-queue", QUEUE, '"not an order"', '1', '2')
    assert r.code == 0, r
    handle = client.get_handle("bad-args")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while (await handle.describe()).task_failures == 0:
        assert loop.time() < deadline, "the failed workflow task was not recorded"
        await asyncio.sleep(0.01)
    r = await cli("describe", "bad-args")
    fields = dict(re.split(r":\s+", line, maxsplit=1) for line in r.out.splitlines())
    assert fields["status"] == "running" and "in a row" in fields["task failed"]
    assert json.loads((await cli("describe", "bad-args", "--json")).out)["task_failures"] >= 1
    r = await cli("history", "bad-args")
    assert "WorkflowTaskFailed" in r.out
    assert (await cli("terminate", "bad-args")).code == 0


# ------------------------------------------------------------------------------------ --json, exit codes, terminals

EXECUTION_KEYS = {"workflow_id", "run_id", "workflow_type", "task_queue", "status", "start_time", "close_time",
                  "history_length", "task_failures", "search_attributes", "memo", "pending_activities", "build_id",
                  "versioning_behavior"}
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


async def json_of(cli: Cli, *argv: str) -> Any:
    """The one JSON document a successful command printed."""
    r = await cli(*argv)
    assert (r.code, r.err) == (0, ""), r
    return json.loads(r.out)


async def test_json_of_the_read_commands(client: duro.Client, worker: duro.Worker, cli: Cli) -> None:
    handles = await some_workflows(client)
    page = await json_of(cli, "list", "--json")
    assert page["next_page_token"] is None and all(set(w) == EXECUTION_KEYS for w in page["items"])
    assert {w["workflow_id"]: w["status"] for w in page["items"]} == {
        "order-A1": "completed", "fails": "failed", "waits": "running"}
    assert await json_of(cli, "count", "--json") == {"count": 3}
    assert await json_of(cli, "count", "--status", "failed", "--json") == {"count": 1}

    desc = await json_of(cli, "describe", "order-A1", "--json")
    assert set(desc) == EXECUTION_KEYS and desc["run_id"] == handles["order"].run_id
    assert datetime.datetime.fromisoformat(desc["close_time"]) >= datetime.datetime.fromisoformat(desc["start_time"])
    history = await json_of(cli, "history", "order-A1", "--json")
    assert (history["format"], history["workflow_id"], history["run_id"]) == ("duro-history", "order-A1",
                                                                              desc["run_id"])
    assert [e["event_id"] for e in history["events"]] == list(range(1, desc["history_length"] + 1))

    assert await json_of(cli, "result", "order-A1", "--json") == {
        "workflow_id": "order-A1", "status": "completed", "error": None,
        "result": {"order_id": "A1", "tracking": "T-A1", "charged": 5}}
    r = await cli("result", "fails", "--json")  # the answer on stdout, the error on stderr, exit 1
    one_error_line(r, ExitCode.FAILED, "'fails'", "boom")
    doc = json.loads(r.out)
    assert (doc["workflow_id"], doc["status"], doc["result"]) == ("fails", "failed", None)
    (app,) = [c for c in doc["error"]["causes"] if c["class"] == "ApplicationError"]
    assert (app["message"], app["type"], app["details"], app["non_retryable"]) == ("boom", "Boom", {"k": 1}, False)
    r = await cli("result", "waits", "--json", "--timeout", "0.01")  # no answer yet: only the error
    one_error_line(r, ExitCode.FAILED, "did not close within")
    assert r.out == ""

    report = await json_of(cli, "check", "--json")
    assert (report["ok"], report["runs"], report["problems"]) == (True, 3, [])

    # reset (like start) answers with the run it started
    first_task = next(e["event_id"] for e in history["events"] if e["type"] == "WorkflowTaskCompleted")
    new = await json_of(cli, "reset", "order-A1", "--event-id", str(first_task), "--json")
    assert new["workflow_id"] == "order-A1" and re.fullmatch("[0-9a-f]{32}", new["run_id"])
    assert new["run_id"] != desc["run_id"] and (await client.get_handle("order-A1").describe()).run_id == new["run_id"]


async def test_json_of_the_acting_commands(client: duro.Client, cli: Cli) -> None:
    started = await json_of(cli, "start", "t", "--id", "j1", "--task-queue", "nobody", "1", "--json")
    assert started["workflow_id"] == "j1" and started["run_id"] == (await client.get_handle("j1").describe()).run_id
    await json_of(cli, "start", "t", "--id", "j2", "--task-queue", "nobody", "--json")
    assert await json_of(cli, "batch", "terminate", "--type", "t", "--json") == {
        "action": "terminate", "done": 2, "passed_over": []}
    assert await json_of(cli, "purge", "--before", "2999-01-01", "--json") == {
        "deleted": 2, "before": "2999-01-01T00:00:00+00:00"}
    assert await json_of(cli, "count", "--json") == {"count": 0}


async def test_exit_codes(client: duro.Client, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    await client.start_workflow("t", id="x", task_queue="nobody")
    assert (await cli("describe", "x")).code == ExitCode.OK
    one_error_line(await cli("describe", "y"), ExitCode.FAILED, "not in this store")
    one_error_line(await cli("describe", "x", "--bogus"), ExitCode.USAGE, "--bogus")
    one_error_line(await cli("list", "--color", "sometimes"), ExitCode.USAGE, "--color")

    def interrupted(url: str, args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("duro.cli._execute", interrupted)
    assert (await cli("list")).code == ExitCode.INTERRUPTED


def test_the_exit_code_table_is_the_one_shown(capsys: pytest.CaptureFixture[str]) -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130] and list(EXIT_CODES) == list(ExitCode)
    assert main(["--help"]) == ExitCode.OK
    out = capsys.readouterr().out
    shown = out[out.index("exit status:"):]
    for code, text in EXIT_CODES.items():
        assert re.search(rf"^  {int(code)} +{re.escape(text.split()[0])}", shown, re.M), (code, shown)
    docs = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    for code in ExitCode:
        assert re.search(rf"^\| {int(code)} \| `{code.name}` \|", docs, re.M), code


def test_the_docs_cover_every_command() -> None:
    headings = "\n".join(line for line in (REPO / "docs" / "cli.md").read_text(encoding="utf-8").splitlines()
                         if line.startswith("### "))
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in subparsers.choices.items():
        if name == "schedule":
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            for subname in sub.choices:
                assert f"`duro schedule {subname}`" in headings, subname
        else:
            assert f"`duro {name}`" in headings, name


async def test_piped_output_has_no_escape_codes(client: duro.Client, worker: duro.Worker, cli: Cli,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    await some_workflows(client)
    await client.create_schedule("s", "signal_workflow", 1, task_queue="nobody", every=3600, paused=True)
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "CLICOLOR_FORCE"):  # asked for colours: not into a pipe
        monkeypatch.setenv(name, "1")
    for argv in (["list"], ["count"], ["describe", "order-A1"], ["history", "order-A1"], ["result", "order-A1"],
                 ["check"], ["schedule", "list"], ["schedule", "describe", "s"], ["list", "--json"],
                 ["describe", "nope"], ["result", "fails"], ["batch", "cancel", "--type", "none"]):
        r = await cli(*argv)
        assert "\x1b" not in r.out + r.err, (argv, r)
    plain = await cli("list")
    assert plain.out == (await cli("list", "--color", "never")).out
    drawn = await cli("--color", "always", "list")  # for less -R: rich draws into the pipe
    assert drawn.code == 0 and ANSI.search(drawn.out) and "order-A1" in drawn.out and "─" in drawn.out


class Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


async def test_a_terminal_gets_tables_colours_and_progress(client: duro.Client, store: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "200")
    for i in range(2):
        await client.start_workflow("t", {"n": i}, id=f"tty-{i}", task_queue="nobody")

    async def on_a_terminal(*argv: str) -> Result:
        out, err = Tty(), Tty()
        with pytest.MonkeyPatch.context() as streams:
            streams.setattr(sys, "stdout", out)
            streams.setattr(sys, "stderr", err)
            code = await asyncio.to_thread(main, ["--store", store, *argv])
        return Result(code, out.getvalue(), err.getvalue())

    r = await on_a_terminal("list")
    assert r.code == 0 and ANSI.search(r.out) and "─" in r.out, r
    rows = [line.split() for line in ANSI.sub("", r.out).splitlines()]
    assert {row[0] for row in rows if row and row[0].startswith("tty-")} == {"tty-0", "tty-1"}
    assert "\x1b[36mrunning" in r.out  # the status in its colour
    r = await on_a_terminal("describe", "tty-0")
    assert r.code == 0 and "\x1b[1m" in r.out and "tty-0" in ANSI.sub("", r.out)
    r = await on_a_terminal("list", "--json")  # highlighted, and the same document
    assert ANSI.search(r.out) and json.loads(ANSI.sub("", r.out))["items"][0]["workflow_id"] == "tty-1"
    r = await on_a_terminal("describe", "nope")
    assert r.code == 1 and r.err.startswith("\x1b[1;31mduro: error: ") and r.out == ""
    r = await on_a_terminal("--color", "never", "list")
    assert r.code == 0 and not ANSI.search(r.out) and r.out.splitlines()[0].split()[:2] == ["workflow", "id"]

    # What the store holds is escaped in rich's cells too (and is not read as rich markup).
    await client.start_workflow("ty\x1bpe", id=EVIL_ID, task_queue="nobody", memo={"m": "[bold]x[/bold] :smile:"})
    for argv in (["list"], ["describe", EVIL_ID]):
        r = await on_a_terminal(*argv)
        shown = ANSI.sub("", r.out)
        no_raw_controls(shown)
        assert EVIL_ID_SHOWN in shown and "ty\\x1bpe" in shown, shown
    assert "[bold]x[/bold] :smile:" in shown

    r = await on_a_terminal("batch", "terminate", "--type", "t")
    assert r.code == 0 and "terminate: 2 workflow(s)" in ANSI.sub("", r.out), r
    assert "batch terminate" in r.err and "2/2" in ANSI.sub("", r.err), r  # the bar, erased at the end
    r = await on_a_terminal("purge", "--before", "2999-01-01")
    assert r.code == 0 and "deleted 2 run(s)" in r.out and "purging" in r.err, r


# ------------------------------------------------------------------------------------ duro ui


def test_ui_without_its_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "duro.ui", None)  # import duro.ui raises ImportError
    code = main(["ui", "lmdb:///nonexistent/store"])
    r = Result(code, *capsys.readouterr())
    one_error_line(r, ExitCode.FAILED, "pip install 'duro[ui]'")
    assert r.out == ""


async def test_ui_arguments(client: duro.Client, store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, str, int, str | None]] = []
    ui = types.ModuleType("duro.ui")

    def serve(url: str, *, host: str, port: int, token: str | None) -> None:
        calls.append((url, host, port, token))

    ui.serve = serve  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "duro.ui", ui)
    monkeypatch.delenv("DURO_UI_TOKEN", raising=False)

    async def run(*argv: str) -> Result:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(argv))
        return Result(code, *capsys.readouterr())

    assert (await run("ui", store)).code == ExitCode.OK
    assert (await run("--store", store, "ui", "--host", "0.0.0.0", "--port", "9000", "--token", "s3")).code == 0
    assert (await run("ui", "--store", store, store)).code == 0  # the same store twice is fine
    monkeypatch.setenv("DURO_UI_TOKEN", "from-env")
    assert (await run("ui", store)).code == 0
    assert calls == [(store, "127.0.0.1", 8233, None), (store, "0.0.0.0", 9000, "s3"),
                     (store, "127.0.0.1", 8233, None), (store, "127.0.0.1", 8233, "from-env")]

    async def serve_async(url: str, *, host: str, port: int, token: str | None) -> None:
        calls.append((url, "async", port, token))

    ui.serve = serve_async  # type: ignore[attr-defined]
    assert (await run("ui", store, "--port", "1")).code == 0 and calls[-1] == (store, "async", 1, "from-env")

    calls.clear()
    one_error_line(await run("ui", store, "--port", "65536"), ExitCode.USAGE, "--port")
    one_error_line(await run("ui", store, "--port", "http"), ExitCode.USAGE, "--port")
    one_error_line(await run("--store", "lmdb:///elsewhere", "ui", store), ExitCode.USAGE, "two stores")
    missing = tmp_path / "missing"
    one_error_line(await run("ui", f"lmdb://{missing}"), ExitCode.FAILED, "no duro store at")
    assert calls == [] and not missing.exists()

    def fails(error: Exception) -> Callable[..., None]:
        def serve(url: str, **options: Any) -> None:
            raise error

        return serve

    # duro.ui imports without aiohttp; its serve() raises the ImportError (as duro.ui does).
    missing_aiohttp = ImportError("the duro web UI needs aiohttp, which is not installed: pip install 'duro[ui]'")
    ui.serve = fails(missing_aiohttp)  # type: ignore[attr-defined]
    one_error_line(await run("ui", store), ExitCode.FAILED, "needs aiohttp", "pip install 'duro[ui]'")
    ui.serve = fails(OSError(98, "Address already in use"))  # type: ignore[attr-defined]
    one_error_line(await run("ui", store, "--port", "0"), ExitCode.FAILED, "cannot serve the UI on 127.0.0.1:0",
                   "Address already in use")


def test_history_table_shows_cancel_requests_and_cancelled_children_with_their_sequence_numbers() -> None:
    history = duro.History.from_json((REPO / "tests" / "golden" / "cancel_requests.json").read_bytes())
    rows = {row[0]: row[2:4] for row in history_rows(history)}
    assert rows["6"] == ["SignalExternalWorkflowExecutionInitiated", "go #4"]
    assert rows["7"] == ["RequestCancelExternalWorkflowExecutionInitiated", "#5"]
    assert rows["9"] == ["ChildWorkflowExecutionCanceled", "#2"]
