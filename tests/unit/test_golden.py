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
from tests.outcome import command_outcome, recorded_last_task, replayed_last_task

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


@pytest.mark.parametrize("path", [p for p in FILES if not CASES[p.stem].nondeterministic], ids=lambda p: p.stem)
def test_golden_history_replays_to_its_recorded_outcome(path: Path) -> None:
    """The current code, replayed, ends the last workflow task with the recorded commands, payloads included
    (the replay matcher compares commands by type, sequence number and name only)."""
    history = load(path)
    produced = replayed_last_task(workflows.WORKFLOWS, history)
    assert [command_outcome(e) for e in produced] == [command_outcome(e) for e in recorded_last_task(history)]


def test_cancel_requests_recorded_in_the_older_and_the_current_form() -> None:
    """Before duro 0.2 a cancel request to another run was a SignalExternal... with flags bit 0 and a
    cancelled child a ChildWorkflowExecutionFailed named "canceled"; both forms replay, to the same result."""
    old, new = load(GOLDEN / "cancel_requests_as_signals.json"), load(GOLDEN / "cancel_requests.json")

    def shape(h: duro.History) -> list[tuple[str, int, str, int]]:
        return [(e.event_type, e.ref, e.name, e.flags) for e in h]

    assert shape(old)[5:10] == [
        ("SignalExternalWorkflowExecutionInitiated", 4, "go", 0),
        ("SignalExternalWorkflowExecutionInitiated", 5, "", 1), ("SignalExternalWorkflowExecutionInitiated", 6, "", 1),
        ("ChildWorkflowExecutionFailed", 2, "canceled", 0), ("ChildWorkflowExecutionFailed", 3, "canceled", 0)]
    assert shape(new)[5:10] == [
        ("SignalExternalWorkflowExecutionInitiated", 4, "go", 0),
        ("RequestCancelExternalWorkflowExecutionInitiated", 5, "", 0),
        ("RequestCancelExternalWorkflowExecutionInitiated", 6, "", 0),
        ("ChildWorkflowExecutionCanceled", 2, "", 0), ("ChildWorkflowExecutionCanceled", 3, "", 0)]
    # The current form names whom it cancels: the child through its handle (with its run id), the
    # other through an external handle (by workflow id only).
    kid, other = new[6].data(), new[7].data()
    assert kid["id"] == "golden-cancel_requests-kid" and len(kid["run"]) == 32
    assert other == {"id": "golden-cancel_requests-other"}
    # The parent's code saw the same thing in both: the recorded results are equal, and so is a replay's.
    assert old[-1].data() == new[-1].data() == {
        "signalled": "hello from outside", "kid": "WorkflowFailedError caused by CancelledError",
        "other": "WorkflowFailedError caused by CancelledError"}
    for h in (old, new):
        assert [command_outcome(e) for e in replayed_last_task(workflows.WORKFLOWS, h)] == [
            command_outcome(e) for e in recorded_last_task(h)]
