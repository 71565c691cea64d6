"""Record the golden histories: run each case of ``workflows.py`` on a fresh LMDB store, write its JSON.

    .venv/bin/python tests/golden/generate.py              # record the cases that have no file yet
    .venv/bin/python tests/golden/generate.py NAME ...     # only these cases (still only if missing)
    .venv/bin/python tests/golden/generate.py --overwrite NAME ...   # re-record existing files

Existing files are kept by default: a committed history is a record of an on-disk format that
later releases must still replay. See README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root: run as a script, import tests.golden

import duro  # noqa: E402
from duro.workflow import get_workflow_definition  # noqa: E402
from tests.golden.workflows import ACTIVITIES, CASES, WORKFLOWS, Case  # noqa: E402


def worker_workflows(case: Case) -> list[Callable[..., Any]]:
    """The case's workflow plus every current one of another name (children run on the same worker)."""
    own = get_workflow_definition(case.workflow).name
    return [case.workflow, *(w for w in WORKFLOWS if get_workflow_definition(w).name != own)]


async def record(client: duro.Client, case: Case) -> duro.History:
    """Run one case to its end and return its history."""
    queue = f"golden-{case.name}"
    async with duro.Worker(client, task_queue=queue, workflows=worker_workflows(case), activities=ACTIVITIES):
        handle = await client.start_workflow(case.workflow, *case.args, id=f"golden-{case.name}", task_queue=queue)
        for name, payload in case.signals:
            await handle.signal(name, payload)
        if case.drive is not None:
            await case.drive(client, handle)
        try:
            await handle.result(timeout=30)
        except duro.WorkflowFailedError:
            if not case.fails:
                raise
        else:
            if case.fails:
                raise AssertionError(f"golden case {case.name!r} was expected to fail and completed")
        recorded = case.record(client, handle) if case.record is not None else handle
    history = await recorded.fetch_history()
    check(case, history)
    return history


def check(case: Case, history: duro.History) -> None:
    """Refuse to write a recording that does not show what the case is about (a mistimed driver)."""
    types = [e.event_type for e in history]
    problems = [f"no {t}" for t in case.expect if t not in types]
    if history[0].name != case.recorded_type:
        problems.append(f"records workflow type {history[0].name!r}, not {case.recorded_type!r}")
    if types[-1] != case.closing_event:
        problems.append(f"ends with {types[-1]}, not {case.closing_event}")
    if problems:
        raise AssertionError(f"golden case {case.name!r}: {'; '.join(problems)}; events: {types}")


async def main(names: list[str], overwrite: bool) -> int:
    known = {c.name: c for c in CASES}
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown case(s) {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    cases = [known[n] for n in names] if names else CASES
    with tempfile.TemporaryDirectory(prefix="duro-golden-") as tmp:
        async with duro.Client.connect(f"lmdb://{tmp}/store") as client:
            for case in cases:
                path = HERE / f"{case.name}.json"
                if path.exists() and not overwrite:
                    print(f"kept     {path.name} (exists; --overwrite to re-record)")
                    continue
                history = await record(client, case)
                path.write_text(history.to_json() + "\n")
                print(f"recorded {path.name}: {len(history)} events")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="cases to record (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="re-record files that exist (breaks the record "
                        "of older formats: only for a deliberate, documented format change)")
    opts = parser.parse_args()
    sys.exit(asyncio.run(main(opts.names, opts.overwrite)))
