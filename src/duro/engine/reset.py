"""Reset: a new run of a workflow id from a point in the history of one of its runs (``Machine.reset``).

The reset point is a WorkflowTaskCompleted event N. As in Temporal (whose reset to event N is
exclusive of N), the decisions of the workflow task that completed at N are made again by the
current code. The new run's history is:

- events 1 .. N-1 of the old run, as they are (same ids, timestamps and payloads; the
  WorkflowExecutionStarted keeps the first run id and the execution deadline of the chain);
- event N: a WorkflowTaskFailed record of the reset (name ``RESET_FAILURE_TYPE``, the reason, the
  old run and the event id; not an input, workers skip it);
- then, as new inputs, what arrived in the old run after N that must not be lost: every signal
  and accepted update, and the outcome of work decided before N that ended after it (activity
  results, timers fired, child workflows closed);
- then a failure of each activity (or child) decided before N that is still pending but cannot be
  carried (its attempt is gone from the old run; the child run is gone).

Work decided before N and still pending is carried over: an activity's attempt (found on the
run's task queue) moves to the new run, a timer is set again for its original due time, and an
open child now reports to the new run. Work decided at or after N is not: the new run's code
decides it again. A workflow task is enqueued, so workers replay events 1 .. N-1 and run the code
from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from duro._core import codec
from duro._core.codec import Event
from duro._core.replay import is_command
from duro.engine.machine import child_closed_event
from duro.engine.records import RunRecord, RunStatus, WorkflowIndex
from duro.errors import DuroError
from duro.stores.base import CANCEL_TYPES, FLAG_CANCEL_TYPE, ActivityTask, TimerSet, run_key_of, unpack

if TYPE_CHECKING:
    from duro.engine.machine import Effects, Machine
    from duro.engine.tx import Tx

__all__ = ["RESET_FAILURE_TYPE", "ResetPlan", "plan_reset", "reset_run"]

#: The name of the WorkflowTaskFailed event that records a reset in the new run's history.
RESET_FAILURE_TYPE = "ResetWorkflow"
_NEVER = 1 << 63
_RUNNING = RunStatus.RUNNING
# Inputs recorded again in the new run whatever they answer: they came from outside the run.
_REAPPLIED = frozenset((codec.SIGNAL_RECEIVED, codec.UPDATE_ACCEPTED))
_NOT_INPUTS = frozenset((codec.WORKFLOW_TASK_COMPLETED, codec.WORKFLOW_TASK_FAILED, codec.WORKFLOW_TERMINATED,
                         codec.WORKFLOW_TIMED_OUT))
_MAX_CHILD_HOPS = 10_000
# A child's end: ChildWorkflowExecutionCanceled since duro 0.2 (before, a cancelled child was Failed).
_CHILD_ENDS = frozenset((codec.CHILD_COMPLETED, codec.CHILD_FAILED, codec.CHILD_CANCELED))


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


@dataclass
class ResetPlan:
    """What a reset to ``event_id`` writes, worked out from the old run's history alone (no writes).

    ``kept`` are events 1 .. event_id-1; ``carried`` the inputs from after the reset point to record
    again (in their order); ``timers`` maps each timer still pending at the reset point and not
    fired since to its due time (µs); ``activities`` and ``children`` map each still-pending
    activity / child workflow decided before the reset point to its recorded command (the child's
    command with its parsed start meta, None when unreadable); ``epoch`` counts the workflow tasks
    completed before the reset point; ``started`` is the WorkflowExecutionStarted meta.
    """

    event_id: int
    kept: list[Event]
    carried: list[Event]
    epoch: int
    started: dict[str, Any]
    timers: dict[int, int] = field(default_factory=dict)
    activities: dict[int, Event] = field(default_factory=dict)
    #: activities of ``activities`` whose cancellation the code asked for, waiting for their end
    #: ("wait_cancellation_completed"): the reset ends them as cancelled.
    cancel_waited: set[int] = field(default_factory=set)
    children: dict[int, tuple[Event, dict[str, Any] | None]] = field(default_factory=dict)


def _choices(ids: list[int]) -> str:
    if len(ids) <= 12:
        return ", ".join(map(str, ids))
    return f"{', '.join(map(str, ids[:3]))}, ..., {', '.join(map(str, ids[-8:]))} ({len(ids)} in all)"


def plan_reset(history: list[Event], event_id: int, workflow_id: str, run_id: str) -> ResetPlan:
    """Work out a reset of a run to its WorkflowTaskCompleted ``event_id``.

    Raises:
        DuroError: the run has no completed workflow task, or ``event_id`` is not the id of one
            (the message lists the ids that are).
    """
    what = f"cannot reset workflow {workflow_id!r} (run {run_id})"
    points = [ev.event_id for ev in history if ev.type == codec.WORKFLOW_TASK_COMPLETED]
    if not points:
        raise DuroError(f"{what}: it has no completed workflow task yet, so there is no point to reset to; "
                        "wait until a worker has run its first workflow task (or terminate it and start it again)")
    last = history[-1].event_id if history else 0
    if isinstance(event_id, bool) or not isinstance(event_id, int) or not 1 <= event_id <= last:
        raise DuroError(f"{what} to event {event_id!r}: its history has events 1 to {last}; pass the id of one "
                        f"of its WorkflowTaskCompleted events: {_choices(points)}")
    target = history[event_id - 1]
    if target.event_id != event_id or history[0].type != codec.WORKFLOW_STARTED:
        raise DuroError(f"{what}: its history is not numbered 1, 2, 3... from WorkflowExecutionStarted; "
                        "run `duro check`")
    if target.type != codec.WORKFLOW_TASK_COMPLETED:
        raise DuroError(f"{what} to event {event_id}: it is a {target.type_name}, not a WorkflowTaskCompleted; "
                        f"pass the id of one of the run's WorkflowTaskCompleted events: {_choices(points)}")
    try:
        started = orjson.loads(unpack(history[0].payload)[0])
    except ValueError:
        started = None
    if not isinstance(started, dict):
        raise DuroError(f"{what}: its WorkflowExecutionStarted event cannot be read; run `duro check`")
    kept = history[:event_id - 1]
    epoch = 0
    activities: dict[int, Event] = {}
    cancel_waited: set[int] = set()
    timer_starts: dict[int, Event] = {}
    children: dict[int, Event] = {}
    for ev in kept:
        t = ev.type
        if t == codec.WORKFLOW_TASK_COMPLETED:
            epoch += 1
        elif t == codec.ACTIVITY_SCHEDULED:
            activities[ev.ref] = ev
        elif t == codec.ACTIVITY_CANCEL_REQUESTED and ev.ref in activities and (
                activities[ev.ref].flags & FLAG_CANCEL_TYPE) == CANCEL_TYPES["wait_cancellation_completed"]:
            cancel_waited.add(ev.ref)  # the code still waits for its end
        elif t in (codec.ACTIVITY_COMPLETED, codec.ACTIVITY_FAILED, codec.ACTIVITY_CANCEL_REQUESTED,
                   codec.ACTIVITY_CANCELED):
            activities.pop(ev.ref, None)  # answered, or the code stopped waiting for it
            cancel_waited.discard(ev.ref)
        elif t == codec.TIMER_STARTED:
            timer_starts[ev.ref] = ev
        elif t in (codec.TIMER_FIRED, codec.TIMER_CANCELED):
            timer_starts.pop(ev.ref, None)
        elif t == codec.CHILD_STARTED:
            children[ev.ref] = ev
        elif t in _CHILD_ENDS:
            children.pop(ev.ref, None)
    carried: list[Event] = []
    for ev in history[event_id:]:
        t = ev.type
        if t in _REAPPLIED:
            carried.append(ev)
        elif t in (codec.ACTIVITY_COMPLETED, codec.ACTIVITY_FAILED, codec.ACTIVITY_CANCELED) and ev.ref in activities:
            del activities[ev.ref]
            cancel_waited.discard(ev.ref)
            carried.append(ev)
        elif t == codec.TIMER_FIRED and ev.ref in timer_starts:
            del timer_starts[ev.ref]
            carried.append(ev)
        elif t in _CHILD_ENDS and ev.ref in children:
            del children[ev.ref]
            carried.append(ev)
    timers = {}
    for seq, ev in timer_starts.items():
        try:
            duration = float(orjson.loads(ev.payload)["duration"])
        except (ValueError, KeyError, TypeError):
            duration = 0.0  # unreadable: due at once (fires, as it would have by now)
        timers[seq] = ev.timestamp_us + _us(duration)
    child_plans: dict[int, tuple[Event, dict[str, Any] | None]] = {}
    for seq, ev in children.items():
        meta: Any
        try:
            meta = orjson.loads(unpack(ev.payload)[0])
        except (ValueError, IndexError):
            meta = None
        ok = isinstance(meta, dict) and isinstance(meta.get("run"), str)
        child_plans[seq] = (ev, meta if ok else None)
    return ResetPlan(event_id=event_id, kept=kept, carried=carried, epoch=epoch, started=started, timers=timers,
                     activities=activities, children=child_plans, cancel_waited=cancel_waited)


def reset_run(m: Machine, tx: Tx, fx: Effects, workflow_id: str, run_id: str | None, event_id: int, reason: str,
              new_run_id: str) -> str:
    """``Machine.reset``: the transition (see the module docstring); returns the new run's id.

    Everything that can be refused is checked before the first write.
    """
    old_key = m.resolve(tx, workflow_id, run_id)
    rec = m.get_run(tx, old_key)
    old_id = old_key.hex()
    plan = plan_reset(tx.read_history(old_key), event_id, workflow_id, old_id)
    idx = tx.index(workflow_id)
    if idx is not None and idx.status == _RUNNING and idx.run_id != old_id:
        raise DuroError(f"cannot reset run {old_id} of workflow {workflow_id!r}: the workflow id has an open run, "
                        f"{idx.run_id}, and a reset would make a second one; reset that run instead (a handle "
                        "without run_id), or terminate it first")
    new_key = run_key_of(new_run_id)
    if tx.run(new_key) is not None:
        raise DuroError(f"cannot reset workflow {workflow_id!r}: run id {new_run_id} is taken; try again")
    # ---------------------------------------------------------------- writes from here
    now_us = m.now_us()
    new = RunRecord(workflow_id=workflow_id, workflow_type=rec.workflow_type, task_queue=rec.task_queue,
                    status=_RUNNING, start_us=now_us, epoch=plan.epoch,
                    deadline_us=int(plan.started.get("deadline_us", 0) or 0),
                    search_attributes=rec.search_attributes, memo=rec.memo)
    inputs = [Event(ev.type, 0, 0, ev.ref, ev.attempt, ev.name, ev.payload, ev.flags) for ev in plan.carried]
    # Pending activities: the attempt moves to the new run (a running one starts again as the next attempt).
    for seq, scheduled in plan.activities.items():
        found = tx.atask(rec.task_queue, old_key, seq)
        if seq in plan.cancel_waited:  # its cancellation was asked for and is waited for: it ends cancelled
            if found is not None:
                tx.delete_atask(rec.task_queue, old_key, seq)
            failure = orjson.dumps({"kind": "cancelled", "type": "CancelledError",
                                    "message": f"activity {scheduled.name!r} was cancelled (the run was reset)"})
            inputs.append(Event(codec.ACTIVITY_CANCELED, 0, 0, seq, 0, scheduled.name, failure))
            continue
        if found is None:
            inputs.append(_lost_activity(seq, scheduled.name, old_id))
            continue
        meta, args, details = found
        tx.delete_atask(rec.task_queue, old_key, seq)
        task = ActivityTask(
            run_key=new_key, workflow_id=workflow_id, workflow_type=rec.workflow_type, task_queue=rec.task_queue,
            seq=seq, name=meta.name, args=args, attempt=meta.attempt + (1 if meta.owner else 0),
            scheduled_time=meta.scheduled_us / 1e6, start_to_close_timeout=meta.start_to_close,
            schedule_to_close_timeout=meta.schedule_to_close, heartbeat_timeout=meta.heartbeat,
            retry_policy=meta.retry, heartbeat_details=details or None)
        m.put_atask(tx, fx, task, now_us, visible_us=0 if meta.owner else meta.visible_us)
    # Pending children: an open one reports to the new run; a closed one's outcome is recorded.
    for seq, (started, child_meta) in plan.children.items():
        child = _latest_child_run(tx, rec, seq, child_meta)
        if child is None:
            inputs.append(_lost_child(seq, started.name, old_id))
            continue
        child_key, crec = child
        if crec.status == _RUNNING:
            crec.parent = {"run": new_run_id, "seq": seq, "wid": workflow_id}
            tx.put_run(child_key, crec)
            policy = child_meta.get("policy", "terminate") if child_meta else "terminate"
            if rec.children and str(seq) in rec.children:
                policy = rec.children.pop(str(seq))[1]  # so the old run's close leaves it alone
            if new.children is None:
                new.children = {}
            new.children[str(seq)] = [child_key.hex(), policy]
        else:
            close = tx.read_history(child_key, crec.next_event_id - 1, crec.next_event_id - 1)
            inputs.append(child_closed_event(seq, crec.status, close[0]) if close else
                          _lost_child(seq, started.name, old_id))
    # The new run's history and record.
    reset_record = orjson.dumps({
        "kind": "application", "type": RESET_FAILURE_TYPE, "non_retryable": True,
        "message": f"reset from run {old_id} at event {plan.event_id}" + (f": {reason}" if reason else ""),
        "reset": {"run_id": old_id, "event_id": plan.event_id, "reason": reason}})
    marker = Event(codec.WORKFLOW_TASK_FAILED, 0, 0, plan.epoch, 1, RESET_FAILURE_TYPE, reset_record)
    history = m.append(tx, new_key, new, [*plan.kept, marker, *inputs], now_us)
    new.last_input = max((ev.event_id for ev in history if ev.type not in _NOT_INPUTS and not is_command(ev.type)),
                         default=1)
    timers: dict[str, int] = {}
    run_timeout = plan.started.get("run_timeout")
    fire0 = min(x for x in (new.deadline_us, now_us + _us(run_timeout) if run_timeout else 0, _NEVER) if x)
    if fire0 < _NEVER:
        timers["0"] = fire0
    for seq, fire_us in plan.timers.items():
        timers[str(seq)] = fire_us
    for seq_s, fire_us in timers.items():
        tx.put_timer(fire_us, new_key, int(seq_s))
        fx.effects.append(TimerSet(fire_us / 1e6))
    new.timers = timers or None
    # A parent waiting for the old run now waits for the new one.
    parent = rec.parent
    if parent:
        parent_key = run_key_of(parent["run"])
        prec = tx.run(parent_key)
        slot = prec.children.get(str(parent["seq"])) if prec is not None and prec.children else None
        if prec is not None and prec.status == _RUNNING and slot and slot[0] == old_id:
            slot[0] = new_run_id
            tx.put_run(parent_key, prec)
            new.parent = parent
    # The old run: closed as terminated if open (its parent is not told: it waits for the new run).
    rec.next_run_id = new_run_id
    if rec.status == _RUNNING:
        payload = orjson.dumps({"kind": "terminated", "type": "TerminatedError",
                                "message": f"reset: {reason}" if reason else "reset",
                                "new_run_id": new_run_id, "reset_event_id": plan.event_id})
        (ev,) = m.append(tx, old_key, rec, [Event(codec.WORKFLOW_TERMINATED, 0, 0, 0, 0, "", payload)], now_us)
        rec.parent = None
        m.close_run(tx, fx, old_key, rec, RunStatus.TERMINATED, now_us, ev)
        rec.parent = parent
    tx.put_run(old_key, rec)
    tx.put_index(workflow_id, WorkflowIndex(new_run_id, _RUNNING, rec.workflow_type, now_us,
                                            search_attributes=new.search_attributes))
    tx.put_run(new_key, new)
    m.enqueue_wtask(tx, fx, new_key, new, now_us, history)
    return new_run_id


def _latest_child_run(tx: Tx, rec: RunRecord, seq: int,
                      meta: dict[str, Any] | None) -> tuple[bytes, RunRecord] | None:
    """The child of command ``seq``: its latest run (following continue-as-new and resets), or None."""
    slot = (rec.children or {}).get(str(seq))
    run_id = slot[0] if slot else (meta or {}).get("run")
    for _ in range(_MAX_CHILD_HOPS):
        if not isinstance(run_id, str):
            return None
        try:
            key = run_key_of(run_id)
        except ValueError:
            return None
        crec = tx.run(key)
        if crec is None:
            return None
        if crec.status == _RUNNING or not crec.next_run_id:
            return key, crec
        run_id = crec.next_run_id
    return None


def _lost_activity(seq: int, name: str, old_id: str) -> Event:
    message = (f"activity {name!r} (seq {seq}) was pending at the reset point, but its attempt is no longer in run "
               f"{old_id} (the run closed and dropped it, or it ran on another task queue), so the reset could not "
               "carry it over; reset to an earlier workflow task to run it again")
    failure = orjson.dumps({"kind": "activity", "activity_type": name, "activity_id": seq, "attempt": 0,
                            "message": message,
                            "cause": {"kind": "application", "type": "ResetError", "non_retryable": True,
                                      "message": message}})
    return Event(codec.ACTIVITY_FAILED, 0, 0, seq, 0, name, failure)


def _lost_child(seq: int, name: str, old_id: str) -> Event:
    message = (f"child workflow {name!r} (seq {seq}) of run {old_id} was pending at the reset point, but its run "
               "is no longer in the store, so the reset could not carry it over")
    failure = orjson.dumps({"kind": "application", "type": "ResetError", "non_retryable": True, "message": message})
    return Event(codec.CHILD_FAILED, 0, 0, seq, 0, "reset", failure)
