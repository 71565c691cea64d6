"""The state machine's ``Tx`` over an LMDB write transaction: the key layout and the record cache.

Named databases and keys (integers big-endian in keys so cursors walk them in order):

- ``history``  run_key(16) + event_id(u64)            -> event envelope (duro._core.codec; layout in log)
- ``runs``     run_key(16)                              -> RunRecord (JSON, duro.engine.records)
- ``wf``       workflow_id (utf-8)                      -> WorkflowIndex: the latest run of the id
- ``wtask``    queue + 0x00 + run_key                   -> WorkflowTaskLease
- ``atask``    queue + 0x00 + run_key + seq(u64)        -> pack(ActivityMeta, args, heartbeat details)
- ``timer``    fire_at µs(u64) + run_key + seq(u64)     -> b""
- ``builds``   task queue (utf-8)                       -> JSON {"build": current build id, "at": µs set}
                                                            (worker versioning; no key: none set)
- ``sched``    schedules and their due index              (``duro.stores.lmdb_schedules``)

A transaction also notes what other processes may want to hear of (``marks``): a workflow or
activity task anyone may claim, a timer, a closed run. The store writes them as change marks with
the batch (``meta`` b"chg" + 0x00 + topic), so a process watching for other processes' commits
wakes only what the commit concerns (see ``LmdbStore.on_foreign_change``).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import orjson

from duro._core import mdb
from duro._core.codec import Event
from duro._core.log import event_key
from duro.engine.records import (
    ActivityMeta,
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
from duro.stores import lmdb_visibility as visibility
from duro.stores.base import CLOSED, TIMERS, atask_topic, pack, unpack, wtask_topic
from duro.stores.lmdb_schedules import LmdbScheduleOps

if TYPE_CHECKING:
    from duro._core.log import HistoryLog

__all__ = ["U64", "LmdbTx", "RunCache", "atask_key", "read_builds", "timer_key", "wtask_key"]

U64 = struct.Struct(">Q")

_PACK_U64 = U64.pack
_RUNNING = RunStatus.RUNNING
_CACHE_LIMIT = 8192  # records per generation of the RunCache


def wtask_key(task_queue: str, run_key: bytes) -> bytes:
    """Key of a run's workflow task in ``wtask``."""
    return task_queue.encode() + b"\x00" + run_key


def atask_key(task_queue: str, run_key: bytes, seq: int) -> bytes:
    """Key of an activity attempt in ``atask``."""
    return task_queue.encode() + b"\x00" + run_key + _PACK_U64(seq)


def timer_key(fire_us: int, run_key: bytes, seq: int) -> bytes:
    """Key of a timer in ``timer``: ordered by due time."""
    return _PACK_U64(fire_us) + run_key + _PACK_U64(seq)


def read_builds(txn: mdb.Transaction, db: mdb.Database) -> dict[str, str]:
    """Every queue's current build from the ``builds`` database (empty unless versioning is used)."""
    return {bytes(k).decode(): orjson.loads(v)["build"] for k, v in txn.cursor(db=db).iternext()}


class RunCache:
    """The writer thread's view of run records.

    Invariant: it holds records exactly as this process last wrote them, and is valid only while
    no other process has committed since our last commit (LMDB txn ids are consecutive across
    processes, so a write txn whose id is not our previous id + 1 means someone else wrote: the
    store clears it then, and after any failed operation). It saves a get and a JSON parse per
    operation on the hot path, and gives a transition the same object for the same run.
    ``builds`` is the ``builds`` database as of the same moment (None: read it again), so the
    current-build checks of claims and completions cost no read while nobody else writes.

    Records of runs in use stay; the others age out: two generations of at most ``_CACHE_LIMIT``
    records each, a record found in the older one moving back to the newer. A run that waits (a
    workflow parked on a signal) is read again when it wakes, instead of every open run's record
    staying in memory (about 300 bytes each) for as long as it waits.
    """

    __slots__ = ("builds", "older", "records")

    def __init__(self) -> None:
        self.records: dict[bytes, RunRecord] = {}
        self.older: dict[bytes, RunRecord] = {}
        self.builds: dict[str, str] | None = None

    def get(self, run_key: bytes) -> RunRecord | None:
        """The cached record of a run, or None."""
        rec = self.records.get(run_key)
        if rec is None and self.older:
            rec = self.older.pop(run_key, None)
            if rec is not None:
                self.records[run_key] = rec
        return rec

    def put(self, run_key: bytes, rec: RunRecord) -> None:
        """Cache a run's record (as stored, or as read)."""
        records = self.records
        records[run_key] = rec
        if len(records) >= _CACHE_LIMIT:
            self.older = records
            self.records = {}

    def drop(self, run_key: bytes) -> None:
        """Forget a run's record."""
        self.records.pop(run_key, None)
        self.older.pop(run_key, None)

    def clear(self) -> None:
        """Forget every record (read them from the transaction again)."""
        self.records.clear()
        self.older.clear()
        self.builds = None


class LmdbTx(LmdbScheduleOps):
    """``duro.engine.tx.Tx`` on one LMDB write transaction (see the module docstring for keys)."""

    __slots__ = ("cache", "dbs", "last_index", "log", "marks", "txn")

    def __init__(self, txn: mdb.Transaction, dbs: Any, log: HistoryLog, cache: RunCache,
                 marks: set[str] | None = None) -> None:
        self.txn = txn
        self.dbs = dbs
        self.log = log
        self.cache = cache
        # Topics this transaction changed for other processes (a superset is harmless: a spurious
        # wake-up; a missing one is not: a task nobody claims until the next poll).
        self.marks: set[str] = marks if marks is not None else set()
        # (key, stored value) of the ``wf`` entry this Tx last read or wrote: a transition reads an
        # id's entry, then rewrites it, and put_index needs the entry as stored to replace its
        # visibility keys (the value read is raw: the decoded one may have been changed since).
        self.last_index: tuple[bytes, bytes | None] | None = None

    # -- runs and the index
    def run(self, run_key: bytes) -> RunRecord | None:
        """The run record (cached when this process wrote it last)."""
        rec = self.cache.get(run_key)
        if rec is None:
            raw = self.txn.get(run_key, db=self.dbs.runs)
            if raw is None:
                return None
            rec = decode_run(raw)
            self.cache.put(run_key, rec)  # identity for the rest of this transaction
        return rec

    def delete_run(self, run_key: bytes, last_event_id: int) -> None:
        """Drop a closed run's record and its history (keys from ``log.event_key``: the layout is the log's)."""
        self.cache.drop(run_key)
        self.txn.delete(run_key, db=self.dbs.runs)
        db = self.log.db
        for event_id in range(1, last_event_id + 1):
            self.txn.delete(event_key(run_key, event_id), db=db)

    def delete_index(self, workflow_id: str) -> None:
        """Drop a workflow id's entry and its visibility keys."""
        key = workflow_id.encode()
        raw = self.txn.get(key, db=self.dbs.wf)
        if raw is not None:
            visibility.remove(self.txn, self.dbs.vis, workflow_id, decode_index(raw))
            self.txn.delete(key, db=self.dbs.wf)
        self.last_index = (key, None)

    def put_run(self, run_key: bytes, rec: RunRecord) -> None:
        """Store the run record; open runs stay cached."""
        self.txn.put(run_key, encode(rec), db=self.dbs.runs)
        if rec.status == _RUNNING:
            self.cache.put(run_key, rec)
        else:
            self.cache.drop(run_key)
            self.marks.add(CLOSED)

    def index(self, workflow_id: str) -> WorkflowIndex | None:
        """The latest run of a workflow id."""
        key = workflow_id.encode()
        raw = self.txn.get(key, db=self.dbs.wf)
        self.last_index = (key, raw)
        return None if raw is None else decode_index(raw)

    def put_index(self, workflow_id: str, idx: WorkflowIndex) -> None:
        """Store the latest run of a workflow id, and its keys in the visibility index."""
        key = workflow_id.encode()
        last = self.last_index
        raw = last[1] if last is not None and last[0] == key else self.txn.get(key, db=self.dbs.wf)
        visibility.replace(self.txn, self.dbs.vis, workflow_id, None if raw is None else decode_index(raw), idx)
        value = encode(idx)
        self.txn.put(key, value, db=self.dbs.wf)
        self.last_index = (key, value)

    # -- history
    def append_history(self, run_key: bytes, events: list[Event]) -> None:
        """Append events with their ids (refused if an id exists: histories only grow)."""
        self.log.append(self.txn, run_key, events)

    def read_history(self, run_key: bytes, from_event_id: int = 1, to_event_id: int = 0) -> list[Event]:
        """Events of a run, decoded from the map."""
        events: list[Event] = self.log.read(self.txn, run_key, from_event_id, to_event_id)
        return events

    # -- workflow tasks
    def wtask(self, task_queue: str, run_key: bytes) -> WorkflowTaskLease | None:
        """The run's workflow task, or None."""
        raw = self.txn.get(wtask_key(task_queue, run_key), db=self.dbs.wtask)
        return None if raw is None else decode_lease(raw)

    def put_wtask(self, task_queue: str, run_key: bytes, lease: WorkflowTaskLease) -> None:
        """Create or replace the run's workflow task."""
        self.txn.put(wtask_key(task_queue, run_key), encode(lease), db=self.dbs.wtask)
        if not lease.owner:
            self.marks.add(wtask_topic(task_queue))

    def delete_wtask(self, task_queue: str, run_key: bytes) -> None:
        """Drop the run's workflow task."""
        self.txn.delete(wtask_key(task_queue, run_key), db=self.dbs.wtask)

    # -- worker versioning
    def current_build(self, task_queue: str) -> str | None:
        """The queue's current build (the ``builds`` database, cached like run records)."""
        builds = self.cache.builds
        if builds is None:
            builds = self.cache.builds = read_builds(self.txn, self.dbs.builds)
        return builds.get(task_queue)

    def set_current_build(self, task_queue: str, build_id: str | None, now_us: int) -> None:
        """Set (or, None, remove) the queue's current build."""
        key = task_queue.encode()
        if build_id is None:
            self.txn.delete(key, db=self.dbs.builds)
        else:
            self.txn.put(key, orjson.dumps({"build": build_id, "at": now_us}), db=self.dbs.builds)
        self.cache.builds = None  # read again (in this transaction) when next needed
        self.marks.add(wtask_topic(task_queue))  # other workers may now take (or no longer take) its tasks

    # -- activity tasks
    def atask(self, task_queue: str, run_key: bytes, seq: int) -> tuple[ActivityMeta, bytes, bytes] | None:
        """An activity attempt: meta, arguments, heartbeat details."""
        raw = self.txn.get(atask_key(task_queue, run_key, seq), db=self.dbs.atask)
        if raw is None:
            return None
        meta_b, args, details = unpack(raw)
        return decode_activity_meta(meta_b), args, details

    def put_atask(self, task_queue: str, run_key: bytes, seq: int, meta: ActivityMeta, args: bytes,
                  details: bytes) -> None:
        """Create or replace an activity attempt."""
        self.txn.put(atask_key(task_queue, run_key, seq), pack(encode(meta), args, details), db=self.dbs.atask)
        if not meta.owner:
            self.marks.add(atask_topic(task_queue))

    def delete_atask(self, task_queue: str, run_key: bytes, seq: int) -> None:
        """Drop an activity attempt."""
        self.txn.delete(atask_key(task_queue, run_key, seq), db=self.dbs.atask)

    # -- timers
    def put_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        """A timer due at ``fire_us``."""
        self.txn.put(timer_key(fire_us, run_key, seq), b"", db=self.dbs.timer)
        self.marks.add(TIMERS)

    def delete_timer(self, fire_us: int, run_key: bytes, seq: int) -> None:
        """Drop a timer."""
        self.txn.delete(timer_key(fire_us, run_key, seq), db=self.dbs.timer)
