"""The state machine's side of completing activities from outside: hand-off, deadlines, tokens."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from duro._core import codec
from duro.engine.machine import ASYNC_OWNER, DEFAULT_ACTIVITY_TIMEOUT_S, RUNNING
from duro.errors import TaskTokenError
from duro.stores.base import ActivityOutcome
from tests.unit.machine_env import RESULT, Env, S


def handed_off(stc: float | None = 10.0, s2c: float | None = None, hb: float | None = None,
               retry: dict[str, Any] | None = None, ran_s: float = 2.0) -> tuple[Env, bytes, int]:
    """A run whose activity 1 ran ``ran_s`` seconds on this process's worker, then raised CompleteAsync."""
    env = Env()
    key = env.start()
    env.schedule(key, 1, stc=stc, s2c=s2c, hb=hb, retry=retry)
    started = env.now
    env.clock.advance(ran_s)
    assert env.apply(lambda tx, fx: env.machine.hand_off_activity(tx, fx, "q", key, 1, 1, started)) is True
    return env, key, started


def by_token(env: Env, key: bytes, attempt: int = 1, seq: int = 1, queue: str = "q", **kw: Any) -> str:
    o = ActivityOutcome(run_key=key, task_queue=queue, seq=seq, attempt=attempt, **kw)
    return env.apply(lambda tx, fx: env.machine.complete_activity_by_token(tx, fx, o))


def refused(env: Env, key: bytes, attempt: int = 1, seq: int = 1, queue: str = "q") -> str:
    """The reason a token is refused; neither completing nor heartbeating writes anything."""
    o = ActivityOutcome(run_key=key, task_queue=queue, seq=seq, attempt=attempt, result=RESULT)
    err = env.refuses(TaskTokenError, lambda tx, fx: env.machine.complete_activity_by_token(tx, fx, o))
    env.refuses(TaskTokenError, lambda tx, fx: env.machine.heartbeat_by_token(tx, fx, key, queue, seq, attempt, b"d"))
    return err.reason


def test_the_hand_off_gives_the_attempt_to_no_process_until_its_deadline() -> None:
    env, key, started = handed_off(stc=10.0, ran_s=2.0)
    meta = env.meta(key)
    assert meta.owner == ASYNC_OWNER and meta.attempt == 1
    assert meta.deadline_us == meta.until_us == started + 10 * S  # from the attempt's start, no slack
    # The worker's lease renewal no longer touches it.
    env.apply(lambda tx, fx: env.machine.renew_leases(tx, fx, "q", [(key, 1, 1)], 330.0), read_only=True)


def test_schedule_to_close_and_heartbeat_bound_the_wait() -> None:
    env, key, started = handed_off(stc=10.0, s2c=5.0, ran_s=1.0)
    scheduled = started  # scheduled and started in the same instant here
    assert env.meta(key).deadline_us == env.meta(key).until_us == scheduled + 5 * S
    env, key, started = handed_off(stc=60.0, hb=3.0, ran_s=1.0)
    assert env.meta(key).deadline_us == started + 60 * S
    assert env.meta(key).until_us == env.now + 3 * S  # the hand-off counts as a heartbeat


def test_heartbeats_move_the_heartbeat_window_but_never_past_the_deadline() -> None:
    env, key, started = handed_off(stc=10.0, hb=3.0, ran_s=1.0)
    for _ in range(4):
        env.clock.advance(2)
        assert env.apply(lambda tx, fx: env.machine.heartbeat_by_token(tx, fx, key, "q", 1, 1, b"d")) is False
    assert env.now == started + 9 * S
    assert env.meta(key).until_us == started + 10 * S  # not now + 3 s: the start-to-close deadline holds
    assert env.atask(key) == (env.meta(key), b'["x"]', b"d")


def test_without_a_timeout_the_default_runs_from_the_hand_off_and_each_heartbeat() -> None:
    env, key, _ = handed_off(stc=None, ran_s=1000.0)
    assert env.meta(key).deadline_us == 0
    assert env.meta(key).until_us == env.now + int(DEFAULT_ACTIVITY_TIMEOUT_S * S)
    env.clock.advance(200)
    assert env.apply(lambda tx, fx: env.machine.heartbeat_by_token(tx, fx, key, "q", 1, 1, None)) is False
    assert env.meta(key).until_us == env.now + int(DEFAULT_ACTIVITY_TIMEOUT_S * S)
    env.clock.advance(DEFAULT_ACTIVITY_TIMEOUT_S)
    assert env.reap() == ["retry"]
    retry = env.meta(key)
    assert retry.attempt == 2 and retry.owner == "" and retry.deadline_us == 0  # queued for its backoff


@pytest.mark.parametrize(("opts", "timeout_type"), [
    ({"stc": 4.0}, "start_to_close"), ({"stc": 40.0, "s2c": 4.0}, "schedule_to_close"),
    ({"stc": 40.0, "hb": 2.0}, "heartbeat"), ({"stc": None}, "start_to_close")])
def test_a_lapse_is_recorded_as_the_timeout_it_was(opts: dict[str, Any], timeout_type: str) -> None:
    env, key, _ = handed_off(**opts, retry={"maximum_attempts": 1}, ran_s=1.0)
    env.clock.advance(DEFAULT_ACTIVITY_TIMEOUT_S)
    assert env.reap() == ["done"]
    last = env.history(key)[-1]
    assert last.type == codec.ACTIVITY_FAILED
    failure = orjson.loads(last.payload)
    assert failure["kind"] == "timeout" and failure["timeout_type"] == timeout_type, failure
    assert "from outside" in failure["message"]


def test_tokens_that_name_no_waiting_attempt_are_refused_without_writing() -> None:
    env, key, _ = handed_off(stc=10.0, retry={"maximum_attempts": 3})
    assert refused(env, bytes(16)) == "unknown_run"
    assert refused(env, key, queue="elsewhere") == "unknown_activity"
    assert refused(env, key, seq=2) == "unknown_activity"
    assert refused(env, key, attempt=2) == "unknown_activity"
    env.clock.advance(7)
    assert by_token(env, key, failure=b'{"message": "no"}', error_type="No") == "retry"
    assert refused(env, key) == "superseded"
    assert refused(env, key, attempt=2) == "not_started"  # queued for its backoff: no worker ran it yet
    env.claim_atask(key)
    env.apply(lambda tx, fx: env.machine.hand_off_activity(tx, fx, "q", key, 1, 2, env.now))
    env.clock.advance(10)
    assert refused(env, key, attempt=2) == "timed_out"  # the reaper has not recorded it yet
    env.clock.advance(-5)
    assert by_token(env, key, attempt=2, result=RESULT) == "done"
    assert refused(env, key, attempt=2) == "completed"
    env.close_as(key, "completed")
    assert refused(env, key, attempt=2) == "completed"


def test_a_token_of_a_closed_run_or_a_cancelled_activity() -> None:
    env, key, _ = handed_off()
    env.terminate()
    assert refused(env, key) == "closed"

    env, key, _ = handed_off()
    env.complete(key, [], cancel_activities=[("q", 1)])  # the workflow stopped waiting for it
    assert env.apply(lambda tx, fx: env.machine.heartbeat_by_token(tx, fx, key, "q", 1, 1, None)) is True
    assert by_token(env, key, result=RESULT) == "canceled"
    assert env.atask(key) is None and env.rec(key).status == RUNNING
    assert codec.ACTIVITY_COMPLETED not in env.types(key)


def test_the_hand_off_of_an_attempt_that_moved_on_writes_nothing() -> None:
    env = Env()
    key = env.start()
    env.schedule(key, 1)
    assert by_token(env, key, result=RESULT) == "done"  # completed from outside while it still ran
    assert env.apply(lambda tx, fx: env.machine.hand_off_activity(tx, fx, "q", key, 1, 1, env.now),
                     read_only=True) is False
    key2 = env.start("w2")
    env.schedule(key2, 1)
    other = env.machine_for("other")
    assert env.apply(lambda tx, fx: other.hand_off_activity(tx, fx, "q", key2, 1, 1, env.now),
                     read_only=True) is False  # leased to this process, not to "other"
