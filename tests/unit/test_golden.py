"""Committed golden histories (tests/golden/*.json) still replay against the current code.

They are written by tests/golden/generate.py and never edited by hand: a failure here means
either the on-disk format changed incompatibly or a workflow in tests/golden/workflows.py was
changed in a way that breaks replay of its recorded runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import duro
from tests.golden import workflows

GOLDEN = Path(workflows.__file__).resolve().parent
FILES = sorted(GOLDEN.glob("*.json"))
CASES = {c.name: c for c in workflows.CASES}


def load(path: Path) -> duro.History:
    return duro.History.from_json(path.read_bytes())


def test_every_case_has_a_committed_history() -> None:
    assert sorted(p.stem for p in FILES) == sorted(CASES), "run: python tests/golden/generate.py"


@pytest.mark.parametrize("path", [p for p in FILES if not CASES[p.stem].nondeterministic], ids=lambda p: p.stem)
async def test_golden_history_replays(path: Path) -> None:
    case = CASES[path.stem]
    history = load(path)
    assert history[0].event_type == "WorkflowExecutionStarted" and history[0].name == case.recorded_type
    assert history[-1].event_type == case.closing_event
    types = {e.event_type for e in history}
    assert [t for t in case.expect if t not in types] == [], "the history lacks what the case is about"
    await duro.testing.Replayer(workflows=workflows.WORKFLOWS).replay(history)


def diverging_line() -> int:
    lines = Path(workflows.__file__).read_text().splitlines()
    marked = [i for i, line in enumerate(lines, start=1) if line.rstrip().endswith("# golden: diverges here")]
    assert len(marked) == 1
    return marked[0]


@pytest.mark.parametrize("path", [p for p in FILES if CASES[p.stem].nondeterministic], ids=lambda p: p.stem)
async def test_nondeterministic_history_is_detected(path: Path) -> None:
    with pytest.raises(duro.NonDeterminismError) as info:
        await duro.testing.Replayer(workflows=workflows.WORKFLOWS).replay(load(path))
    message = str(info.value)
    assert f"{Path(workflows.__file__).resolve()}:{diverging_line()}" in message, message
    assert "greet" in message and "add" in message, message


def test_saga_history_compensates_in_reverse() -> None:
    history = load(GOLDEN / "saga.json")
    scheduled = [(e.name, e.data()) for e in history if e.event_type == "ActivityTaskScheduled"]
    assert scheduled == [("greet", ["flight"]), ("greet", ["hotel"]), ("refuse", ["car"]),
                         ("undo", ["hello hotel"]), ("undo", ["hello flight"])]
