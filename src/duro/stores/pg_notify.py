"""LISTEN/NOTIFY wake-ups for the PostgreSQL store: channels per schema, a reconnecting listener, notify helpers.

Groundwork of the PostgreSQL store (issue 8, part B); the store itself is being built on top.

A notification is a hint, never the data: whoever is woken reads the tables. PostgreSQL delivers a
NOTIFY sent inside a transaction only when (and if) that transaction commits, in commit order, and
folds identical (channel, payload) pairs of one transaction into one. Notifications sent while a
listener's connection is down are lost, so after reconnecting the listener calls every callback
once with ``None`` ("anything may have changed"), and callers rescan; a slow poll stays as the
safety net for the rest (a listener that did not notice its connection died before the ping).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import asyncpg

from duro._aio import wait_event
from duro.errors import StoreError
from duro.stores.pg_conn import DEFAULT_CONNECT_TIMEOUT_S, PgSettings, connect_one

__all__ = ["KINDS", "Listener", "NotifyCallback", "channel", "notify", "notify_many", "notify_statement"]

log = logging.getLogger("duro.store.pg")

KINDS: tuple[str, ...] = ("wtask", "atask", "timer", "closed", "request", "response", "update")
"""The kinds of wake-up, one channel each per schema, and the payload each carries by convention.

- ``wtask``: a workflow task became due in a queue; payload: the task queue.
- ``atask``: an activity task became visible in a queue; payload: the task queue.
- ``timer``: a timer was set; payload: its due time (µs, decimal), so sleepers may sleep less.
- ``closed``: a run closed; payload: its run id (hex), for result waiters.
- ``request``: a query or update request waits for a queue's workers; payload: the task queue.
- ``response``: a request was answered; payload: the request id.
- ``update``: an update completed; payload: the update id.
"""

NotifyCallback = Callable[[str | None], None]
"""A wake-up callback: gets a notification's payload, or None after a reconnect (rescan everything)."""

_MAX_CHANNEL_BYTES = 63  # channel names are identifiers: pg_notify() refuses longer ones
_BACKOFF_INITIAL_S = 0.05
_BACKOFF_MAX_S = 2.0


def channel(schema: str, kind: str) -> str:
    """The channel name of ``kind`` wake-ups for the store in ``schema``: ``duro_<schema>_<kind>``.

    A name that would pass PostgreSQL's 63-byte identifier limit keeps the head of the schema name
    and adds 8 hex digits of its hash, so distinct schemas keep distinct channels.

    Args:
        schema: the store's schema (``PgSettings.schema``).
        kind: one of ``KINDS`` (or another short identifier).
    """
    name = f"duro_{schema}_{kind}"
    if len(name.encode()) <= _MAX_CHANNEL_BYTES:
        return name
    digest = hashlib.blake2b(schema.encode(), digest_size=4).hexdigest()
    keep = _MAX_CHANNEL_BYTES - len(f"duro__{digest}_{kind}")
    return f"duro_{schema[:keep]}_{digest}_{kind}"


async def notify(conn: asyncpg.Connection, channel_name: str, payload: str = "") -> None:
    """Send one notification; inside a transaction it is delivered when (and if) the transaction commits.

    Args:
        conn: the connection of the transaction that makes the change the notification announces.
        channel_name: from ``channel``.
        payload: a short text (PostgreSQL's limit is 8000 bytes).
    """
    await conn.execute("SELECT pg_notify($1::text, $2::text)", channel_name, payload)


_NOTIFY_MANY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS n(c, p)"


async def notify_many(conn: asyncpg.Connection, items: Iterable[tuple[str, str]]) -> None:
    """Send several notifications in one round trip (a group commit's wake-ups), in order.

    Duplicates within one transaction reach listeners once, so a batch may send one per change.

    Args:
        conn: the connection of the transaction that makes the changes.
        items: (channel name, payload) pairs.
    """
    sql, args = notify_statement(items)
    if args[0]:
        await conn.execute(sql, *args)


def notify_statement(items: Iterable[tuple[str, str]]) -> tuple[str, list[Any]]:
    """The statement (and its arguments) that sends (channel name, payload) pairs, in order."""
    channels: list[str] = []
    payloads: list[str] = []
    for name, payload in items:
        channels.append(name)
        payloads.append(payload)
    return _NOTIFY_MANY, [channels, payloads]


class Listener:
    """A dedicated connection that LISTENs on a schema's channels and calls callbacks on the event loop.

    When the connection drops (server restart, ``pg_terminate_backend``, network), the listener
    reconnects with backoff, LISTENs again, then calls every callback once with ``None``: wake-ups
    sent meanwhile were lost. A periodic ping notices a connection that died silently.

    Args:
        settings: the store's settings (server, schema).
        kinds: the kinds of wake-up to listen for (default: all of ``KINDS``).
        ping_interval_s: how often an idle connection is checked with ``SELECT 1``.
        ping_timeout_s: how long a ping may take before the connection counts as lost.
        connect_timeout_s: how long ``start`` tries to reach the server.

    Example:
        ``async with Listener(settings) as listener: listener.subscribe("wtask", wake.set)``
    """

    def __init__(self, settings: PgSettings, *, kinds: Sequence[str] = KINDS, ping_interval_s: float = 5.0,
                 ping_timeout_s: float = 5.0, connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        self.settings = settings
        self._kinds = tuple(kinds)
        self._channels = {channel(settings.schema, kind): kind for kind in self._kinds}
        self._callbacks: dict[str, list[NotifyCallback]] = {kind: [] for kind in self._kinds}
        self._ping_interval_s = ping_interval_s
        self._ping_timeout_s = ping_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.reconnects = 0
        """How many times the connection was lost and made again."""
        self.ignore: Callable[[str, int], bool] | None = None
        """When set, a notification of (kind, sender's server pid) for which it returns True is dropped."""

    @property
    def connected(self) -> bool:
        """Whether the listening connection is up (wake-ups are being received)."""
        return self._conn is not None and not self._conn.is_closed()

    @property
    def backend_pid(self) -> int | None:
        """The server process id of the listening connection (None while down)."""
        return int(self._conn.get_server_pid()) if self.connected else None

    def subscribe(self, kind: str, callback: NotifyCallback) -> Callable[[], None]:
        """Call ``callback`` on the event loop for each ``kind`` wake-up; returns a function that unsubscribes.

        The callback gets the payload, or ``None`` after a reconnect. It must not block; an exception it
        raises is logged and the other callbacks still run.

        Args:
            kind: one of the kinds this listener listens for.
            callback: called with the payload (str) or None.

        Raises:
            ValueError: ``kind`` is not one this listener listens for.
        """
        if kind not in self._callbacks:
            raise ValueError(f"this listener does not listen for {kind!r}; its kinds are {', '.join(self._kinds)}")
        self._callbacks[kind].append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks[kind].remove(callback)

        return unsubscribe

    async def start(self) -> None:
        """Connect and LISTEN, retrying until ``connect_timeout_s``; then keep the connection up in the background.

        Raises:
            StoreUnavailableError: the server could not be reached in time.
            StoreError: a problem waiting will not fix (no such database, login refused).
        """
        if self._task is not None:
            raise RuntimeError("this Listener is already started")
        self._closing = False
        conn = await self._connect(self._connect_timeout_s)
        self._task = asyncio.create_task(self._supervise(conn), name=f"duro-pg-listener-{self.settings.schema}")

    async def close(self) -> None:
        """Stop listening and close the connection (callbacks are no longer called)."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------ internals

    async def _connect(self, timeout_s: float) -> Any:
        conn = await connect_one(self.settings, timeout_s=timeout_s)
        try:
            for name in self._channels:
                await conn.add_listener(name, self._on_notification)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        return conn

    def _on_notification(self, _conn: Any, pid: int, channel_name: str, payload: str) -> None:
        kind = self._channels.get(channel_name)
        if kind is not None and not self._closing and not (self.ignore is not None and self.ignore(kind, pid)):
            self._call(kind, payload)

    def _call(self, kind: str, payload: str | None) -> None:
        for callback in list(self._callbacks[kind]):
            try:
                callback(payload)
            except Exception:
                log.exception("a PostgreSQL wake-up callback (%s) raised", kind)

    async def _supervise(self, conn: Any) -> None:
        """Watch the connection; when it is lost, reconnect with backoff and fire every callback once."""
        while True:
            await self._watch(conn)
            self._conn = None
            if not conn.is_closed():
                conn.terminate()
            if self._closing:
                return
            log.warning("lost the PostgreSQL LISTEN connection to %s; reconnecting", self.settings.where)
            conn = await self._reconnect()
            self.reconnects += 1
            log.info("LISTEN connection to %s is back; waking every subscriber", self.settings.where)
            for kind in self._kinds:
                self._call(kind, None)

    async def _watch(self, conn: Any) -> None:
        """Return when the connection is lost (its termination callback, or a failed ping)."""
        woke = asyncio.Event()
        lost: list[bool] = []  # not the event: a ping interval passing sets that too

        def on_lost(_conn: Any) -> None:
            lost.append(True)
            woke.set()

        conn.add_termination_listener(on_lost)
        if conn.is_closed():
            return
        while not self._closing:
            woke.clear()
            if not lost:
                await wait_event(woke, self._ping_interval_s)
            if lost:
                return
            try:
                await conn.fetchval("SELECT 1", timeout=self._ping_timeout_s)
            except Exception as e:
                log.debug("PostgreSQL LISTEN connection ping failed: %s: %s", type(e).__name__, e)
                return

    async def _reconnect(self) -> Any:
        """Connect and LISTEN again, for as long as it takes (until ``close``)."""
        delay = _BACKOFF_INITIAL_S
        failures = 0
        while True:
            try:
                return await self._connect(timeout_s=min(5.0, self._connect_timeout_s))
            except Exception as e:  # unreachable, refused, or lost again while LISTENing: keep trying
                failures += 1
                level = logging.WARNING if failures == 1 or not isinstance(e, StoreError) else logging.DEBUG
                log.log(level, "reconnecting the PostgreSQL LISTEN connection failed (%s: %s); retrying",
                        type(e).__name__, e)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_MAX_S)
