"""``copy_store``: move every workflow, running ones included, from one store to another (``duro copy``).

What moves: every run record, the workflow-id index (the latest run of each id), every history
(byte for byte), pending workflow tasks, pending activity attempts (arguments, heartbeat details,
attempt numbers), timers, and the task queues' current builds (worker versioning: a pinned run stays
pinned to its build). Leases are reset on the way: a task a worker of the source held is
free in the destination, so the destination's workers take it. Query and update requests are
transient and stay behind. The source is only read, from one snapshot; see docs/copy.md.

The copy streams: runs are read in pages and written in batches (at most ``BATCH_RUNS`` runs,
about ``BATCH_EVENTS`` events or ``BATCH_BYTES`` bytes of history), each batch ONE transaction of
the destination holding its runs with all their rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from duro.engine.records import RunStatus, WorkflowTaskLease
from duro.errors import DuroError
from duro.stores import store_kind
from duro.stores.export import CopyError, LiveLeases, RunBundle, Sink, Source
from duro.stores.lmdb_files import DATA_FILE
from duro.stores.urls import display_url

__all__ = ["BATCH_BYTES", "BATCH_EVENTS", "BATCH_RUNS", "CopyError", "CopyReport", "copy_store"]

BATCH_RUNS = 500
BATCH_EVENTS = 20_000
BATCH_BYTES = 32 << 20
_ID_CHUNK = 500  # workflow ids looked up in the destination at once (--merge)
_SHOWN = 10  # conflicting ids or lease owners named in a message


@dataclass
class CopyReport:
    """What a copy wrote to the destination (while it runs: so far).

    Attributes:
        source: the source store, for messages (never a password).
        destination: the destination store, likewise.
        runs: runs copied.
        running: of those, runs still running (they continue on the destination).
        workflows: workflow ids copied (index entries: the latest run of each id).
        events: history events copied.
        history_bytes: bytes of those events' envelopes.
        workflow_tasks: pending workflow tasks copied.
        activity_attempts: pending activity attempts copied.
        timers: timers copied.
        current_builds: task queues' current builds (worker versioning) set in the destination
            (those of queues that had none there).
        skipped_index_entries: workflow-id index entries of the source that name no run of their
            workflow (a damaged index; ``duro check`` on the source tells more): not copied.
        leases_reset: tasks that were leased in the source and are free in the destination.
        dropped_attempts: attempts not copied because their workflow had cancelled them (only a
            worker still running one would have reported it; nothing waits for it).
        batches: destination transactions written.
        seconds: how long the copy took.
        source_changed: the source changed while it was copied (only with ``force``: otherwise
            that is a ``CopyError``); what changed after the copy began is not in the destination.
    """

    source: str
    destination: str
    runs: int = 0
    running: int = 0
    workflows: int = 0
    events: int = 0
    history_bytes: int = 0
    workflow_tasks: int = 0
    activity_attempts: int = 0
    timers: int = 0
    current_builds: int = 0
    skipped_index_entries: int = 0
    leases_reset: int = 0
    dropped_attempts: int = 0
    batches: int = 0
    seconds: float = 0.0
    source_changed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return asdict(self)


Progress = Callable[[CopyReport], None]
"""Called after each batch is committed in the destination, with the counts so far."""


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def copy_store(src_url: str, dst_url: str, *, merge: bool = False, force: bool = False,
               progress: Progress | None = None) -> CopyReport:
    """Copy every workflow of the store at ``src_url`` into the store at ``dst_url``, to continue there.

    Stop the source's workers first. Then run this, start workers against ``dst_url``, and the
    workflows go on where they were: running ones wait for the same signals, timers fire at the
    same times, activities waiting for a retry are retried. The source is left as it was (read
    only); delete it once you have checked the destination.

    Any pair of stores works: LMDB to PostgreSQL, PostgreSQL to LMDB, LMDB to LMDB, PostgreSQL to
    PostgreSQL (another schema or server). An LMDB destination is created when missing; a
    PostgreSQL destination's schema is created or migrated.

    This blocks until the copy is done (it runs an event loop of its own); from async code call it
    with ``await asyncio.to_thread(copy_store, ...)``.

    Args:
        src_url: the source store (``lmdb://PATH`` or ``postgresql://...``); it must exist.
        dst_url: the destination store; it must hold no workflows unless ``merge``.
        merge: add to a destination that holds workflows already. A workflow id present in both
            is refused before anything is written (merging never replaces a workflow).
        force: copy although workers still hold leases in the source, and accept that the source
            changes during the copy (what it records after the copy began is then missing from
            the destination; tasks running in the source may run again in the destination).
        progress: called after each batch with the counts so far.

    Returns:
        What was copied.

    Raises:
        CopyError: the copy was refused (source in use, destination not empty, a workflow id in
            both, the same store twice, no source store) or could not finish (the message says
            what the destination holds then).
        StoreURLError: a URL is malformed.
        StoreError: a store could not be opened or used.
        RuntimeError: called from a running event loop.
    """
    if _in_event_loop():
        raise RuntimeError("copy_store blocks until the copy is done: call it outside an event loop "
                           "(from async code: await asyncio.to_thread(copy_store, ...))")
    return asyncio.run(_copy(src_url, dst_url, merge=merge, force=force, progress=progress))


# ---------------------------------------------------------------------------------------------- opening

def _scheme(url: str, what: str) -> str:
    """``lmdb`` or ``postgresql``, after checking the whole URL (so bad input fails before anything opens)."""
    kind = store_kind(url, what)
    if kind == "lmdb":
        from duro.stores.lmdb import parse_lmdb_url

        parse_lmdb_url(url)
    else:
        from duro.stores.pg_conn import parse_pg_url

        parse_pg_url(url)
    return kind


def _same_store(src_url: str, dst_url: str, kind: str) -> bool:
    if kind == "lmdb":
        from duro.stores.lmdb import parse_lmdb_url

        return parse_lmdb_url(src_url)[0] == parse_lmdb_url(dst_url)[0]
    from duro.stores.pg_conn import parse_pg_url

    a, b = parse_pg_url(src_url), parse_pg_url(dst_url)
    return (a.host, a.port or "5432", a.database, a.schema) == (b.host, b.port or "5432", b.database, b.schema)


async def _open_source(url: str, kind: str) -> Source:
    if kind == "lmdb":
        from duro.stores.lmdb import open_lmdb_store, parse_lmdb_url
        from duro.stores.lmdb_export import LmdbSource

        path = parse_lmdb_url(url)[0]
        # Opening a missing store would create it: a source must exist.
        if not (Path(path) / DATA_FILE).is_file():
            raise CopyError(f"there is no duro store at {path} (source {display_url(url)!r}): nothing to copy")
        store = open_lmdb_store(url)
        try:
            return LmdbSource(store)
        except BaseException:
            await store.close()
            raise
    from duro.stores.pg_conn import parse_pg_url
    from duro.stores.pg_export import PgSource

    return await PgSource.open(parse_pg_url(url))


def _open_sink(url: str, kind: str) -> Sink:
    if kind == "lmdb":
        from duro.stores.lmdb import open_lmdb_store
        from duro.stores.lmdb_export import LmdbSink

        return LmdbSink(open_lmdb_store(url))
    from duro.stores.pg_export import PgSink
    from duro.stores.postgres import open_postgres_store

    return PgSink(open_postgres_store(url))


# ---------------------------------------------------------------------------------------------- copying

async def _copy(src_url: str, dst_url: str, *, merge: bool, force: bool, progress: Progress | None) -> CopyReport:
    t0 = time.monotonic()
    src_kind, dst_kind = _scheme(src_url, "source"), _scheme(dst_url, "destination")
    if src_kind == dst_kind and _same_store(src_url, dst_url, src_kind):
        raise CopyError("the source and the destination are the same store: name another destination")
    source = await _open_source(src_url, src_kind)
    try:
        leases = await source.live_leases(int(time.time() * 1_000_000))
        if leases and not force:
            raise CopyError(_in_use(source, leases))
        schedules = await source.schedule_count()
        if schedules and not force:
            raise CopyError(f"the source {source.description} holds {schedules} schedule(s), and duro copy does not "
                            "carry schedules yet: pass --force (force=True) to copy the workflows without them, then "
                            "create the schedules again on the destination (client.create_schedule)")
        sink = await asyncio.get_running_loop().run_in_executor(None, _open_sink, dst_url, dst_kind)
        try:
            report = CopyReport(source.description, sink.description)
            if merge:
                await _refuse_shared_ids(source, sink)
            elif not await sink.is_empty():
                raise CopyError(f"the destination {sink.description} holds workflows already; copy into an "
                                "empty store, or pass --merge (merge=True) to add to it")
            await _copy_runs(source, sink, report, progress)
            # After the runs: a pinned run's task names its build, and nothing runs meanwhile.
            report.current_builds = await sink.set_current_builds(await source.current_builds())
            # Each index entry is copied with the run it names: any left over names no run.
            report.skipped_index_entries = await source.workflow_id_count() - report.workflows
            changed = await source.finish()
        finally:
            await sink.close()
    finally:
        await source.close()
    report.seconds = time.monotonic() - t0
    if changed:
        if not force:
            raise CopyError(
                f"the source changed while it was being copied (a worker or client still uses it): the destination "
                f"holds its {report.runs} runs as they were when the copy began, and misses what happened since. "
                "Stop every worker and client of the source, empty the destination and copy again")
        report.source_changed = True
    return report


def _in_use(source: Source, leases: LiveLeases) -> str:
    owners = sorted(leases.owners)
    shown = ", ".join(owners[:_SHOWN]) + (f" and {len(owners) - _SHOWN} more" if len(owners) > _SHOWN else "")
    return (f"the source {source.description} is in use: {leases.workflow_tasks} workflow task(s) and "
            f"{leases.activity_attempts} activity attempt(s) are leased by workers that may still run ({shown}). "
            "Stop your workers first (or wait until their leases expire): what they do after the copy would be "
            "lost. --force (force=True) copies anyway")


async def _refuse_shared_ids(source: Source, sink: Sink) -> None:
    """Merging adds workflows, never replaces one: refuse, before writing anything, ids present in both."""
    shared: list[str] = []
    async for ids in source.workflow_ids(_ID_CHUNK):
        shared += await sink.existing_ids(ids)
    if shared:
        shown = ", ".join(repr(w) for w in shared[:_SHOWN]) + (" ..." if len(shared) > _SHOWN else "")
        raise CopyError(f"{len(shared)} workflow id(s) of the source exist in the destination already: {shown}; "
                        "nothing was copied (merging adds workflows, it never replaces one)")


def _reset_leases(b: RunBundle, report: CopyReport) -> None:
    """Free what the source's workers held: the destination's workers must be able to take it."""
    if b.wtask is not None:
        queue, lease = b.wtask
        if lease.owner:
            # visible_us stays: 0 (due at once), or the end of a failed task's retry backoff; the
            # build stays too (a pinned run goes on with workers of its build).
            b.wtask = (queue, WorkflowTaskLease("", 0, lease.visible_us, lease.pinned))
            report.leases_reset += 1
    kept = []
    for a in b.attempts:
        if a.meta.cancel:
            # The workflow cancelled it while it ran: nothing waits for its result, and the state
            # machine deletes such an attempt once no worker runs it. In the destination none does.
            report.dropped_attempts += 1
            continue
        if a.meta.owner:
            # Claimable again, same attempt number: it runs again (activities run at least once).
            a.meta.owner, a.meta.until_us = "", 0
            report.leases_reset += 1
        kept.append(a)
    b.attempts = kept


async def _copy_runs(source: Source, sink: Sink, report: CopyReport, progress: Progress | None) -> None:
    batch: list[RunBundle] = []
    events = size = 0
    async for bundle in source.runs():
        _reset_leases(bundle, report)
        batch.append(bundle)
        events += len(bundle.events)
        size += bundle.size
        if len(batch) >= BATCH_RUNS or events >= BATCH_EVENTS or size >= BATCH_BYTES:
            await _write(sink, batch, report, progress)
            batch, events, size = [], 0, 0
    if batch:
        await _write(sink, batch, report, progress)


async def _write(sink: Sink, batch: list[RunBundle], report: CopyReport, progress: Progress | None) -> None:
    try:
        await sink.write(batch)
    except DuroError as e:
        before = (f"the destination holds the {report.runs} runs copied before this batch" if report.runs else
                  "nothing was copied")
        # CommitUnknownError (the connection dropped during COMMIT) leaves even this batch unknown.
        raise CopyError(f"copying into {sink.description} stopped: {e} ({before}; empty the destination and "
                        "copy again)") from e
    report.batches += 1
    for b in batch:
        report.runs += 1
        report.running += b.record.status == RunStatus.RUNNING
        report.workflows += b.index is not None
        report.events += len(b.events)
        report.history_bytes += b.size
        report.workflow_tasks += b.wtask is not None
        report.activity_attempts += len(b.attempts)
        report.timers += len(b.timers)
    if progress is not None:
        progress(report)
