"""Time-travel queries: a workflow's state as it stood right after a given event of its history.

A history is inputs (started, activity results, timers fired, signals, updates) and workflow
tasks: a WorkflowTaskCompleted marker followed, in the same commit, by the commands the code
produced in that task (see ``duro._core.replay``). The workflow's state only changes when its code
runs, that is in a workflow task, so "the state right after event N" is defined as:

    the state of the code after every workflow task whose WorkflowTaskCompleted has an id <= N
    has run, and no other.

Hence:

- Inputs recorded at or before N that no such task processed yet (a signal that arrived after the
  last task at or before N, or while it ran) are not seen: the code had not run on them yet.
- When N is one of a task's commands (after its WorkflowTaskCompleted), the answer is the state
  after that whole task: its commands were decided together and committed in one transaction
  with the marker, so no state with only some of them ever existed.
- Before the first WorkflowTaskCompleted the code has not run at all: there is no state to ask,
  and the answer for such an N is a ``DuroError`` saying so.

One replay serves any number of points: the tasks are replayed in order and the query is asked
whenever the replay reaches a point, so a view of every task of a long history costs one replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from duro._core.codec import Event
from duro._core.replay import CommandMatcher, drive, split_activations
from duro._instance import WorkflowInstance
from duro.errors import DuroError

__all__ = ["replay_answers"]

# What ``drive`` expects after the tasks to replay: it replays every activation but the last one
# (the inputs no task has processed), so each slice handed to it ends with this empty one.
_NOTHING_PENDING: tuple[list[Event], Event | None, list[Event]] = ([], None, [])


def replay_answers(inst: WorkflowInstance, events: list[Event], points: Sequence[int],
                   ask: Callable[[], Any]) -> list[Any]:
    """Replay ``events`` on a fresh ``inst`` once, calling ``ask`` as the run stood right after each point.

    Args:
        inst: a new instance of the run (nothing activated yet); the caller closes it.
        events: the run's history (at least up to the largest point).
        points: event ids, each from 1 to the last id of ``events``, in any order.
        ask: asks the query of ``inst`` as it stands; what it returns is the answer.

    Returns:
        For each point, in the order of ``points``: the answer, or the exception ``ask`` raised
        (a ``DuroError`` for a point before the first completed workflow task), or, for the points
        from where the code stops replaying the history, the ``NonDeterminismError`` (or what the
        code raised): the answers before it stand.
    """
    # The tasks' inputs and commands do not depend on what follows them, so one split of the whole
    # history serves every point.
    tasks = split_activations(events)[:-1]
    # Where each task ends: its WorkflowTaskCompleted (every completed task has one).
    markers = [marker.event_id for _inputs, marker, _commands in tasks if marker is not None]
    first_task = markers[0] if markers else None
    matcher = CommandMatcher(inst.info.workflow_type)
    answers: dict[int, Any] = {}
    done = 0  # how many tasks have been replayed
    broken: Exception | None = None  # why the replay stopped: the answer at every later point
    for point in sorted(set(points)):
        if broken is not None:
            answers[point] = broken
            continue
        upto = done
        while upto < len(markers) and markers[upto] <= point:
            upto += 1
        if upto > done:
            try:
                _replay_tasks(inst, events, [*tasks[done:upto], _NOTHING_PENDING], matcher)
            except Exception as e:  # a divergence (or the code raised): the earlier answers stand
                broken = answers[point] = e
                continue
            done = upto
        if done == 0:
            when = (f"its first workflow task completed at event {first_task}" if first_task is not None
                    else "no workflow task has completed yet")
            answers[point] = DuroError(f"the workflow code had not run by event {point} ({when}): there is no "
                                       "state to query before the first WorkflowTaskCompleted")
            continue
        try:
            answers[point] = ask()
        except Exception as e:  # this point's answer; the others may still be fine
            answers[point] = e
    return [answers[p] for p in points]


def _replay_tasks(inst: WorkflowInstance, events: list[Event],
                  tasks: list[tuple[list[Event], Event | None, list[Event]]], matcher: CommandMatcher) -> None:
    """Replay ``tasks`` (ending with ``_NOTHING_PENDING``) on ``inst``, as ``WorkflowInstance.replay`` does.

    ``replay`` runs a whole history in one go; this runs it in stretches with the query asked in
    between, so it sets up what ``replay`` sets up (keep the two in step) and puts the instance back
    out of replay mode afterwards: a query handler sees ``is_replaying`` false, as after a replay.
    """
    inst._matcher = matcher
    inst.replaying = True
    inst._replay_events = events  # where recorded activity cancellation types are read
    try:
        # The workflow loop stays the running loop only while tasks replay: the query is asked
        # outside it, on the caller's loop, as any query is.
        with inst.loop.held():
            drive(inst, tasks, matcher)
    finally:
        inst.replaying = False
        inst._matcher = None
        inst._replay_events = None
