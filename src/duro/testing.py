"""Testing tools: ``WorkflowEnvironment`` (in-process, with time skipping) and ``Replayer``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from duro._instance import WorkflowInstance
from duro._local import local_dispatch
from duro._schedule_loop import wake_schedule_loops
from duro._validate import check_duration
from duro.client import Client
from duro.converter import DataConverter, default_converter
from duro.errors import NonDeterminismError, StoreError
from duro.history import History
from duro.stores import open_store
from duro.stores.base import Clock, Store, run_key_of
from duro.workflow import WorkflowDefinition, get_workflow_definition

__all__ = ["Replayer", "SkippingClock", "WorkflowEnvironment"]

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


class Replayer:
    """Replays histories against workflow code to prove that a code change is still deterministic.

    Args:
        workflows: the ``@duro.workflow`` functions the histories may name.
        converter: the data converter the histories were written with.
    """

    def __init__(self, *, workflows: Sequence[Callable[..., Any]], converter: DataConverter | None = None) -> None:
        self._defs: dict[str, WorkflowDefinition] = {}
        for wf in workflows:
            d = get_workflow_definition(wf)
            self._defs[d.name] = d
        self._converter = converter or default_converter

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
        inst = WorkflowInstance(defn, run_key_of(history.run_id), started, self._converter)
        try:
            inst.replay(events)
        except NonDeterminismError:
            raise
        finally:
            inst.close()
