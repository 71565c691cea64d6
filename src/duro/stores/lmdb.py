"""LmdbStore: the embedded store — an LMDB environment on disk, written by one group-commit thread.

The run state machine is ``duro.engine.machine``; this module is its LMDB adapter: the group
commit, the threads, cross-process wake-ups, and the selection of items for claims, reaps and due
timers. The records' keys are in ``duro.stores.lmdb_tx`` (runs, wf, wtask, atask, timer) and the
history's in ``duro._core.log``. Besides those, this module keeps:

- ``meta``     b"batch"                                 -> id of the last batch (written by every batch)
               b"chg" + 0x00 + topic (``mark_key``)     -> id of the last batch that changed the topic
- ``req``      queue + 0x00 + request id                -> pack(JSON {kind, run, name}, args): a query or
                                                            update for whichever worker of the queue has it
- ``resp``     request id                               -> pack(JSON {ok}, payload): the answer

Durability: every state change is an *op* run by the writer thread inside one write transaction
shared by all ops queued at that moment (group commit). The environment syncs each commit's data
pages before writing its meta page (LMDB's integrity) and leaves the meta page unsynced
(``metasync=False``). Once a commit is applied, the writer answers the ops of this process's own
worker (``Op.internal``: a workflow task without outside inputs, an activity's outcome) and hands
out the tasks the batch created, then goes on with the next batch; the syncer thread syncs (one
``env.sync()``, outside LMDB's write lock, for every commit since its last) and only then answers
everything else: callers (a start, a signal, an update...), result waiters, update waiters. So
only acknowledgements wait for the sync: whatever the worker records after going on is in a later
commit of the same writer, durable only after this one. A failed sync is fatal for the store in
this process (``_sync_failed``). Each batch also writes change marks (``meta`` b"chg" + 0x00 +
topic) for what it changed that other processes may act on, so their watchers wake only the
listeners concerned (``on_foreign_change``). An op writes all of its changes or none: one that
raises after writing makes the batch run again with each op in a nested transaction (see
``_commit_batch``).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlparse

import orjson

from duro import _metrics
from duro._aio import wait_event
from duro._core import mdb
from duro._core.codec import Event
from duro._core.log import HistoryLog
from duro.engine.machine import LAPSED_LEASE_FAILURE, Effects, Machine, run_info
from duro.engine.records import (
    ActivityMeta,
    WorkflowTaskLease,
    decode_activity_meta,
    decode_lease,
    decode_run,
)
from duro.errors import StoreCorruptedError, StoreError, StoreURLError, WorkflowNotFoundError
from duro.stores import lmdb_visibility as visibility
from duro.stores.base import (
    CLOSED,
    RUNNING,
    ActivityOutcome,
    ActivityTask,
    ActivityTaskReady,
    Clock,
    Dispatch,
    Effect,
    ListQuery,
    LocalReads,
    QueueVersioning,
    RunClosed,
    RunInfo,
    StartRequest,
    UpdateCompleted,
    WorkflowTaskCompletion,
    check_topics,
    new_run_id,
    pack,
    parse_retention_days,
    request_topic,
    run_key_of,
    unpack,
)
from duro.stores.batch import Op, answer_batch, resolve, store_error
from duro.stores.lmdb_files import check_lmdb_files
from duro.stores.lmdb_schedules import LmdbSchedules
from duro.stores.lmdb_tx import U64, LmdbTx, RunCache, atask_key

__all__ = ["MARK_PREFIX", "LmdbStore", "mark_key", "open_lmdb_store"]

log = logging.getLogger("duro.store")

def _host_id() -> str:
    """This machine and pid namespace, as lease owners name them (no ``:``, the token's separator).

    The host name alone is not enough: two containers with the host's network (or two machines
    with the same name) share it, and each would take the other's pids for its own and free live
    leases. The boot id and the pid namespace tell them apart where Linux has them.
    """
    name = socket.gethostname().replace(":", "_")
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            boot = f.read().strip()
        where = boot + os.readlink("/proc/self/ns/pid").encode()
    except OSError:  # not Linux: the host name is what there is
        return name
    return f"{name}~{hashlib.blake2b(where, digest_size=4).hexdigest()}"


_HOST = _host_id()


def _start_time(pid: int) -> str:
    """When process ``pid`` started, as the kernel counts it ("" where unknown): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22 (starttime); the command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


def _make_owner() -> str:
    pid = os.getpid()
    return f"{_HOST}:{pid}:{_start_time(pid)}:{uuid.uuid4().hex[:8]}"


# Owner token of this process: leases it takes carry it, so another process on the same machine
# can tell a dead owner (pid gone, a zombie, or the pid reused by a later process) from a live one
# and take its tasks over at once. Made anew in a forked child (see _after_fork).
OWNER = _make_owner()
DEFAULT_MAP_SIZE = 1 << 36
DEFAULT_MAX_MAP_SIZE = 1 << 40
WTASK_LEASE_S = 30.0
WTASK_RETRY_INITIAL_S = 0.5
WTASK_RETRY_MAX_S = 60.0
ATASK_LEASE_SLACK_S = 30.0
DEFAULT_ACTIVITY_TIMEOUT_S = 300.0
def _us(t: float) -> int:
    return round(t * 1_000_000)


def owner_alive(owner: str) -> bool:
    """Whether the process that took a lease still runs (only answerable on this host)."""
    if owner == OWNER:
        return True
    host, _, rest = owner.partition(":")
    if host != _HOST:
        return True
    parts = rest.split(":")
    try:
        pid = int(parts[0])
    except ValueError:
        return True
    started = parts[1] if len(parts) == 3 else ""  # tokens of duro 0.1 carry no start time
    if pid == os.getpid():
        return False  # an earlier process with our pid (we are not it: the token differs)
    return _pid_alive(pid, started)


def _pid_alive(pid: int, started: str) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate the process there
        return _windows_pid_alive(pid)
    if os.path.isdir("/proc/self"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except FileNotFoundError:
            return False
        except OSError:
            return True
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields and fields[0] in (b"Z", b"X"):
            return False  # a zombie runs no code: its leases are free
        return not started or (len(fields) > 19 and fields[19].decode() == started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _windows_pid_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return False
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return bool(code.value == 259)  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


_Batch = Effects  # what one group commit collected: the worker's part applied after the commit, the rest after the sync


_T = TypeVar("_T")


def _take_queued(q: queue.SimpleQueue[_T | None], first: _T, limit: int) -> tuple[list[_T], bool]:
    """``first`` and what ``q`` holds now (at most ``limit`` in all); True if the stop mark (None) came too."""
    items = [first]
    while len(items) < limit:
        try:
            nxt = q.get_nowait()
        except queue.Empty:
            break
        if nxt is None:
            return items, True
        items.append(nxt)
    return items, False


MARK_PREFIX = b"chg\x00"  # of the ``meta`` keys that hold change marks (``mark_key``)


def mark_key(topic: str) -> bytes:
    """The ``meta`` key of a topic's change mark; a long topic (a queue name of hundreds of bytes) by its hash.

    Keys stay well under LMDB's 511 bytes, so writing a mark can never fail a batch.
    """
    raw = topic.encode()
    return MARK_PREFIX + (raw if len(raw) <= 256 else b"#" + hashlib.blake2b(raw, digest_size=16).digest())


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    """Resolve a waiter from whichever loop runs this: its own loop may be another thread's."""
    loop = fut.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        if not fut.done():
            fut.set_result(value)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(lambda: None if fut.done() else fut.set_result(value))


class _Redo(Exception):
    """An op failed after writing: the batch is aborted and run again with each op isolated."""


_OPEN: dict[str, LmdbStore] = {}
_OPEN_LOCK = threading.Lock()


def _after_fork() -> None:
    """In a forked child: a new owner token, and no store shared with the parent.

    LMDB environments must not be used across fork, and the parent's writer and watcher threads
    do not exist in the child: the child opens its own store when it connects.
    """
    global OWNER, _OPEN_LOCK
    OWNER = _make_owner()
    _OPEN_LOCK = threading.Lock()
    for store in _OPEN.values():
        store._forked = True
        store._closed = True
        store.env.forget()
    _OPEN.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def parse_lmdb_url(url: str) -> tuple[str, dict[str, int]]:
    """The absolute directory and the size options (``map_size``, ``max_map_size``; 0: default) of a URL."""
    parsed = urlparse(url)
    if parsed.scheme != "lmdb":
        raise StoreURLError(f"not an LMDB URL: {url!r}; expected lmdb://PATH (for example lmdb://./duro-data)")
    raw = (parsed.netloc + parsed.path) if parsed.netloc not in ("", "localhost") else parsed.path
    if not raw:
        raise StoreURLError(f"LMDB URL {url!r} names no directory; expected lmdb://PATH such as lmdb://./duro-data")
    opts = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    unknown = set(opts) - {"map_size", "max_map_size", "retention_days"}
    if unknown:
        raise StoreURLError(f"unknown LMDB URL option(s) {sorted(unknown)} in {url!r}; known: map_size, "
                            "max_map_size, retention_days")
    sizes = {}
    for name, default in (("map_size", DEFAULT_MAP_SIZE), ("max_map_size", 0)):
        try:
            sizes[name] = int(opts.get(name, default))
        except ValueError:
            raise StoreURLError(f"{name} in {url!r} must be an integer number of bytes") from None
        if sizes[name] < 0 or (name == "map_size" and sizes[name] < 1 << 16):
            raise StoreURLError(f"{name} in {url!r} must be at least 65536 bytes, got {sizes[name]}")
    sizes["retention_us"] = parse_retention_days(opts.get("retention_days"), url)
    return str(Path(raw).expanduser().resolve()), sizes


def open_environment(path: str) -> mdb.Environment | None:
    """The LMDB environment of the store at ``path`` if this process has it open (to share, not reopen)."""
    with _OPEN_LOCK:
        store = _OPEN.get(path)
        return None if store is None or store._closed else store.env


def open_lmdb_store(url: str) -> LmdbStore:
    """Open (or share) the store at an ``lmdb://PATH`` URL; one environment per path per process.

    LMDB must not be opened twice in one process, so clients and workers of one process that name
    the same path share one LmdbStore (reference counted by ``close``).
    """
    path, sizes = parse_lmdb_url(url)
    with _OPEN_LOCK:
        store = _OPEN.get(path)
        if store is None or store._closed:
            store = LmdbStore(path, map_size=sizes["map_size"], max_map_size=sizes["max_map_size"] or None,
                              retention_us=sizes["retention_us"])
            _OPEN[path] = store
        store._refs += 1
        return store


class Dbs:
    """The named databases the state machine's records live in (see lmdb_tx)."""

    __slots__ = ("atask", "builds", "runs", "sched", "timer", "vis", "wf", "wtask")

    def __init__(self, runs: mdb.Database, wf: mdb.Database, wtask: mdb.Database, atask: mdb.Database,
                 timer: mdb.Database, vis: mdb.Database, sched: mdb.Database, builds: mdb.Database) -> None:
        self.runs, self.wf, self.wtask, self.atask, self.timer = runs, wf, wtask, atask, timer
        self.vis = vis
        self.sched = sched  # schedules and their due index (see lmdb_schedules)
        self.builds = builds  # each task queue's current build (worker versioning; see lmdb_tx)


class LmdbStore(LocalReads, LmdbSchedules):
    """The embedded store on an LMDB environment (see the module docstring for the layout)."""

    def __init__(self, path: str, *, map_size: int = DEFAULT_MAP_SIZE, max_map_size: int | None = None,
                 retention_us: int = 0) -> None:
        directory = Path(path)
        if not directory.exists():
            # Owner-only, whatever the umask: the store holds business data.
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        elif not directory.is_dir():
            raise StoreError(f"the LMDB store path {path} exists and is not a directory: name a directory")
        self.path = path
        self.url = f"lmdb://{path}"
        self.retention_us = retention_us  # closed runs older than this are purged (0: never)
        self.clock = Clock()
        # Before LMDB maps the file: a truncated or overwritten data.mdb would otherwise kill the
        # process with SIGBUS on first access, or read as an empty store.
        check_lmdb_files(path)
        # The map grows by itself (doubling) up to this; past it a full map is a StoreFullError.
        self.max_map_size = max(map_size, max_map_size or DEFAULT_MAX_MAP_SIZE)
        # metasync=False: a commit syncs its data pages under LMDB's write lock; its meta page is
        # synced after the lock is released (_sync_through), before any caller outside this
        # process's worker is answered and before a client answers from a read (adurable). The
        # lock is then held for one sync, not two, so other processes' commits wait half as long.
        self.env = mdb.Environment(path, map_size=map_size, max_dbs=16, max_readers=1024, sync=True,
                                   metasync=False)
        self._history_db = self.env.open_db(b"history")
        self._runs = self.env.open_db(b"runs")
        self._wf = self.env.open_db(b"wf")
        self._wtask = self.env.open_db(b"wtask")
        self._atask = self.env.open_db(b"atask")
        self._timer = self.env.open_db(b"timer")
        self._meta = self.env.open_db(b"meta")
        self._req = self.env.open_db(b"req")
        self._resp = self.env.open_db(b"resp")
        self._vis = self.env.open_db(b"vis")  # see lmdb_visibility
        self._sched = self.env.open_db(b"sched")  # see lmdb_schedules
        self._builds = self.env.open_db(b"builds")  # see lmdb_tx
        self.env.reader_check()
        self.log = HistoryLog(self.env, self._history_db)
        self._refs = 0
        self._closed = False
        self._forked = False
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()
        # The workers of this process (duro._local): set by the client side, None when there are none.
        self.dispatch: Dispatch | None = None
        #: Hand new activity attempts to this process's workers before the commit itself (see
        #: _hand_out_activities), not once it is applied, as the batch's other tasks are. Off by
        #: default: with W1's instant activities it gained nothing measurable (BENCHMARKS.md, W1L).
        self.early_activities = False
        self._waiters: dict[bytes, list[asyncio.Future[RunInfo]]] = {}
        self._update_waiters: dict[str, asyncio.Future[bytes]] = {}
        # (loop, fn, topics): fn is called on loop after another process's commit that marked one of
        # its topics (None: after any), see on_foreign_change and lmdb_tx's marks.
        self._change_listeners: list[tuple[asyncio.AbstractEventLoop, Callable[[], None], frozenset[str] | None]] = []
        self._marks: set[str] = set()  # the topics the batch being written changed (writer thread)
        self._marks_seen: dict[str, bytes] = {}  # topic -> the mark the watcher saw last (watcher thread)
        self._own_txns: set[int] = set()
        self._wcache = RunCache()
        self._sync_failure: StoreError | None = None  # set when a sync after a commit failed (fatal)
        # The newest transaction known to be on disk (synced by the syncer or the writer, or by a
        # reader before it answered from another process's commit): see _ensure_durable.
        self._synced_txn = 0
        self.dbs = Dbs(self._runs, self._wf, self._wtask, self._atask, self._timer, self._vis, self._sched,
                       self._builds)
        self._index_visibility()
        self.machine = Machine(OWNER, lambda: _us(self.clock.now()))
        self._last_own_txn = -1
        with self.env.begin() as snap:
            self._seen_txn = snap.id()
        # Counters for benchmarks and profiling: batches, ops, seconds running ops / in commit+fsync.
        self.commits = 0
        self.commit_failures = 0
        self.map_growths = 0
        self.ops_committed = 0
        self.time_in_ops = 0.0  # from the batch's start to its commit: includes the lock wait below
        self.time_in_commit = 0.0  # commit: pages written, data synced, under the lock (the meta sync is apart)
        self.time_waiting_lock = 0.0  # in begin(write=True): LMDB's write lock (another process's), then the GIL
        # Meta syncs after commits, outside the lock (the syncer's, the writer's, a reader's): updated
        # from more than one thread without a lock, a benchmark figure that may miss an update.
        self.time_in_sync = 0.0
        # (txn id, ops, results, effects) of committed batches whose callers wait for their sync.
        self._sync_queue: queue.SimpleQueue[tuple[int, list[Op], list[tuple[bool, Any]], list[Effect]] | None] = (
            queue.SimpleQueue())
        # Batches handed to the syncer (counted by the writer) and answered by it (counted by the
        # syncer; one writer per counter, so no update is lost): the writer syncs a batch itself only
        # when the two are equal, so answers stay in commit order.
        self._sync_handed = 0
        self._sync_answered = 0
        self._syncer = threading.Thread(target=self._syncer_main, name="duro-lmdb-syncer", daemon=True)
        self._syncer.start()
        self._writer = threading.Thread(target=self._writer_main, name="duro-lmdb-writer", daemon=True)
        self._writer.start()
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_main, name="duro-lmdb-watch", daemon=True)
        self._watcher.start()

    # ------------------------------------------------------------------ group commit machinery

    def _submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue an op for the writer; its future is answered once its commit is durable."""
        return self._enqueue(fn, args, False)

    def _submit_internal(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue an op of this process's worker: answered once its commit is applied, before the sync (see Op)."""
        return self._enqueue(fn, args, True)

    def _enqueue(self, fn: Callable[..., Any], args: tuple[Any, ...], internal: bool) -> asyncio.Future[Any]:
        if self._forked:
            raise StoreError(f"the store at {self.path} was opened before this process forked; connect "
                             "again in the child (duro.Client.connect) to open it there")
        if self._closed:
            raise RuntimeError(f"the store at {self.path} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.put(Op(fn, args, loop, fut, internal))
        return fut

    def _writer_main(self) -> None:
        q = self._queue
        while True:
            op = q.get()
            if op is None:
                break
            # Whatever else is queued shares this transaction and its sync.
            ops, stop = _take_queued(q, op, 4096)
            self._commit_batch(ops)
            if stop:
                break
        self._sync_queue.put(None)  # the syncer answers what is left, then stops

    def _commit_batch(self, ops: list[Op]) -> None:
        """Run ``ops`` in one write transaction and answer them (module docstring); each op writes all or none.

        Fast path: every op runs in the shared transaction. An op that raises before writing
        anything (its checks failed) just fails alone. An op that raises after writing poisons the
        shared transaction: it is aborted and the batch runs again with each op in a nested
        transaction, so the failing op's writes are dropped and the others commit. A full map
        grows the map and runs the batch again.
        """
        t0 = time.perf_counter()
        if self._sync_failure is not None:
            answer_batch(ops, [(False, self._sync_failure)] * len(ops), [], self._waiters, self._update_waiters,
                         self.dispatch)
            return
        isolate = False
        tid = -1  # the committed transaction's id (-1: the batch failed as a whole)
        # Activity attempts handed to this process's workers before the commit (see _run_batch):
        # a run of the batch again (a grown map) must not hand them out twice.
        early: set[tuple[bytes, int, int]] = set()
        while True:
            batch = _Batch()
            try:
                results, t1, tid = self._run_batch(ops, batch, isolate, early)
            except _Redo:
                isolate = True
                self._wcache.clear()
                continue
            except mdb.MapFullError as e:
                self._wcache.clear()
                if self._grow_map():
                    continue
                results, t1 = [(False, store_error(e))] * len(ops), time.perf_counter()
                batch.rollback(0)
            except Exception as e:  # the commit itself failed: nothing of the batch is durable
                self._wcache.clear()
                results, t1 = [(False, store_error(e))] * len(ops), time.perf_counter()
                batch.rollback(0)
                if isinstance(e, mdb.Error):
                    self.commit_failures += 1
            break
        self.time_in_ops += t1 - t0
        self.time_in_commit += time.perf_counter() - t1
        self.commits += 1
        self.ops_committed += len(ops)
        if _metrics.ENABLED:
            _metrics.RECORDER.store_committed("lmdb", len(ops), time.perf_counter() - t0)
        if tid < 0:  # nothing of it was written: every op fails now
            answer_batch(ops, results, batch.effects, self._waiters, self._update_waiters, self.dispatch)
            return
        # Applied: this process's worker goes on now (its ops, and the tasks the batch handed out);
        # callers outside, result and update waiters are answered by the syncer once it is durable.
        internal = [i for i, op in enumerate(ops) if op.internal]
        tasks: list[Effect] = [e for e in batch.effects if not isinstance(e, RunClosed | UpdateCompleted)]
        if internal or tasks:  # one wake-up per loop, as answer_batch groups them
            answer_batch([ops[i] for i in internal], [results[i] for i in internal], tasks, {}, {}, self.dispatch)
        external = [i for i, op in enumerate(ops) if not op.internal]
        closes: list[Effect] = [e for e in batch.effects if isinstance(e, RunClosed | UpdateCompleted)]
        item = (tid, [ops[i] for i in external], [results[i] for i in external], closes)
        if (external or closes) and self._queue.empty() and self._sync_handed == self._sync_answered:
            # Someone waits, nothing is queued behind it and nothing of earlier batches is unanswered:
            # sync here, as the syncer would, without the hop to its thread (a caller waiting alone
            # gets its answer one wake-up sooner; answers stay in commit order).
            self._answer_durable([item])
        else:
            # The syncer syncs while this thread goes on with the next batch: the worker's own next
            # step, say, which a batch that answers nobody outside this process is followed by.
            self._sync_handed += 1
            self._sync_queue.put(item)

    def _syncer_main(self) -> None:
        """Sync commits and answer what waits for their durability, in commit order (the syncer thread).

        One ``env.sync()`` makes every commit so far durable (metasync=False: a commit leaves its meta
        page unsynced), so the syncer takes everything committed meanwhile and syncs once, while the
        writer goes on with the next batch. The next commit's own data sync flushes that meta page
        too: when one has already happened (of any process), the syncer answers without syncing; it
        does not wait for one, so an answer is not held back by a batch cycle.
        """
        q = self._sync_queue
        stop = False
        while not stop:
            item = q.get()
            if item is None:
                return
            items, stop = _take_queued(q, item, 1 << 30)
            self._answer_durable(items)
            self._sync_answered += len(items)

    def _answer_durable(self, items: list[tuple[int, list[Op], list[tuple[bool, Any]], list[Effect]]]) -> None:
        """``_sync_and_answer``, and should it raise (a bug), these callers get the error: none waits forever.

        The thread goes on either way (the writer, or the syncer, which the writer keeps handing
        batches to).
        """
        try:
            self._sync_and_answer(items)
        except Exception as e:
            log.exception("answering committed batches of %s failed", self.path)
            failed = store_error(e)
            for _tid, ops, _results, _closes in items:
                with contextlib.suppress(Exception):
                    answer_batch(ops, [(False, failed)] * len(ops), [], {}, {}, None)

    def _sync_and_answer(self, items: list[tuple[int, list[Op], list[tuple[bool, Any]], list[Effect]]]) -> None:
        """One sync for these committed batches, then their callers' answers, in order (writer or syncer thread)."""
        failure = self._sync_through(max(i[0] for i in items))
        for _tid, ops, results, closes in items:
            if failure is not None:
                results, closes = [(False, failure)] * len(ops), []
            answer_batch(ops, results, closes, self._waiters, self._update_waiters, None)

    def _sync_through(self, txn_id: int) -> StoreError | None:
        """Make every commit up to ``txn_id`` durable (any thread); the failure that makes it impossible.

        One ``env.sync()`` flushes every commit so far, whoever made it. None when they are durable;
        after a failed sync, that failure for good (see ``_sync_failed``): a later sync that succeeds
        does not bring back pages the kernel dropped.
        """
        failure = self._sync_failure
        if failure is not None or txn_id <= self._synced_txn:
            return failure
        if self.env.last_txnid() > txn_id:
            # A later commit (of any process) has already synced its data pages, and with them the
            # meta pages written before it: LMDB publishes a commit's id only after that sync.
            self._synced_txn = max(self._synced_txn, txn_id)
            return None
        s0 = time.perf_counter()
        try:
            self.env.sync()
        except Exception as e:
            return self._sync_failed(e)
        finally:
            self.time_in_sync += time.perf_counter() - s0
        self._synced_txn = max(self._synced_txn, txn_id)
        return None

    def _sync_failed(self, e: Exception) -> StoreError:
        """A sync failed: the store takes no more writes in this process (any thread); the error to answer with.

        The commits since the last good sync are in LMDB, perhaps not on disk, and after a failed
        fsync the page cache cannot be trusted (the kernel may have dropped the dirty pages).
        Nothing waiting for them is acknowledged: what is durable is what a new process reads when
        it opens the store again. StoreCorruptedError: retrying cannot cure it (workers stop
        retrying their reports), and every result and update waiter is failed with it.
        """
        failure = StoreCorruptedError(
            f"the LMDB store at {self.path} could not sync a commit to disk ({e}); "
            "it accepts no more writes in this process, and the last changes may not be durable. "
            "Fix the disk, then restart the process: it reads what was written durably",
            path=os.path.join(self.path, "data.mdb"))
        self._sync_failure = failure
        self.commit_failures += 1
        log.error("%s", failure)
        self._fail_waiters(failure)
        return failure

    def _run_batch(self, ops: list[Op], batch: _Batch, isolate: bool,
                   early: set[tuple[bytes, int, int]]) -> tuple[list[tuple[bool, Any]], float, int]:
        """One attempt at a batch; the per-op results, when the ops ended (commit follows), the txn id."""
        results: list[tuple[bool, Any]] = []
        tid = -1
        try:
            w0 = time.perf_counter()
            with self.env.begin(write=True) as txn:
                self.time_waiting_lock += time.perf_counter() - w0
                tid = txn.id()
                self._own_txns.add(tid)
                if tid != self._last_own_txn + 1:
                    self._wcache.clear()
                # Every batch writes this key, so every batch commits and consumes its txn id: LMDB
                # does not advance the id for a write transaction that changed nothing, and another
                # process's next commit would then carry the id we noted as ours (and be missed).
                stamp = U64.pack(tid)
                txn.put(b"batch", stamp, db=self._meta)
                marks = self._marks
                marks.clear()
                for op in ops:
                    mark = batch.mark()
                    if isolate:
                        results.append(self._run_isolated(txn, batch, op))
                        continue
                    writes = txn.writes
                    try:
                        results.append((True, op.fn(txn, batch, *op.args)))
                    except Exception as e:
                        if txn.writes != writes or isinstance(e, mdb.Error):
                            raise _Redo from e  # it wrote (or broke the txn) before failing
                        # Nothing of it is in txn; but it may have changed a cached record in
                        # memory before raising: later ops must read records from txn.
                        self._wcache.clear()
                        batch.rollback(mark)
                        results.append((False, store_error(e)))
                for topic in marks:  # after the ops: what they changed, for other processes' watchers
                    txn.put(mark_key(topic), stamp, db=self._meta)
                t1 = time.perf_counter()
                if self.early_activities:
                    self._hand_out_activities(batch, early)
            # Leaving the with-block committed the transaction and synced its data pages.
            self._last_own_txn = tid
        except BaseException:
            self._own_txns.discard(tid)
            raise
        # Its meta page is written but not synced (metasync=False): the syncer makes it durable.
        return results, t1, tid

    def _hand_out_activities(self, batch: _Batch, early: set[tuple[bytes, int, int]]) -> None:
        """Give the batch's new activity attempts to this process's workers now, before the fsync.

        An activity may start while the commit that schedules it is in flight: activities run at
        least once anyway, and its outcome can only be recorded by a later batch (this thread runs
        batches one after the other), so nothing is recorded on top of a schedule that is not
        durable. If this commit fails, the attempt ran for nothing: its outcome finds no attempt
        ("stale") and is dropped, and the workflow task that scheduled it runs again. Nothing is
        acknowledged to a caller any earlier: callers' futures and result waiters still wait for
        the sync. The effects go out on the dispatch loop's next turn, while this thread commits.
        """
        dispatch = self.dispatch
        if dispatch is None or dispatch.loop is None or not batch.effects:
            return
        ready: list[Effect] = []
        kept: list[Effect] = []
        for eff in batch.effects:
            if isinstance(eff, ActivityTaskReady):
                t = eff.task
                key = (t.run_key, t.seq, t.attempt)
                if key not in early:
                    early.add(key)
                    ready.append(eff)
            else:
                kept.append(eff)
        if ready:
            batch.effects[:] = kept
            loop = dispatch.loop
            if not loop.is_closed():
                loop.call_soon_threadsafe(dispatch.deliver, ready)

    def _run_isolated(self, txn: mdb.Transaction, batch: _Batch, op: Op) -> tuple[bool, Any]:
        """Run one op in a nested transaction: its writes join ``txn`` only if it succeeds."""
        mark = batch.mark()
        # Cold cache for each op: a failed op's in-memory edits must not leak into the next.
        self._wcache.clear()
        child = self.env.begin(write=True, parent=txn)
        try:
            value = op.fn(child, batch, *op.args)
        except mdb.MapFullError:
            child.abort()
            raise  # grow the map and run the batch again
        except Exception as e:
            child.abort()
            self._wcache.clear()
            batch.rollback(mark)
            return False, store_error(e)
        child.commit()
        return True, value

    def _grow_map(self) -> bool:
        """Double the map (up to ``max_map_size``); False when it cannot grow further."""
        size = int(self.env.info()["map_size"])
        if size >= self.max_map_size:
            return False
        new = min(size * 2, self.max_map_size)
        if not self.env.resize(new):
            return False
        self.map_growths += 1
        return True

    def _watch_main(self) -> None:
        """Notice commits of other processes (LMDB's last txn id moved past our own commits)."""
        delay = 0.0005
        while not self._watch_stop.wait(delay):
            try:
                # The id of a fresh read snapshot, not env.last_txnid(): LMDB advances the latter
                # a moment before a new reader can see the commit, and a waiter woken in that gap
                # would read the old state and never be woken again.
                with self.env.begin() as snap:
                    last = snap.id()
                    changed = self._changed_topics(snap) if last != self._seen_txn else set()
            except mdb.Error as e:
                if self._closed:
                    return
                # Keep watching: a transient failure (a resize that took too long, a full reader
                # table) must not leave this process deaf to other processes' commits.
                log.warning("watching %s for other processes' commits failed: %s", self.path, e)
                delay = 0.05
                continue
            if last == self._seen_txn:
                delay = min(delay * 2, 0.004)
                continue
            foreign = any(t not in self._own_txns for t in range(self._seen_txn + 1, last + 1))
            for t in range(self._seen_txn + 1, last + 1):
                self._own_txns.discard(t)
            self._seen_txn = last
            if foreign:
                delay = 0.0005
                for loop, fn, topics in list(self._change_listeners):
                    if (topics is None or not topics.isdisjoint(changed)) and not loop.is_closed():
                        loop.call_soon_threadsafe(fn)
                if CLOSED in changed:
                    try:
                        self._recheck_waiters()
                    except Exception as e:  # keep watching; waiters of a store that cannot sync are failed
                        log.warning("releasing waiters of runs closed by another process failed: %s", e)
                        if self._sync_failure is not None:
                            self._fail_waiters(self._sync_failure)

    def _changed_topics(self, snap: mdb.Transaction) -> set[str]:
        """The listened-to topics whose change mark moved since the watcher last looked (watcher thread).

        A mark moved by this process's own commit counts too (the watcher does not know which commit
        wrote it): a spurious wake-up, never a missed one.
        """
        topics: set[str] = {CLOSED}
        for _loop, _fn, wanted in list(self._change_listeners):
            if wanted is not None:
                topics |= wanted
        seen = self._marks_seen
        moved: dict[str, bytes] = {}
        for topic in topics:
            mark = snap.get(mark_key(topic), db=self._meta)
            if mark is not None and seen.get(topic) != mark:
                moved[topic] = mark
        seen.update(moved)  # only after every read succeeded: a failed pass is done again whole
        return set(moved)

    def on_foreign_change(self, fn: Callable[[], None], topics: Iterable[str] | None = None) -> Callable[[], None]:
        """Call ``fn`` on the current loop when another process commits; returns an unsubscriber.

        With ``topics`` (``duro.stores.base``'s ``wtask_topic(queue)``, ``TIMERS``, ...), only
        after a commit that changed one of them: a worker is not woken by commits that cannot
        concern it (other processes' own steps), which would cost it a read or a claim each.
        """
        entry = (asyncio.get_running_loop(), fn, check_topics(topics))
        self._change_listeners.append(entry)

        def remove() -> None:
            if entry in self._change_listeners:
                self._change_listeners.remove(entry)

        return remove

    def set_dispatch(self, dispatch: Dispatch | None) -> None:
        """Hand this process's tasks to ``dispatch`` after each commit (None: nobody here takes any)."""
        self.dispatch = dispatch
        self.machine.local = dispatch

    async def close(self) -> None:
        """Drop one reference; the last one stops the threads and closes the environment."""
        with _OPEN_LOCK:
            self._refs -= 1
            if self._refs > 0 or self._closed:
                return
            self._closed = True
            if _OPEN.get(self.path) is self:
                del _OPEN[self.path]
        self._queue.put(None)
        self._watch_stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self._join_threads)
        self.env.close()

    def _join_threads(self) -> None:
        self._writer.join()
        self._syncer.join()
        self._watcher.join()

    # ------------------------------------------------------------------ records and transitions
    # The transitions live in duro.engine.machine; an op here runs one of them on an LmdbTx of the
    # batch's transaction (or selects the items a sweep works on: claims, reaps, due timers).

    def _tx(self, txn: mdb.Transaction) -> LmdbTx:
        return LmdbTx(txn, self.dbs, self.log, self._wcache, self._marks)

    def tx(self, txn: mdb.Transaction) -> LmdbTx:
        """The state machine's ``Tx`` on a write transaction of this store (inside an op of ``apply``)."""
        return self._tx(txn)

    async def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(txn, batch, *args)`` as one op of the next group commit and return its result.

        For store-level tools (``duro copy``): ``fn`` writes through ``tx(txn)``; what it writes is
        durable when this returns, and nothing of it if it raises.
        """
        return await self._submit(fn, *args)

    def _fail_waiters(self, exc: BaseException) -> None:
        """Fail every result and update waiter of this process (the store can no longer answer them)."""
        futures: list[asyncio.Future[Any]] = [f for futs in list(self._waiters.values()) for f in futs]
        futures += list(self._update_waiters.values())
        for fut in futures:
            loop = fut.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(resolve, fut, False, exc)

    def _ensure_durable(self, txn_id: int) -> None:
        """Make sure transaction ``txn_id`` is on disk before answering from it (any thread; syncs if unsure).

        A commit becomes visible to readers (this process's and others') when its meta page is
        written, a moment before the committing writer has synced that page: an answer read from
        it (a closed run's result, say) must not go out before the sync. Raises the store's sync
        failure (StoreCorruptedError) if it cannot be made durable.
        """
        failure = self._sync_through(txn_id)
        if failure is not None:
            raise failure

    async def adurable(self) -> None:
        """Make what a read has just seen durable before it is answered (see ``Store.adurable``)."""
        txn_id = self.env.last_txnid()  # at least the snapshot of any read made before this call
        if txn_id > self._synced_txn or self._sync_failure is not None:
            await asyncio.to_thread(self._ensure_durable, txn_id)

    def _release_waiters(self, run_key: bytes, info: RunInfo) -> None:
        for fut in self._waiters.pop(run_key, ()):
            _settle(fut, info)

    def _recheck_waiters(self) -> None:
        """After another process's commit closed runs: release this process's waiters of those (watcher thread)."""
        if not self._waiters:
            return
        closed: list[tuple[asyncio.AbstractEventLoop, bytes, RunInfo]] = []
        with self.env.begin() as txn:
            for run_key, futs in list(self._waiters.items()):
                raw = txn.get(run_key, db=self._runs)
                if raw is None or not futs:
                    continue
                rec = decode_run(raw)
                if rec.status != RUNNING:
                    closed.append((futs[0].get_loop(), run_key, run_info(run_key, rec)))
            seen = txn.id()
        if closed:
            self._ensure_durable(seen)  # the other process may not have synced its commit yet
        for loop, run_key, info in closed:
            if not loop.is_closed():
                loop.call_soon_threadsafe(self._release_waiters, run_key, info)

    def _op_start(self, txn: mdb.Transaction, batch: _Batch, req: StartRequest) -> str:
        return self.machine.start(self._tx(txn), batch, req)

    def _op_start_eager(self, txn: mdb.Transaction, batch: _Batch, req: StartRequest, now_us: int,
                        first: WorkflowTaskCompletion) -> int:
        return self.machine.start_eager(self._tx(txn), batch, req, now_us, first)

    def _op_cancel(self, txn: mdb.Transaction, batch: _Batch, workflow_id: str, run_id: str | None) -> None:
        self.machine.cancel(self._tx(txn), batch, workflow_id, run_id)

    def _op_signal(self, txn: mdb.Transaction, batch: _Batch, workflow_id: str, run_id: str | None,
                   name: str, payload: bytes, headers: dict[str, str] | None) -> None:
        self.machine.signal(self._tx(txn), batch, workflow_id, run_id, name, payload, headers)

    def _op_terminate(self, txn: mdb.Transaction, batch: _Batch, workflow_id: str, run_id: str | None,
                      reason: str) -> None:
        self.machine.terminate(self._tx(txn), batch, workflow_id, run_id, reason)

    def _op_delete(self, txn: mdb.Transaction, batch: _Batch, workflow_id: str, run_id: str | None) -> str:
        return self.machine.delete_run(self._tx(txn), batch, workflow_id, run_id)

    def _op_purge(self, txn: mdb.Transaction, batch: _Batch, run_keys: list[bytes], before_us: int) -> int:
        return self.machine.purge(self._tx(txn), batch, run_keys, before_us)

    def _purge_candidates(self, before_us: int, limit: int) -> list[bytes]:
        """Runs closed before ``before_us``, read outside the writer (a scan of the run records)."""
        found: list[bytes] = []
        with self.env.begin() as txn:
            for key, raw in txn.cursor(db=self._runs).iternext():
                rec = decode_run(raw)
                if rec.status != RUNNING and rec.close_us and rec.close_us < before_us:
                    found.append(key)
                    if len(found) >= limit:
                        break
        return found

    def _op_reset(self, txn: mdb.Transaction, batch: _Batch, workflow_id: str, run_id: str | None, event_id: int,
                  reason: str, new_run: str) -> str:
        return self.machine.reset(self._tx(txn), batch, workflow_id, run_id, event_id, reason, new_run)

    def _op_complete_wtask(self, txn: mdb.Transaction, batch: _Batch, c: WorkflowTaskCompletion) -> int:
        return self.machine.complete_wtask(self._tx(txn), batch, c)

    def _op_release_wtask(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, run_key: bytes,
                          seen_through: int) -> None:
        self.machine.release_wtask(self._tx(txn), batch, task_queue, run_key, seen_through)

    def _op_return_wtasks(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, run_keys: list[bytes]) -> int:
        return self.machine.return_wtasks(self._tx(txn), batch, task_queue, run_keys)

    def _op_fail_wtask(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, run_key: bytes, epoch: int,
                       error_type: str, failure: bytes) -> float | None:
        digest = hashlib.blake2b(failure, digest_size=8).hexdigest()
        return self.machine.fail_wtask(self._tx(txn), batch, task_queue, run_key, epoch, error_type, failure, digest)

    def _op_renew_leases(self, txn: mdb.Transaction, batch: _Batch, task_queue: str,
                         items: list[tuple[bytes, int, int]], seconds: float) -> int:
        return self.machine.renew_leases(self._tx(txn), batch, task_queue, items, seconds)

    def _op_complete_activity(self, txn: mdb.Transaction, batch: _Batch, o: ActivityOutcome) -> str:
        return self.machine.complete_activity(self._tx(txn), batch, o)

    def _op_heartbeat(self, txn: mdb.Transaction, batch: _Batch, run_key: bytes, task_queue: str, seq: int,
                      attempt: int, details: bytes | None) -> bool:
        return self.machine.heartbeat(self._tx(txn), batch, run_key, task_queue, seq, attempt, details)

    def _op_hand_off(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, run_key: bytes, seq: int,
                     attempt: int, started_us: int) -> bool:
        return self.machine.hand_off_activity(self._tx(txn), batch, task_queue, run_key, seq, attempt, started_us)

    def _op_complete_by_token(self, txn: mdb.Transaction, batch: _Batch, o: ActivityOutcome) -> str:
        return self.machine.complete_activity_by_token(self._tx(txn), batch, o)

    def _op_heartbeat_by_token(self, txn: mdb.Transaction, batch: _Batch, run_key: bytes, task_queue: str,
                               seq: int, attempt: int, details: bytes | None) -> bool:
        return self.machine.heartbeat_by_token(self._tx(txn), batch, run_key, task_queue, seq, attempt, details)

    def pending_activities(self, run_key: bytes, task_queue: str) -> list[tuple[int, str, ActivityMeta, bytes]]:
        """(seq, task queue, meta, last heartbeat details) of each activity attempt of a run on ``task_queue``."""
        prefix = atask_key(task_queue, run_key, 0)[:-8]
        out: list[tuple[int, str, ActivityMeta, bytes]] = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._atask)
            if cur.set_range(prefix):
                for key, raw in cur:
                    if not key.startswith(prefix):
                        break
                    meta_b, _args, details = unpack(raw)
                    out.append((U64.unpack(key[len(prefix):])[0], task_queue, decode_activity_meta(meta_b), details))
        return out

    def holds_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int) -> bool:
        """Whether this process still holds the lease of an activity attempt (checked before it starts)."""
        with self.env.begin() as txn:
            raw = txn.get(atask_key(task_queue, run_key, seq), db=self._atask)
        if raw is None:
            return False
        meta = decode_activity_meta(unpack(raw)[0])
        return (meta.owner == OWNER and meta.attempt == attempt and not meta.cancel
                and meta.until_us > _us(self.clock.now()))

    def _op_claim_wtasks(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, limit: int,
                         build_id: str | None = None) -> list[bytes]:
        now_us = _us(self.clock.now())
        prefix = task_queue.encode() + b"\x00"
        claimed: list[tuple[bytes, str]] = []
        cur = txn.cursor(db=self._wtask)
        if not cur.set_range(prefix):
            return []
        tx = self._tx(txn)
        current: str | bool | None = False  # the queue's current build, looked up when first needed
        for k, raw in cur:
            key = bytes(k)
            if not key.startswith(prefix) or len(claimed) >= limit:
                break
            lease = decode_lease(raw)
            if lease.visible_us > now_us:
                continue  # a failed task waiting for its retry
            if lease.owner and lease.until_us > now_us and owner_alive(lease.owner):
                continue  # leased (ours too: a local hand-off is in flight) until it expires
            if lease.build:  # the run is pinned: only workers of its build take it
                if lease.build != build_id:
                    continue
            else:  # workers of the queue's current build take it (any worker while it has none)
                if current is False:
                    current = tx.current_build(task_queue)
                if current is not None and current != build_id:
                    continue
            claimed.append((key[len(prefix) :], lease.build))
        for run_key, build in claimed:
            self.machine.lease_wtask(tx, task_queue, run_key, now_us, build)
        return [run_key for run_key, _build in claimed]

    def _op_claim_atasks(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, limit: int) -> list[ActivityTask]:
        now_us = _us(self.clock.now())
        prefix = task_queue.encode() + b"\x00"
        found: list[tuple[bytes, ActivityMeta, bytes, bytes]] = []
        cur = txn.cursor(db=self._atask)
        if not cur.set_range(prefix):
            return []
        for k, raw in cur:
            key = bytes(k)
            if not key.startswith(prefix) or len(found) >= limit:
                break
            meta_b, args, details = unpack(raw)
            meta = decode_activity_meta(meta_b)
            if meta.owner or meta.visible_us > now_us:
                continue
            found.append((key, meta, args, details))
        tx = self._tx(txn)
        tasks = []
        for key, meta, args, details in found:
            rest = key[len(prefix) :]
            task = self.machine.lease_atask(tx, task_queue, rest[:16], U64.unpack(rest[16:])[0], meta, args,
                                            details, now_us)
            if task is not None:
                tasks.append(task)
        return tasks

    def _op_reap(self, txn: mdb.Transaction, batch: _Batch) -> int:
        """Take back tasks whose owner died or whose lease ran out; failed attempts follow the retry policy."""
        now_us = _us(self.clock.now())
        reaped = 0
        dead: dict[str, bool] = {}

        def gone(owner: str, until: int) -> bool:
            if until <= now_us:
                return True
            if owner not in dead:
                dead[owner] = not owner_alive(owner)
            return dead[owner]

        # Leases of this process expire too: a task that its worker lost track of (an error no
        # handler caught, a worker that was shut down) is not stranded until a restart.
        tx = self._tx(txn)
        for k, raw in list(txn.cursor(db=self._wtask)):
            lease = decode_lease(raw)
            if lease.owner and gone(lease.owner, lease.until_us):
                key = bytes(k)  # wtask_key: queue + 0x00 + run key (16 bytes)
                # Given back unowned (put_wtask marks the queue's topic for other processes' workers).
                tx.put_wtask(key[:-17].decode(), key[-16:],
                             WorkflowTaskLease(pinned=lease.pinned) if lease.build else WorkflowTaskLease())
                reaped += 1
        expired: list[ActivityOutcome] = []
        for k, raw in list(txn.cursor(db=self._atask)):
            key = bytes(k)
            meta = decode_activity_meta(unpack(raw)[0])
            if meta.owner and gone(meta.owner, meta.until_us):
                sep = key.index(b"\x00")
                expired.append(ActivityOutcome(run_key=key[sep + 1 : sep + 17], task_queue=key[:sep].decode(),
                                               seq=U64.unpack(key[sep + 17 :])[0], attempt=meta.attempt,
                                               failure=LAPSED_LEASE_FAILURE, error_type="TimeoutError"))
        self._sweep(txn, batch, expired, self._op_complete_activity, "lapsed activity lease")
        return reaped + len(expired)

    def _op_fire_timers(self, txn: mdb.Transaction, batch: _Batch) -> float | None:
        """Fire every due timer; return when the next one is due (None when there is none)."""
        now_us = _us(self.clock.now())
        cur = txn.cursor(db=self._timer)
        due: list[bytes] = []
        next_due = None
        for key in cur.iternext(keys=True, values=False):
            fire_us = U64.unpack(key[:8])[0]
            if fire_us > now_us:
                next_due = fire_us / 1e6
                break
            due.append(bytes(key))

        def fire(child: mdb.Transaction, fx: _Batch, key: bytes) -> None:
            self.machine.fire_timer(self._tx(child), fx, U64.unpack(key[:8])[0], key[8:24],
                                    U64.unpack(key[24:])[0], now_us)

        def drop(key: bytes) -> None:  # a timer that cannot fire must not be due again at once, forever
            txn.delete(key, db=self._timer)

        self._sweep(txn, batch, due, fire, "timer", drop)
        return next_due

    def _sweep(self, txn: mdb.Transaction, batch: _Batch, items: list[Any],
               fn: Callable[[mdb.Transaction, _Batch, Any], object], what: str,
               on_failure: Callable[[Any], None] | None = None) -> None:
        """Apply ``fn`` to each item of a sweep (timers due, leases expired) so one damaged record fails alone.

        All items run in one nested transaction; if one raises, that is dropped and each item
        runs in its own, and a failing item is logged (and handed to ``on_failure``) while the
        others go through. A full map is raised as it is (the batch grows the map and runs again).
        """
        if not items:
            return
        mark = batch.mark()
        child = self.env.begin(write=True, parent=txn)
        try:
            for item in items:
                fn(child, batch, item)
        except mdb.MapFullError:
            child.abort()
            raise
        except Exception:
            child.abort()
            batch.rollback(mark)
            self._wcache.clear()
        else:
            child.commit()
            return
        for item in items:
            mark = batch.mark()
            child = self.env.begin(write=True, parent=txn)
            try:
                fn(child, batch, item)
            except mdb.MapFullError:
                child.abort()
                raise
            except Exception as e:
                child.abort()
                batch.rollback(mark)
                self._wcache.clear()
                log.error("a %s in %s could not be processed (%s: %s); the others went on. A damaged record? "
                          "Run `duro --store %s check`", what, self.path, type(e).__name__, e, self.url)
                if on_failure is not None:
                    on_failure(item)
            else:
                child.commit()

    # ------------------------------------------------------------------ async API

    async def start_workflow(self, req: StartRequest) -> str:
        """Create a run, its WorkflowExecutionStarted event and first workflow task (one commit)."""
        return await self._submit(self._op_start, req)  # type: ignore[no-any-return]

    async def start_workflow_eager(self, req: StartRequest, now_us: int, first: WorkflowTaskCompletion) -> int:
        """Create a run and commit its first workflow task in one transaction; the next event id."""
        return await self._submit(self._op_start_eager, req, now_us, first)  # type: ignore[no-any-return]

    async def signal_workflow(self, workflow_id: str, run_id: str | None, name: str, payload: bytes,
                              headers: dict[str, str] | None = None) -> None:
        """Append a signal (with its interceptor headers) to the open run of ``workflow_id``."""
        await self._submit(self._op_signal, workflow_id, run_id, name, payload, headers)

    async def cancel_workflow(self, workflow_id: str, run_id: str | None) -> None:
        """Ask the open run to cancel: WorkflowExecutionCancelRequested reaches its code."""
        await self._submit(self._op_cancel, workflow_id, run_id)

    def wait_update(self, update_id: str) -> asyncio.Future[bytes]:
        """A future of an update's completion payload (registered before the update is submitted)."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._update_waiters[update_id] = fut
        return fut

    def drop_update_waiter(self, update_id: str) -> None:
        """Forget an update waiter (the update was rejected or the caller gave up)."""
        self._update_waiters.pop(update_id, None)

    async def terminate_workflow(self, workflow_id: str, run_id: str | None, reason: str) -> None:
        """Close the run at once with WorkflowExecutionTerminated."""
        await self._submit(self._op_terminate, workflow_id, run_id, reason)

    def compact(self, destination: str) -> int:
        """Write a compacted copy of the store (free pages left out) into a new directory; its size in bytes.

        The copy is a consistent snapshot taken while workers go on; point workers at it (after
        stopping them) to use it. ``destination`` must not exist, or be an empty directory.

        Raises:
            StoreError: ``destination`` is not empty, or cannot be written.
        """
        dest = Path(destination).expanduser().resolve()
        if dest == Path(self.path):
            raise StoreError(f"compact writes a copy: name another directory than the store's own ({dest})")
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise StoreError(f"{dest} is not an empty directory: name a new one for the compacted copy")
        dest.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.env.copy(str(dest), compact=True)
        except mdb.Error as e:
            raise StoreError(f"could not write the compacted copy into {dest}: {e}") from e
        data = dest / "data.mdb"
        os.chmod(data, 0o600)
        return data.stat().st_size

    async def delete_workflow(self, workflow_id: str, run_id: str | None) -> str:
        """Delete a closed run and its history; its run id."""
        return await self._submit(self._op_delete, workflow_id, run_id)  # type: ignore[no-any-return]

    async def purge(self, before_us: int, limit: int = 1000) -> int:
        """Delete up to ``limit`` runs closed before ``before_us``; how many (freed pages are reused)."""
        keys = await asyncio.get_running_loop().run_in_executor(None, self._purge_candidates, before_us, limit)
        return await self._submit(self._op_purge, keys, before_us) if keys else 0

    async def purge_expired(self) -> int:
        """Purge the runs closed longer ago than the store's retention (none when it is 0)."""
        if not self.retention_us:
            return 0
        return await self.purge(_us(self.clock.now()) - self.retention_us)

    async def reset_workflow(self, workflow_id: str, run_id: str | None, event_id: int, reason: str) -> str:
        """Start a new run from a WorkflowTaskCompleted of the run and close the old one; the new run id."""
        new_run = new_run_id()  # chosen here: an op that runs again (a retried batch) makes the same run
        return await self._submit(self._op_reset, workflow_id, run_id, event_id, reason, new_run)  # type: ignore[no-any-return]

    async def complete_workflow_task(self, c: WorkflowTaskCompletion) -> int:
        """Commit a workflow task; raises Conflict when the run moved on.

        The worker's own step is answered once applied (``Op.internal``); a completion whose inputs
        came from outside (``c.from_outside``) waits for the sync.
        """
        submit = self._submit if c.from_outside else self._submit_internal
        return await submit(self._op_complete_wtask, c)  # type: ignore[no-any-return]

    async def return_workflow_tasks(self, task_queue: str, run_keys: list[bytes]) -> int:
        """Give back workflow tasks this process leased and will not run (a worker stopping)."""
        return await self._submit(self._op_return_wtasks, task_queue, run_keys)  # type: ignore[no-any-return]

    async def release_workflow_task(self, task_queue: str, run_key: bytes, seen_through: int) -> None:
        """Drop a workflow task that had nothing new to process (or re-dispatch it if it now has)."""
        await self._submit(self._op_release_wtask, task_queue, run_key, seen_through)

    async def complete_activity(self, outcome: ActivityOutcome) -> str:
        """Record an attempt's end; returns "done", "retry", "stale" or "closed"."""
        return await self._submit_internal(self._op_complete_activity, outcome)  # type: ignore[no-any-return]

    async def heartbeat_activity(self, run_key: bytes, task_queue: str, seq: int, attempt: int,
                                 details: bytes | None) -> bool:
        """Record a heartbeat; True means the attempt is no longer wanted (cancelled or superseded)."""
        return await self._submit(self._op_heartbeat, run_key, task_queue, seq, attempt, details)  # type: ignore[no-any-return]

    async def hand_off_activity(self, task_queue: str, run_key: bytes, seq: int, attempt: int,
                                started: float) -> bool:
        """An attempt raised CompleteAsync: it waits for an outside completion (see ``Machine.hand_off_activity``)."""
        return await self._submit(self._op_hand_off, task_queue, run_key, seq, attempt, _us(started))  # type: ignore[no-any-return]

    async def complete_activity_by_token(self, outcome: ActivityOutcome) -> str:
        """Record an attempt's end given by its task token: "done", "retry" or "canceled" (else TaskTokenError)."""
        return await self._submit(self._op_complete_by_token, outcome)  # type: ignore[no-any-return]

    async def heartbeat_activity_by_token(self, run_key: bytes, task_queue: str, seq: int, attempt: int,
                                          details: bytes | None) -> bool:
        """Record a heartbeat given by a task token; True: the workflow cancelled it (else TaskTokenError)."""
        return await self._submit(self._op_heartbeat_by_token, run_key, task_queue, seq, attempt, details)  # type: ignore[no-any-return]

    async def fail_workflow_task(self, task_queue: str, run_key: bytes, epoch: int, error_type: str,
                                 failure: bytes) -> float | None:
        """Record a workflow task that raised; returns the backoff before it is due again (None: moved on)."""
        return await self._submit(self._op_fail_wtask, task_queue, run_key, epoch, error_type, failure)  # type: ignore[no-any-return]

    async def renew_activity_leases(self, task_queue: str, items: list[tuple[bytes, int, int]],
                                    seconds: float) -> int:
        """Extend this process's leases of running activity attempts to ``seconds`` from now."""
        return await self._submit(self._op_renew_leases, task_queue, items, seconds)  # type: ignore[no-any-return]

    async def claim_workflow_tasks(self, task_queue: str, limit: int, build_id: str | None = None) -> list[bytes]:
        """Lease up to ``limit`` pending workflow tasks of the queue, that a worker of ``build_id`` may take."""
        return await self._submit(self._op_claim_wtasks, task_queue, limit, build_id)  # type: ignore[no-any-return]

    async def set_current_build_id(self, task_queue: str, build_id: str | None) -> None:
        """Make ``build_id`` the queue's current build (None: none)."""
        await self._submit(self._op_set_current_build, task_queue, build_id)

    def _op_set_current_build(self, txn: mdb.Transaction, batch: _Batch, task_queue: str,
                              build_id: str | None) -> None:
        self.machine.set_current_build(self._tx(txn), batch, task_queue, build_id)

    async def aqueue_versioning(self, task_queue: str, running: bool = True) -> QueueVersioning:
        """The queue's current build, and (``running``) its running runs by build: reads every run record."""
        if not running:
            return self._queue_versioning(task_queue, False)
        return await asyncio.get_running_loop().run_in_executor(None, self._queue_versioning, task_queue, True)

    def _queue_versioning(self, task_queue: str, running: bool) -> QueueVersioning:
        out = QueueVersioning(task_queue)
        counts: dict[tuple[str | None, str | None], int] = {}
        with self.env.begin() as txn:
            raw = txn.get(task_queue.encode(), db=self._builds)
            if raw is not None:
                setting = orjson.loads(raw)
                out.current_build_id, out.set_time = setting["build"], setting["at"] / 1e6
            if not running:
                return out
            for _key, value in txn.cursor(db=self._runs).iternext():
                rec = decode_run(value)
                if rec.status == RUNNING and rec.task_queue == task_queue:
                    kind = (rec.build_id, rec.versioning_behavior)
                    counts[kind] = counts.get(kind, 0) + 1
        out.running = sorted(((b, v, n) for (b, v), n in counts.items()), key=lambda r: (r[0] or "", r[1] or ""))
        return out

    async def claim_activity_tasks(self, task_queue: str, limit: int) -> list[ActivityTask]:
        """Lease up to ``limit`` visible activity tasks of the queue to this process."""
        return await self._submit(self._op_claim_atasks, task_queue, limit)  # type: ignore[no-any-return]

    async def reap(self) -> int:
        """Take back the tasks of dead owners and expired leases (and dead processes' reader slots)."""
        self.env.reader_check()
        return await self._submit(self._op_reap)  # type: ignore[no-any-return]

    async def fire_timers(self) -> float | None:
        """Fire due timers; return the due time of the next one."""
        return await self._submit(self._op_fire_timers)  # type: ignore[no-any-return]

    def has_pending_wtasks(self, task_queue: str, build_id: str | None = None) -> bool:
        """Whether the queue holds workflow tasks, due now, that nobody in this process has.

        Only tasks a worker of ``build_id`` may take count (see ``claim_workflow_tasks``).
        """
        prefix = task_queue.encode() + b"\x00"
        now_us = _us(self.clock.now())
        with self.env.begin(db=self._wtask) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return False
            current: str | bool | None = False  # the queue's current build, read when first needed
            for key, raw in cur:
                if not key.startswith(prefix):
                    return False
                lease = decode_lease(raw)
                if lease.owner != OWNER and lease.visible_us <= now_us:
                    if lease.build:  # pinned: only its build takes it
                        if lease.build == build_id:
                            return True
                        continue
                    if current is False:
                        current = self._current_build(txn, task_queue)
                    if current is None or current == build_id:
                        return True
        return False

    def _current_build(self, txn: mdb.Transaction, task_queue: str) -> str | None:
        """The queue's current build as a read transaction sees it."""
        raw = txn.get(task_queue.encode(), db=self._builds)
        return None if raw is None else str(orjson.loads(raw)["build"])

    # ------------------------------------------------------------------ requests to other processes
    # Queries and updates for a run whose worker lives in another process travel through the
    # store: the client writes a request, the worker (woken by the foreign commit) answers.

    def _op_put_request(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, request_id: str,
                        head: bytes, args: bytes) -> None:
        txn.put(task_queue.encode() + b"\x00" + request_id.encode(), pack(head, args), db=self._req)
        self._marks.add(request_topic(task_queue))

    def _op_answer(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, request_id: str,
                   answer: bytes) -> None:
        if txn.delete(task_queue.encode() + b"\x00" + request_id.encode(), db=self._req):
            txn.put(request_id.encode(), answer, db=self._resp)

    def _op_take_answer(self, txn: mdb.Transaction, batch: _Batch, task_queue: str, request_id: str) -> bytes | None:
        answer = txn.get(request_id.encode(), db=self._resp)
        if answer is not None:
            txn.delete(request_id.encode(), db=self._resp)
        else:  # nobody answered: withdraw the request
            txn.delete(task_queue.encode() + b"\x00" + request_id.encode(), db=self._req)
        return answer

    async def request(self, task_queue: str, head: bytes, args: bytes, timeout: float) -> bytes | None:
        """Ask the workers of ``task_queue`` in other processes; their answer, or None after ``timeout``."""
        request_id = new_run_id()
        await self._submit(self._op_put_request, task_queue, request_id, head, args)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        key = request_id.encode()
        changed = asyncio.Event()
        unsubscribe = self.on_foreign_change(changed.set)
        try:
            while True:
                with self.env.begin() as txn:
                    if txn.get(key, db=self._resp) is not None:
                        break
                left = deadline - loop.time()
                if left <= 0:
                    break
                changed.clear()
                await wait_event(changed, min(left, 0.05))
        finally:
            unsubscribe()
        answer: bytes | None = await self._submit(self._op_take_answer, task_queue, request_id)
        return answer

    def pending_requests(self, task_queue: str) -> list[tuple[str, bytes]]:
        """Requests waiting for a worker of ``task_queue``: (request id, packed request)."""
        prefix = task_queue.encode() + b"\x00"
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._req)
            if cur.set_range(prefix):
                for key, value in cur:
                    if not key.startswith(prefix):
                        break
                    out.append((key[len(prefix):].decode(), value))
        return out

    async def answer(self, task_queue: str, request_id: str, answer: bytes) -> None:
        """Answer a request (once; a withdrawn request is not answered)."""
        await self._submit(self._op_answer, task_queue, request_id, answer)

    def is_idle(self) -> bool:
        """Whether no write of this process is queued for the writer thread."""
        return self._queue.empty()

    def has_any_tasks(self) -> bool:
        """Whether any workflow or activity task is pending or running (any queue)."""
        with self.env.begin() as txn:
            return bool(txn.cursor(db=self._wtask).first() or txn.cursor(db=self._atask).first())

    def next_task_due(self) -> float | None:
        """When a workflow or activity task can next be taken (see ``Store.anext_task_due``); a full scan."""
        now_us = _us(self.clock.now())
        earliest: int | None = None
        with self.env.begin() as txn:
            for _key, raw in txn.cursor(db=self._wtask):
                lease = decode_lease(raw)
                due = now_us if lease.owner else lease.visible_us
                earliest = due if earliest is None else min(earliest, due)
                if earliest <= now_us:
                    return now_us / 1e6
            for _key, raw in txn.cursor(db=self._atask):
                meta = decode_activity_meta(unpack(raw)[0])
                due = now_us if meta.owner else meta.visible_us
                earliest = due if earliest is None else min(earliest, due)
                if earliest <= now_us:
                    return now_us / 1e6
        return None if earliest is None else earliest / 1e6

    def read_history(self, run_key: bytes, from_event_id: int = 1) -> list[Event]:
        """All events of a run from ``from_event_id`` on (decoded from the memory map)."""
        with self.env.begin(buffers=True) as txn:
            return self.log.read(txn, run_key, from_event_id)

    def _read_tx(self, txn: mdb.Transaction) -> LmdbTx:
        # Reads never use the writer thread's cache: it may hold what is not committed yet.
        return LmdbTx(txn, self.dbs, self.log, RunCache())

    def run_state(self, run_key: bytes) -> dict[str, Any]:
        """The run record as stored (JSON keys: status, next, epoch, wtf, ...)."""
        with self.env.begin() as txn:
            raw = txn.get(run_key, db=self._runs)
        if raw is None:
            raise WorkflowNotFoundError("?", run_key.hex())
        state: dict[str, Any] = orjson.loads(raw)
        return state

    def find_run(self, workflow_id: str, run_id: str | None = None) -> RunInfo:
        """Describe a run; the latest run of the id when ``run_id`` is None."""
        with self.env.begin() as txn:
            tx = self._read_tx(txn)
            key = Machine.resolve(tx, workflow_id, run_id)
            return run_info(key, Machine.get_run(tx, key))

    def list_runs(self, query: ListQuery, limit: int, after: tuple[int, str] | None = None) -> list[RunInfo]:
        """The latest run of each workflow id matching ``query``, newest first (the ``vis`` index)."""
        with self.env.begin() as txn:
            tx = self._read_tx(txn)
            found = visibility.scan(txn, self._wf, self._vis, query, limit, after)
            return [run_info(run_key_of(idx.run_id), Machine.get_run(tx, run_key_of(idx.run_id)))
                    for _wid, idx in found]

    def count_runs(self, query: ListQuery) -> int:
        """How many workflow ids' latest runs match ``query`` (counted on the ``vis`` index)."""
        with self.env.begin() as txn:
            return len(visibility.scan(txn, self._wf, self._vis, query, 0))

    def _index_visibility(self) -> None:
        """Build the ``vis`` index of a store written before it existed (once; later writes keep it)."""
        with self.env.begin() as txn:
            if txn.cursor(db=self._vis).first() or not txn.cursor(db=self._wf).first():
                return
        with self.env.begin(write=True) as txn:
            if not txn.cursor(db=self._vis).first():
                n = visibility.rebuild(txn, self._wf, self._vis)
                log.info("indexed %d workflow ids for list_workflows in %s", n, self.path)
        self.env.sync()  # the commit's meta page (metasync=False), as after every batch

    def next_timer_due(self) -> float | None:
        """When the earliest timer in the store is due, or None."""
        with self.env.begin(db=self._timer) as txn:
            cur = txn.cursor()
            if cur.first():
                return float(U64.unpack(cur.key()[:8])[0]) / 1e6
        return None

    async def wait_closed(self, run_key: bytes) -> RunInfo:
        """Wait until the run is closed; woken by the closing commit or another process's commit."""
        fut: asyncio.Future[RunInfo] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_key, []).append(fut)
        info: RunInfo | None = None
        seen = 0
        try:
            # Check after registering, so a close committed in between is not missed. A run found
            # closed is answered with its close event, read in the same snapshot.
            with self.env.begin() as txn:
                raw = txn.get(run_key, db=self._runs)
                if raw is None:
                    raise WorkflowNotFoundError("?", run_key.hex())
                rec = decode_run(raw)
                if rec.status != RUNNING:
                    info = run_info(run_key, rec)
                    last = rec.next_event_id - 1
                    found = self.log.read(txn, run_key, last, last) if last > 0 else []
                    info.close_event = found[0] if found else None
                    seen = txn.id()
            if info is not None:
                if seen > self._synced_txn:  # read from a commit that may not be synced yet
                    await asyncio.to_thread(self._ensure_durable, seen)
                self._release_waiters(run_key, info)  # ours, and any other waiter of the run
                return info
            return await fut
        finally:
            futs = self._waiters.get(run_key)
            if futs and fut in futs:
                futs.remove(fut)
                if not futs:
                    del self._waiters[run_key]

