"""Testing tools: ``WorkflowEnvironment`` (in-process, with time skipping) and ``Replayer``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from duro._core import codec
from duro._determinism import check_mode, guard_workflow
from duro._instance import WorkflowInstance, WorkflowTaskError
from duro._local import local_dispatch
from duro._schedule_loop import wake_schedule_loops
from duro._validate import check_duration
from duro.client import Client, WorkflowExecution
from duro.converter import DataConverter, default_converter
from duro.errors import NonDeterminismError, StoreError, StoreURLError
from duro.history import History
from duro.stores import missing_store, open_store
from duro.stores.base import Clock, Store, run_key_of
from duro.workflow import WorkflowDefinition, get_workflow_definition

__all__ = ["Replayer", "SkippingClock", "WorkflowEnvironment", "WorkflowReplayResult", "WorkflowReplayResults"]

log = logging.getLogger("duro.testing")


class SkippingClock(Clock):
    """Wall-clock time plus an offset that the test environment moves forward to skip waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        """Seconds since the epoch, as the workflows see it."""
        return time.time() + self.offset


class WorkflowEnvironment:
    """An in-process duro for tests: a store and a client, with a clock the test can move.

    By default the store is a temporary LMDB directory, removed afterwards. ``store=URL`` runs the
    environment on a store you give instead (``postgresql://...?schema=NAME`` or ``lmdb://PATH``),
    for example to test against PostgreSQL as deployed; the environment leaves that store's data
    in place, so give each test a schema (or directory) of its own.

    With ``time_skipping=True``, as in Temporal's test server, time is skipped while the test waits
    for a workflow's result (``handle.result()``, ``execute_workflow``): whenever nothing is due
    then (no workflow task or activity waiting to run or running, nothing being committed), the
    clock jumps to the next thing that waits for time — a timer, a schedule's fire, an activity
    retry's backoff, a workflow task's retry — so a workflow that sleeps for a day finishes at once.
    While the test does anything else, time runs as usual (``auto_time_skipping_disabled()`` turns
    the skipping off even then), and ``env.sleep(seconds)`` moves the clock on explicitly, firing
    every timer inside the window in order. Activities still run in real time. This works on both
    stores, because each reads the time from the environment's clock and writes it as data (the
    PostgreSQL store passes it to the server as parameters, never uses the server's ``now()``). The
    clock is this process's, though: every worker of the store must run in this process. A worker
    in another process on the same store keeps the real time, so it would not fire the timers
    skipped to and would see this process's leases as far in the future.

    Use ``async with WorkflowEnvironment(time_skipping=True) as env:`` and ``env.client``.

    Args:
        store: the store URL to run on; None (the default): a temporary LMDB store, removed on exit.
        time_skipping: jump the clock to the next timer whenever only timers are pending.
        converter: the data converter of the environment's client.
        max_payload_size: the client's payload size limit in bytes (see ``Client.connect``).
    """

    def __init__(self, *, store: str | None = None, time_skipping: bool = False,
                 converter: DataConverter | None = None, max_payload_size: int | None = None) -> None:
        if store is not None and not isinstance(store, str):
            raise TypeError(f"store must be a store URL (a str such as 'postgresql://...' or 'lmdb://PATH'), "
                            f"not {type(store).__name__}")
        self._store_url = store
        self.time_skipping = time_skipping
        self._converter = converter
        self._max_payload_size = max_payload_size
        self._dir: str | None = None
        self._client: Client | None = None
        self._skipper: asyncio.Task[None] | None = None
        self._previous_clock: Clock | None = None
        self.clock = SkippingClock()
        self.skipped = 0.0
        self._auto_disabled = 0

    @property
    def client(self) -> Client:
        """The client connected to the environment's store."""
        if self._client is None:
            raise RuntimeError("use the WorkflowEnvironment as `async with WorkflowEnvironment() as env:` first")
        return self._client

    async def __aenter__(self) -> WorkflowEnvironment:
        if self._store_url is None:
            self._dir = tempfile.mkdtemp(prefix="duro-test-env-")
            url = f"lmdb://{self._dir}"
        else:
            url = self._store_url
        try:
            store = open_store(url)
        except BaseException:
            self._remove_dir()
            raise
        try:
            self._take_clock(store)
        except BaseException:
            await store.close()
            self._remove_dir()
            raise
        self._client = Client(store, self._converter, max_payload_size=self._max_payload_size)
        if self.time_skipping:
            self._skipper = asyncio.ensure_future(self._skip_loop())
        return self

    def _take_clock(self, store: Store) -> None:
        """Make the environment's clock the store's (a store URL opened twice in a process is one store)."""
        if isinstance(store.clock, SkippingClock):
            raise RuntimeError(
                "another WorkflowEnvironment in this process already runs on this store and drives its clock; "
                "two environments on one store would move each other's time. Give "
                "each environment its own store (for PostgreSQL, its own ?schema=NAME)")
        self._previous_clock = store.clock
        store.clock = self.clock

    async def __aexit__(self, *exc: object) -> None:
        if self._skipper is not None:
            self._skipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._skipper
            self._skipper = None
        if self._client is not None:
            store = self._client.store
            if store.clock is self.clock and self._previous_clock is not None:
                # Others in this process may still hold the store: they go on with the real time.
                store.clock = self._previous_clock
            self._previous_clock = None
            await self._client.close()
            self._client = None
        self._remove_dir()

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def sleep(self, seconds: float | datetime.timedelta) -> None:
        """Move the environment's clock forward by ``seconds``, firing what falls due on the way.

        Each timer (and schedule fire, and retry backoff) inside the window fires at its own time,
        in order, and the workflows run after each before the clock moves on: three 30-day timers
        in a row all fire within ``env.sleep(timedelta(days=90))``. Works without
        ``time_skipping`` too. Activities still run in real time: the clock moves on when they are
        done, or after a few seconds of real time if they are not.

        Raises:
            ValueError: ``seconds`` is NaN, infinite, negative (the clock cannot move backwards)
                or over 100 years.
        """
        target = self.clock.now() + check_duration("WorkflowEnvironment.sleep seconds", seconds)
        while True:
            await self._settle()
            due = await self._next_due()
            if due is None or due > target:
                break
            self._advance(due)
        self._advance(target)
        await self._settle()

    @contextlib.contextmanager
    def auto_time_skipping_disabled(self) -> Iterator[None]:
        """Within the block, time is not skipped while the test waits for a result (``env.sleep`` still moves it)."""
        self._auto_disabled += 1
        try:
            yield
        finally:
            self._auto_disabled -= 1

    def _advance(self, to: float) -> None:
        gap = to - self.clock.now()
        if gap > 0:
            self.clock.offset += gap
            self.skipped += gap
        dispatch = local_dispatch(self.client.store)
        dispatch.timer_set(0.0)  # the workers' timer loops fire what is due now
        dispatch.activities_due(0.0)  # their activity pollers take retries whose backoff ended
        wake_schedule_loops(self.client.store)  # and their schedule loops

    async def _skip_loop(self) -> None:
        quiet_checks = 0
        while True:
            await asyncio.sleep(0.002)
            if self._auto_disabled or not self.client._awaiting_results:
                quiet_checks = 0  # skip only while the test waits for a result (as Temporal does)
                continue
            try:
                if not await self._quiet():
                    quiet_checks = 0
                    continue
                quiet_checks += 1
                # Quiet twice in a row (a few ms apart): not a gap between a commit and its follow-up.
                if quiet_checks < 2:
                    continue
                due = await self._next_due()
            except StoreError as e:  # a read that failed (PostgreSQL away for long): look again next round
                log.debug("time skipping could not read the store: %s", e)
                quiet_checks = 0
                continue
            if due is not None and due > self.clock.now():
                self._advance(due)
                quiet_checks = 0

    async def _settle(self, limit_s: float = 5.0) -> None:
        """Wait (in real time, at most ``limit_s``) until nothing is due or running."""
        quiet_checks = 0
        deadline = time.monotonic() + limit_s
        while quiet_checks < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.002)
            try:
                quiet_checks = quiet_checks + 1 if await self._quiet() else 0
            except StoreError as e:
                log.debug("time skipping could not read the store: %s", e)
                quiet_checks = 0

    async def _quiet(self) -> bool:
        """Whether nothing is due now or running: the only way forward is for time to pass."""
        store = self.client.store
        # The in-memory questions first: the store's are round trips on PostgreSQL.
        if not store.is_idle() or not local_dispatch(store).idle():
            return False
        now = self.clock.now()
        for due in (await store.anext_task_due(), await store.anext_timer_due(), await store.anext_schedule_due()):
            if due is not None and due <= now:
                return False
        return True

    async def _next_due(self) -> float | None:
        """The earliest time something waits for: a timer, a schedule's fire, a retry's backoff."""
        store = self.client.store
        dues = [d for d in (await store.anext_timer_due(), await store.anext_schedule_due(),
                            await store.anext_task_due()) if d is not None]
        return min(dues) if dues else None


# The event that closed a run, by type: the status its history shows (no such event: "running").
_CLOSING_EVENTS = {
    codec.WORKFLOW_COMPLETED: "completed", codec.WORKFLOW_FAILED: "failed", codec.WORKFLOW_CANCELED: "canceled",
    codec.WORKFLOW_CONTINUED_AS_NEW: "continued_as_new", codec.WORKFLOW_TERMINATED: "terminated",
    codec.WORKFLOW_TIMED_OUT: "timed_out",
}
DEFAULT_REPLAY_LIMIT = 1000
# Listing pages of this many runs; replay_store's limit is what bounds the total.
_LIST_PAGE = 500


@dataclass(frozen=True)
class WorkflowReplayResult:
    """The outcome of replaying one run's history against the code (see ``Replayer.replay_workflows``).

    Attributes:
        workflow_id: the run's workflow id.
        run_id: the run's id.
        workflow_type: the workflow type its history records.
        status: how the run stood when its history was read: ``"running"``, or how it closed
            (``"completed"``, ``"failed"``, ``"canceled"``, ``"terminated"``, ``"continued_as_new"``,
            ``"timed_out"``). A running run that does not replay is one the new code would break on
            its next workflow task.
        replay_failure: None when the code reproduced the history. ``duro.NonDeterminismError`` when
            it diverged (its ``event_id``, ``recorded`` and ``requested`` say where and how); any
            other exception when the code raised one while replaying (a workflow task that would fail
            with the new code), or the history could not be replayed at all (no events, a type the
            Replayer was not given).
    """

    workflow_id: str
    run_id: str
    workflow_type: str
    status: str
    replay_failure: Exception | None = None

    @property
    def ok(self) -> bool:
        """Whether the code reproduced the history."""
        return self.replay_failure is None

    @property
    def diverged(self) -> bool:
        """Whether the code asked for something other than the history recorded (a ``NonDeterminismError``)."""
        return isinstance(self.replay_failure, NonDeterminismError)


@dataclass(frozen=True)
class WorkflowReplayResults:
    """The outcomes of replaying many runs, in the order they were replayed.

    Iterating gives each ``WorkflowReplayResult``; ``len()`` is the number of runs replayed.

    Attributes:
        results: one result per run replayed.
        skipped: runs ``Replayer.replay_store`` found in the store's window (``since``) whose workflow
            type the Replayer was not given, so they were not replayed (0 when a ``workflow_type``
            was asked for).
        left_out: runs of the Replayer's types in the window that ``limit`` left out (the oldest).
    """

    results: tuple[WorkflowReplayResult, ...] = ()
    skipped: int = 0
    left_out: int = 0

    def __iter__(self) -> Iterator[WorkflowReplayResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    @property
    def ok(self) -> bool:
        """Whether every run replayed (True when there was none)."""
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[WorkflowReplayResult, ...]:
        """The results of the runs that did not replay, diverged or failed."""
        return tuple(r for r in self.results if not r.ok)

    @property
    def replay_failures(self) -> dict[str, Exception]:
        """The errors of the runs that did not replay, by run id (the shape of Temporal's results)."""
        return {r.run_id: r.replay_failure for r in self.results if r.replay_failure is not None}


def _status_of(events: Sequence[Any]) -> str:
    """How a history's run stood: the status its closing event gives, else "running"."""
    for ev in reversed(events):  # the closing event is normally the last: found at once
        status = _CLOSING_EVENTS.get(ev.type)
        if status is not None:
            return status
    return "running"


async def _histories(histories: Iterable[History] | AsyncIterable[History]) -> AsyncIterator[History]:
    if isinstance(histories, AsyncIterable):
        async for h in histories:
            yield h
    else:
        for h in histories:
            yield h


class Replayer:
    """Replays histories against workflow code to prove that a code change is still deterministic.

    ``replay(history)`` checks one history and raises on divergence; ``replay_workflows(histories)``
    checks many and reports each; ``replay_store(url)`` checks the runs a store holds (the check to run
    before a deploy, also ``duro replay``).

    Args:
        workflows: the ``@duro.workflow`` functions the histories may name.
        converter: the data converter the histories were written with.
        determinism: the determinism guard for workflows that set none, as ``Worker``'s: "raise"
            (the default: code that calls ``time.time()``, ``uuid.uuid4()``... fails the replay with
            ``duro.NonDeterminismError``), "warn" or "off".

    Raises:
        TypeError: an entry of ``workflows`` is not a ``@duro.workflow``.
        ValueError: ``determinism`` is not "raise", "warn" or "off".
    """

    def __init__(self, *, workflows: Sequence[Callable[..., Any]], converter: DataConverter | None = None,
                 determinism: str = "raise") -> None:
        self._defs: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            d = get_workflow_definition(wf)
            self._defs[d.name] = d
        self._converter = converter or default_converter
        self._determinism = cast(str, check_mode("determinism", determinism))
        for d in self._defs.values():
            guard_workflow(d, self._determinism)

    @property
    def workflow_types(self) -> list[str]:
        """The registered names of the workflows this Replayer knows, sorted."""
        return sorted(self._defs)

    async def replay(self, history: History) -> None:
        """Replay one history; raises ``duro.NonDeterminismError`` if the code diverges from it."""
        events = history.core_events
        if not events:
            raise ValueError("the history has no events")
        started = events[0]
        defn = self._defs.get(started.name)
        if defn is None:
            raise ValueError(f"the history is of workflow type {started.name!r}, which this Replayer does not "
                             f"know; pass it in workflows= (known: {sorted(self._defs)})")
        inst = WorkflowInstance(defn, run_key_of(history.run_id), started, self._converter,
                                determinism=self._determinism)
        try:
            inst.replay(events)
        except NonDeterminismError:
            raise
        finally:
            inst.close()

    async def _result(self, history: History) -> WorkflowReplayResult:
        """Replay one history and say how it went (an error is the result, not raised)."""
        events = history.core_events
        workflow_type = events[0].name if events else ""
        try:
            await self.replay(history)
        except Exception as e:  # whatever the code raised: what the new code would do to this run
            # A workflow task that would fail says so by wrapping what the code raised: that is the answer.
            err = e.__cause__ if isinstance(e, WorkflowTaskError) and isinstance(e.__cause__, Exception) else e
            return WorkflowReplayResult(history.workflow_id, history.run_id, workflow_type, _status_of(events), err)
        return WorkflowReplayResult(history.workflow_id, history.run_id, workflow_type, _status_of(events))

    async def replay_workflows(self, histories: Iterable[History] | AsyncIterable[History], *,
                               raise_on_failure: bool = False) -> WorkflowReplayResults:
        """Replay every history and report how each went.

        Unlike ``replay``, a history that does not replay does not stop the others: its result holds
        the error (``duro.NonDeterminismError`` for a divergence). So does a history of a workflow
        type this Replayer was not given.

        Args:
            histories: ``duro.History`` objects (``handle.fetch_history()``, ``History.from_json``), from
                a list or any iterable, or an async iterable.
            raise_on_failure: raise the first error instead (Temporal's ``replay_workflows`` does that by
                default; here the report is the default).

        Returns:
            The results, in the order of ``histories``.

        Raises:
            duro.NonDeterminismError: with ``raise_on_failure``, the first divergence (or other error).
        """
        results: list[WorkflowReplayResult] = []
        async for history in _histories(histories):
            result = await self._result(history)
            if raise_on_failure and result.replay_failure is not None:
                raise result.replay_failure
            results.append(result)
        return WorkflowReplayResults(tuple(results))

    async def replay_store(self, store: str | Client, *, workflow_type: str | None = None,
                           since: datetime.datetime | None = None, limit: int = DEFAULT_REPLAY_LIMIT,
                           raise_on_failure: bool = False) -> WorkflowReplayResults:
        """Replay the runs a store holds against this code: the check to run before deploying it.

        Lists the runs of the Replayer's workflow types, running and closed (the latest run of each
        workflow id, as ``Client.list_workflows``), newest first, reads each one's history and
        replays it. Nothing is written to the store; workers may go on using it meanwhile.

        Args:
            store: a store URL (``lmdb://PATH``, ``postgresql://...``), opened for the check and
                closed after, or a connected ``duro.Client``.
            workflow_type: only runs of this type (one of the Replayer's); default: all of them.
            since: only runs started at or after this time (a timezone-aware datetime).
            limit: at most this many runs, the newest (a positive int; default 1000).
            raise_on_failure: raise the first error instead of reporting it.

        Returns:
            The results, newest run first; ``skipped`` counts the runs of other types in the window,
            ``left_out`` those of the Replayer's types past ``limit``.

        Raises:
            ValueError: ``workflow_type`` is not one of the Replayer's workflows; ``limit`` is not a
                positive int; ``since`` is naive.
            TypeError: ``store`` is not a URL or a Client; ``since`` is not a datetime.
            duro.StoreURLError: the URL names no store (a mistyped path or ``?schema=``: nothing is
                created, and the check does not pass on an empty store).
            duro.NonDeterminismError: with ``raise_on_failure``, the first divergence (or other error).
        """
        if workflow_type is not None and workflow_type not in self._defs:
            raise ValueError(f"workflow type {workflow_type!r} is not one of this Replayer's workflows "
                             f"(known: {sorted(self._defs)})")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise ValueError(f"limit must be a positive int, got {limit!r}")
        after: datetime.datetime | None = None
        if since is not None:
            if not isinstance(since, datetime.datetime):
                raise TypeError(f"since must be a timezone-aware datetime, not {type(since).__name__}")
            if since.tzinfo is None:
                raise ValueError(f"since must be timezone-aware (a naive datetime is ambiguous), got {since!r}")
            after = since - datetime.timedelta(microseconds=1)  # the store's filter is exclusive, in microseconds
        if isinstance(store, Client):
            return await self._replay_client(store, workflow_type, after, limit, raise_on_failure)
        if not isinstance(store, str):
            raise TypeError(f"store must be a store URL or a duro.Client, not {type(store).__name__}")
        missing = await missing_store(store)
        if missing is not None:
            raise StoreURLError(f"{missing}: replay_store reads a store and creates none; check the URL")
        async with Client.connect(store, converter=self._converter) as client:
            return await self._replay_client(client, workflow_type, after, limit, raise_on_failure)

    async def _replay_client(self, client: Client, workflow_type: str | None, after: datetime.datetime | None,
                             limit: int, raise_on_failure: bool) -> WorkflowReplayResults:
        types = [workflow_type] if workflow_type is not None else sorted(self._defs)
        # The counts are as of the start of the check: a run started while it lists is not in them.
        known = 0
        for t in types:
            known += await client.count_workflows(workflow_type=t, started_after=after)
        skipped = 0
        if workflow_type is None:
            skipped = max(0, await client.count_workflows(started_after=after) - known)
        runs: list[WorkflowExecution] = []
        for t in types:  # each type through its index, then merged: the newest `limit` of all of them
            token: str | None = None
            listed = 0
            while listed < limit:
                page = await client.list_workflows(workflow_type=t, started_after=after,
                                                   limit=min(_LIST_PAGE, limit - listed), page_token=token)
                runs.extend(page)
                listed += len(page)
                token = page.next_page_token
                if token is None:
                    break
        runs.sort(key=lambda ex: (ex.start_time, ex.workflow_id), reverse=True)
        left_out = max(0, known - limit)
        results: list[WorkflowReplayResult] = []
        for ex in runs[:limit]:
            events = await client.store.aread_history(run_key_of(ex.run_id))
            if not events:
                continue  # deleted since it was listed (retention, purge)
            result = await self._result(History(ex.workflow_id, ex.run_id, events))
            if raise_on_failure and result.replay_failure is not None:
                raise result.replay_failure
            results.append(result)
        return WorkflowReplayResults(tuple(results), skipped=skipped, left_out=left_out)
