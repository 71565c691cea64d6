"""``duro replay``: the deploy check, run as the installed command against runs in a real store.

The runs are version 1's (tests/engine/replay_v1.py, recorded by tests/engine/replay_runs.py);
version 2 (replay_v2.py) changes two of its workflows. The command runs in another process from
the repository's directory with only ``src`` on PYTHONPATH: it must find ``tests.engine...`` in the
current directory by itself, as it finds ``app.workflows`` in a project.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import json
import sys
from pathlib import Path

import pytest

import duro
from duro.cli import ExitCode, main
from tests import pg
from tests.engine import replay_v2 as v2
from tests.engine.replay_runs import Runs, record_runs
from tests.processes import Result, run_command

REPO = Path(__file__).resolve().parents[1]
# The console script next to this Python (what `pip install` makes), else the module.
_SCRIPT = Path(sys.executable).with_name("duro")
DURO = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "duro.cli"]
V1 = "tests.engine.replay_v1"
V2 = "tests.engine.replay_v2"


async def duro_cli(*argv: str) -> Result:
    """``duro ARGV...`` in another process, from the repository's directory (only ``src`` on the path)."""
    return await run_command([*DURO, *argv], pythonpath=[REPO / "src"])


@pytest.fixture
async def runs(client: duro.Client) -> Runs:
    return await record_runs(client)


def _ids(history: duro.History, event_type: str) -> list[int]:
    return [e.event_id for e in history if e.event_type == event_type]


async def test_the_same_code_replays_exit_0(store: str, runs: Runs) -> None:
    r = await duro_cli("--store", store, "replay", "--module", V1)
    assert (r.code, r.err) == (ExitCode.OK, ""), r
    assert r.out.splitlines() == ["replayed 3 run(s): 3 ok, 0 diverged, 0 failed; 1 skipped (workflow type not "
                                  "in --module)"]

    # --store after the command works too; --json gives every run.
    r = await duro_cli("replay", "--module", V1, "--store", store, "--json")
    assert (r.code, r.err) == (ExitCode.OK, ""), r
    doc = json.loads(r.out)
    assert {k: v for k, v in doc.items() if k != "runs"} == {
        "ok": True, "replayed": 3, "diverged": 0, "failed": 0, "skipped": 1, "left_out": 0}
    assert doc["runs"] == [
        {"workflow_id": wid, "run_id": runs.run_id(role), "workflow_type": f"replay_{role}", "status": status,
         "ok": True, "diverged": False, "error": None}
        for wid, role, status in (("waiting-1", "waiting", "running"), ("failing-1", "failing", "failed"),
                                  ("greeting-1", "greeting", "completed"))]

    # --module repeats: the other run's type is in the second module.
    r = await duro_cli("--store", store, "replay", "--module", V1, "--module", "tests.engine.replay_runs")
    assert r.code == ExitCode.OK, r
    assert r.out.splitlines()[-1].startswith("replayed 4 run(s): 4 ok, 0 diverged, 0 failed; 0 skipped")


async def test_changed_code_exits_1_naming_run_event_recorded_and_requested(store: str, runs: Runs) -> None:
    r = await duro_cli("--store", store, "replay", "--module", V2)
    assert (r.code, r.err) == (ExitCode.FAILED, ""), r
    greeting_line = inspect.getsourcelines(v2.greeting)[1] + next(
        i for i, line in enumerate(inspect.getsourcelines(v2.greeting)[0]) if "# DIVERGES" in line)
    greeting_event = _ids(runs.histories["greeting"], "ActivityTaskScheduled")[0]
    waiting_event = _ids(runs.histories["waiting"], "WorkflowTaskCompleted")[1]
    waiting_line = inspect.getsourcelines(v2.waiting)[1]
    assert r.out.splitlines() == [
        f"workflow waiting-1 (run {runs.run_id('waiting')}, type replay_waiting, running): diverged at event "
        f"{waiting_event}",
        "  recorded:  (nothing)",
        f"  requested: WorkflowExecutionCompleted(seq=0) at return from the workflow function at "
        f"{v2.__file__}:{waiting_line}",
        f"workflow greeting-1 (run {runs.run_id('greeting')}, type replay_greeting, completed): diverged at event "
        f"{greeting_event}",
        "  recorded:  ActivityTaskScheduled(seq=1, name='greet')",
        f"  requested: ActivityTaskScheduled(seq=1, name='shout') at {v2.__file__}:{greeting_line}",
        "replayed 3 run(s): 1 ok, 2 diverged, 0 failed; 1 skipped (workflow type not in --module)",
    ]

    r = await duro_cli("--store", store, "replay", "--module", V2, "--json")
    assert r.code == ExitCode.FAILED, r
    doc = json.loads(r.out)
    assert (doc["ok"], doc["replayed"], doc["diverged"], doc["failed"], doc["skipped"]) == (False, 3, 2, 0, 1)
    greeting = next(run for run in doc["runs"] if run["workflow_id"] == "greeting-1")
    assert greeting["ok"] is False and greeting["diverged"] is True
    assert greeting["error"]["class"] == "NonDeterminismError"
    assert greeting["error"]["event_id"] == greeting_event
    assert greeting["error"]["recorded"] == "ActivityTaskScheduled(seq=1, name='greet')"
    assert greeting["error"]["requested"] == f"ActivityTaskScheduled(seq=1, name='shout') at {v2.__file__}:" \
                                             f"{greeting_line}"
    assert f"diverged from its history at event {greeting_event}" in greeting["error"]["message"]


async def test_a_call_the_guard_refuses_fails_the_check_unless_the_workers_allow_it(store: str, runs: Runs) -> None:
    r = await duro_cli("--store", store, "replay", "--module", "tests.engine.replay_clocked")
    assert r.code == ExitCode.FAILED, r
    lines = r.out.splitlines()
    assert lines[0] == (f"workflow other-1 (run {runs.run_id('other')}, type replay_other, completed): workflow code "
                        "called a nondeterministic function")
    assert lines[1].startswith("  time.time() in workflow 'replay_other' at ") and "replay_clocked.py:12" in lines[1]
    # As the workers have it: --determinism off (or warn) lets the same code replay.
    for mode in ("off", "warn"):
        r = await duro_cli("--store", store, "replay", "--module", "tests.engine.replay_clocked", "--determinism", mode)
        assert r.code == ExitCode.OK, r
        assert r.out.splitlines()[-1].startswith("replayed 1 run(s): 1 ok")


async def test_a_module_whose_types_are_not_in_the_store_says_so(store: str, runs: Runs) -> None:
    r = await duro_cli("--store", store, "replay", "--module", "tests.engine.time_travel_wfs")
    assert r.code == ExitCode.OK, r
    assert r.out.splitlines() == [
        "replayed 0 run(s): 0 ok, 0 diverged, 0 failed; 4 skipped (workflow type not in --module)",
        "no run of the module(s)' workflow types is in the store, only runs of other types: was the type renamed, "
        "or is it another --module?"]


async def test_type_limit_and_since_choose_the_runs(store: str, runs: Runs) -> None:
    r = await duro_cli("--store", store, "replay", "--module", V2, "--type", "replay_failing")
    assert r.code == ExitCode.OK, r
    assert r.out.splitlines() == ["replayed 1 run(s): 1 ok, 0 diverged, 0 failed; 0 skipped (workflow type not "
                                  "in --module)"]

    r = await duro_cli("--store", store, "replay", "--module", V2, "--limit", "1")
    assert r.code == ExitCode.FAILED, r
    assert r.out.splitlines()[0].startswith("workflow waiting-1 ")
    assert "greeting-1" not in r.out
    assert r.out.splitlines()[-1] == ("replayed 1 run(s): 0 ok, 1 diverged, 0 failed; 1 skipped (workflow type not "
                                      "in --module); 2 older run(s) left out by --limit")

    tomorrow = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).date().isoformat()
    r = await duro_cli("--store", store, "replay", "--module", V2, "--since", tomorrow)
    assert r.code == ExitCode.OK, r
    assert r.out.splitlines() == ["replayed 0 run(s): 0 ok, 0 diverged, 0 failed; 0 skipped (workflow type not "
                                  "in --module)"]


# ------------------------------------------------------------------ bad input


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int, *fragments: str) -> None:
    """``duro ARGV`` (in this process) exits with ``code`` and one ``duro: error:`` line holding each fragment."""
    capsys.readouterr()
    assert main(argv) == code, argv
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("duro: error: "), (argv, out, err)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_bad_input_is_a_usage_error_saying_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"lmdb://{tmp_path / 'store'}"
    base = ["--store", url, "replay"]
    usage = ExitCode.USAGE
    _one_error(capsys, [*base, "--module", "tests.engine.no_such_module"], usage,
               "cannot import module 'tests.engine.no_such_module'", "no module named 'tests.engine.no_such_module'",
               "current directory", "PYTHONPATH")
    _one_error(capsys, [*base, "--module", "tests.waiting"], usage,
               "module 'tests.waiting'", "holds no @duro.workflow definitions", "pass the module that defines")
    _one_error(capsys, [*base, "--module", "tests.engine.replay_broken"], usage,
               "importing module 'tests.engine.replay_broken' raised RuntimeError: this module fails on import",
               "--traceback")
    for path in ("tests/engine/replay_v1.py", "./tests/engine/replay_v1", "tests/engine/replay_v1",
                 str(Path.cwd() / "tests/engine/replay_v1.py")):
        _one_error(capsys, [*base, "--module", path], usage, "--module takes a module's dotted name",
                   f"file path {path!r}; from here: 'tests.engine.replay_v1'")
    _one_error(capsys, [*base, "--module", "../elsewhere/app.py"], usage, "file path '../elsewhere/app.py'; run duro "
               "from the directory that holds its package")
    _one_error(capsys, [*base, "--module", V1, "--type", "nope"], usage,
               "--type 'nope' is not a workflow type of the module(s)",
               "replay_failing, replay_greeting, replay_waiting")
    _one_error(capsys, [*base, "--module", V1, "--module", V2], usage,
               "workflow type 'replay_greeting' is defined twice, by tests.engine.replay_v1.greeting and "
               "tests.engine.replay_v2.greeting")
    _one_error(capsys, [*base, "--module", V1, "--limit", "0"], usage, "--limit", "positive integer")
    _one_error(capsys, [*base, "--module", V1, "--since", "last tuesday"], usage, "--since", "ISO 8601")
    _one_error(capsys, base, usage, "--module")
    # The modules are fine, the store is not there: the operation fails (and creates nothing).
    _one_error(capsys, [*base, "--module", V1], ExitCode.FAILED, "no duro store at")
    assert not (tmp_path / "store").exists()


def test_a_postgresql_schema_that_does_not_exist_is_reported_not_created(capsys: pytest.CaptureFixture[str]) -> None:
    # A mistyped ?schema= must fail the deploy check (and the commands that only read), not pass
    # on an empty store made for the occasion.
    asyncio.run(pg.require_postgres())
    schema = pg.random_schema()
    url = pg.with_schema(pg.PG_URL, schema)
    _one_error(capsys, ["--store", url, "replay", "--module", V1], ExitCode.FAILED,
               f"no duro store in schema '{schema}' at ", "--store")
    _one_error(capsys, ["--store", url, "list"], ExitCode.FAILED, f"no duro store in schema '{schema}'")
    assert not asyncio.run(pg.schema_exists(schema))
