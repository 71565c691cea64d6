"""``duro copy`` on an LMDB store: reading every run from one snapshot, and writing runs in one group commit.

A friend of ``duro.stores.lmdb``: it reads the store's environment and named databases (key
layouts in ``lmdb_tx``) and queues its writes as an op of the store's writer thread, so a batch of
runs is one write transaction with one fsync, like any other commit of the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from duro._core import mdb
from duro.engine.machine import Effects
from duro.engine.records import RunRecord, decode_activity_meta, decode_index, decode_lease, decode_run
from duro.errors import CorruptHistoryError
from duro.stores.base import unpack
from duro.stores.export import (
    ActivityAttempt,
    CopyError,
    LiveLeases,
    RunBundle,
    events_of,
    set_missing_builds,
    write_bundles,
)
from duro.stores.lmdb import LmdbStore, owner_alive
from duro.stores.lmdb_tx import U64, read_builds, timer_key, wtask_key

__all__ = ["LmdbSink", "LmdbSource"]


class LmdbSource:
    """Reads an LMDB store for copying, all from one read snapshot (begun here, ended by ``finish``).

    The snapshot makes the copy consistent whatever happens meanwhile, and lets ``finish`` tell
    whether anyone committed since (LMDB numbers every commit of every process).

    Args:
        store: the open store (shared with the rest of the process, as LMDB requires).
    """

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.description = store.url
        self._dbs = store.dbs
        # Reads all happen on the thread that opened this (the copy's loop): a read transaction
        # belongs to one thread at a time, and the cursors below live inside it.
        self._txn: mdb.Transaction | None = store.env.begin()
        self._snapshot_id = self._txn.id()
        self._queues = self._atask_queues()

    @property
    def txn(self) -> mdb.Transaction:
        """The snapshot (until ``finish``)."""
        if self._txn is None:
            raise RuntimeError("the source snapshot has ended")
        return self._txn

    def _atask_queues(self) -> list[bytes]:
        """The key prefixes (queue + 0x00) of the activity queues that hold attempts, skipping from queue to queue."""
        prefixes: list[bytes] = []
        with self.txn.cursor(db=self._dbs.atask) as cur:
            found = cur.first()
            while found:
                key = cur.key()
                name = key[: key.index(b"\x00")]
                prefixes.append(name + b"\x00")
                found = cur.set_range(name + b"\x01")  # past every key of this queue (names hold no NUL)
        return prefixes

    async def live_leases(self, now_us: int) -> LiveLeases:
        """Tasks leased until after ``now_us`` by owners that may be alive (a dead process's are free)."""
        out = LiveLeases()
        alive: dict[str, bool] = {}

        def live(owner: str, until_us: int) -> bool:
            if not owner or until_us <= now_us:
                return False
            if owner not in alive:
                alive[owner] = owner_alive(owner)
            return alive[owner]

        with self.txn.cursor(db=self._dbs.wtask) as cur:
            for raw in cur.iternext(keys=False):
                lease = decode_lease(raw)
                if live(lease.owner, lease.until_us):
                    out.workflow_tasks += 1
                    out.owners.add(lease.owner)
        with self.txn.cursor(db=self._dbs.atask) as cur:
            for raw in cur.iternext(keys=False):
                meta = decode_activity_meta(unpack(raw)[0])
                if live(meta.owner, meta.until_us):
                    out.activity_attempts += 1
                    out.owners.add(meta.owner)
        return out

    async def schedule_count(self) -> int:
        """How many schedule records (keys ``b"s" + id`` of the ``sched`` db, see lmdb_schedules)."""
        n = 0
        with self.txn.cursor(db=self._dbs.sched) as cur:
            found = cur.set_range(b"s")
            while found and bytes(cur.key()).startswith(b"s"):
                n += 1
                found = cur.next()
        return n

    async def current_builds(self) -> dict[str, str]:
        """Each task queue's current build (the ``builds`` database)."""
        return read_builds(self.txn, self._dbs.builds)

    async def runs(self) -> AsyncIterator[RunBundle]:
        """Every run with its rows, in run-key order (one run decoded at a time)."""
        txn = self.txn
        with txn.cursor(db=self._dbs.runs) as cur:
            for key, raw in cur.iternext():
                yield self._bundle(txn, key, decode_run(raw))

    def _bundle(self, txn: mdb.Transaction, run_key: bytes, rec: RunRecord) -> RunBundle:
        dbs = self._dbs
        try:
            envelopes: list[bytes] = self.store.log.iter_raw(txn, run_key)
        except CorruptHistoryError as e:
            raise CopyError(f"the source is damaged: run {run_key.hex()} (workflow {rec.workflow_id!r}): {e}; "
                            "`duro --store SOURCE_URL check` shows what is damaged") from None
        bundle = RunBundle(run_key, rec, events_of(run_key, rec, envelopes), sum(map(len, envelopes)))
        raw = txn.get(rec.workflow_id.encode(), db=dbs.wf)
        if raw is not None:
            idx = decode_index(raw)
            if idx.run_id == run_key.hex():
                bundle.index = idx
        raw = txn.get(wtask_key(rec.task_queue, run_key), db=dbs.wtask)
        if raw is not None:
            bundle.wtask = (rec.task_queue, decode_lease(raw))
        # Attempts are keyed queue + run + seq and may be on any queue (execute_activity(task_queue=)).
        with txn.cursor(db=dbs.atask) as cur:
            for queue in self._queues:
                prefix = queue + run_key
                if not cur.set_range(prefix):
                    continue
                for akey, value in cur.iternext():
                    if not akey.startswith(prefix):
                        break
                    meta_b, args, details = unpack(value)
                    bundle.attempts.append(ActivityAttempt(queue[:-1].decode(), U64.unpack(akey[-8:])[0],
                                                           decode_activity_meta(meta_b), args, details))
        # The record names each pending timer (seq -> due time); the timer table is what fires it.
        for seq_text, fire_us in (rec.timers or {}).items():
            seq = int(seq_text)
            if txn.get(timer_key(fire_us, run_key, seq), db=dbs.timer) is not None:
                bundle.timers.append((fire_us, seq))
        return bundle

    async def workflow_ids(self, chunk: int) -> AsyncIterator[list[str]]:
        """Every workflow id of the index, ``chunk`` at a time."""
        ids: list[str] = []
        with self.txn.cursor(db=self._dbs.wf) as cur:
            for key in cur.iternext(values=False):
                ids.append(key.decode())
                if len(ids) >= chunk:
                    yield ids
                    ids = []
        if ids:
            yield ids

    async def workflow_id_count(self) -> int:
        """How many workflow ids the index holds."""
        with self.txn.cursor(db=self._dbs.wf) as cur:
            return sum(1 for _ in cur.iternext(values=False))

    async def finish(self) -> bool:
        """End the snapshot; whether any process committed to the store since it began."""
        if self._txn is None:
            return False
        self._txn.abort()
        self._txn = None
        with self.store.env.begin() as now:
            return now.id() != self._snapshot_id

    async def close(self) -> None:
        """End the snapshot (if still open) and release this reference to the store."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None
        await self.store.close()


class LmdbSink:
    """Writes runs into an LMDB store, a batch per write transaction of its writer thread.

    Args:
        store: the open store.
    """

    def __init__(self, store: LmdbStore) -> None:
        self.store = store
        self.description = store.url

    async def is_empty(self) -> bool:
        """Whether it holds no run and no workflow id."""
        dbs = self.store.dbs
        with self.store.env.begin() as txn:
            return not (txn.cursor(db=dbs.runs).first() or txn.cursor(db=dbs.wf).first())

    async def existing_ids(self, workflow_ids: list[str]) -> list[str]:
        """Those of ``workflow_ids`` it holds already."""
        wf = self.store.dbs.wf
        with self.store.env.begin() as txn:
            return [w for w in workflow_ids if txn.get(w.encode(), db=wf) is not None]

    async def write(self, bundles: list[RunBundle]) -> None:
        """Write the runs in one group commit (fsynced before this returns)."""
        await self.store.apply(self._op_write, bundles)

    def _op_write(self, txn: mdb.Transaction, batch: Effects, bundles: list[RunBundle]) -> None:
        # On the writer thread, in the batch's transaction; the checks come before any write, so a
        # refusal leaves the transaction as it was (an op that fails after writing makes the store
        # redo the batch with each op isolated, which would also drop this op's writes).
        write_bundles(self.store.tx(txn), bundles)

    async def set_current_builds(self, builds: dict[str, str]) -> int:
        """Give each queue of ``builds`` that has no current build here that one; how many it set."""
        return await set_missing_builds(self.store, builds)

    async def close(self) -> None:
        """Release this reference to the store."""
        await self.store.close()
