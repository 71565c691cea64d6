"""Sync activities on a process pool (``Worker(activity_executor=ProcessPoolExecutor(...))``).

A sync activity submitted to an executor that is not a ``ThreadPoolExecutor`` runs in another
process: its function, its arguments and its context are pickled. The worker's own
``ActivityContext`` cannot cross (it holds the worker), so the child gets a
``ProcessActivityContext``: the attempt's ``info``, and ``heartbeat()`` / ``is_cancelled`` that go
through a ``multiprocessing`` manager the worker starts (as Temporal's ``SharedStateManager``):

- heartbeats: one manager queue per worker; the child puts ``(key, details)``, a thread of the
  worker takes them and hands them to the attempt's ordinary heartbeat path;
- cancellation: one manager dict per worker; the worker sets ``cancels[key]`` when it learns the
  attempt is cancelled, and the child's ``heartbeat()`` raises ``duro.CancelledError`` (and
  ``is_cancelled`` is true) from then on.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable
from typing import Any

from duro.activity import ActivityContext, ActivityInfo
from duro.errors import ApplicationError, CancelledError

__all__ = ["SHIPPED_DETAILS", "ProcessActivityContext", "ProcessBridge", "check_picklable", "run_in_process"]

log = logging.getLogger("duro.worker")

# The key under which a failed attempt's exception carries its last heartbeat details back to the
# worker (in the exception's __dict__, which pickling keeps): the heartbeat itself travels through
# the manager's queue and can reach the worker after the failure did.
SHIPPED_DETAILS = "_duro_last_heartbeat"


def _no_heartbeat(ctx: ActivityContext, details: Any) -> None:  # pragma: no cover - overridden below
    raise AssertionError("a ProcessActivityContext heartbeats through its queue")


class ProcessActivityContext(ActivityContext):
    """The context of a sync activity running in a process-pool worker process.

    It pickles to ``info`` and the manager proxies of its worker: ``heartbeat()`` puts the details
    on the worker's queue (the worker encodes and records them as for any activity), and
    ``is_cancelled`` reads the worker's cancellation dict. Each of these is a round trip to the
    manager process (about 0.1 ms).
    """

    __slots__ = ("_cancels", "_key", "_last", "_queue")

    def __init__(self, info: ActivityInfo, key: str, queue: Any, cancels: Any) -> None:
        super().__init__(info, _no_heartbeat)
        self._key = key
        self._queue = queue
        self._cancels = cancels
        self._sync = True
        self._last: Any = None  # the last heartbeat's details other than None (in the child; not pickled)

    def __reduce__(self) -> tuple[Any, ...]:
        return (ProcessActivityContext, (self.info, self._key, self._queue, self._cancels))

    def heartbeat(self, details: Any = None) -> None:
        """Report progress to the worker; raises ``duro.CancelledError`` once the attempt is cancelled.

        ``details`` must be picklable (they cross to the worker process, which encodes them).
        """
        if self.is_cancelled:
            raise CancelledError(f"activity {self.info.activity_type!r} (attempt {self.info.attempt}) was cancelled")
        self._queue.put((self._key, details))
        if details is not None:  # None keeps the details recorded before, as the store does
            self._last = details

    @property
    def is_cancelled(self) -> bool:
        """True once the worker learned (through a heartbeat) that this attempt is no longer wanted."""
        if not self._cancelled and self._key in self._cancels:
            self._cancelled = True
        return self._cancelled


def run_in_process(fn: Callable[..., Any], ctx: ProcessActivityContext, args: tuple[Any, ...]) -> Any:
    """What the pool runs: the activity function (module level, so the pool can pickle it).

    A failure after a heartbeat takes the heartbeat's details along (``SHIPPED_DETAILS``), so its
    retry sees them however late the queue delivers the heartbeat itself.
    """
    try:
        return fn(ctx, *args)
    except Exception as e:
        # Set or cleared on every failure: an exception object raised again by another attempt (a
        # module-level instance) must not carry an earlier attempt's details. (Every exception has
        # a __dict__, even a subclass with __slots__: BaseException provides it.)
        e.__dict__.pop(SHIPPED_DETAILS, None)
        if ctx._last is not None:
            e.__dict__[SHIPPED_DETAILS] = ctx._last
        raise


def check_picklable(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Raise a non-retryable ApplicationError naming what of an activity call cannot be pickled.

    A process pool pickles the call in a background thread and reports a failure without saying
    which part; checked here first, every attempt would fail alike, so the first is the last.
    """
    what, value = "", None
    try:
        pickle.dumps(fn)
    except Exception as e:
        what, value = f"its function {getattr(fn, '__qualname__', fn)!r}", e
    else:
        for i, arg in enumerate(args, start=1):
            try:
                pickle.dumps(arg)
            except Exception as e:
                what, value = f"argument {i} (a {type(arg).__name__})", e
                break
    if value is not None:
        raise ApplicationError(
            f"activity {name!r} runs on a process pool (Worker(activity_executor=...)), so its function and "
            f"arguments must be picklable, but {what} cannot be pickled: {type(value).__name__}: {value}. Define "
            "the activity at module level (or as a method of a picklable object), or make it async (async "
            "activities run on the worker's event loop)", type="PicklingError", non_retryable=True)


class ProcessBridge:
    """A worker's channel to its sync activities in other processes: a manager's queue and dict.

    Made (and its manager process started, with the "spawn" method: the worker's process has
    threads) when a worker with a process pool starts; ``close`` stops it.
    """

    def __init__(self) -> None:
        self._manager = multiprocessing.get_context("spawn").Manager()
        self.queue: Any = self._manager.Queue()
        self.cancels: Any = self._manager.dict()
        self._routes: dict[str, Callable[[Any], None]] = {}
        self._thread = threading.Thread(target=self._drain, name="duro-process-heartbeats", daemon=True)
        self._thread.start()

    def context(self, info: ActivityInfo, on_heartbeat: Callable[[Any], None]) -> ProcessActivityContext:
        """A picklable context for one attempt; its heartbeats call ``on_heartbeat(details)`` (any thread)."""
        key = f"{info.workflow_run_id}/{info.activity_id}/{info.attempt}/{os.urandom(6).hex()}"
        self._routes[key] = on_heartbeat
        return ProcessActivityContext(info, key, self.queue, self.cancels)

    def cancel(self, ctx: ProcessActivityContext) -> None:
        """Tell the attempt's process it is cancelled (a round trip to the manager: call off the loop)."""
        try:
            self.cancels[ctx._key] = True
        except Exception as e:  # the manager stopped (the worker is shutting down)
            log.warning("could not tell a process-pool activity it is cancelled: %s: %s", type(e).__name__, e)

    def release(self, ctx: ProcessActivityContext, cancelled: bool) -> None:
        """The attempt ended: forget it (its cancellation entry too: a round trip, so call off the loop)."""
        self._routes.pop(ctx._key, None)
        if cancelled:
            with contextlib.suppress(Exception):  # the manager stopped: its dict is gone with it
                self.cancels.pop(ctx._key, None)

    def _drain(self) -> None:
        while True:
            try:
                item = self.queue.get()
            except (EOFError, OSError, BrokenPipeError):  # the manager is gone (shutting down)
                return
            if item is None:
                return
            key, details = item
            route = self._routes.get(key)
            if route is None:  # the attempt ended meanwhile
                continue
            try:
                route(details)
            except Exception:
                log.exception("a heartbeat of a process-pool activity could not be recorded")

    def close(self) -> None:
        """Stop the heartbeat thread and the manager process."""
        with contextlib.suppress(Exception):  # the manager died: the thread ends on its own
            self.queue.put(None)
        self._thread.join(timeout=5)
        self._manager.shutdown()
