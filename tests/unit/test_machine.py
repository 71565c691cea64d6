"""The run state machine (``duro.engine.machine``), transition by transition, over an in-memory Tx.

Each test drives ``Machine`` directly through ``tests.unit.machine_env.Env`` (an in-memory store
whose records are stored encoded and decoded on read, a settable clock and a tiny in-process
consumer), and checks what it wrote and which effects it returned. A transition that must fail
before writing (a Conflict, an id in use, a closed run) is checked to have written nothing at
all: the LMDB store's group commit counts on that to let such an op fail alone. Nothing sleeps:
the clock is the test's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest

import duro
from duro._core import codec
from duro._core.codec import Event
from duro.engine.machine import (
    ATASK_LEASE_SLACK_S,
    DEFAULT_ACTIVITY_TIMEOUT_S,
    LAPSED_LEASE_FAILURE,
    WTASK_LEASE_S,
    Effects,
    retry_delay,
    started_event,
)
from duro.engine.records import (
    ActivityMeta,
    IdReusePolicy,
    ParentClosePolicy,
    RunRecord,
    RunStatus,
    WorkflowIndex,
    WorkflowTaskLease,
    decode_activity_meta,
    decode_index,
    decode_lease,
    decode_run,
    encode,
)
from duro.errors import WorkflowAlreadyStartedError, WorkflowClosedError, WorkflowNotFoundError
from duro.stores.base import (
    ActivityOutcome,
    ActivityTask,
    ActivityTaskDue,
    ActivityTaskReady,
    ChildStart,
    Conflict,
    ExternalRequest,
    RunClosed,
    StartRequest,
    TimerSet,
    UpdateCompleted,
    WorkflowTaskCompletion,
    WorkflowTaskReady,
    pack,
    run_key_of,
    update_key,
)
from tests.unit.machine_env import CANCELED, FAILURE, OWNER, RESULT, Env, Q, S, closed_effect, cmd, started_meta
from tests.unit.memtx import START_US, FakeClock, MemState, MemStore, MemTx

# ====================================================================== start


def test_start_writes_the_record_the_index_and_the_started_event() -> None:
    env = Env()
    key = env.start("w", args=b'["a"]')
    now = env.now
    assert env.rec(key) == RunRecord(workflow_id="w", workflow_type="Wf", task_queue=Q, status=RunStatus.RUNNING,
                                     start_us=now, next_event_id=2)
    assert env.index("w") == WorkflowIndex(key.hex(), RunStatus.RUNNING, "Wf", now)
    (ev,) = env.history(key)
    assert (ev.type, ev.event_id, ev.timestamp_us, ev.ref, ev.attempt, ev.name) == (
        codec.WORKFLOW_STARTED, 1, now, 0, 1, "Wf")
    assert started_meta(ev) == ({"wid": "w", "queue": Q, "first_run": key.hex()}, b'["a"]')
    assert env.timers == set()


def test_start_leases_the_first_task_to_this_process_when_it_has_a_consumer() -> None:
    env = Env()
    key = env.start()
    assert env.wtask(key) == WorkflowTaskLease(OWNER, env.now + int(WTASK_LEASE_S * S))
    # The whole history of a new run is what the commit wrote: handed over with the task.
    assert env.effects == [WorkflowTaskReady(Q, key, env.history(key))]


@pytest.mark.parametrize("local", [False, True], ids=["no-local-consumer", "consumer-of-activities-only"])
def test_start_leaves_the_first_task_unleased_without_a_workflow_consumer(local: bool) -> None:
    env = Env(workflows=False, local=local)
    key = env.start()
    assert env.wtask(key) == WorkflowTaskLease()
    assert env.effects == []


@pytest.mark.parametrize(("execution", "run", "fire_s", "deadline_s"), [
    (100.0, None, 100, 100),
    (None, 10.0, 10, 0),
    (100.0, 10.0, 10, 100),
    (10.0, 100.0, 10, 10),
])
def test_start_sets_the_execution_or_run_timeout_as_timer_seq_0(
        execution: float | None, run: float | None, fire_s: int, deadline_s: int) -> None:
    env = Env()
    t0 = env.now
    key = env.start(execution_timeout=execution, run_timeout=run)
    fire = t0 + fire_s * S
    rec = env.rec(key)
    assert env.timers == {(fire, key, 0)}
    assert rec.timers == {"0": fire}
    assert rec.deadline_us == (t0 + deadline_s * S if deadline_s else 0)
    assert env.effects[0] == TimerSet(fire / 1e6)
    meta, _ = started_meta(env.history(key)[0])
    assert meta.get("deadline_us", 0) == rec.deadline_us
    assert meta.get("execution_timeout") == execution
    assert meta.get("run_timeout") == run


REUSE = [
    (policy, "running", False) for policy in IdReusePolicy
] + [
    (IdReusePolicy.ALLOW_DUPLICATE, "completed", True),
    (IdReusePolicy.ALLOW_DUPLICATE, "failed", True),
    (IdReusePolicy.ALLOW_DUPLICATE, "terminated", True),
    (IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, "completed", False),
    (IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, "failed", True),
    (IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, "canceled", True),
    (IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, "terminated", True),
    (IdReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY, "timed_out", True),
    (IdReusePolicy.REJECT_DUPLICATE, "completed", False),
    (IdReusePolicy.REJECT_DUPLICATE, "failed", False),
]


@pytest.mark.parametrize(("policy", "previous", "allowed"), REUSE, ids=[f"{p}-{s}" for p, s, _ in REUSE])
def test_id_reuse_policy(policy: IdReusePolicy, previous: str, allowed: bool) -> None:
    env = Env()
    old = env.start("w", run_timeout=60.0)
    if previous != "running":
        env.close_as(old, previous)
    before = env.rec(old)
    req = env.request("w", id_reuse_policy=str(policy))
    if not allowed:
        err = env.refuses(WorkflowAlreadyStartedError, lambda tx, fx: env.machine.start(tx, fx, req))
        assert (err.workflow_id, err.run_id) == ("w", old.hex())
        return
    env.apply(lambda tx, fx: env.machine.start(tx, fx, req))
    new = run_key_of(req.run_id)
    assert env.index("w") == WorkflowIndex(req.run_id, RunStatus.RUNNING, "Wf", env.now)
    assert env.rec(new).status == RunStatus.RUNNING
    assert env.rec(old) == before


def test_use_existing_returns_the_open_run_and_gives_it_the_start_signal() -> None:
    env = Env()
    old = env.start("w")
    before = len(env.history(old))
    req = env.request("w", id_conflict_policy="use_existing", start_signal="go", start_signal_args=b"[7]")
    assert env.apply(lambda tx, fx: env.machine.start(tx, fx, req)) == old.hex()
    assert env.types(old)[before:] == [codec.SIGNAL_RECEIVED]
    assert env.history(old)[-1].payload == b"[7]"
    assert env.index("w") is not None and env.index("w").run_id == old.hex()  # type: ignore[union-attr]
    assert env.store.view().run(run_key_of(req.run_id)) is None  # no new run
    plain = env.request("w", id_conflict_policy="use_existing")
    assert env.apply(lambda tx, fx: env.machine.start(tx, fx, plain)) == old.hex()
    assert len(env.history(old)) == before + 1  # nothing more recorded


def test_terminate_existing_closes_the_open_run_and_starts_anew() -> None:
    env = Env()
    old = env.start("w", run_timeout=60.0)
    req = env.request("w", id_conflict_policy="terminate_existing", id_reuse_policy="reject_duplicate")
    assert env.apply(lambda tx, fx: env.machine.start(tx, fx, req)) == req.run_id
    assert env.rec(old).status == RunStatus.TERMINATED and env.types(old)[-1] == codec.WORKFLOW_TERMINATED
    assert env.rec(old).timers is None
    new = run_key_of(req.run_id)
    assert env.rec(new).status == RunStatus.RUNNING
    assert env.index("w") == WorkflowIndex(req.run_id, RunStatus.RUNNING, "Wf", env.now)
    # With no open run, the reuse policy still decides about the closed one.
    env.terminate("w")
    again = env.request("w", id_conflict_policy="terminate_existing", id_reuse_policy="reject_duplicate")
    env.refuses(WorkflowAlreadyStartedError, lambda tx, fx: env.machine.start(tx, fx, again))


def test_signal_with_start_records_the_signal_before_the_first_task() -> None:
    env = Env()
    req = env.request("w", start_signal="go", start_signal_args=b'[{"by":"bob"}]')
    env.apply(lambda tx, fx: env.machine.start(tx, fx, req))
    key = run_key_of(req.run_id)
    assert env.types(key) == [codec.WORKFLOW_STARTED, codec.SIGNAL_RECEIVED]
    assert env.rec(key).last_input == 2
    assert env.wtask(key) is not None


def test_start_eager_commits_the_run_and_its_first_task_together() -> None:
    env = Env()
    req = env.request("w")
    key = run_key_of(req.run_id)
    now = env.now
    task = ActivityTask(run_key=key, workflow_id="w", workflow_type="Wf", task_queue=Q, seq=1, name="act",
                        args=b"[]", attempt=1, scheduled_time=now / 1e6, start_to_close_timeout=5.0,
                        schedule_to_close_timeout=None, heartbeat_timeout=None, retry_policy={})
    first = WorkflowTaskCompletion(run_key=key, task_queue=Q, epoch=0, processed_through=1,
                                   commands=[cmd(codec.ACTIVITY_SCHEDULED, 1, "act")], activity_tasks=[task])
    assert env.apply(lambda tx, fx: env.machine.start_eager(tx, fx, req, now, first)) == 4
    assert env.types(key) == [codec.WORKFLOW_STARTED, codec.WORKFLOW_TASK_COMPLETED, codec.ACTIVITY_SCHEDULED]
    assert env.history(key)[1].ref == 1
    assert env.rec(key).epoch == 1
    assert env.wtask(key) is None  # the first task already ran here
    assert env.effects == [ActivityTaskReady(task)]
    # An id in use refuses the eager start before anything is written, like a plain start.
    again = env.request("w")
    first2 = WorkflowTaskCompletion(run_key=run_key_of(again.run_id), task_queue=Q, epoch=0, processed_through=1,
                                    commands=[])
    env.refuses(WorkflowAlreadyStartedError, lambda tx, fx: env.machine.start_eager(tx, fx, again, now, first2))


# ====================================================================== signal, cancel, terminate


def test_signal_appends_an_input_and_hands_this_process_its_leased_task_again() -> None:
    env = Env()
    key = env.start()
    env.clock.advance(1)
    env.signal("w", None, "go", b"[7]")
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.timestamp_us, ev.name, ev.payload) == (
        codec.SIGNAL_RECEIVED, 2, env.now, "go", b"[7]")
    rec = env.rec(key)
    assert (rec.last_input, rec.next_event_id) == (2, 3)
    assert env.effects == [WorkflowTaskReady(Q, key)]  # the pending task is ours: hand it over again


def test_signal_leaves_a_task_leased_elsewhere_alone() -> None:
    env = Env(workflows=False)
    key = env.start()
    other = env.machine_for("other")
    env.claim_wtask(key, other)
    lease = env.wtask(key)
    env.consumer.workflows = True
    env.signal()
    assert env.wtask(key) == lease
    assert env.effects == []


@pytest.mark.parametrize("local", [True, False])
def test_signal_creates_a_task_when_the_run_has_none(local: bool) -> None:
    env = Env(workflows=local)
    key = env.start()
    env.complete(key)
    assert env.wtask(key) is None
    env.clock.advance(2)
    env.signal()
    if local:
        assert env.wtask(key) == WorkflowTaskLease(OWNER, env.now + int(WTASK_LEASE_S * S))
        assert env.effects == [WorkflowTaskReady(Q, key)]
    else:
        assert env.wtask(key) == WorkflowTaskLease()
        assert env.effects == []


def test_cancel_appends_a_cancel_request() -> None:
    env = Env()
    key = env.start()
    env.complete(key)
    env.apply(lambda tx, fx: env.machine.cancel(tx, fx, "w", None))
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id) == (codec.WORKFLOW_CANCEL_REQUESTED, 3)
    assert env.rec(key).last_input == 3
    assert env.effects == [WorkflowTaskReady(Q, key)]


@pytest.mark.parametrize(("reason", "message"), [("bye", "bye"), ("", "terminated")])
def test_terminate_closes_the_run_at_once(reason: str, message: str) -> None:
    env = Env()
    key = env.start(run_timeout=60.0)
    env.complete(key, timers=[(1, 5.0)])
    env.clock.advance(3)
    env.terminate("w", None, reason)
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.timestamp_us) == (codec.WORKFLOW_TERMINATED, 3, env.now)
    assert orjson.loads(ev.payload) == {"kind": "terminated", "message": message, "type": "TerminatedError"}
    rec = env.rec(key)
    assert (rec.status, rec.close_us, rec.timers) == (RunStatus.TERMINATED, env.now, None)
    assert env.index("w") == WorkflowIndex(key.hex(), RunStatus.TERMINATED, "Wf", START_US, env.now)
    assert env.timers == set()
    assert env.wtask(key) is None
    (closed,) = env.effects
    assert isinstance(closed, RunClosed) and closed.run_key == key
    info = closed.info
    assert (info.status, info.close_event, info.close_time, info.history_length) == (
        "terminated", ev, env.now / 1e6, 3)


CLOSED_MESSAGES = {
    "signal": "cannot signal workflow 'w': its run {run} is completed; start a new run or check the id",
    "cancel": "workflow 'w' is already completed; nothing to cancel",
    "terminate": "workflow 'w' is already completed; nothing to terminate",
}


def outside(env: Env, op: str, workflow_id: str, run_id: str | None) -> Callable[[MemTx, Effects], None]:
    m = env.machine
    if op == "signal":
        return lambda tx, fx: m.signal(tx, fx, workflow_id, run_id, "go", b"[]")
    if op == "cancel":
        return lambda tx, fx: m.cancel(tx, fx, workflow_id, run_id)
    return lambda tx, fx: m.terminate(tx, fx, workflow_id, run_id, "bye")


@pytest.mark.parametrize("op", CLOSED_MESSAGES)
def test_signal_cancel_terminate_refuse_a_closed_run(op: str) -> None:
    env = Env()
    key = env.start()
    env.close_as(key, "completed")
    for run_id in (None, key.hex()):
        err = env.refuses(WorkflowClosedError, outside(env, op, "w", run_id))
        assert str(err) == CLOSED_MESSAGES[op].format(run=key.hex())
        assert (err.workflow_id, err.run_id, err.status) == ("w", key.hex(), "completed")


@pytest.mark.parametrize("op", CLOSED_MESSAGES)
def test_signal_cancel_terminate_resolve_a_run_id_or_the_latest_run(op: str) -> None:
    env = Env()
    old = env.start()
    env.close_as(old, "completed")
    new = env.start()
    env.apply(outside(env, op, "w", new.hex()))
    assert len(env.history(new)) == 2
    env.refuses(WorkflowClosedError, outside(env, op, "w", old.hex()))  # the old run, by its id: closed
    if op != "terminate":
        env.apply(outside(env, op, "w", None))  # the latest run
        assert len(env.history(new)) == 3


@pytest.mark.parametrize("op", CLOSED_MESSAGES)
@pytest.mark.parametrize(("workflow_id", "run_id"), [
    ("nope", None),
    ("w", "not-hex"),
    ("w", "abcd"),  # hex, but not 16 bytes
    ("w", "00" * 16),  # no such run
    ("w", "other"),  # a run of another workflow id
], ids=["unknown-id", "bad-run-id", "short-run-id", "unknown-run", "run-of-another-id"])
def test_signal_cancel_terminate_of_an_unknown_run(op: str, workflow_id: str, run_id: str | None) -> None:
    env = Env()
    env.start("w")
    other = env.start("x")
    if run_id == "other":
        run_id = other.hex()
    err = env.refuses(WorkflowNotFoundError, outside(env, op, workflow_id, run_id))
    assert (err.workflow_id, err.run_id) == (workflow_id, run_id)


# ====================================================================== workflow tasks: conflicts


def test_complete_wtask_refuses_a_stale_epoch() -> None:
    env = Env()
    key = env.start()
    c = env.completion(key, [cmd(codec.TIMER_STARTED, 1)], epoch=1)
    err = env.refuses(Conflict, lambda tx, fx: env.machine.complete_wtask(tx, fx, c))
    assert str(err) == "run moved to task epoch 0, worker had 1"


def test_complete_wtask_refuses_a_closed_run() -> None:
    env = Env()
    key = env.start()
    c = env.completion(key, [cmd(codec.TIMER_STARTED, 1)])
    env.terminate()
    err = env.refuses(Conflict, lambda tx, fx: env.machine.complete_wtask(tx, fx, c))
    assert str(err) == "run is terminated"


def test_complete_wtask_with_inputs_refuses_a_history_that_grew() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    inputs = [cmd(codec.ACTIVITY_COMPLETED, 1, "act", b"[1]", timestamp_us=env.now)]
    c = env.completion(key, [cmd(codec.WORKFLOW_COMPLETED)], inputs=inputs, expect_next_event_id=4,
                       completed_activity=(1, 1), processed_through=0, close_status="completed")
    env.signal()  # event 4: the worker did not see it
    err = env.refuses(Conflict, lambda tx, fx: env.machine.complete_wtask(tx, fx, c))
    assert str(err) == "history grew since the worker read it"


def test_complete_wtask_without_inputs_does_not_check_the_history_length() -> None:
    env = Env()
    key = env.start()
    env.signal()
    assert env.complete(key, [cmd(codec.TIMER_STARTED, 1)], expect_next_event_id=1, processed_through=1) == 5


@pytest.mark.parametrize(("seq", "attempt"), [(1, 2), (2, 1)], ids=["other-attempt", "no-such-activity"])
def test_complete_wtask_refuses_an_activity_attempt_that_is_not_current(seq: int, attempt: int) -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    inputs = [cmd(codec.ACTIVITY_COMPLETED, seq, "act", b"[1]")]
    c = env.completion(key, [], inputs=inputs, expect_next_event_id=4, completed_activity=(seq, attempt),
                       processed_through=0)
    err = env.refuses(Conflict, lambda tx, fx: env.machine.complete_wtask(tx, fx, c))
    assert str(err) == "the activity attempt is no longer current"


# ====================================================================== workflow tasks: what they write


def test_complete_wtask_appends_a_marker_then_the_commands() -> None:
    env = Env()
    key = env.start()
    env.signal()  # event 2
    env.clock.advance(1)
    commands = [cmd(codec.TIMER_STARTED, 1), cmd(codec.MARKER, 0, "patch", b"x")]
    assert env.complete(key, commands, processed_through=2) == 6
    hist = env.history(key)
    marker = hist[2]
    assert (marker.type, marker.event_id, marker.ref, marker.timestamp_us) == (
        codec.WORKFLOW_TASK_COMPLETED, 3, 2, env.now)
    assert [(ev.type, ev.event_id, ev.ref, ev.name, ev.timestamp_us) for ev in hist[3:]] == [
        (codec.TIMER_STARTED, 4, 1, "", env.now), (codec.MARKER, 5, 0, "patch", env.now)]
    rec = env.rec(key)
    assert (rec.epoch, rec.next_event_id, rec.last_input) == (1, 6, 2)
    assert env.wtask(key) is None  # nothing new since: no task
    assert env.effects == []


def test_complete_wtask_commits_its_inputs_first_and_consumes_the_activity_attempt() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    seen_at = env.now
    env.clock.advance(2)
    inputs = [cmd(codec.ACTIVITY_COMPLETED, 1, "act", b"[1]", timestamp_us=seen_at),
              cmd(codec.SIGNAL_RECEIVED, 0, "late", b"[]")]
    c = env.completion(key, [cmd(codec.TIMER_STARTED, 2)], inputs=inputs, expect_next_event_id=4,
                       completed_activity=(1, 1), processed_through=0)
    assert env.apply(lambda tx, fx: env.machine.complete_wtask(tx, fx, c)) == 8
    hist = env.history(key)
    # An input the code already saw keeps its timestamp (ctx.now() must read the same on replay).
    assert [(ev.type, ev.event_id, ev.timestamp_us) for ev in hist[3:5]] == [
        (codec.ACTIVITY_COMPLETED, 4, seen_at), (codec.SIGNAL_RECEIVED, 5, env.now)]
    assert (hist[5].type, hist[5].ref) == (codec.WORKFLOW_TASK_COMPLETED, 5)
    assert env.rec(key).last_input == 5
    assert env.atask(key, 1) is None
    assert env.wtask(key) is None


def test_complete_wtask_resets_a_failure_streak() -> None:
    env = Env()
    key = env.start()
    env.apply(lambda tx, fx: env.machine.fail_wtask(tx, fx, Q, key, 0, "ValueError", FAILURE, "d1"))
    assert env.rec(key).task_failures == 1
    env.complete(key)
    rec = env.rec(key)
    assert (rec.task_failures, rec.last_failure) == (0, None)
    assert b"wtf" not in env.store.state.runs[key]


@pytest.mark.parametrize(("stc", "s2c", "hb", "lease_s"), [
    (10.0, None, None, 10 + ATASK_LEASE_SLACK_S),
    (None, 20.0, None, 20 + ATASK_LEASE_SLACK_S),
    (10.0, 20.0, None, 10 + ATASK_LEASE_SLACK_S),
    (None, None, None, DEFAULT_ACTIVITY_TIMEOUT_S + ATASK_LEASE_SLACK_S),
    (10.0, None, 5.0, 5 + ATASK_LEASE_SLACK_S),  # until the next heartbeat is due
    (None, None, 5.0, 5 + ATASK_LEASE_SLACK_S),
    (3.0, None, 5.0, 3 + ATASK_LEASE_SLACK_S),
])
def test_activity_tasks_are_leased_here_for_their_timeout_plus_slack(
        stc: float | None, s2c: float | None, hb: float | None, lease_s: float) -> None:
    env = Env()
    key = env.start()
    policy = duro.RetryPolicy(maximum_attempts=3).to_dict()
    task = env.schedule(key, 1, stc=stc, s2c=s2c, hb=hb, retry=policy, args=b'["a"]')
    assert env.atask(key, 1) == (ActivityMeta(
        workflow_id="w", workflow_type="Wf", name="act", attempt=1, scheduled_us=env.now, start_to_close=stc,
        schedule_to_close=s2c, heartbeat=hb, retry=policy, owner=OWNER, until_us=env.now + int(lease_s * S),
    ), b'["a"]', b"")
    assert env.effects == [ActivityTaskReady(task)]


@pytest.mark.parametrize("local", [True, False], ids=["workflow-consumer-only", "no-consumer"])
def test_activity_tasks_wait_unleased_without_an_activity_consumer(local: bool) -> None:
    env = Env(activities=False, local=local)
    key = env.start()
    env.schedule(key, 1)
    meta = env.meta(key, 1)
    assert (meta.owner, meta.until_us, meta.visible_us) == ("", 0, 0)
    assert env.effects == []


def test_timers_are_set_and_cancelled() -> None:
    env = Env()
    key = env.start(run_timeout=60.0)
    timeout = START_US + 60 * S
    env.clock.advance(1)
    env.complete(key, [cmd(codec.TIMER_STARTED, 1), cmd(codec.TIMER_STARTED, 2)], timers=[(1, 5.0), (2, -1.0)])
    now = env.now
    assert env.timers == {(timeout, key, 0), (now + 5 * S, key, 1), (now, key, 2)}
    assert env.rec(key).timers == {"0": timeout, "1": now + 5 * S, "2": now}
    assert env.effects == [TimerSet((now + 5 * S) / 1e6), TimerSet(now / 1e6)]
    env.complete(key, [cmd(codec.TIMER_CANCELED, 1)], cancel_timers=[1, 7])
    assert env.timers == {(timeout, key, 0), (now, key, 2)}
    assert env.rec(key).timers == {"0": timeout, "2": now}


def test_cancelling_activities_marks_running_attempts_and_drops_waiting_ones() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)  # leased here: running
    env.consumer.activities = False
    env.schedule(key, 2)  # nobody runs it yet
    env.complete(key, [cmd(codec.ACTIVITY_CANCEL_REQUESTED, 1), cmd(codec.ACTIVITY_CANCEL_REQUESTED, 2)],
                 cancel_activities=[(Q, 1), (Q, 2), (Q, 9)])
    assert env.meta(key, 1).cancel
    assert env.atask(key, 2) is None
    assert env.heartbeat(key, 1) is True  # the running attempt learns it at its next heartbeat
    length = len(env.history(key))
    assert env.complete_activity(key, 1, result=b"[1]") == "canceled"  # and its end is not recorded
    assert env.atask(key, 1) is None
    assert len(env.history(key)) == length


def test_children_start_in_the_parents_commit() -> None:
    env = Env()
    key = env.start("p")
    child_run = "cc" * 16
    child = ChildStart(seq=1, workflow_id="c", run_id=child_run, workflow_type="Child", task_queue="cq",
                       args=b"[2]", parent_close_policy="request_cancel")
    env.complete(key, [cmd(codec.CHILD_STARTED, 1, "Child")], children=[child])
    ckey = run_key_of(child_run)
    parent = {"run": key.hex(), "seq": 1, "wid": "p"}
    crec = env.rec(ckey)
    assert (crec.workflow_id, crec.workflow_type, crec.task_queue, crec.parent) == ("c", "Child", "cq", parent)
    (started,) = env.history(ckey)
    assert started_meta(started) == ({"wid": "c", "queue": "cq", "first_run": child_run, "parent": parent}, b"[2]")
    assert env.index("c") == WorkflowIndex(child_run, RunStatus.RUNNING, "Child", env.now)
    assert env.rec(key).children == {"1": [child_run, "request_cancel"]}
    assert env.wtask(ckey, "cq") == WorkflowTaskLease(OWNER, env.now + int(WTASK_LEASE_S * S))
    assert env.effects == [WorkflowTaskReady("cq", ckey, [started])]
    assert env.wtask(key) is None


def test_a_child_whose_id_is_taken_fails_in_the_parents_history() -> None:
    env = Env()
    taken = env.start("c")
    key = env.start("p")
    child = ChildStart(seq=1, workflow_id="c", run_id="cc" * 16, workflow_type="Child", task_queue=Q, args=b"[]",
                       parent_close_policy="terminate")
    env.complete(key, [cmd(codec.CHILD_STARTED, 1, "Child")], children=[child])
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.ref, ev.name) == (codec.CHILD_FAILED, 4, 1, "start_failed")
    assert orjson.loads(ev.payload) == {"kind": "application", "type": "WorkflowAlreadyStartedError",
                                        "message": str(WorkflowAlreadyStartedError("c", taken.hex()))}
    rec = env.rec(key)
    assert (rec.last_input, rec.children) == (4, None)
    # The parent has something new to process: its task stays, and it is ours.
    assert env.wtask(key) is not None
    assert env.effects == [WorkflowTaskReady(Q, key)]
    assert len(env.history(taken)) == 1
    assert env.store.view().run(run_key_of("cc" * 16)) is None


@pytest.mark.parametrize("close", ["completed", "continued_as_new"])
def test_a_closing_task_ends_the_history_with_its_close_event_even_when_a_child_start_fails(close: str) -> None:
    env = Env()
    env.start("c")
    key = env.start("p")
    child = ChildStart(seq=1, workflow_id="c", run_id="cc" * 16, workflow_type="Child", task_queue=Q, args=b"[]",
                       parent_close_policy="abandon")
    close_type = codec.WORKFLOW_COMPLETED if close == "completed" else codec.WORKFLOW_CONTINUED_AS_NEW
    env.complete(key, [cmd(codec.CHILD_STARTED, 1, "Child"), cmd(close_type, payload=b"[]")], children=[child],
                 close_status=close)
    assert env.history(key)[-1].type == close_type


def test_external_signals_and_cancels_are_delivered_to_open_runs_only() -> None:
    env = Env()
    target = env.start("t")
    done = env.start("d")
    env.close_as(done, "completed")
    key = env.start("p")
    external = [
        ExternalRequest("signal", "t", None, "hi", b"[3]"),
        ExternalRequest("cancel", "t", target.hex(), "", b"", seq=2),
        ExternalRequest("signal", "d", None, "hi", b"[]"),  # closed: dropped
        ExternalRequest("cancel", "nope", None, "", b""),  # unknown: dropped
        ExternalRequest("signal", "t", "zz", "hi", b"[]"),  # a bad run id: dropped
    ]
    env.complete(key, [cmd(codec.EXTERNAL_SIGNAL, 1, "hi"), cmd(codec.EXTERNAL_CANCEL, 2)], external=external)
    hist = env.history(target)
    # The cancellation names who asked: the requesting run and its RequestCancelExternal... event.
    [initiated] = [ev.event_id for ev in env.history(key) if ev.type == codec.EXTERNAL_CANCEL]
    asked = b'{"requested_by":{"workflow_id":"p","run_id":"%s","event_id":%d}}' % (key.hex().encode(), initiated)
    assert [(ev.type, ev.name, ev.payload) for ev in hist[1:]] == [
        (codec.SIGNAL_RECEIVED, "hi", b"[3]"), (codec.WORKFLOW_CANCEL_REQUESTED, "", asked)]
    assert env.rec(target).last_input == 3
    assert env.types(done) == [codec.WORKFLOW_STARTED, codec.WORKFLOW_TASK_COMPLETED, codec.WORKFLOW_COMPLETED]
    assert env.index("nope") is None
    assert WorkflowTaskReady(Q, target) in env.effects


def test_completed_updates_become_effects() -> None:
    env = Env()
    key = env.start()
    env.complete(key, [cmd(codec.UPDATE_ACCEPTED, 0, "u1"), cmd(codec.UPDATE_COMPLETED, 0, "u1", b'"ok"'),
                       cmd(codec.UPDATE_COMPLETED, 0, "u2", b'{"failure":1}')])
    # Keyed by run and id: update ids are the callers' and unique only within a run.
    assert env.effects == [UpdateCompleted(update_key(key, "u1"), b'"ok"'),
                           UpdateCompleted(update_key(key, "u2"), b'{"failure":1}')]


def test_inputs_that_arrived_while_the_task_ran_keep_a_task() -> None:
    env = Env()
    key = env.start()
    env.signal()  # event 2, after the worker read event 1
    assert env.complete(key, [cmd(codec.TIMER_STARTED, 1)], processed_through=1) == 5
    assert env.wtask(key) is not None
    assert env.effects == [WorkflowTaskReady(Q, key)]
    assert env.rec(key).epoch == 1


def test_release_wtask_drops_a_task_with_nothing_new_or_hands_it_out_again() -> None:
    env = Env()
    key = env.start()
    env.apply(lambda tx, fx: env.machine.release_wtask(tx, fx, Q, key, 1))
    assert env.wtask(key) is None
    assert env.effects == []
    env.signal()  # event 2: a new task, ours
    env.apply(lambda tx, fx: env.machine.release_wtask(tx, fx, Q, key, 1))
    assert env.wtask(key) is not None
    assert env.effects == [WorkflowTaskReady(Q, key)]
    env.terminate()
    env.apply(lambda tx, fx: env.machine.release_wtask(tx, fx, Q, key, 0))
    assert env.wtask(key) is None


def test_return_wtasks_gives_back_only_this_process_tasks_of_open_runs() -> None:
    env = Env()
    ours, closed, theirs = env.start("ours"), env.start("closed"), env.start("theirs")
    env.apply(lambda tx, fx: tx.put_wtask(Q, theirs, WorkflowTaskLease("other-host:1:1:x", env.now + 10**7)))
    env.terminate("closed")
    env.apply(lambda tx, fx: tx.put_wtask(Q, closed, WorkflowTaskLease(OWNER, env.now + 10**7)))
    env.consumer.workflows = False  # the worker that held them stopped; nobody here takes the queue
    given = env.apply(lambda tx, fx: env.machine.return_wtasks(tx, fx, Q, [ours, closed, theirs, b"\0" * 16]))
    assert given == 1
    assert env.wtask(ours) == WorkflowTaskLease()  # unleased, due now, for any process
    assert env.wtask(closed) is None
    theirs_lease = env.wtask(theirs)
    assert theirs_lease is not None and theirs_lease.owner == "other-host:1:1:x"
    assert env.effects == []
    # Another worker of this process that takes the queue gets a given-back task at once.
    env.apply(lambda tx, fx: tx.put_wtask(Q, ours, WorkflowTaskLease(OWNER, env.now + 10**7)))
    env.consumer.workflows = True
    assert env.apply(lambda tx, fx: env.machine.return_wtasks(tx, fx, Q, [ours])) == 1
    lease = env.wtask(ours)
    assert lease is not None and lease.owner == OWNER
    assert env.effects == [WorkflowTaskReady(Q, ours)]


CLOSES = [("completed", codec.WORKFLOW_COMPLETED, RESULT), ("failed", codec.WORKFLOW_FAILED, FAILURE),
          ("canceled", codec.WORKFLOW_CANCELED, CANCELED)]


@pytest.mark.parametrize(("status", "close_type", "payload"), CLOSES, ids=[c[0] for c in CLOSES])
def test_a_task_closes_the_run(status: str, close_type: int, payload: bytes) -> None:
    env = Env()
    key = env.start(run_timeout=60.0)
    env.complete(key, [cmd(codec.TIMER_STARTED, 1)], timers=[(1, 5.0)])
    env.schedule(key, 2)
    env.signal()  # event 6
    env.clock.advance(2)
    assert env.complete(key, [cmd(close_type, payload=payload)], close_status=status) == 9
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.payload) == (close_type, 8, payload)
    rec = env.rec(key)
    assert (rec.status, rec.close_us, rec.timers, rec.epoch) == (status, env.now, None, 3)
    assert env.index("w") == WorkflowIndex(key.hex(), RunStatus(status), "Wf", START_US, env.now)
    assert env.timers == set()
    assert env.wtask(key) is None  # even though event 6 arrived meanwhile
    (closed,) = env.effects
    assert isinstance(closed, RunClosed) and closed.run_key == key
    assert (closed.info.status, closed.info.close_event, closed.info.history_length) == (status, ev, 8)
    # An attempt of the closed run is dropped when it ends.
    assert env.complete_activity(key, 2, result=b"[]") == "closed"
    assert env.atask(key, 2) is None


# ====================================================================== parent close and children


def start_child(env: Env, parent: bytes, seq: int, workflow_id: str, policy: str) -> bytes:
    run_id = env.new_run_id()
    env.complete(parent, [cmd(codec.CHILD_STARTED, seq, "Child")],
                 children=[ChildStart(seq=seq, workflow_id=workflow_id, run_id=run_id, workflow_type="Child",
                                      task_queue=Q, args=b"[]", parent_close_policy=policy)])
    return run_key_of(run_id)


@pytest.mark.parametrize("policy", list(ParentClosePolicy))
@pytest.mark.parametrize("how", ["completed", "terminated", "failed"])
def test_parent_close_policy(policy: ParentClosePolicy, how: str) -> None:
    env = Env()
    parent = env.start("p")
    child = start_child(env, parent, 1, "c", str(policy))
    env.clock.advance(1)
    close = env.close_as(parent, how)
    crec = env.rec(child)
    if policy == ParentClosePolicy.TERMINATE:
        ev = env.history(child)[-1]
        assert ev.type == codec.WORKFLOW_TERMINATED
        assert orjson.loads(ev.payload) == {
            "kind": "terminated", "type": "TerminatedError",
            "message": "terminated because its parent workflow closed (parent_close_policy)"}
        assert (crec.status, crec.parent, crec.close_us) == (RunStatus.TERMINATED, None, env.now)
        assert env.index("c") == WorkflowIndex(child.hex(), RunStatus.TERMINATED, "Child", START_US, env.now)
        assert env.wtask(child) is None
        assert closed_effect(env.effects, child).info.status == "terminated"
    elif policy == ParentClosePolicy.REQUEST_CANCEL:
        assert env.types(child) == [codec.WORKFLOW_STARTED, codec.WORKFLOW_CANCEL_REQUESTED]
        assert crec.status == RunStatus.RUNNING and crec.last_input == 2
        assert WorkflowTaskReady(Q, child) in env.effects
    else:
        assert env.types(child) == [codec.WORKFLOW_STARTED]
        assert crec.status == RunStatus.RUNNING
    # The closing parent is not told about its child: its history ends with its close event.
    assert env.history(parent)[-1] == close
    assert closed_effect(env.effects, parent).info.status == how


def test_parent_close_terminates_grandchildren_too() -> None:
    env = Env()
    parent = env.start("p")
    child = start_child(env, parent, 1, "c", "terminate")
    grandchild = start_child(env, child, 1, "g", "terminate")
    env.close_as(parent, "completed")
    assert env.rec(child).status == env.rec(grandchild).status == RunStatus.TERMINATED
    assert {e.run_key for e in env.effects if isinstance(e, RunClosed)} == {parent, child, grandchild}


def test_a_closed_parents_stored_record_lists_no_open_children() -> None:
    env = Env()
    parent = env.start("p")
    start_child(env, parent, 1, "c", "abandon")
    env.close_as(parent, "completed")
    assert decode_run(env.store.state.runs[parent]).children is None


NOTIFY = [
    ("completed", codec.CHILD_COMPLETED, "", RESULT),
    ("failed", codec.CHILD_FAILED, "failed", FAILURE),
    ("canceled", codec.CHILD_CANCELED, "", CANCELED),  # before duro 0.2: CHILD_FAILED named "canceled"
    ("terminated", codec.CHILD_FAILED, "terminated",
     orjson.dumps({"kind": "terminated", "message": "bye", "type": "TerminatedError"})),
    ("timed_out", codec.CHILD_FAILED, "timed_out",
     orjson.dumps({"kind": "timeout", "type": "TimeoutError", "timeout_type": "execution",
                   "message": "the child workflow timed_out"})),
]


@pytest.mark.parametrize(("status", "ev_type", "name", "payload"), NOTIFY, ids=[n[0] for n in NOTIFY])
def test_a_closing_child_notifies_its_parent(status: str, ev_type: int, name: str, payload: bytes) -> None:
    env = Env()
    parent = env.start("p")
    start_child(env, parent, 1, "c1", "terminate")
    child = start_child(env, parent, 2, "c2", "terminate")
    env.clock.advance(1)
    env.close_as(child, status)
    ev = env.history(parent)[-1]
    assert (ev.type, ev.ref, ev.name, ev.payload, ev.timestamp_us) == (ev_type, 2, name, payload, env.now)
    prec = env.rec(parent)
    assert prec.last_input == ev.event_id
    assert prec.children is not None and list(prec.children) == ["1"]  # the other child is still open
    assert env.wtask(parent) is not None
    assert WorkflowTaskReady(Q, parent) in env.effects


def test_a_child_closing_after_its_parent_tells_nobody() -> None:
    env = Env()
    parent = env.start("p")
    child = start_child(env, parent, 1, "c", "abandon")
    env.close_as(parent, "completed")
    before = env.history(parent)
    env.close_as(child, "completed")
    assert env.history(parent) == before


# ====================================================================== continue-as-new


def continue_as_new(env: Env, key: bytes, workflow_type: str = "", args: bytes = b"[2]") -> bytes:
    env.complete(key, [cmd(codec.WORKFLOW_CONTINUED_AS_NEW, 0, workflow_type, args)], close_status="continued_as_new")
    nxt = env.rec(key).next_run_id
    assert nxt is not None
    return run_key_of(nxt)


def test_continue_as_new_starts_the_next_run_and_closes_this_one() -> None:
    env = Env()
    key = env.start("w", args=b"[1]", run_timeout=10.0)
    env.clock.advance(3)
    assert env.complete(key, [cmd(codec.WORKFLOW_CONTINUED_AS_NEW, 0, "", b"[2]")],
                        close_status="continued_as_new") == 4
    old = env.rec(key)
    assert old.next_run_id is not None
    new = run_key_of(old.next_run_id)
    assert (old.status, old.close_us, old.timers) == (RunStatus.CONTINUED_AS_NEW, env.now, None)
    assert env.wtask(key) is None
    rec = env.rec(new)
    assert (rec.workflow_id, rec.workflow_type, rec.task_queue, rec.status, rec.start_us) == (
        "w", "Wf", Q, RunStatus.RUNNING, env.now)
    assert env.index("w") == WorkflowIndex(new.hex(), RunStatus.RUNNING, "Wf", env.now)
    (started,) = env.history(new)
    assert started_meta(started) == ({"wid": "w", "queue": Q, "first_run": key.hex(), "run_timeout": 10.0}, b"[2]")
    fire = env.now + 10 * S  # the run timeout restarts with the run
    assert env.timers == {(fire, new, 0)}
    timer_set, ready, closed = env.effects
    assert timer_set == TimerSet(fire / 1e6)
    assert ready == WorkflowTaskReady(Q, new, [started])
    assert isinstance(closed, RunClosed) and closed.run_key == key
    assert (closed.info.status, closed.info.next_run_id) == ("continued_as_new", new.hex())
    assert closed.info.close_event is not None and closed.info.close_event.type == codec.WORKFLOW_CONTINUED_AS_NEW


def test_continue_as_new_may_change_the_type_and_keeps_the_first_run() -> None:
    env = Env()
    first = env.start("w")
    second = continue_as_new(env, first, "Other")
    third = continue_as_new(env, second)
    assert env.rec(second).workflow_type == env.rec(third).workflow_type == "Other"
    assert env.index("w") == WorkflowIndex(third.hex(), RunStatus.RUNNING, "Other", env.now)
    assert started_meta(env.history(third)[0])[0]["first_run"] == first.hex()


@pytest.mark.parametrize(("run_timeout", "after_s", "fire_s"), [
    (60.0, 50, 100),  # the execution deadline (from the first run) comes first
    (10.0, 50, 60),  # the restarted run timeout comes first
])
def test_continue_as_new_carries_the_execution_deadline_over(run_timeout: float, after_s: int, fire_s: int) -> None:
    env = Env()
    key = env.start("w", execution_timeout=100.0, run_timeout=run_timeout)
    env.clock.advance(after_s)
    new = continue_as_new(env, key)
    rec = env.rec(new)
    assert rec.deadline_us == START_US + 100 * S
    assert rec.timers == {"0": START_US + fire_s * S}
    assert env.timers == {(START_US + fire_s * S, new, 0)}  # the old run's timeout went with it
    meta, _ = started_meta(env.history(new)[0])
    assert (meta["deadline_us"], meta["execution_timeout"], meta["run_timeout"]) == (
        START_US + 100 * S, 100.0, run_timeout)


def test_a_childs_continue_as_new_is_followed_by_its_parent() -> None:
    env = Env()
    parent = env.start("p")
    child = start_child(env, parent, 1, "c", "terminate")
    before = env.history(parent)
    new = continue_as_new(env, child)
    assert env.history(parent) == before  # continued, not closed: the parent is not told
    assert env.rec(parent).children == {"1": [new.hex(), "terminate"]}
    assert env.rec(new).parent == {"run": parent.hex(), "seq": 1, "wid": "p"}
    env.close_as(new, "completed")
    ev = env.history(parent)[-1]
    assert (ev.type, ev.ref, ev.payload) == (codec.CHILD_COMPLETED, 1, RESULT)
    assert env.rec(parent).children == {}


def test_a_parent_closing_reaches_its_childs_latest_run() -> None:
    env = Env()
    parent = env.start("p")
    child = start_child(env, parent, 1, "c", "terminate")
    new = continue_as_new(env, child)
    env.close_as(parent, "completed")
    assert env.rec(new).status == RunStatus.TERMINATED


def test_continue_as_new_applies_the_parent_close_policy_to_open_children() -> None:
    env = Env()
    key = env.start("p")
    child = start_child(env, key, 1, "c", "terminate")
    new = continue_as_new(env, key)
    assert env.rec(child).status == RunStatus.TERMINATED
    assert env.rec(new).children is None


# ====================================================================== activities


def test_an_activity_result_is_recorded_and_wakes_the_workflow() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, name="charge")
    env.clock.advance(1)
    assert env.complete_activity(key, 1, 1, result=b'{"ok":1}') == "done"
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.ref, ev.attempt, ev.name, ev.payload, ev.timestamp_us) == (
        codec.ACTIVITY_COMPLETED, 4, 1, 1, "charge", b'{"ok":1}', env.now)
    assert env.atask(key, 1) is None
    assert env.rec(key).last_input == 4
    assert env.wtask(key) == WorkflowTaskLease(OWNER, env.now + int(WTASK_LEASE_S * S))
    assert env.effects == [WorkflowTaskReady(Q, key)]


@pytest.mark.parametrize(("seq", "attempt"), [(1, 2), (9, 1)], ids=["other-attempt", "no-such-activity"])
def test_the_end_of_an_attempt_that_is_not_current_is_stale(seq: int, attempt: int) -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    o = ActivityOutcome(run_key=key, task_queue=Q, seq=seq, attempt=attempt, result=b"[]")
    assert env.apply(lambda tx, fx: env.machine.complete_activity(tx, fx, o), read_only=True) == "stale"


@pytest.mark.parametrize("consumer", [True, False])
def test_a_failed_attempt_is_retried_after_its_backoff(consumer: bool) -> None:
    env = Env(activities=consumer)
    key = env.start()
    policy = duro.RetryPolicy(initial_interval=2.0, maximum_attempts=3).to_dict()
    env.schedule(key, 1, retry=policy, hb=5.0, args=b'["a"]')
    scheduled = env.now
    if not consumer:
        assert env.claim_atask(key, 1) is not None
    assert env.heartbeat(key, 1, 1, b'{"step":1}') is False
    env.clock.advance(1)
    before = (env.history(key), env.rec(key))
    assert env.complete_activity(key, 1, 1, failure=FAILURE, error_type="ValueError") == "retry"
    assert (env.history(key), env.rec(key)) == before  # a retry is not an event
    visible = env.now + 2 * S
    assert env.atask(key, 1) == (ActivityMeta(
        workflow_id="w", workflow_type="Wf", name="act", attempt=2, scheduled_us=scheduled, start_to_close=10.0,
        schedule_to_close=None, heartbeat=5.0, retry=policy, visible_us=visible, last_failure="ValueError: boom",
    ), b'["a"]', b'{"step":1}')  # heartbeat details survive into the next attempt, with the failure
    assert env.effects == ([ActivityTaskDue(Q, visible / 1e6)] if consumer else [])
    # Attempt 2 is claimed when due, fails again (backoff 4 s); attempt 3 is the last one.
    env.clock.advance(2)
    task = env.claim_atask(key, 1)
    assert task is not None and (task.attempt, task.heartbeat_details) == (2, b'{"step":1}')
    assert env.complete_activity(key, 1, 2, failure=FAILURE, error_type="ValueError") == "retry"
    assert env.meta(key, 1).visible_us == env.now + 4 * S
    env.clock.advance(4)
    env.claim_atask(key, 1)
    assert env.complete_activity(key, 1, 3, failure=FAILURE, error_type="ValueError") == "done"
    ev = env.history(key)[-1]
    assert (ev.type, ev.ref, ev.attempt, ev.name, ev.payload) == (codec.ACTIVITY_FAILED, 1, 3, "act", FAILURE)
    assert env.atask(key, 1) is None
    assert env.rec(key).last_input == ev.event_id


def test_a_retry_due_at_once_is_leased_here() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, retry={"initial_interval": 1e-7})
    assert env.complete_activity(key, 1, 1, failure=FAILURE) == "retry"
    meta = env.meta(key, 1)
    assert (meta.attempt, meta.owner, meta.visible_us) == (2, OWNER, env.now)
    (ready,) = env.effects
    assert isinstance(ready, ActivityTaskReady) and ready.task.attempt == 2


@pytest.mark.parametrize(("failure", "recorded"), [(FAILURE, FAILURE), (None, b"{}")])
def test_a_final_failure_is_recorded(failure: bytes | None, recorded: bytes) -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    assert env.complete_activity(key, 1, 1, failure=failure, non_retryable=True) == "done"
    ev = env.history(key)[-1]
    assert (ev.type, ev.payload) == (codec.ACTIVITY_FAILED, recorded)


def meta_with(retry: dict[str, Any], s2c: float | None = None, scheduled_us: int = START_US) -> ActivityMeta:
    return ActivityMeta(workflow_id="w", workflow_type="Wf", name="act", attempt=1, scheduled_us=scheduled_us,
                        start_to_close=None, schedule_to_close=s2c, heartbeat=None, retry=retry)


def failed(attempt: int, error_type: str = "ValueError", non_retryable: bool = False) -> ActivityOutcome:
    return ActivityOutcome(run_key=b"k" * 16, task_queue=Q, seq=1, attempt=attempt, failure=FAILURE,
                           error_type=error_type, non_retryable=non_retryable)


RETRY_DELAYS = [
    ("defaults-1", {}, 1, 1.0),
    ("defaults-2", {}, 2, 2.0),
    ("defaults-3", {}, 3, 4.0),
    ("defaults-7", {}, 7, 64.0),
    ("defaults-capped-at-100x-initial", {}, 8, 100.0),
    ("initial-and-coefficient", {"initial_interval": 0.5, "backoff_coefficient": 3.0}, 3, 4.5),
    ("coefficient-1", {"backoff_coefficient": 1.0}, 50, 1.0),
    ("maximum-interval", {"maximum_interval": 5.0}, 10, 5.0),
    ("below-maximum-attempts", {"maximum_attempts": 3}, 2, 2.0),
    ("maximum-attempts-reached", {"maximum_attempts": 3}, 3, None),
    ("unlimited-attempts", {"maximum_attempts": 0}, 1000, 100.0),
    ("float-overflow", {}, 10_000, 100.0),
    ("float-overflow-huge-attempt", {"maximum_interval": 7.0}, 10**9, 7.0),
    ("int-policy-huge-attempt", {"initial_interval": 1, "backoff_coefficient": 2, "maximum_interval": 9}, 3000, 9.0),
    ("retry-policy-to-dict", duro.RetryPolicy(initial_interval=1.5, backoff_coefficient=2.0, maximum_interval=10.0,
                                              maximum_attempts=5).to_dict(), 3, 6.0),
    ("retry-policy-to-dict-last", duro.RetryPolicy(maximum_attempts=5).to_dict(), 5, None),
]


@pytest.mark.parametrize(("policy", "attempt", "delay"), [r[1:] for r in RETRY_DELAYS],
                         ids=[r[0] for r in RETRY_DELAYS])
def test_retry_delay(policy: dict[str, Any], attempt: int, delay: float | None) -> None:
    got = retry_delay(meta_with(policy), failed(attempt), START_US)
    assert got == delay
    assert got is None or type(got) is float


def test_retry_delay_non_retryable() -> None:
    policy = duro.RetryPolicy(non_retryable_error_types=["ValueError"]).to_dict()
    assert retry_delay(meta_with(policy), failed(1, "ValueError"), START_US) is None
    assert retry_delay(meta_with(policy), failed(1, "KeyError"), START_US) == 1.0
    assert retry_delay(meta_with({}), failed(1, non_retryable=True), START_US) is None


@pytest.mark.parametrize(("now_s", "attempt", "delay"), [
    (8.0, 1, 1.0),  # the retry at 9 s comes before the 10 s schedule-to-close deadline
    (8.999999, 1, 1.0),  # at 9.999999 s: just before it
    (9.0, 1, None),  # at 10 s: too late
    (7.5, 2, 2.0),  # a 2 s backoff from 7.5 s ends at 9.5 s
    (8.5, 2, None),  # and from 8.5 s at 10.5 s
])
def test_schedule_to_close_cuts_retries(now_s: float, attempt: int, delay: float | None) -> None:
    meta = meta_with({}, s2c=10.0)
    assert retry_delay(meta, failed(attempt), START_US + round(now_s * S)) == delay


def test_schedule_to_close_counts_from_the_first_attempt() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, s2c=10.0, stc=None)
    env.clock.advance(2)
    assert env.complete_activity(key, 1, 1, failure=FAILURE) == "retry"  # retry at 3 s
    env.clock.advance(5)  # 7 s: a 2 s backoff ends at 9 s
    env.claim_atask(key, 1)
    assert env.complete_activity(key, 1, 2, failure=FAILURE) == "retry"
    env.clock.advance(2)  # 9 s: a 4 s backoff ends past 10 s
    env.claim_atask(key, 1)
    assert env.complete_activity(key, 1, 3, failure=FAILURE) == "done"
    assert env.history(key)[-1].type == codec.ACTIVITY_FAILED


# ====================================================================== heartbeats and leases


def test_a_heartbeat_extends_the_lease_of_an_attempt_with_a_heartbeat_timeout() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, stc=10.0, hb=5.0)
    first_until = env.now + int((5 + ATASK_LEASE_SLACK_S) * S)  # until the first heartbeat is due
    assert env.meta(key, 1).until_us == first_until
    env.clock.advance(1)
    assert env.heartbeat(key, 1, 1, b"d1") is False
    assert env.meta(key, 1).until_us == first_until + 1 * S
    env.clock.advance(19)
    assert env.heartbeat(key, 1, 1, None) is False  # no details: the last ones stay
    assert env.atask(key, 1) == (env.meta(key, 1), b'["x"]', b"d1")
    assert env.meta(key, 1).until_us == env.now + int((5 + ATASK_LEASE_SLACK_S) * S)


def test_a_heartbeat_without_a_heartbeat_timeout_only_records_details() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, stc=10.0)
    until = env.meta(key, 1).until_us
    env.clock.advance(20)
    assert env.heartbeat(key, 1, 1, b"d") is False
    found = env.atask(key, 1)
    assert found is not None and (found[0].until_us, found[2]) == (until, b"d")


@pytest.mark.parametrize(("seq", "attempt"), [(1, 2), (9, 1)], ids=["superseded-attempt", "no-such-activity"])
def test_a_heartbeat_of_an_attempt_that_is_not_current_says_stop(seq: int, attempt: int) -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, hb=5.0)
    assert env.heartbeat(key, seq, attempt, b"d", read_only=True) is True


def test_a_heartbeat_of_an_attempt_whose_run_closed_says_stop() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, hb=5.0)
    env.terminate()
    assert env.heartbeat(key, 1, 1, b"d") is True


def test_renew_leases_extends_only_this_owners_current_attempts() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)  # ours
    env.schedule(key, 2)  # ours, but the worker names another attempt
    env.consumer.activities = False
    env.schedule(key, 3)
    other = env.machine_for("other")
    env.claim_atask(key, 3, other)  # another process's
    theirs = env.meta(key, 3)
    items = [(key, 1, 1), (key, 2, 7), (key, 3, 1), (key, 9, 1)]
    renewed = env.apply(lambda tx, fx: env.machine.renew_leases(tx, fx, Q, items, 100.0))
    assert renewed == 1
    assert env.meta(key, 1).until_us == env.now + 100 * S
    assert env.meta(key, 2).until_us == env.now + int((10 + ATASK_LEASE_SLACK_S) * S)
    assert env.meta(key, 3) == theirs
    # A renewal never shortens a lease.
    assert env.apply(lambda tx, fx: env.machine.renew_leases(tx, fx, Q, [(key, 1, 1)], 50.0), read_only=True) == 0


# ====================================================================== lease take-over


def test_a_dead_workers_workflow_task_is_taken_over_and_its_late_completion_refused() -> None:
    env = Env()
    a = env.machine_for("worker-a")
    b = env.machine_for("worker-b")
    req = env.request("w")
    env.apply(lambda tx, fx: a.start(tx, fx, req))
    key = run_key_of(req.run_id)
    assert env.wtask(key) == WorkflowTaskLease("worker-a", env.now + int(WTASK_LEASE_S * S))
    late = env.completion(key, [cmd(codec.TIMER_STARTED, 1)])  # worker-a ran it, then hung
    env.clock.advance(WTASK_LEASE_S - 1)
    env.reap()
    lease = env.wtask(key)
    assert lease is not None and lease.owner == "worker-a"  # not expired yet
    env.clock.advance(1)
    env.reap()
    assert env.wtask(key) == WorkflowTaskLease()
    env.claim_wtask(key, b)
    assert env.wtask(key) == WorkflowTaskLease("worker-b", env.now + int(WTASK_LEASE_S * S))
    c = env.completion(key, [cmd(codec.TIMER_STARTED, 1)])
    env.apply(lambda tx, fx: b.complete_wtask(tx, fx, c))
    err = env.refuses(Conflict, lambda tx, fx: a.complete_wtask(tx, fx, late))
    assert str(err) == "run moved to task epoch 1, worker had 0"


def test_lease_atask_leases_an_attempt_of_an_open_run() -> None:
    env = Env(activities=False)
    key = env.start()
    env.schedule(key, 1, stc=None, s2c=20.0, args=b'["a"]')
    env.clock.advance(3)
    task = env.claim_atask(key, 1)
    meta = env.meta(key, 1)
    assert (meta.owner, meta.until_us) == (OWNER, env.now + int((20 + ATASK_LEASE_SLACK_S) * S))
    assert task == ActivityTask(run_key=key, workflow_id="w", workflow_type="Wf", task_queue=Q, seq=1, name="act",
                                args=b'["a"]', attempt=1, scheduled_time=(env.now - 3 * S) / 1e6,
                                start_to_close_timeout=None, schedule_to_close_timeout=20.0, heartbeat_timeout=None,
                                retry_policy={})


def test_lease_atask_drops_an_attempt_of_a_closed_run() -> None:
    env = Env(activities=False)
    key = env.start()
    env.schedule(key, 1)
    env.terminate()
    assert env.claim_atask(key, 1) is None
    assert env.atask(key, 1) is None


@pytest.mark.parametrize(("policy", "outcome"), [
    ({"initial_interval": 3.0}, "retry"),
    ({"maximum_attempts": 1}, "done"),
    ({"non_retryable_error_types": ["TimeoutError"]}, "done"),
])
def test_an_attempt_whose_lease_lapsed_fails_as_a_timeout_and_retries_per_policy(
        policy: dict[str, Any], outcome: str) -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1, stc=10.0, retry=policy, hb=2.0)
    env.heartbeat(key, 1, 1, b"hb")
    env.clock.advance(2 + ATASK_LEASE_SLACK_S - 1)  # a heartbeat timeout shortens the lease
    assert env.reap() == []  # not expired yet
    env.clock.advance(1)
    assert env.reap() == [outcome]
    if outcome == "retry":
        found = env.atask(key, 1)
        assert found is not None
        meta, _, details = found
        assert (meta.attempt, meta.owner, meta.visible_us, details) == (2, "", env.now + 3 * S, b"hb")
        assert env.effects == [ActivityTaskDue(Q, (env.now + 3 * S) / 1e6)]
        assert env.types(key)[-1] == codec.ACTIVITY_SCHEDULED
    else:
        ev = env.history(key)[-1]
        assert (ev.type, ev.ref, ev.attempt, ev.payload) == (codec.ACTIVITY_FAILED, 1, 1, LAPSED_LEASE_FAILURE)
        assert orjson.loads(LAPSED_LEASE_FAILURE)["type"] == "TimeoutError"
        assert env.atask(key, 1) is None


def test_a_lapsed_cancelled_attempt_is_dropped_without_a_retry() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    env.complete(key, [cmd(codec.ACTIVITY_CANCEL_REQUESTED, 1)], cancel_activities=[(Q, 1)])
    env.clock.advance(10 + ATASK_LEASE_SLACK_S)
    assert env.reap() == ["canceled"]
    assert env.atask(key, 1) is None


# ====================================================================== timers


def test_a_timer_fires_into_the_history() -> None:
    env = Env()
    key = env.start(run_timeout=60.0)
    env.complete(key, [cmd(codec.TIMER_STARTED, 1), cmd(codec.TIMER_STARTED, 2)], timers=[(1, 5.0), (2, 9.0)])
    env.clock.advance(5)
    env.fire(key, 1)
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.ref, ev.timestamp_us) == (codec.TIMER_FIRED, 5, 1, env.now)
    rec = env.rec(key)
    assert rec.timers == {"0": START_US + 60 * S, "2": START_US + 9 * S}
    assert rec.last_input == 5
    assert env.timers == {(START_US + 60 * S, key, 0), (START_US + 9 * S, key, 2)}
    assert env.effects == [WorkflowTaskReady(Q, key)]


def test_timer_seq_0_times_the_run_out_and_tells_its_parent() -> None:
    env = Env()
    parent = env.start("p")
    run_id = "cc" * 16
    env.complete(parent, [cmd(codec.CHILD_STARTED, 1, "Child")],
                 children=[ChildStart(seq=1, workflow_id="c", run_id=run_id, workflow_type="Child", task_queue=Q,
                                      args=b"[]", parent_close_policy="terminate")])
    child = run_key_of(run_id)
    # A child has no timeout of its own here: give it one as a timer seq 0 of its own, then fire it.
    env.complete(child, [cmd(codec.TIMER_STARTED, 1)], timers=[(1, 30.0)])
    env.clock.advance(10)
    env.fire(child, 0)
    ev = env.history(child)[-1]
    assert (ev.type, ev.timestamp_us) == (codec.WORKFLOW_TIMED_OUT, env.now)
    assert orjson.loads(ev.payload) == {"kind": "timeout", "type": "TimeoutError", "timeout_type": "execution",
                                        "message": "the workflow ran past its execution or run timeout"}
    crec = env.rec(child)
    assert (crec.status, crec.close_us, crec.timers) == (RunStatus.TIMED_OUT, env.now, None)
    assert env.index("c") == WorkflowIndex(run_id, RunStatus.TIMED_OUT, "Child", START_US, env.now)
    assert env.timers == set()
    assert closed_effect(env.effects, child).info.status == "timed_out"
    pev = env.history(parent)[-1]
    assert (pev.type, pev.ref, pev.name) == (codec.CHILD_FAILED, 1, "timed_out")


def test_the_run_timeout_fires_as_seq_0() -> None:
    env = Env()
    key = env.start(execution_timeout=30.0)
    env.clock.advance(30)
    env.fire(key, 0)
    assert env.rec(key).status == RunStatus.TIMED_OUT
    assert env.timers == set()
    assert env.wtask(key) is None


def test_timers_of_closed_runs_are_dropped() -> None:
    env = Env()
    key = env.start()
    env.complete(key, [cmd(codec.TIMER_STARTED, 1)], timers=[(1, 5.0)])
    fire = env.now + 5 * S
    # A timer the close left behind (a store that lost track of it): firing it only deletes it.
    env.close_as(key, "completed")
    env.store.state.timers.add((fire, key, 1))
    before = env.history(key)
    env.clock.advance(5)
    env.apply(lambda tx, fx: env.machine.fire_timer(tx, fx, fire, key, 1, env.now))
    assert env.timers == set()
    assert env.history(key) == before
    assert env.effects == []
    # And a timer of a run that is not there at all.
    env.store.state.timers.add((fire, b"\x01" * 16, 1))
    env.apply(lambda tx, fx: env.machine.fire_timer(tx, fx, fire, b"\x01" * 16, 1, env.now))
    assert env.timers == set()


# ====================================================================== workflow-task failures


def fail(env: Env, key: bytes, epoch: int = 0, digest: str = "d1", error_type: str = "ValueError",
         failure: bytes = FAILURE) -> float | None:
    return env.apply(lambda tx, fx: env.machine.fail_wtask(tx, fx, Q, key, epoch, error_type, failure, digest))


def test_fail_wtask_records_the_first_failure_and_counts_repeats() -> None:
    env = Env()
    key = env.start()
    assert fail(env, key) == 0.5
    ev = env.history(key)[-1]
    assert (ev.type, ev.event_id, ev.ref, ev.attempt, ev.name, ev.payload) == (
        codec.WORKFLOW_TASK_FAILED, 2, 0, 1, "ValueError", FAILURE)
    rec = env.rec(key)
    assert (rec.task_failures, rec.last_failure, rec.last_input) == (1, "d1", 1)
    assert env.wtask(key) == WorkflowTaskLease("", 0, env.now + S // 2)  # unleased, due after the backoff
    assert env.effects == []
    env.clock.advance(1)
    assert fail(env, key) == 1.0  # the same failure again: counted, not recorded
    assert len(env.history(key)) == 2
    assert env.rec(key).task_failures == 2
    assert env.wtask(key) == WorkflowTaskLease("", 0, env.now + S)
    assert fail(env, key, digest="d2", error_type="KeyError") == 2.0  # a new failure is recorded
    ev = env.history(key)[-1]
    assert (ev.type, ev.attempt, ev.name) == (codec.WORKFLOW_TASK_FAILED, 3, "KeyError")
    assert env.rec(key).last_failure == "d2"


def test_fail_wtask_backoff_doubles_up_to_a_minute() -> None:
    env = Env()
    key = env.start()
    delays = [fail(env, key) for _ in range(12)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0, 60.0]
    rec = env.rec(key)
    rec.task_failures = 10_000  # the exponent is capped: no overflow however long the streak
    env.store.state.runs[key] = encode(rec)
    assert fail(env, key) == 60.0
    assert env.wtask(key) == WorkflowTaskLease("", 0, env.now + 60 * S)


def test_fail_wtask_of_a_run_that_moved_on_is_ignored() -> None:
    env = Env()
    key = env.start()
    env.complete(key)
    assert env.apply(lambda tx, fx: env.machine.fail_wtask(tx, fx, Q, key, 0, "E", FAILURE, "d"),
                     read_only=True) is None
    env.terminate()
    assert env.apply(lambda tx, fx: env.machine.fail_wtask(tx, fx, Q, key, 1, "E", FAILURE, "d"),
                     read_only=True) is None
    env.refuses(WorkflowNotFoundError,
                lambda tx, fx: env.machine.fail_wtask(tx, fx, Q, b"\x02" * 16, 0, "E", FAILURE, "d"))


def test_fail_wtask_with_an_unknown_epoch_uses_the_current_one() -> None:
    env = Env()
    key = env.start()
    env.complete(key)
    env.signal()
    assert fail(env, key, epoch=-1) == 0.5
    assert env.history(key)[-1].ref == 1


def test_a_completed_task_ends_the_failure_streak() -> None:
    env = Env()
    key = env.start()
    fail(env, key)
    fail(env, key)
    env.complete(key, [cmd(codec.TIMER_STARTED, 1)], timers=[(1, 5.0)])
    env.clock.advance(5)
    env.fire(key, 1)
    assert fail(env, key, epoch=1) == 0.5  # a new streak: recorded again, from attempt 1
    ev = env.history(key)[-1]
    assert (ev.type, ev.ref, ev.attempt) == (codec.WORKFLOW_TASK_FAILED, 1, 1)


# ====================================================================== records


def test_statuses_and_policies_are_the_documented_strings() -> None:
    assert [s.value for s in RunStatus] == ["running", "completed", "failed", "canceled", "terminated",
                                            "continued_as_new", "timed_out"]
    assert [p.value for p in IdReusePolicy] == ["allow_duplicate", "allow_duplicate_failed_only", "reject_duplicate"]
    assert [p.value for p in ParentClosePolicy] == ["terminate", "request_cancel", "abandon"]


def test_records_round_trip() -> None:
    rec = RunRecord(workflow_id="w", workflow_type="Wf", task_queue=Q, status=RunStatus.CONTINUED_AS_NEW,
                    start_us=1, close_us=2, next_event_id=9, epoch=3, last_input=7,
                    parent={"run": "ab" * 16, "seq": 2, "wid": "p"}, deadline_us=5, timers={"0": 5, "3": 4},
                    children={"1": ["cd" * 16, "abandon"]}, next_run_id="ef" * 16, task_failures=2,
                    last_failure="dg")
    assert decode_run(encode(rec)) == rec
    idx = WorkflowIndex("ab" * 16, RunStatus.TIMED_OUT, "Wf", 1, 2)
    assert decode_index(encode(idx)) == idx
    lease = WorkflowTaskLease("o", 5, 6)
    assert decode_lease(encode(lease)) == lease
    meta = ActivityMeta(workflow_id="w", workflow_type="Wf", name="act", attempt=3, scheduled_us=1,
                        start_to_close=1.5, schedule_to_close=9.0, heartbeat=0.5,
                        retry=duro.RetryPolicy(maximum_attempts=4).to_dict(), owner="o", until_us=7, visible_us=8,
                        cancel=True)
    assert decode_activity_meta(encode(meta)) == meta


def test_records_are_encoded_with_short_keys_and_without_defaults() -> None:
    rec = RunRecord(workflow_id="w", workflow_type="Wf", task_queue=Q, status=RunStatus.RUNNING, start_us=5)
    assert orjson.loads(encode(rec)) == {"wid": "w", "type": "Wf", "queue": Q, "status": "running", "start": 5}
    assert encode(WorkflowTaskLease()) == b'{"o":"","u":0,"v":0}'
    # duro 0.1 wrote "close": 0 for an open run; that still reads (the default), and is left out now.
    assert orjson.loads(encode(WorkflowIndex("r", RunStatus.RUNNING, "Wf", 5))) == {
        "run": "r", "status": "running", "type": "Wf", "start": 5}
    assert decode_index(b'{"run":"r","status":"running","type":"Wf","start":5,"close":0}') == WorkflowIndex(
        "r", RunStatus.RUNNING, "Wf", 5)


V01_RUN = (b'{"wid":"w","type":"Wf","queue":"q","status":"running","start":1700000000000000,"close":0,'
           b'"next":3,"epoch":0,"last_input":1}')
V01_RUN_FULL = orjson.dumps({
    "wid": "p", "type": "Wf", "queue": "q", "status": "running", "start": START_US, "close": 0, "next": 7,
    "epoch": 2, "last_input": 5, "parent": {"run": "ab" * 16, "seq": 3, "wid": "pp"}, "deadline": START_US + 60 * S,
    "timers": {"0": START_US + 60 * S, "4": START_US + S}, "children": {"2": ["cd" * 16, "abandon"]},
    "wtf": 2, "wtf_msg": "0123abcd"})
V01_INDEX = orjson.dumps({"run": "ab" * 16, "status": "continued_as_new", "type": "Wf", "start": START_US,
                          "close": START_US + 5})
V01_META = orjson.dumps({
    "wid": "w", "wtype": "Wf", "name": "charge", "attempt": 2, "sched": START_US, "stc": 30.0, "s2c": None,
    "hb": 5.0, "retry": {"initial_interval": 1.0, "backoff_coefficient": 2.0, "maximum_interval": None,
                         "maximum_attempts": 3, "non_retryable_error_types": []},
    "o": "", "u": 0, "vis": START_US + 2 * S, "cancel": False})


def test_records_written_by_duro_0_1_decode() -> None:
    assert decode_run(V01_RUN) == RunRecord(workflow_id="w", workflow_type="Wf", task_queue="q",
                                            status=RunStatus.RUNNING, start_us=START_US, next_event_id=3)
    assert decode_run(V01_RUN_FULL) == RunRecord(
        workflow_id="p", workflow_type="Wf", task_queue="q", status=RunStatus.RUNNING, start_us=START_US,
        next_event_id=7, epoch=2, last_input=5, parent={"run": "ab" * 16, "seq": 3, "wid": "pp"},
        deadline_us=START_US + 60 * S, timers={"0": START_US + 60 * S, "4": START_US + S},
        children={"2": ["cd" * 16, "abandon"]}, task_failures=2, last_failure="0123abcd")
    assert decode_run(V01_RUN.replace(b'"running"', b'"continued_as_new"')[:-1] + b',"next_run":"' + b"ef" * 16
                      + b'"}').next_run_id == "ef" * 16
    assert decode_index(V01_INDEX) == WorkflowIndex("ab" * 16, RunStatus.CONTINUED_AS_NEW, "Wf", START_US,
                                                    START_US + 5)
    assert decode_lease(b'{"o":"","u":0}') == WorkflowTaskLease()
    assert decode_lease(b'{"o":"pid:1","u":5}') == WorkflowTaskLease("pid:1", 5)
    assert decode_lease(b'{"o":"","u":0,"v":9}') == WorkflowTaskLease("", 0, 9)
    assert decode_activity_meta(V01_META) == ActivityMeta(
        workflow_id="w", workflow_type="Wf", name="charge", attempt=2, scheduled_us=START_US, start_to_close=30.0,
        schedule_to_close=None, heartbeat=5.0, retry=orjson.loads(V01_META)["retry"], visible_us=START_US + 2 * S)


def test_a_record_with_an_unknown_status_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="status"):
        decode_run(V01_RUN.replace(b'"running"', b'"paused"'))


def test_the_machine_goes_on_with_a_run_duro_0_1_stored() -> None:
    env = Env()
    key = bytes.fromhex("ab" * 16)
    req = StartRequest(workflow_id="w", workflow_type="Wf", task_queue="q", args=b"[]", run_id=key.hex(),
                       run_timeout=60.0)
    timeout = START_US + 60 * S
    state: MemState = env.store.state
    state.runs[key] = V01_RUN[:-1] + b',"timers":{"0":' + str(timeout).encode() + b"}}"
    state.index["w"] = orjson.dumps({"run": key.hex(), "status": "running", "type": "Wf", "start": START_US,
                                     "close": 0})
    state.history[key] = [started_event(req, START_US).with_id(1),
                          Event(codec.WORKFLOW_TASK_COMPLETED, 2, START_US, 1, 0, "", b"")]
    state.atasks[("q", key, 1)] = pack(V01_META, b'["a"]', b"")
    state.timers.add((timeout, key, 0))
    env.clock.advance(3)
    task = env.claim_atask(key, 1)
    assert task is not None and (task.name, task.attempt) == ("charge", 2)
    assert env.complete_activity(key, 1, 2, result=b"[1]") == "done"
    assert [(ev.event_id, ev.type) for ev in env.history(key)[2:]] == [(3, codec.ACTIVITY_COMPLETED)]
    env.terminate()
    assert env.timers == set()
    assert env.index("w") == WorkflowIndex(key.hex(), RunStatus.TERMINATED, "Wf", START_US, env.now)


# ====================================================================== the in-memory Tx itself


def test_memtx_refuses_histories_that_do_not_grow_by_one() -> None:
    tx = MemStore().begin()
    key = b"\x03" * 16
    tx.append_history(key, [Event(codec.SIGNAL_RECEIVED, 1, 1)])
    with pytest.raises(ValueError, match="expected 2"):
        tx.append_history(key, [Event(codec.SIGNAL_RECEIVED, 1, 1)])  # a duplicate id
    with pytest.raises(ValueError, match="expected 2"):
        tx.append_history(key, [Event(codec.SIGNAL_RECEIVED, 3, 1)])  # a gap
    assert tx.read_history(key, 1, 1) == [Event(codec.SIGNAL_RECEIVED, 1, 1)]


def test_memtx_keeps_run_identity_within_a_transaction_only() -> None:
    env = Env()
    key = env.start()
    tx = env.store.begin()
    rec = tx.run(key)
    assert rec is not None and tx.run(key) is rec
    assert env.store.view().run(key) is not rec
    assert FakeClock(5)() == 5


def test_a_closed_run_error_survives_pickling() -> None:
    # It crosses process boundaries (an activity in a process pool that signals a closed run).
    import pickle

    err = WorkflowClosedError("closed", workflow_id="w", run_id="ab" * 16, status="completed")
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.workflow_id, again.run_id, again.status) == ("closed", "w", "ab" * 16, "completed")
