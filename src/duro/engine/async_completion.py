"""Activities completed from outside: the hand-off of an attempt, its deadline, and task-token checks.

An attempt whose code raised ``CompleteAsync`` is handed off: its lease passes from the worker's
process to ``ASYNC_OWNER`` (no process, so a worker that stops or dies does not end it) until
``waiting_until``: its start-to-close deadline (counted from the attempt's start) or
schedule-to-close deadline (``ActivityMeta.deadline_us``, the earlier of the two), and with a
heartbeat timeout its next heartbeat; with no timeout at all, ``DEFAULT_ACTIVITY_TIMEOUT_S`` after
the hand-off or its last heartbeat. Heartbeats move the heartbeat window, never the deadline.
When the lease runs out the reaper fails the attempt (``async_lapse_failure`` says which timeout
it was) and the retry policy applies, exactly as for a worker's lapsed lease.

A task token names (run, task queue, activity seq, attempt); ``check_token`` accepts it only while
that attempt is current and running or waiting, and otherwise says why not, before anything is
written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from duro._core import codec
from duro.engine.machine import ASYNC_OWNER, DEFAULT_ACTIVITY_TIMEOUT_S, RUNNING, us
from duro.errors import TaskTokenError

if TYPE_CHECKING:
    from duro.engine.machine import Machine
    from duro.engine.records import ActivityMeta
    from duro.engine.tx import Tx

__all__ = ["async_lapse_failure", "check_token", "hand_off", "waiting_until"]


def hand_off(m: Machine, tx: Tx, task_queue: str, run_key: bytes, seq: int, attempt: int, started_us: int) -> bool:
    """Hand an attempt of this process (``m.owner``) off to outside completion; False: not ours any more.

    ``started_us`` is when the attempt started. Nothing is written when False (already completed
    from outside, timed out and retried, its run closed).
    """
    found = tx.atask(task_queue, run_key, seq)
    if found is None:
        return False
    meta, args, details = found
    if meta.attempt != attempt or meta.owner != m.owner:
        return False
    rec = tx.run(run_key)
    if rec is None or rec.status != RUNNING:
        return False
    stc, s2c = meta.start_to_close, meta.schedule_to_close
    ends = [x for x in (started_us + us(stc) if stc else 0, meta.scheduled_us + us(s2c) if s2c else 0) if x]
    meta.deadline_us = min(ends) if ends else 0
    meta.owner = ASYNC_OWNER
    meta.until_us = waiting_until(meta, m.now_us())
    tx.put_atask(task_queue, run_key, seq, meta, args, details)
    return True


def waiting_until(meta: ActivityMeta, now_us: int) -> int:
    """Until when a handed-off attempt stays open, seen at ``now_us`` (the hand-off or a heartbeat)."""
    window = meta.heartbeat or (0.0 if meta.deadline_us else DEFAULT_ACTIVITY_TIMEOUT_S)
    ends = [x for x in (meta.deadline_us, now_us + us(window) if window else 0) if x]
    return min(ends)


def async_lapse_failure(meta: ActivityMeta) -> bytes:
    """The failure recorded when a handed-off attempt ran out of time (its lease, ``meta.until_us``, ended)."""
    name = meta.name
    if meta.deadline_us and meta.until_us >= meta.deadline_us:
        s2c = meta.schedule_to_close
        if s2c and meta.deadline_us == meta.scheduled_us + us(s2c):
            kind, seconds = "schedule_to_close", s2c
        else:
            kind, seconds = "start_to_close", meta.start_to_close or 0.0
        message = (f"activity {name!r} was not completed from outside within its {kind.replace('_', '-')} "
                   f"timeout of {seconds}s")
    elif meta.heartbeat:
        kind = "heartbeat"
        message = f"activity {name!r}, waiting for its completion from outside, got no heartbeat for {meta.heartbeat}s"
    else:
        kind = "start_to_close"
        message = (f"activity {name!r} was not completed from outside within {DEFAULT_ACTIVITY_TIMEOUT_S}s of its "
                   "hand-off or last heartbeat (it has no timeout: the default applies)")
    return orjson.dumps({"kind": "timeout", "type": "TimeoutError", "timeout_type": kind, "message": message})


def check_token(m: Machine, tx: Tx, task_queue: str, run_key: bytes, seq: int, attempt: int) -> None:
    """Raise TaskTokenError (having written nothing) unless the attempt a token names is running or waiting."""
    rec = tx.run(run_key)
    if rec is None:
        raise TaskTokenError(f"the task token names run {run_key.hex()}, which is not in this store (a token "
                             "from another store, a deleted run, or not a real token); nothing was written",
                             reason="unknown_run")
    what = f"activity {seq} (attempt {attempt}) of workflow {rec.workflow_id!r} (run {run_key.hex()})"
    found = tx.atask(task_queue, run_key, seq)
    if found is not None and rec.status == RUNNING:
        meta = found[0]
        if meta.attempt == attempt:
            if not meta.owner:
                raise TaskTokenError(f"{what} has not started: only a started attempt has a task token; "
                                     "nothing was written", reason="not_started")
            if meta.owner == ASYNC_OWNER and meta.until_us <= m.now_us():
                raise TaskTokenError(f"{what} timed out waiting for its completion from outside; it is "
                                     "recorded as a timeout and retried per its retry policy, with a new task "
                                     "token; nothing was written", reason="timed_out")
            return
        if meta.attempt > attempt:
            raise TaskTokenError(f"{what} was superseded by attempt {meta.attempt} (it timed out or failed "
                                 "and was retried); the new attempt has its own task token; nothing was "
                                 "written", reason="superseded")
        raise TaskTokenError(f"{what} does not exist: the activity is at attempt {meta.attempt}; nothing was "
                             "written", reason="unknown_activity")
    # No current attempt: say why, from the history (a rare path, so a full read is fine).
    for ev in tx.read_history(run_key):
        if ev.ref == seq and ev.type in (codec.ACTIVITY_COMPLETED, codec.ACTIVITY_FAILED):
            done = "completed" if ev.type == codec.ACTIVITY_COMPLETED else "failed"
            raise TaskTokenError(f"{what} is used: the activity already {done} (attempt {ev.attempt}, event "
                                 f"{ev.event_id}); nothing was written", reason="completed")
    if rec.status != RUNNING:
        raise TaskTokenError(f"{what} cannot be completed: the workflow run is {rec.status}; nothing was "
                             "written", reason="closed")
    raise TaskTokenError(f"{what} is not pending on task queue {task_queue!r} (the token names no scheduled "
                         "activity, or the workflow cancelled it); nothing was written", reason="unknown_activity")
