"""Bad input through the ``duro`` command: each is refused with its exit code and message, and writes nothing.

The API's table is tests/test_bad_inputs.py; this one drives the same checks from a shell.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import duro
from duro.cli import main
from tests.test_cli import Result, one_error_line

pytestmark = pytest.mark.lmdb_only  # compares LMDB's records before and after

LONG = "q" * 300
NAN = "NaN"

# (argv after --store URL, exit code, fragments of the one error line)
CASES: list[tuple[list[str], int, tuple[str, ...]]] = [
    (["start", "wf", "--id", LONG, "--task-queue", "q"], 2, ("255 bytes",)),
    (["start", "wf", "--id", "x", "--task-queue", LONG], 2, ("task queue", "255 bytes")),
    (["start", LONG, "--id", "x", "--task-queue", "q"], 2, ("255 bytes",)),
    (["start", "wf", "--id", "a\x00b", "--task-queue", "q"], 2, ("NUL",)),
    (["start", "wf", "--id", "x", "--task-queue", "q\x00"], 2, ("NUL",)),
    (["start", "wf", "--id", "", "--task-queue", "q"], 2, ("empty",)),
    (["start", "wf", "--id", "x", "--task-queue", ""], 2, ("empty",)),
    (["start", "wf", "--id", "x", "--task-queue", "q", NAN], 2, ("NaN",)),
    (["start", "wf", "--id", "x", "--task-queue", "q", "Infinity"], 2, ("Infinity",)),
    (["start", "wf", "--id", "x", "--task-queue", "q", '{"a": NaN}'], 2, ("NaN",)),
    (["start", "wf", "--id", "x", "--task-queue", "q", "{not json"], 2, ("not JSON",)),
    (["start", "wf", "--id", "x", "--task-queue", "q", "'single'"], 2, ("not JSON",)),
    (["start", "wf", "--id", "x"], 2, ("--task-queue",)),
    (["start", "wf", "--task-queue", "q"], 2, ("--id",)),
    (["start", "--id", "x", "--task-queue", "q"], 2, ("TYPE",)),
    (["signal", "existing", LONG], 2, ("255 bytes",)),
    (["signal", "existing", "go", NAN], 2, ("NaN",)),
    (["signal", "existing", "go", "[1,"], 2, ("not JSON",)),
    (["signal", "existing", ""], 2, ("empty",)),
    (["signal", "nobody-has-this", "go"], 1, ("'nobody-has-this'", "not in this store")),
    (["query", "existing", LONG], 2, ("255 bytes",)),
    (["query", "existing", "q", NAN], 2, ("NaN",)),
    (["cancel", "nobody-has-this"], 1, ("not in this store",)),
    (["terminate", "nobody-has-this"], 1, ("not in this store",)),
    (["result", "existing", "--timeout", "nan"], 2, ("--timeout",)),
    (["result", "existing", "--timeout", "inf"], 2, ("--timeout",)),
    (["result", "existing", "--timeout", "1e300"], 2, ("--timeout",)),
    (["result", "existing", "--timeout", "soon"], 2, ("--timeout",)),
    (["list", "--limit", "-1"], 2, ("--limit",)),
    (["list", "--limit", "many"], 2, ("--limit",)),
    (["list", "--status", "sleeping"], 2, ("--status",)),
    (["describe", "existing", "--run", "zz"], 1, ("not in this store",)),
    (["history", "existing", "--bogus"], 2, ("--bogus",)),
    (["frobnicate"], 2, ("frobnicate",)),
]


async def _state(client: duro.Client) -> tuple[Any, ...]:
    """Every record of the store but the batch counter (a failed operation's batch still commits it)."""
    store: Any = client.store
    records = []
    with store.env.begin() as txn:
        for db in (store._history_db, store._runs, store._wf, store._wtask, store._atask, store._timer,
                   store._req, store._resp):
            records.append(list(txn.cursor(db=db)))
    return tuple(map(tuple, records))


@pytest.mark.parametrize(("argv", "code", "fragments"), CASES, ids=[" ".join(c[0])[:60] for c in CASES])
async def test_bad_cli_input_is_refused_and_writes_nothing(store: str, capsys: pytest.CaptureFixture[str],
                                                             argv: list[str], code: int,
                                                             fragments: tuple[str, ...]) -> None:
    async with duro.Client.connect(store) as client:
        await client.start_workflow("some_workflow", 1, id="existing", task_queue="nobody-polls")
        before = await _state(client)
        capsys.readouterr()
        exit_code = await asyncio.to_thread(main, ["--store", store, *argv])
        result = Result(exit_code, *capsys.readouterr())
        one_error_line(result, code, *fragments)
        assert await _state(client) == before
