"""An in-memory ``duro.engine.tx.Tx`` and a settable clock, to unit-test the run state machine.

Records are kept ENCODED (``duro.engine.records.encode``; activity attempts packed with their
arguments and heartbeat details as the LMDB store packs them) and decoded on read, so the tests
exercise the codecs too. Within one transaction ``run`` returns the same object for the same run
until ``put_run`` stores another, as the ``Tx`` docstring demands (a per-transaction cache).

A ``MemStore`` holds the committed state; ``begin()`` gives a ``MemTx`` over a copy of it, and
``commit(tx)`` installs that copy. A transition that raises is "rolled back" by not committing;
``MemTx.writes`` counts the writes a transaction made (as ``mdb.Transaction.writes`` does, which the
LMDB store's group commit checks to know whether a failed op can fail alone) and ``tx.state`` can be
compared with the committed state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from duro._core.codec import Event
from duro.engine.records import (
    ActivityMeta,
    RunRecord,
    WorkflowIndex,
    WorkflowTaskLease,
    decode_activity_meta,
    decode_index,
    decode_lease,
    decode_run,
    encode,
)
from duro.engine.schedules import ScheduleRecord, decode_schedule, encode_schedule
from duro.stores.base import pack, unpack

__all__ = ["FakeClock", "MemState", "MemStore", "MemTx"]

START_US = 1_700_000_000_000_000


class FakeClock:
    """The machine's clock: ``now_us`` is whatever the test sets; calling it reads it."""

    def __init__(self, now_us: int = START_US) -> None:
        self.now_us = now_us

    def __call__(self) -> int:
        return self.now_us

    def advance(self, seconds: float) -> int:
        """Move the clock forward; the new time in µs."""
        self.now_us += round(seconds * 1_000_000)
        return self.now_us

    def now(self) -> float:
        """Seconds since the epoch (the ``duro.stores.base.Clock`` shape)."""
        return self.now_us / 1e6


@dataclass
class MemState:
    """Everything a store keeps, encoded: comparable with ``==`` to see whether anything was written."""

    runs: dict[bytes, bytes] = field(default_factory=dict)
    index: dict[str, bytes] = field(default_factory=dict)
    history: dict[bytes, list[Event]] = field(default_factory=dict)
    wtasks: dict[tuple[str, bytes], bytes] = field(default_factory=dict)
    atasks: dict[tuple[str, bytes, int], bytes] = field(default_factory=dict)
    timers: set[tuple[int, bytes, int]] = field(default_factory=set)
    schedules: dict[str, bytes] = field(default_factory=dict)
    builds: dict[str, str] = field(default_factory=dict)  # each queue's current build (worker versioning)

    def copy(self) -> MemState:
        """A copy that shares nothing mutable with this one (bytes and Events are immutable)."""
        return MemState(
            runs=dict(self.runs), index=dict(self.index),
            history={k: list(v) for k, v in self.history.items()},
            wtasks=dict(self.wtasks), atasks=dict(self.atasks), timers=set(self.timers),
            schedules=dict(self.schedules), builds=dict(self.builds),
        )


class MemTx:
    """``duro.engine.tx.Tx`` over a ``MemState`` (see the module docstring)."""

    def __init__(self, state: MemState) -> None:
        self.state = state
        self.writes = 0
        self._runs: dict[bytes, RunRecord] = {}
        self._schedules: dict[str, ScheduleRecord] = {}

    # -- runs and the index
    def run(self, run_key: bytes) -> RunRecord | None:
        rec = self._runs.get(run_key)
        if rec is None:
            raw = self.state.runs.get(run_key)
            if raw is None:
                return None
            rec = self._runs[run_key] = decode_run(raw)
        return rec

    def put_run(self, run_key: bytes, rec: RunRecord) -> None:
        self.writes += 1
        self.state.runs[run_key] = encode(rec)
        self._runs[run_key] = rec

    def index(self, workflow_id: str) -> WorkflowIndex | None:
        raw = self.state.index.get(workflow_id)
        return None if raw is None else decode_index(raw)

    def put_index(self, workflow_id: str, idx: WorkflowIndex) -> None:
        self.writes += 1
        self.state.index[workflow_id] = encode(idx)

    # -- history
    def append_history(self, run_key: bytes, events: list[Event]) -> None:
        if len(run_key) != 16:
            raise ValueError(f"a run key is 16 bytes, got {len(run_key)}")
        log = self.state.history.setdefault(run_key, [])
        expected = len(log) + 1
        for ev in events:
            if ev.event_id != expected:
                raise ValueError(f"event id {ev.event_id} appended to run {run_key.hex()}, expected {expected}")
            expected += 1
        self.writes += 1
        log.extend(events)

    def read_history(self, run_key: bytes, from_event_id: int = 1, to_event_id: int = 0) -> list[Event]:
        log = self.state.history.get(run_key, [])
        end = len(log) if to_event_id <= 0 else min(to_event_id, len(log))
        return log[max(from_event_id, 1) - 1 : end]

    # -- workflow tasks
    def wtask(self, task_queue: str, run_key: bytes) -> WorkflowTaskLease | None:
        raw = self.state.wtasks.get((task_queue, run_key))
        return None if raw is None else decode_lease(raw)

    def put_wtask(self, task_queue: str, run_key: bytes, lease: WorkflowTaskLease) -> None:
        self.writes += 1
        self.state.wtasks[(task_queue, run_key)] = encode(lease)

    def delete_wtask(self, task_queue: str, run_key: bytes) -> None:
        if self.state.wtasks.pop((task_queue, run_key), None) is not None:
            self.writes += 1

    # -- worker versioning
    def current_build(self, task_queue: str) -> str | None:
        return self.state.builds.get(task_queue)

    def set_current_build(self, task_queue: str, build_id: str | None, now_us: int) -> None:
        self.writes += 1
        if build_id is None:
            self.state.builds.pop(task_queue, None)
        else:
            self.state.builds[task_queue] = build_id

    # -- activity tasks
    def atask(self, task_queue: str, run_key: bytes, seq: int) -> tuple[ActivityMeta, bytes, bytes] | None:
        raw = self.state.atasks.get((task_queue, run_key, seq))
        if raw is None:
            return None
        meta_b, args, details = unpack(raw)
        return decode_activity_meta(meta_b), args, details

    def put_atask(self, task_queue: str, run_key: bytes, seq: int, meta: ActivityMeta, args: bytes,
                  details: bytes) -> None:
        self.writes += 1
        self.state.atasks[(task_queue, run_key, seq)] = pack(encode(meta), args, details)

    def delete_atask(self, task_queue: str, run_key: bytes, seq: int) -> None:
        if self.state.atasks.pop((task_queue, run_key, seq), None) is not None:
            self.writes += 1

    # -- timers
    def put_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        self.writes += 1
        self.state.timers.add((fire_us, run_key, seq))

    def delete_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        if (fire_us, run_key, seq) in self.state.timers:
            self.writes += 1
            self.state.timers.discard((fire_us, run_key, seq))

    def delete_run(self, run_key: bytes, last_event_id: int) -> None:
        self.writes += 1
        self.state.runs.pop(run_key, None)
        self.state.history.pop(run_key, None)

    def delete_index(self, workflow_id: str) -> None:
        self.writes += 1
        self.state.index.pop(workflow_id, None)


    # -- schedules (duro.engine.schedules.ScheduleTx)
    def schedule(self, schedule_id: str) -> ScheduleRecord | None:
        rec = self._schedules.get(schedule_id)
        if rec is None:
            raw = self.state.schedules.get(schedule_id)
            if raw is None:
                return None
            rec = self._schedules[schedule_id] = decode_schedule(raw)
        return rec

    def put_schedule(self, rec: ScheduleRecord) -> None:
        self.writes += 1
        self.state.schedules[rec.schedule_id] = encode_schedule(rec)
        self._schedules[rec.schedule_id] = rec

    def delete_schedule(self, schedule_id: str) -> None:
        if self.state.schedules.pop(schedule_id, None) is not None:
            self.writes += 1
        self._schedules.pop(schedule_id, None)

    def due_schedules(self, task_queue: str, now_us: int) -> list[str]:
        """The schedules of ``task_queue`` due by ``now_us`` (what a store's due index selects), by fire time."""
        due = []
        for raw in self.state.schedules.values():
            rec = decode_schedule(raw)
            if rec.task_queue == task_queue and rec.fire_at_us is not None and rec.fire_at_us <= now_us:
                due.append((rec.fire_at_us, rec.schedule_id))
        return [sid for _, sid in sorted(due)]


class MemStore:
    """The committed state, and transactions over copies of it."""

    def __init__(self) -> None:
        self.state = MemState()

    def begin(self) -> MemTx:
        """A transaction over a copy of the committed state (dropped unless ``commit`` is called)."""
        return MemTx(self.state.copy())

    def commit(self, tx: MemTx) -> None:
        """Make what ``tx`` wrote the committed state."""
        self.state = tx.state

    def view(self) -> MemTx:
        """A fresh transaction to read the committed state (a new record cache: records decoded again)."""
        return self.begin()
