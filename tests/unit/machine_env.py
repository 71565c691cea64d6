"""Driving the run state machine in unit tests: an ``Env`` of an in-memory store, a clock and a machine.

``Env`` holds a ``MemStore`` (``tests.unit.memtx``), a ``FakeClock``, this process's ``Machine`` and
its consumer (``Consumer``: the in-process consumer interface with fixed answers, not a mock of a
store), runs transitions in transactions it commits, and reads back the committed state.
``refuses`` checks that a transition raises having written nothing (the LMDB store's group commit
counts on that to let such an op fail alone).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import orjson
import pytest

from duro._core import codec
from duro._core.codec import Event
from duro.engine.machine import LAPSED_LEASE_FAILURE, Effects, Machine
from duro.engine.records import (
    ActivityMeta,
    RunRecord,
    WorkflowIndex,
    WorkflowTaskLease,
    decode_activity_meta,
    decode_lease,
)
from duro.stores.base import (
    ActivityOutcome,
    ActivityTask,
    Effect,
    RunClosed,
    StartRequest,
    WorkflowTaskCompletion,
    run_key_of,
    unpack,
)
from tests.unit.memtx import FakeClock, MemStore, MemTx

__all__ = [
    "CANCELED",
    "FAILURE",
    "OWNER",
    "RESULT",
    "Consumer",
    "Env",
    "Q",
    "S",
    "closed_effect",
    "cmd",
    "started_meta",
]

OWNER = "owner-of-this-process"
Q = "q"
S = 1_000_000  # µs in a second
T = TypeVar("T")
E = TypeVar("E", bound=BaseException)

FAILURE = orjson.dumps({"kind": "application", "type": "ValueError", "message": "boom"})
CANCELED = orjson.dumps({"kind": "cancelled", "type": "CancelledError", "message": "the workflow was cancelled"})
RESULT = b'"the result"'


class Consumer:
    """This process's consumers (``duro.engine.machine.Local``): fixed answers, changed by the test."""

    def __init__(self, workflows: bool = True, activities: bool = True) -> None:
        self.workflows = workflows
        self.activities = activities

    def takes_workflow_tasks(self, task_queue: str, build_id: str | None = None) -> bool:
        return self.workflows

    def takes_activity_tasks(self, task_queue: str) -> bool:
        return self.activities


def cmd(type_: int, ref: int = 0, name: str = "", payload: bytes = b"", timestamp_us: int = 0) -> Event:
    """A command or input as a worker hands it over (no id yet)."""
    return Event(type_, 0, timestamp_us, ref, 0, name, payload)


class Env:
    """One in-memory store, its clock, this process's machine and consumer; helpers to drive them."""

    def __init__(self, workflows: bool = True, activities: bool = True, local: bool = True) -> None:
        self.clock = FakeClock()
        self.store = MemStore()
        self.consumer = Consumer(workflows, activities)
        self.machine = self.machine_for(OWNER, local)
        self.effects: list[Effect] = []
        self._run_ids = itertools.count(1)

    def machine_for(self, owner: str, local: bool = True) -> Machine:
        m = Machine(owner, self.clock)
        m.local = self.consumer if local else None
        return m

    @property
    def now(self) -> int:
        return self.clock.now_us

    # -- transactions
    def apply(self, fn: Callable[[MemTx, Effects], T], *, read_only: bool = False) -> T:
        """Run ``fn`` in one transaction and commit it; its effects land in ``self.effects``."""
        tx, fx = self.store.begin(), Effects()
        result = fn(tx, fx)
        if read_only:
            assert tx.writes == 0 and tx.state == self.store.state, "wrote where it should only have read"
        self.store.commit(tx)
        self.effects = fx.effects
        return result

    def refuses(self, exc: type[E], fn: Callable[[MemTx, Effects], object]) -> E:
        """``fn`` raises ``exc`` having written nothing and asked for no effect (then it is rolled back)."""
        tx, fx = self.store.begin(), Effects()
        with pytest.raises(exc) as info:
            fn(tx, fx)
        assert tx.writes == 0, "raised after writing"
        assert tx.state == self.store.state
        assert fx.effects == []
        return info.value

    # -- reading the committed state
    def rec(self, key: bytes) -> RunRecord:
        rec = self.store.view().run(key)
        assert rec is not None
        return rec

    def history(self, key: bytes) -> list[Event]:
        return self.store.view().read_history(key)

    def types(self, key: bytes) -> list[int]:
        return [ev.type for ev in self.history(key)]

    def index(self, workflow_id: str) -> WorkflowIndex | None:
        return self.store.view().index(workflow_id)

    def wtask(self, key: bytes, queue: str = Q) -> WorkflowTaskLease | None:
        return self.store.view().wtask(queue, key)

    def atask(self, key: bytes, seq: int = 1, queue: str = Q) -> tuple[ActivityMeta, bytes, bytes] | None:
        return self.store.view().atask(queue, key, seq)

    def meta(self, key: bytes, seq: int = 1, queue: str = Q) -> ActivityMeta:
        found = self.atask(key, seq, queue)
        assert found is not None
        return found[0]

    @property
    def timers(self) -> set[tuple[int, bytes, int]]:
        return set(self.store.state.timers)

    # -- driving the machine
    def request(self, workflow_id: str = "w", *, workflow_type: str = "Wf", task_queue: str = Q,
                args: bytes = b"[]", **kw: Any) -> StartRequest:
        return StartRequest(workflow_id=workflow_id, workflow_type=workflow_type, task_queue=task_queue,
                            args=args, run_id=self.new_run_id(), **kw)

    def new_run_id(self) -> str:
        return f"{next(self._run_ids):032x}"

    def start(self, workflow_id: str = "w", **kw: Any) -> bytes:
        req = self.request(workflow_id, **kw)
        assert self.apply(lambda tx, fx: self.machine.start(tx, fx, req)) == req.run_id
        return run_key_of(req.run_id)

    def completion(self, key: bytes, commands: Sequence[Event] = (), **kw: Any) -> WorkflowTaskCompletion:
        rec = self.rec(key)
        kw.setdefault("epoch", rec.epoch)
        kw.setdefault("processed_through", rec.last_input)
        return WorkflowTaskCompletion(run_key=key, task_queue=rec.task_queue, commands=list(commands), **kw)

    def complete(self, key: bytes, commands: Sequence[Event] = (), **kw: Any) -> int:
        c = self.completion(key, commands, **kw)
        return self.apply(lambda tx, fx: self.machine.complete_wtask(tx, fx, c))

    def signal(self, workflow_id: str = "w", run_id: str | None = None, name: str = "go",
               payload: bytes = b"[1]") -> None:
        self.apply(lambda tx, fx: self.machine.signal(tx, fx, workflow_id, run_id, name, payload))

    def terminate(self, workflow_id: str = "w", run_id: str | None = None, reason: str = "bye") -> None:
        self.apply(lambda tx, fx: self.machine.terminate(tx, fx, workflow_id, run_id, reason))

    def fire(self, key: bytes, seq: int) -> None:
        fire_us = (self.rec(key).timers or {}).get(str(seq), self.now)
        self.apply(lambda tx, fx: self.machine.fire_timer(tx, fx, fire_us, key, seq, self.now))

    def activity(self, key: bytes, seq: int = 1, *, name: str = "act", retry: dict[str, Any] | None = None,
                 stc: float | None = 10.0, s2c: float | None = None, hb: float | None = None,
                 queue: str = Q, args: bytes = b'["x"]') -> ActivityTask:
        rec = self.rec(key)
        return ActivityTask(
            run_key=key, workflow_id=rec.workflow_id, workflow_type=rec.workflow_type, task_queue=queue, seq=seq,
            name=name, args=args, attempt=1, scheduled_time=self.now / 1e6, start_to_close_timeout=stc,
            schedule_to_close_timeout=s2c, heartbeat_timeout=hb, retry_policy=retry if retry is not None else {},
        )

    def schedule(self, key: bytes, seq: int = 1, **kw: Any) -> ActivityTask:
        """A workflow task that schedules one activity."""
        task = self.activity(key, seq, **kw)
        self.complete(key, [cmd(codec.ACTIVITY_SCHEDULED, seq, task.name)], activity_tasks=[task])
        return task

    def complete_activity(self, key: bytes, seq: int = 1, attempt: int = 1, **kw: Any) -> str:
        o = ActivityOutcome(run_key=key, task_queue=Q, seq=seq, attempt=attempt, **kw)
        return self.apply(lambda tx, fx: self.machine.complete_activity(tx, fx, o))

    def heartbeat(self, key: bytes, seq: int = 1, attempt: int = 1, details: bytes | None = None,
                  read_only: bool = False) -> bool:
        return self.apply(lambda tx, fx: self.machine.heartbeat(tx, fx, key, Q, seq, attempt, details),
                          read_only=read_only)

    def claim_wtask(self, key: bytes, machine: Machine | None = None) -> None:
        m = machine or self.machine
        self.apply(lambda tx, fx: m.lease_wtask(tx, Q, key, self.now))

    def claim_atask(self, key: bytes, seq: int = 1, machine: Machine | None = None) -> ActivityTask | None:
        m = machine or self.machine

        def claim(tx: MemTx, fx: Effects) -> ActivityTask | None:
            found = tx.atask(Q, key, seq)
            assert found is not None
            return m.lease_atask(tx, Q, key, seq, *found, self.now)

        return self.apply(claim)

    def reap(self, machine: Machine | None = None) -> list[str]:
        """What ``LmdbStore._op_reap`` does, over the in-memory state (expired leases; owners all dead).

        A workflow task whose lease ran out is freed; an activity attempt whose lease ran out fails
        with ``LAPSED_LEASE_FAILURE`` through ``Machine.complete_activity``, so it retries per its policy.
        """
        m = machine or self.machine
        now = self.now

        def sweep(tx: MemTx, fx: Effects) -> list[str]:
            for (queue, key), raw in list(tx.state.wtasks.items()):
                lease = decode_lease(raw)
                if lease.owner and lease.until_us <= now:
                    tx.put_wtask(queue, key, WorkflowTaskLease())
            expired = []
            for (queue, key, seq), raw in list(tx.state.atasks.items()):
                meta = decode_activity_meta(unpack(raw)[0])
                if meta.owner and meta.until_us <= now:
                    expired.append(ActivityOutcome(run_key=key, task_queue=queue, seq=seq, attempt=meta.attempt,
                                                   failure=LAPSED_LEASE_FAILURE, error_type="TimeoutError"))
            return [m.complete_activity(tx, fx, o) for o in expired]

        return self.apply(sweep)

    def close_as(self, key: bytes, status: str) -> Event:
        """Close an open run with ``status`` the way it happens for real; its close event."""
        rec = self.rec(key)
        if status == "completed":
            self.complete(key, [cmd(codec.WORKFLOW_COMPLETED, payload=RESULT)], close_status=status)
        elif status == "failed":
            self.complete(key, [cmd(codec.WORKFLOW_FAILED, payload=FAILURE)], close_status=status)
        elif status == "canceled":
            self.complete(key, [cmd(codec.WORKFLOW_CANCELED, payload=CANCELED)], close_status=status)
        elif status == "terminated":
            self.terminate(rec.workflow_id, key.hex())
        elif status == "timed_out":
            self.fire(key, 0)
        else:
            raise AssertionError(status)
        assert self.rec(key).status == status
        return self.history(key)[-1]


def started_meta(ev: Event) -> tuple[dict[str, Any], bytes]:
    meta, args = unpack(ev.payload)
    return orjson.loads(meta), args


def closed_effect(effects: list[Effect], key: bytes) -> RunClosed:
    (found,) = [e for e in effects if isinstance(e, RunClosed) and e.run_key == key]
    return found


