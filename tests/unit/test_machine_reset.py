"""``Machine.reset`` (``duro.engine.reset``): a new run from a WorkflowTaskCompleted of a run, over an in-memory Tx.

Each test drives the machine through ``tests.unit.machine_env.Env`` and checks the new run's
history, record, tasks and timers, what became of the old run, and the effects. Refused resets are
checked to have written nothing (``Env.refuses``). Nothing sleeps: the clock is the test's.
"""

from __future__ import annotations

import orjson
import pytest

from duro._core import codec
from duro._core.codec import Event
from duro._core.replay import split_activations
from duro.engine.machine import WTASK_LEASE_S
from duro.engine.records import RunStatus, WorkflowIndex, WorkflowTaskLease
from duro.engine.reset import RESET_FAILURE_TYPE
from duro.errors import DuroError, WorkflowNotFoundError
from duro.stores.base import (
    ActivityTaskReady,
    ChildStart,
    RunClosed,
    TimerSet,
    WorkflowTaskReady,
    pack,
    run_key_of,
)
from tests.unit.machine_env import CANCELED, FAILURE, OWNER, RESULT, Env, Q, S, closed_effect, cmd, started_meta

NEW_RUN = "ee" * 16
NEW = run_key_of(NEW_RUN)


def reset(env: Env, event_id: int, *, workflow_id: str = "w", run_id: str | None = None, reason: str = "bad deploy",
          new_run: str = NEW_RUN) -> bytes:
    got = env.apply(lambda tx, fx: env.machine.reset(tx, fx, workflow_id, run_id, event_id, reason, new_run))
    assert got == new_run
    return run_key_of(new_run)


def two_activities(env: Env) -> bytes:
    """1 started, 2 WTC, 3 scheduled(1), 4 completed(1), 5 WTC, 6 scheduled(2), 7 completed(2)."""
    key = env.start("w", args=b"[1]")
    env.schedule(key, 1)
    env.clock.advance(1)
    assert env.complete_activity(key, 1, result=b'"a"') == "done"
    env.schedule(key, 2)
    env.clock.advance(1)
    assert env.complete_activity(key, 2, result=b'"b"') == "done"
    return key


def child_cmd(seq: int, run_id: str, policy: str = "terminate") -> Event:
    meta = {"id": f"c{seq}", "run": run_id, "queue": Q, "policy": policy}
    return cmd(codec.CHILD_STARTED, seq, "Child", pack(orjson.dumps(meta), b"[]"))


def start_child(env: Env, parent: bytes, seq: int, policy: str = "terminate") -> bytes:
    run_id = env.new_run_id()
    env.complete(parent, [child_cmd(seq, run_id, policy)],
                 children=[ChildStart(seq=seq, workflow_id=f"c{seq}", run_id=run_id, workflow_type="Child",
                                      task_queue=Q, args=b"[]", parent_close_policy=policy)])
    return run_key_of(run_id)


def pending_inputs(history: list[Event]) -> list[Event]:
    """What a worker replaying ``history`` still has to show the code (the replay splitter's last activation)."""
    return split_activations(history)[-1][0]


# ---------------------------------------------------------------------------------------------- open runs


def test_reset_of_an_open_run_starts_a_new_run_from_before_the_point_and_terminates_the_old_one() -> None:
    env = Env()
    key = two_activities(env)
    before = env.history(key)
    env.clock.advance(5)
    new = reset(env, 5)
    history = env.history(new)
    # Events 1..4 as they were (ids, timestamps, payloads), then the reset record at 5.
    assert history[:4] == before[:4]
    mark = history[4]
    assert (mark.type, mark.event_id, mark.ref, mark.name, mark.timestamp_us) == (
        codec.WORKFLOW_TASK_FAILED, 5, 1, RESET_FAILURE_TYPE, env.now)
    assert orjson.loads(mark.payload)["reset"] == {"run_id": key.hex(), "event_id": 5, "reason": "bad deploy"}
    assert len(history) == 5
    # The task that completed at 5 is redone: the activity result at 4 is the worker's input.
    assert [ev.event_id for ev in pending_inputs(history)] == [4]
    rec = env.rec(new)
    assert (rec.workflow_id, rec.workflow_type, rec.task_queue, rec.status, rec.start_us) == (
        "w", "Wf", Q, RunStatus.RUNNING, env.now)
    assert (rec.epoch, rec.next_event_id, rec.last_input, rec.parent, rec.children, rec.timers) == (
        1, 6, 4, None, None, None)
    assert env.index("w") == WorkflowIndex(NEW_RUN, RunStatus.RUNNING, "Wf", env.now)
    assert env.wtask(new) == WorkflowTaskLease(OWNER, env.now + int(WTASK_LEASE_S * S))
    # The old run: terminated with the reason, pointing to the new run; its task is gone.
    old_rec = env.rec(key)
    assert (old_rec.status, old_rec.close_us, old_rec.next_run_id) == (RunStatus.TERMINATED, env.now, NEW_RUN)
    end = env.history(key)[-1]
    assert end.type == codec.WORKFLOW_TERMINATED and end.event_id == 8
    assert orjson.loads(end.payload) == {"kind": "terminated", "type": "TerminatedError",
                                         "message": "reset: bad deploy", "new_run_id": NEW_RUN, "reset_event_id": 5}
    assert env.history(key)[:7] == before
    assert env.wtask(key) is None
    closed = closed_effect(env.effects, key)
    assert (closed.info.status, closed.info.next_run_id) == ("terminated", NEW_RUN)
    assert WorkflowTaskReady(Q, new, history) in env.effects


def test_reset_to_the_first_workflow_task_reruns_the_workflow_from_its_start() -> None:
    env = Env()
    key = two_activities(env)
    new = reset(env, 2, reason="")
    history = env.history(new)
    assert [ev.type for ev in history] == [codec.WORKFLOW_STARTED, codec.WORKFLOW_TASK_FAILED]
    assert history[0] == env.history(key)[0]  # the same start: arguments, first run id, deadline
    assert [ev.event_id for ev in pending_inputs(history)] == [1]
    assert env.rec(new).epoch == 0
    assert orjson.loads(env.history(key)[-1].payload)["message"] == "reset"


def test_the_point_may_be_given_on_an_explicit_run_and_the_new_run_keeps_the_first_run_id() -> None:
    env = Env()
    key = two_activities(env)
    new = reset(env, 5, run_id=key.hex())
    assert started_meta(env.history(new)[0])[0]["first_run"] == key.hex()
    # Reset again, the new run: the chain goes on.
    env.clock.advance(1)
    newer = reset(env, 2, new_run="dd" * 16)
    assert env.rec(new).next_run_id == "dd" * 16
    assert env.rec(new).status == RunStatus.TERMINATED
    assert env.index("w") == WorkflowIndex("dd" * 16, RunStatus.RUNNING, "Wf", env.now)
    assert env.history(newer)[0] == env.history(key)[0]


def test_run_timeout_restarts_and_the_execution_deadline_carries_over() -> None:
    env = Env()
    key = env.start("w", execution_timeout=100.0, run_timeout=30.0)
    env.complete(key)
    env.clock.advance(50)
    new = reset(env, 2)
    rec = env.rec(new)
    deadline = env.rec(key).start_us + 100 * S
    assert rec.deadline_us == deadline
    assert rec.timers == {"0": env.now + 30 * S}
    assert (env.now + 30 * S, new, 0) in env.timers
    assert not [t for t in env.timers if t[1] == key]  # the old run's timeout went with it
    assert TimerSet((env.now + 30 * S) / 1e6) in env.effects
    env.complete(new)  # 3: WTC
    env.clock.advance(40)
    newer = reset(env, 3, new_run="dd" * 16)
    assert env.rec(newer).timers == {"0": deadline}  # the execution deadline comes first now


def test_search_attributes_and_memo_go_to_the_new_run() -> None:
    env = Env()
    key = env.start("w", search_attributes={"customer": "alice"}, memo={"note": "vip"})
    env.complete(key)
    new = reset(env, 2)
    rec = env.rec(new)
    assert (rec.search_attributes, rec.memo) == ({"customer": "alice"}, {"note": "vip"})
    idx = env.index("w")
    assert idx is not None and idx.search_attributes == {"customer": "alice"}


# ---------------------------------------------------------------------------------------------- closed runs


@pytest.mark.parametrize("status", ["completed", "failed", "canceled", "terminated", "timed_out"])
def test_a_closed_run_can_be_reset_and_the_id_moves_to_the_new_run(status: str) -> None:
    env = Env()
    key = env.start("w", run_timeout=60.0)
    env.schedule(key, 1)
    assert env.complete_activity(key, 1, result=b'"a"') == "done"
    if status == "timed_out":
        env.clock.advance(61)
    env.close_as(key, status)
    before = env.history(key)
    env.clock.advance(1)
    new = reset(env, 2)
    assert env.history(key) == before  # a closed run's history is not touched
    old = env.rec(key)
    assert (old.status, old.next_run_id) == (status, NEW_RUN)
    assert env.index("w") == WorkflowIndex(NEW_RUN, RunStatus.RUNNING, "Wf", env.now)
    assert [ev.type for ev in env.history(new)] == [codec.WORKFLOW_STARTED, codec.WORKFLOW_TASK_FAILED]
    assert env.wtask(new) is not None
    assert not [e for e in env.effects if isinstance(e, RunClosed)]


def test_a_completed_runs_reset_redoes_the_activities_after_the_point() -> None:
    env = Env()
    key = two_activities(env)
    env.close_as(key, "completed")
    new = reset(env, 5)
    # Activity 1 was answered before the point: its result stays. Activity 2 was decided at the
    # point: the new code decides again, so neither its schedule nor its result is carried.
    assert [ev.type for ev in env.history(new)] == [
        codec.WORKFLOW_STARTED, codec.WORKFLOW_TASK_COMPLETED, codec.ACTIVITY_SCHEDULED, codec.ACTIVITY_COMPLETED,
        codec.WORKFLOW_TASK_FAILED]
    assert env.atask(new, 2) is None and env.atask(new, 1) is None


# ---------------------------------------------------------------------------------------------- what is carried


def test_signals_and_updates_after_the_point_are_recorded_again_in_their_order() -> None:
    env = Env()
    key = env.start("w")
    env.complete(key)  # 2: WTC
    env.signal(name="before", payload=b"[0]")  # 3
    env.complete(key)  # 4: WTC (processed 3)
    env.signal(name="first", payload=b"[1]")  # 5
    env.complete(key)  # 6: WTC
    upd = cmd(codec.UPDATE_ACCEPTED, 0, "set", pack(b'{"id":"u1"}', b"[2]"), timestamp_us=env.now)
    env.complete(key, [cmd(codec.UPDATE_COMPLETED, 0, "u1", b"[true]")], inputs=[upd],
                 expect_next_event_id=env.rec(key).next_event_id)  # 7: update, 8: WTC, 9: completed
    env.signal(name="second", payload=b"[3]")  # 10 (not processed yet)
    env.clock.advance(2)
    new = reset(env, 4)
    history = env.history(new)
    assert [(ev.event_id, ev.type, ev.name) for ev in history] == [
        (1, codec.WORKFLOW_STARTED, "Wf"), (2, codec.WORKFLOW_TASK_COMPLETED, ""),
        (3, codec.SIGNAL_RECEIVED, "before"), (4, codec.WORKFLOW_TASK_FAILED, RESET_FAILURE_TYPE),
        (5, codec.SIGNAL_RECEIVED, "first"), (6, codec.UPDATE_ACCEPTED, "set"), (7, codec.SIGNAL_RECEIVED, "second")]
    assert [ev.payload for ev in history[4:]] == [b"[1]", pack(b'{"id":"u1"}', b"[2]"), b"[3]"]
    assert all(ev.timestamp_us == env.now for ev in history[3:])  # recorded anew, now
    assert [ev.event_id for ev in pending_inputs(history)] == [3, 5, 6, 7]
    assert env.rec(new).last_input == 7


def test_pending_timers_and_activities_from_before_the_point_carry_on_in_the_new_run() -> None:
    env = Env()
    key = env.start("w")
    timer = cmd(codec.TIMER_STARTED, 1, "", orjson.dumps({"duration": 60.0}))
    act = env.activity(key, 2)
    env.complete(key, [timer, cmd(codec.ACTIVITY_SCHEDULED, 2, "act")], timers=[(1, 60.0)],
                 activity_tasks=[act])  # 2: WTC, 3: timer, 4: activity
    due = env.now + 60 * S
    env.signal()  # 5
    env.clock.advance(1)
    env.complete(key)  # 6: WTC
    env.clock.advance(1)
    new = reset(env, 6)
    assert env.rec(new).timers == {"1": due}
    assert env.timers == {(due, new, 1)}
    assert TimerSet(due / 1e6) in env.effects
    meta = env.meta(new, 2)
    # It was leased to this process (so maybe running): it runs again, as the next attempt, at once.
    assert (meta.name, meta.attempt, meta.owner, meta.scheduled_us) == ("act", 2, OWNER, act.scheduled_time * 1e6)
    assert env.atask(key, 2) is None  # moved, not copied
    (ready,) = [e for e in env.effects if isinstance(e, ActivityTaskReady)]
    assert (ready.task.run_key, ready.task.seq, ready.task.args) == (new, 2, b'["x"]')
    assert [ev.event_id for ev in pending_inputs(env.history(new))] == [5]


def test_an_attempt_running_at_the_reset_runs_again_as_the_next_attempt() -> None:
    env = Env(activities=False)
    key = env.start("w")
    env.schedule(key, 1)  # 2, 3
    env.signal()  # 4
    env.complete(key)  # 5
    assert env.claim_atask(key, 1) is not None  # running in this process
    new = reset(env, 5)
    meta = env.meta(new, 1)
    assert (meta.attempt, meta.owner, meta.until_us) == (2, "", 0)
    # The running attempt's outcome is stale: it is recorded nowhere.
    assert env.complete_activity(key, 1, result=b"[1]") == "stale"
    assert len(env.history(new)) == 5


def test_an_attempt_waiting_for_its_retry_keeps_its_attempt_and_backoff() -> None:
    env = Env(activities=False)
    key = env.start("w")
    env.schedule(key, 1)  # 2, 3
    assert env.complete_activity(key, 1, failure=FAILURE, error_type="ValueError") == "retry"
    waiting = env.meta(key, 1)
    assert (waiting.attempt, waiting.owner) == (2, "") and waiting.visible_us > env.now
    env.signal()  # 4
    env.complete(key)  # 5
    new = reset(env, 5)
    meta = env.meta(new, 1)
    assert (meta.attempt, meta.owner, meta.visible_us) == (2, "", waiting.visible_us)


def test_outcomes_after_the_point_of_work_decided_before_it_are_carried() -> None:
    env = Env()
    key = env.start("w")
    act = env.activity(key, 2)
    env.complete(key, [cmd(codec.TIMER_STARTED, 1, "", orjson.dumps({"duration": 5.0})),
                       cmd(codec.ACTIVITY_SCHEDULED, 2, "act")], timers=[(1, 5.0)], activity_tasks=[act])  # 2,3,4
    env.signal()  # 5
    env.complete(key)  # 6: WTC (the point)
    assert env.complete_activity(key, 2, result=b'"r"') == "done"  # 7
    env.clock.advance(5)
    env.fire(key, 1)  # 8
    env.complete(key, [cmd(codec.ACTIVITY_SCHEDULED, 3, "late")], activity_tasks=[env.activity(key, 3)])  # 9, 10
    assert env.complete_activity(key, 3, result=b'"late"') == "done"  # 11: decided after the point: dropped
    new = reset(env, 6)
    history = env.history(new)
    assert [(ev.event_id, ev.type, ev.ref) for ev in history[5:]] == [
        (6, codec.WORKFLOW_TASK_FAILED, 1), (7, codec.ACTIVITY_COMPLETED, 2), (8, codec.TIMER_FIRED, 1)]
    assert history[6].payload == b'"r"'
    assert env.rec(new).timers is None and env.atask(new, 2) is None and env.atask(new, 3) is None
    assert env.timers == set()


def test_a_pending_activity_whose_attempt_is_gone_fails_in_the_new_run() -> None:
    env = Env(activities=False)
    key = env.start("w")
    env.schedule(key, 1)  # 2, 3
    env.signal()  # 4
    env.complete(key)  # 5
    env.terminate()  # the attempt stays until someone claims it, who then drops it
    found = env.atask(key, 1)
    assert found is not None
    env.apply(lambda tx, fx: env.machine.lease_atask(tx, Q, key, 1, *found, env.now))
    assert env.atask(key, 1) is None
    new = reset(env, 5)
    ev = env.history(new)[-1]
    assert (ev.type, ev.ref, ev.name) == (codec.ACTIVITY_FAILED, 1, "act")
    failure = orjson.loads(ev.payload)
    assert failure["kind"] == "activity" and "could not carry it over" in failure["message"]
    assert env.atask(new, 1) is None
    assert env.rec(new).last_input == ev.event_id


# ---------------------------------------------------------------------------------------------- children and parents


def test_an_open_child_from_before_the_point_reports_to_the_new_run() -> None:
    env = Env()
    key = env.start("w")
    before = start_child(env, key, 1)  # 2: WTC, 3: child 1
    env.signal()  # 4
    env.complete(key)  # 5: the point
    after = start_child(env, key, 2)  # 6, 7: decided at/after the point
    new = reset(env, 5)
    assert env.rec(before).status == RunStatus.RUNNING  # not closed with the old run
    assert env.rec(before).parent == {"run": NEW_RUN, "seq": 1, "wid": "w"}
    assert env.rec(new).children == {"1": [before.hex(), "terminate"]}
    assert env.rec(after).status == RunStatus.TERMINATED  # the old run's parent-close policy
    env.close_as(before, "completed")
    ev = env.history(new)[-1]
    assert (ev.type, ev.ref, ev.payload) == (codec.CHILD_COMPLETED, 1, RESULT)
    assert env.history(key)[-1].type == codec.WORKFLOW_TERMINATED  # the old run heard nothing


def test_a_child_that_closed_after_the_point_or_with_its_closed_parent_reports_its_outcome() -> None:
    env = Env()
    key = env.start("w")
    done = start_child(env, key, 1)  # 2, 3
    gone = start_child(env, key, 2)  # 4, 5
    env.signal()  # 6
    env.complete(key)  # 7: the point
    env.close_as(done, "completed")  # 8: CHILD_COMPLETED in the old run, after the point
    env.close_as(key, "failed")  # 9, 10: child 2 is terminated by the policy
    assert env.rec(gone).status == RunStatus.TERMINATED
    new = reset(env, 7)
    tail = env.history(new)[7:]
    assert [(ev.type, ev.ref) for ev in tail] == [(codec.CHILD_COMPLETED, 1), (codec.CHILD_FAILED, 2)]
    assert orjson.loads(tail[1].payload)["kind"] == "terminated"
    assert env.rec(new).children is None


def test_a_cancelled_child_reports_child_workflow_execution_canceled_to_the_new_run() -> None:
    env = Env()
    key = env.start("w")
    heard = start_child(env, key, 1)  # 2, 3
    unheard = start_child(env, key, 2, "abandon")  # 4, 5
    env.signal()  # 6
    env.complete(key)  # 7: the point
    env.close_as(heard, "canceled")  # 8: CHILD_CANCELED in the old run, after the point: carried over
    env.close_as(key, "completed")  # 9, 10: child 2 is abandoned, open
    env.close_as(unheard, "canceled")  # its closed parent is not told: the reset finds its status
    new = reset(env, 7)
    tail = env.history(new)[7:]
    assert [(ev.type, ev.ref, ev.name, ev.payload) for ev in tail] == [
        (codec.CHILD_CANCELED, 1, "", CANCELED), (codec.CHILD_CANCELED, 2, "", CANCELED)]
    assert env.rec(new).children is None


def test_a_reset_child_keeps_its_parent_waiting_for_the_new_run() -> None:
    env = Env()
    parent = env.start("p")
    child = start_child(env, parent, 1)
    env.complete(child)  # 2: WTC of the child
    parent_history = env.history(parent)
    new = reset(env, 2, workflow_id="c1")
    assert env.history(parent) == parent_history  # not told of the old run's end
    assert env.rec(parent).children == {"1": [NEW_RUN, "terminate"]}
    assert env.rec(new).parent == {"run": parent.hex(), "seq": 1, "wid": "p"}
    assert env.rec(child).parent == {"run": parent.hex(), "seq": 1, "wid": "p"}  # its record still says whose
    env.close_as(new, "completed")
    ev = env.history(parent)[-1]
    assert (ev.type, ev.ref, ev.payload) == (codec.CHILD_COMPLETED, 1, RESULT)


# ---------------------------------------------------------------------------------------------- refused


def refused(env: Env, event_id: int, *, workflow_id: str = "w", run_id: str | None = None,
            exc: type[Exception] = DuroError) -> str:
    err = env.refuses(exc, lambda tx, fx: env.machine.reset(tx, fx, workflow_id, run_id, event_id, "r", NEW_RUN))
    return str(err)


@pytest.mark.parametrize("event_id", [0, -1, 8, 99])
def test_an_event_id_out_of_the_history_is_refused(event_id: int) -> None:
    env = Env()
    two_activities(env)
    message = refused(env, event_id)
    assert "its history has events 1 to 7" in message
    assert "WorkflowTaskCompleted events: 2, 5" in message


@pytest.mark.parametrize(("event_id", "kind"), [(1, "WorkflowExecutionStarted"), (3, "ActivityTaskScheduled"),
                                                (4, "ActivityTaskCompleted")])
def test_an_event_that_is_not_a_workflow_task_completed_is_refused(event_id: int, kind: str) -> None:
    env = Env()
    two_activities(env)
    message = refused(env, event_id)
    assert f"it is a {kind}, not a WorkflowTaskCompleted" in message
    assert "2, 5" in message


def test_a_run_without_a_completed_workflow_task_is_refused() -> None:
    env = Env()
    env.start("w")
    env.signal()
    assert "no completed workflow task yet" in refused(env, 1)


def test_an_unknown_workflow_or_run_is_refused() -> None:
    env = Env()
    two_activities(env)
    refused(env, 2, workflow_id="nope", exc=WorkflowNotFoundError)
    refused(env, 2, run_id="ab" * 16, exc=WorkflowNotFoundError)
    refused(env, 2, run_id="not hex", exc=WorkflowNotFoundError)
    other = env.start("other")
    refused(env, 2, run_id=other.hex(), exc=WorkflowNotFoundError)  # a run of another workflow id


def test_a_run_whose_id_has_another_open_run_is_refused() -> None:
    env = Env()
    first = env.start("w")
    env.complete(first)
    env.close_as(first, "completed")
    env.start("w")  # a later run, open
    assert "has an open run" in refused(env, 2, run_id=first.hex())


def test_a_taken_new_run_id_is_refused() -> None:
    env = Env()
    two_activities(env)
    taken = env.start("other")
    assert "is taken" in str(env.refuses(DuroError, lambda tx, fx: env.machine.reset(
        tx, fx, "w", None, 2, "", taken.hex())))
