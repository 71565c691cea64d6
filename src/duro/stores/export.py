"""What ``duro copy`` moves between stores: one run with every row that belongs to it, and how it is written.

A source (``lmdb_export.LmdbSource``, ``pg_export.PgSource``) reads the runs of a store, in run-key
order, as ``RunBundle``s; a sink (``lmdb_export.LmdbSink``, ``pg_export.PgSink``) writes a list of
them in ONE transaction of the destination through the state machine's ``Tx`` (``write_bundles``),
so each store's own row mapping applies (``lmdb_tx``, ``postgres_tx``) and nothing here knows a key
layout or a table.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from duro._core import codec
from duro._core.codec import Event
from duro.engine.records import ActivityMeta, RunRecord, WorkflowIndex, WorkflowTaskLease
from duro.errors import CorruptHistoryError, DuroError

if TYPE_CHECKING:
    from duro.engine.tx import Tx
    from duro.stores.base import Store

__all__ = [
    "ActivityAttempt",
    "CopyError",
    "LiveLeases",
    "RunBundle",
    "Sink",
    "Source",
    "events_of",
    "set_missing_builds",
    "write_bundles",
]


class CopyError(DuroError):
    """A copy between stores was refused or could not finish; the message says why and what to do."""


@dataclass(slots=True)
class ActivityAttempt:
    """A pending activity attempt: its queue and seq (its key within the run), meta, arguments, heartbeat details."""

    task_queue: str
    seq: int
    meta: ActivityMeta
    args: bytes
    details: bytes


@dataclass(slots=True)
class RunBundle:
    """One run and every row of it, as read from the source.

    Attributes:
        run_key: the run's 16-byte key.
        record: its run record.
        events: its whole history (ids 1, 2, ... next_event_id - 1), decoded from envelopes whose
            re-encoding was checked to give the same bytes (``events_of``).
        size: bytes of those envelopes (for the writer's batch budget).
        index: the workflow id's index entry, when this run is the latest of its workflow id.
        wtask: the run's pending workflow task (its queue and lease), if any.
        attempts: its pending activity attempts.
        timers: its timers as (fire time µs, seq).
    """

    run_key: bytes
    record: RunRecord
    events: list[Event]
    size: int
    index: WorkflowIndex | None = None
    wtask: tuple[str, WorkflowTaskLease] | None = None
    attempts: list[ActivityAttempt] = field(default_factory=list)
    timers: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class LiveLeases:
    """Tasks of a source held by workers that may still be running (lease not expired, owner not known dead)."""

    workflow_tasks: int = 0
    activity_attempts: int = 0
    owners: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.workflow_tasks or self.activity_attempts)


class Source(Protocol):
    """A store being copied from: read only, from one snapshot taken when it was opened."""

    description: str
    """The store, for messages (never a password)."""

    async def live_leases(self, now_us: int) -> LiveLeases:
        """Tasks leased by owners that may be alive at ``now_us``."""

    async def schedule_count(self) -> int:
        """How many schedules the source holds (a copy does not carry them yet)."""

    async def current_builds(self) -> dict[str, str]:
        """Each task queue's current build (worker versioning)."""

    def runs(self) -> AsyncIterator[RunBundle]:
        """Every run with its rows, in run-key order, a page at a time."""

    def workflow_ids(self, chunk: int) -> AsyncIterator[list[str]]:
        """Every workflow id of the index, ``chunk`` at a time."""

    async def workflow_id_count(self) -> int:
        """How many workflow ids the index holds."""

    async def finish(self) -> bool:
        """End the snapshot; whether the source changed since it began (someone still uses it)."""

    async def close(self) -> None:
        """Release the store (after ``finish`` or on an error)."""


class Sink(Protocol):
    """A store being copied into."""

    description: str
    """The store, for messages (never a password)."""

    async def is_empty(self) -> bool:
        """Whether it holds no run and no workflow id."""

    async def existing_ids(self, workflow_ids: list[str]) -> list[str]:
        """Those of ``workflow_ids`` that it holds already."""

    async def write(self, bundles: list[RunBundle]) -> None:
        """Write the runs in one durable transaction (all of them or none); CopyError on a conflict."""

    async def set_current_builds(self, builds: dict[str, str]) -> int:
        """Give each queue of ``builds`` that has no current build here that one; how many it set."""

    async def close(self) -> None:
        """Release the store."""


def events_of(run_key: bytes, record: RunRecord, envelopes: list[bytes]) -> list[Event]:
    """Decode a run's history for copying, refusing anything the destination would not get byte for byte.

    The destination's ``Tx.append_history`` takes events and encodes them again, so each envelope
    must encode back to exactly its bytes; the ids must run 1, 2, ... up to the record's next event
    id (what both stores keep), else the run is damaged and copying it would spread the damage.

    Raises:
        CopyError: the run's history is damaged or would not copy unchanged.
    """
    where = f"run {run_key.hex()} (workflow {record.workflow_id!r})"
    events: list[Event] = []
    for i, raw in enumerate(envelopes, 1):
        try:
            ev = codec.decode_event(raw)
        except CorruptHistoryError as e:
            raise CopyError(f"the source is damaged: {where}, event {i}: {e}; `duro --store SOURCE_URL check` "
                            "shows what is damaged") from None
        if ev.event_id != i:
            raise CopyError(f"the source is damaged: {where} has event {ev.event_id} where event {i} belongs")
        if ev.encode() != raw:
            raise CopyError(f"{where}, event {i} would not copy byte for byte (its envelope encodes back "
                            "differently): this duro cannot copy it unchanged; report this with the run id")
        events.append(ev)
    if len(events) != record.next_event_id - 1:
        raise CopyError(f"the source is damaged: {where} has {len(events)} events but its record says "
                        f"{record.next_event_id - 1}")
    return events


async def set_missing_builds(store: Store, builds: dict[str, str]) -> int:
    """Give each queue of ``builds`` that has no current build in ``store`` that one; how many it set.

    A destination's own setting wins (``--merge`` into a store whose queues are versioned already).
    """
    n = 0
    for queue, build in sorted(builds.items()):
        if (await store.aqueue_versioning(queue, running=False)).current_build_id is None:
            await store.set_current_build_id(queue, build)
            n += 1
    return n


def write_bundles(tx: Tx, bundles: list[RunBundle]) -> None:
    """Write runs with all their rows in the transaction ``tx``; refuse (writing nothing) any that exists.

    Everything is checked before anything is written, so a refusal leaves the transaction
    untouched. A run key must be new, and so must the workflow id whose index entry a bundle
    carries (the index is written once, with the id's latest run).

    Raises:
        CopyError: a run or a workflow id exists in the destination already.
    """
    for b in bundles:
        wid = b.record.workflow_id
        if tx.run(b.run_key) is not None:
            raise CopyError(f"run {b.run_key.hex()} of workflow {wid!r} exists in the destination already; "
                            "nothing of this batch was written")
        if b.index is not None and tx.index(wid) is not None:
            raise CopyError(f"workflow id {wid!r} exists in the destination already; nothing of this batch "
                            "was written")
    for b in bundles:
        key = b.run_key
        tx.append_history(key, b.events)
        tx.put_run(key, b.record)
        if b.index is not None:
            tx.put_index(b.record.workflow_id, b.index)
        if b.wtask is not None:
            tx.put_wtask(b.wtask[0], key, b.wtask[1])
        for a in b.attempts:
            tx.put_atask(a.task_queue, key, a.seq, a.meta, a.args, a.details)
        for fire_us, seq in b.timers:
            tx.put_timer(fire_us, key, seq)
