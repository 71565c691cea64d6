"""Whether a history's workflow code, replayed, decides its last workflow task as it was recorded.

``duro.testing.Replayer`` checks each command's type, sequence number and name, not its payload:
a recorded result is taken from the history, not encoded again (so histories recorded under older
rules keep replaying). To see that the code reaches the same *outcome* (the same result, failure or
continue-as-new arguments, byte for byte), ``replayed_last_task`` replays every workflow task but
the last, then runs the last one live, as a worker that lost its cache would, and returns the
commands the code produces there, payloads encoded afresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

import duro
from duro._core import codec
from duro._core.codec import Event
from duro._core.replay import is_command
from duro._instance import WorkflowInstance
from duro.converter import default_converter
from duro.stores.base import run_key_of
from duro.workflow import get_workflow_definition

__all__ = ["command_outcome", "recorded_last_task", "replayed_last_task"]


def _last_marker(events: Sequence[Event]) -> int:
    """The index of the last WorkflowTaskCompleted of ``events``."""
    marks = [i for i, e in enumerate(events) if e.type == codec.WORKFLOW_TASK_COMPLETED]
    assert marks, "the history has no completed workflow task"
    return marks[-1]


def recorded_last_task(history: duro.History) -> list[Event]:
    """The commands the last workflow task of ``history`` recorded (they follow its marker)."""
    events = history.core_events
    i = _last_marker(events) + 1
    commands = []
    while i < len(events) and is_command(events[i].type):
        commands.append(events[i])
        i += 1
    return commands


def replayed_last_task(workflows: Sequence[Callable[..., Any]], history: duro.History) -> list[Event]:
    """The commands the current code produces for the last workflow task of ``history``.

    Every task before it is replayed (and checked: NonDeterminismError on divergence); the last
    one runs live on the inputs it processed (those up to its marker's ``ref``).
    """
    events = history.core_events
    defs = {get_workflow_definition(w).name: get_workflow_definition(w) for w in workflows}
    last = _last_marker(events)
    marker = events[last]
    inst = WorkflowInstance(defs[events[0].name], run_key_of(history.run_id), events[0], default_converter)
    try:
        pending = inst.replay(events[:last])
        inst.activate([e for e in pending if e.event_id <= marker.ref])
        produced, _, _ = inst.take_commands()
    finally:
        inst.close()
    return produced


def command_outcome(ev: Event) -> tuple[int, int, str, int, Any]:
    """What a command decides: type, sequence number, name, flags and payload (event id and time aside).

    A failure's ``stack`` (the traceback text) names the files and lines of the process that ran
    the code, so it is left out; everything else of the payload is compared as recorded.
    """
    payload: Any = ev.payload
    if ev.type in (codec.WORKFLOW_FAILED, codec.WORKFLOW_CANCELED):
        payload = _without_stacks(orjson.loads(ev.payload))
    return ev.type, ev.ref, ev.name, ev.flags, payload


def _without_stacks(failure: Any) -> Any:
    if isinstance(failure, dict):
        return {k: _without_stacks(v) for k, v in failure.items() if k != "stack"}
    return failure
