"""The deterministic asyncio event loop that workflow coroutines run on, and its I/O guard."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import os
import reprlib
import sys
import threading
import weakref
from asyncio import format_helpers
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Iterator
from contextvars import Context
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, TypeVarTuple, cast

from duro.errors import NonDeterminismError, WorkflowIOError

if TYPE_CHECKING:
    from asyncio.events import _TaskFactory
    from concurrent.futures import Executor

    from _typeshed import FileDescriptorLike

__all__ = ["WorkflowLoop", "install_io_guard"]

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

_DETERMINISM_HINT = "workflow code must be deterministic; do I/O in an activity"


class _WorkflowTimerHandle(asyncio.TimerHandle):
    """A TimerHandle that remembers the engine's timer sequence number (None: no durable timer)."""

    __slots__ = ("_seq",)

    def __init__(
        self,
        when: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        loop: WorkflowLoop,
        context: Context | None,
    ) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq: int | None = None


def _io_refusal(name: str, reason: str) -> WorkflowIOError:
    return WorkflowIOError(f"loop.{name}() {reason}: {_DETERMINISM_HINT}")


def _refused(name: str, reason: str) -> Callable[..., NoReturn]:
    """Build a WorkflowLoop method that refuses real I/O with a message naming the call."""

    def method(self: WorkflowLoop, *args: Any, **kwargs: Any) -> NoReturn:
        raise _io_refusal(name, reason)

    method.__name__ = name
    method.__qualname__ = f"WorkflowLoop.{name}"
    method.__doc__ = f"Refused in workflow code ({reason}): raises WorkflowIOError."
    return method


def _not_driven_here(name: str) -> Callable[..., NoReturn]:
    """Build a WorkflowLoop method for the calls that run or stop a loop: the engine does that."""

    def method(self: WorkflowLoop, *args: Any, **kwargs: Any) -> NoReturn:
        raise WorkflowIOError(
            f"loop.{name}() is not available on a WorkflowLoop: the duro engine drives this loop one "
            "activation at a time with run_until_quiescent(); workflow code runs inside it and must "
            "neither run nor stop it"
        )

    method.__name__ = name
    method.__qualname__ = f"WorkflowLoop.{name}"
    method.__doc__ = "Refused: the engine drives this loop (run_until_quiescent); raises WorkflowIOError."
    return method


class _Ready(asyncio.Handle):
    """A Handle made without asyncio's debug bookkeeping: the hot path of every resolved future.

    Made by ``WorkflowLoop.call_soon``, which sets every slot itself (no ``__init__`` call).
    """

    __slots__ = ()
    # asyncio.Handle's slots that typeshed does not declare.
    _context: Context
    _loop: Any
    _callback: Callable[..., object]
    _repr: str | None
    _source_traceback: Any


_new_object = object.__new__
# Context.run unbound: ``_context_run(context, f, *args)`` makes no bound method per callback.
_context_run = Context.run


class WorkflowLoop(asyncio.AbstractEventLoop):
    """An asyncio event loop that runs workflow code deterministically, driven by the engine.

    The engine never calls ``run_forever``. Each *activation* it moves the clock (``advance_time``),
    fires timers (``fire_timer``) and resolves futures, then calls ``run_until_quiescent``, which
    runs ready callbacks first-in first-out until every coroutine is blocked. Given the same
    activations, the same callbacks run in the same order, so workflow code replays identically.

    Inside workflow code ``asyncio.get_running_loop()`` is this loop, so ``asyncio.gather``,
    ``wait``, ``wait_for``, ``timeout``, ``sleep``, ``shield``, ``TaskGroup``, ``Event``, ``Lock``,
    ``Semaphore``, ``Condition`` and ``Queue`` all work. A delayed callback (``call_later``,
    ``call_at``) is a durable timer: the loop asks the engine for one with ``start_timer`` and runs
    the callback when the engine calls ``fire_timer``. Methods that would do real I/O or use
    threads raise ``WorkflowIOError``.

    The loop is single-threaded: call it from the thread that drives it.

    Args:
        start_timer: called with a delay in seconds whenever workflow code schedules a delayed
            callback; returns the engine's sequence number for the durable timer it records.
        cancel_timer: called with that sequence number when the callback is cancelled before its
            timer fired (for example ``wait_for`` finished first).

    Attributes:
        unhandled_errors: the context dicts given to the default exception handler, in order: an
            exception in a callback, a task whose exception was never retrieved, an async
            generator that failed to close. The engine reads (and clears) it after each
            ``run_until_quiescent`` and fails the workflow task if it is not empty.
    """

    #: The determinism guard's mode for the code on this loop ("raise", "warn" or "off"; see
    #: ``duro._determinism``), the workflow type it names, and its first refusal in "raise" mode
    #: (kept so that the task fails even when the code catches the error). Class defaults: a
    #: worker may hold 100,000 parked loops, and most never set them.
    determinism = "raise"
    workflow_type = ""
    nondeterministic_call: NonDeterminismError | None = None
    #: Depth of ``unguarded()`` blocks (``ctx.unsafe()``) the code is inside: both guards are off.
    unsafe_depth = 0

    def __init__(self, *, start_timer: Callable[[float], int], cancel_timer: Callable[[int], None]) -> None:
        self._start_timer = start_timer
        self._cancel_timer = cancel_timer
        self._now = 0.0
        # A plain list, swapped out per pass (see run_until_quiescent): a deque preallocates a 64-slot block,
        # and a worker may hold 100,000 parked loops.
        self._ready: list[asyncio.Handle] = []
        # Live durable timers: seq -> handle, in the order they were started. A timer leaves when
        # it fires or is cancelled, so a late fire_timer for it is ignored.
        self._timers: dict[int, _WorkflowTimerHandle] = {}
        # Strong references to unfinished tasks, in creation order. asyncio itself only keeps weak
        # ones, so a task blocked on something only it references (a cycle) would be collected,
        # and its coroutine closed, whenever the cycle collector happened to run: at a
        # nondeterministic point of the workflow. Here tasks live until they finish or close().
        self._tasks: dict[asyncio.Task[Any], None] = {}
        # Async generators first iterated on this loop, in first-iteration order (a weak dict, not
        # a WeakSet, so that iteration order is deterministic).
        # Made on first use: most workflows never iterate an async generator, and a parked
        # workflow's loop should cost little memory.
        self._asyncgens_map: weakref.WeakKeyDictionary[Any, None] | None = None
        self._task_counter = 0
        self._task_factory: _TaskFactory | None = None
        self._exception_handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None
        # Bound once: set_asyncgen_hooks is called on every activation.
        self._asyncgen_hooks = (self._asyncgen_firstiter, self._asyncgen_finalizer)
        self._debug = False
        self._running = False
        self._held = False
        self._closed = False
        self.unhandled_errors: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._running else "idle"
        return (
            f"<WorkflowLoop {state} time={self._now} ready={len(self._ready)} "
            f"timers={len(self._timers)} tasks={len(self._tasks)}>"
        )

    # ----------------------------------------------------------------- driven by the engine

    def set_time(self, t: float) -> None:
        """Set the workflow clock that ``time()`` returns until the next call.

        Args:
            t: seconds since the Unix epoch, taken from the history (the activation's time), so
                that replay sees the same clock. It should never go backwards.
        """
        self._now = float(t)

    def advance_time(self, t: float) -> None:
        """Move the workflow clock forward to ``t``; a ``t`` before ``time()`` leaves it unchanged.

        What an activation does with the latest timestamp of its inputs (``set_time`` otherwise).

        Args:
            t: seconds since the Unix epoch, taken from the history.
        """
        if t > self._now:
            self._now = t

    def fire_timer(self, seq: int) -> None:
        """Run the callback of durable timer ``seq`` on the next ``run_until_quiescent``.

        An unknown, already fired or cancelled ``seq`` is ignored: a timer cancelled by workflow
        code may still fire in a race with the cancellation being recorded.

        Args:
            seq: the sequence number ``start_timer`` returned for the timer.
        """
        handle = self._timers.pop(seq, None)
        if handle is not None:
            self._ready.append(handle)

    def pending_timers(self) -> dict[int, float]:
        """Return the live durable timers: sequence number -> due time (on the ``time()`` clock).

        Live means started, neither fired nor cancelled. The order is the order they were started.
        """
        return {seq: handle.when() for seq, handle in self._timers.items()}

    def has_ready(self) -> bool:
        """Return whether callbacks are waiting for ``run_until_quiescent``."""
        return bool(self._ready)

    def run_until_quiescent(self) -> None:
        """Run ready callbacks, oldest first, until none are left: every coroutine is blocked.

        For the duration this loop is the thread's running loop (another loop, such as the
        worker's own asyncio or uvloop loop, may be running in the same thread: it is restored
        afterwards, also when an exception escapes), async generators are finalized on it, and
        the I/O guard (``install_io_guard``) is armed in this thread.

        Callbacks that the engine itself registers on workflow futures run here too, under the
        guard: they should record what happened, not do I/O.

        Raises:
            RuntimeError: the loop is closed, or this is a re-entrant call from inside a callback.
        """
        if self._running:
            raise RuntimeError(
                "WorkflowLoop.run_until_quiescent() called while it is already running (re-entrant "
                "call from workflow code or a callback)"
            )
        if self._closed:
            raise RuntimeError("Event loop is closed")
        ready = self._ready
        if not ready:
            return
        # Held (see ``held``): already the running loop; the run is only marked, for re-entrancy checks.
        saved = None if self._held else self._activate()
        self._running = True
        try:
            # FIFO: callbacks scheduled while a batch runs go to a fresh list, run in the next pass.
            # Each handle is run here, as ``Handle._run`` would run it (one call fewer per callback:
            # this is the path of every resolved future); a failure is reported as it reports one.
            while ready:
                self._ready = []
                ready.reverse()  # popped from the end: oldest first, each reference dropped as it runs
                while ready:
                    handle = ready.pop()
                    if not handle._cancelled:
                        try:
                            _context_run(handle._context, handle._callback, *handle._args)  # type: ignore[attr-defined]
                        except (SystemExit, KeyboardInterrupt):
                            raise
                        except BaseException as exc:
                            self._callback_failed(handle, exc)
                    # Drop the handle now rather than at the next iteration: when it was the last
                    # reference to a finished task (its done callback), the task is finalized here,
                    # so a "never retrieved" exception reaches unhandled_errors before we return.
                    del handle
                ready = self._ready
        finally:
            if saved is None:
                self._running = False
            else:
                self._deactivate(saved)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Stay the thread's running loop (guard armed) across many ``run_until_quiescent`` calls.

        Replay runs thousands of activations back to back; switching the running loop, the
        async-generator hooks and the guard in and out for each one costs more than the
        activation itself. Nothing but workflow activations may run inside the block.
        """
        if self._held or self._running:
            raise RuntimeError("WorkflowLoop.held() is not re-entrant")
        self._check_closed()
        saved = self._activate()
        self._running = False
        self._held = True
        try:
            yield
        finally:
            self._held = False
            self._deactivate(saved)

    @contextlib.contextmanager
    def unguarded(self) -> Iterator[None]:
        """Lift the I/O and determinism guards for the code inside the block (``ctx.unsafe()``).

        Counted on this loop, not the thread: if the block awaits, other code of the same
        workflow runs unguarded until it resumes and leaves, but no other workflow does.
        """
        self.unsafe_depth += 1
        try:
            yield
        finally:
            self.unsafe_depth -= 1

    def _callback_failed(self, handle: asyncio.Handle, exc: BaseException) -> None:
        # What asyncio's Handle._run reports for a callback that raised.
        cb = format_helpers._format_callback_source(handle._callback, handle._args)  # type: ignore[attr-defined]
        context: dict[str, Any] = {"message": f"Exception in callback {cb}", "exception": exc, "handle": handle}
        if handle._source_traceback:  # type: ignore[attr-defined]
            context["source_traceback"] = handle._source_traceback  # type: ignore[attr-defined]
        self.call_exception_handler(context)

    # ------------------------------------------------------------------ loop state

    def time(self) -> float:
        """Return the workflow clock: as ``set_time`` or ``advance_time`` last left it; never the wall clock."""
        return self._now

    def is_running(self) -> bool:
        """Return whether the loop is inside ``run_until_quiescent``."""
        return self._running

    def is_closed(self) -> bool:
        """Return whether ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Close the loop and tear down the workflow's unfinished coroutines deterministically.

        Used when the engine drops a workflow (completed, or evicted from the cache). Timers are
        forgotten without ``cancel_timer`` (dropping the in-memory instance is not a decision of
        the workflow), and the coroutine of each unfinished task is closed now, in creation order,
        with the loop and the I/O guard active, so that its ``finally`` blocks run here rather than
        whenever the garbage collector finds it. Errors they raise go to ``unhandled_errors``.
        Closing twice does nothing.

        Raises:
            RuntimeError: called from inside ``run_until_quiescent``.
        """
        if self._running:
            raise RuntimeError("cannot close a WorkflowLoop from inside run_until_quiescent()")
        if self._closed:
            return
        self._closed = True
        self._timers.clear()
        self._ready.clear()
        tasks = list(self._tasks)
        self._tasks.clear()
        saved = self._activate()
        try:
            for task in tasks:
                if task.done():
                    continue
                # The task is dropped on purpose; without this its finalizer would report
                # "Task was destroyed but it is pending!".
                cast(Any, task)._log_destroy_pending = False
                try:
                    task.get_coro().close()
                except Exception as exc:
                    self.call_exception_handler(
                        {"message": "error closing a workflow coroutine", "exception": exc, "task": task}
                    )
        finally:
            self._deactivate(saved)
            self._ready.clear()
            if self._asyncgens_map is not None:
                self._asyncgens_map.clear()

    def get_debug(self) -> bool:
        """Return the asyncio debug flag (False unless ``set_debug(True)``)."""
        return self._debug

    def set_debug(self, enabled: bool) -> None:
        """Set the asyncio debug flag (handles then record where they were created).

        Args:
            enabled: the new value.
        """
        self._debug = enabled

    # ------------------------------------------------------------ scheduling callbacks

    def call_soon(
        self, callback: Callable[[*_Ts], object], *args: *_Ts, context: Context | None = None
    ) -> asyncio.Handle:
        """Schedule ``callback(*args)`` to run in this or the next ``run_until_quiescent``, FIFO.

        Args:
            callback: the function to call.
            *args: its positional arguments.
            context: the contextvars context to run it in (default: a copy of the current one).

        Returns:
            A handle whose ``cancel()`` prevents the call.
        """
        if self._closed:
            raise RuntimeError("Event loop is closed")
        if self._debug:
            handle = asyncio.Handle(callback, args, self, context)
        else:
            handle = _new_object(_Ready)
            handle._context = context if context is not None else contextvars.copy_context()
            handle._loop = self
            handle._callback = callback
            handle._args = args
            handle._cancelled = False
            handle._repr = None
            handle._source_traceback = None
        self._ready.append(handle)
        return handle

    def call_later(
        self,
        delay: float,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` after ``delay`` seconds of workflow time: a durable timer.

        A positive finite delay calls ``start_timer(delay)``; the callback runs once the engine
        calls ``fire_timer`` with the returned sequence number. A delay of zero or less runs the
        callback like ``call_soon`` and records no timer: the callback is due already, and a timer
        command for it would make the history depend on how the delay was computed (for example
        ``deadline - loop.time()`` coming out slightly negative) rather than on what the workflow
        decided. An infinite delay never fires and records nothing.

        Args:
            delay: seconds on the workflow clock.
            callback: the function to call.
            *args: its positional arguments.
            context: the contextvars context to run it in.

        Returns:
            A handle whose ``cancel()`` before the timer fired calls ``cancel_timer``.

        Raises:
            ValueError: ``delay`` is NaN.
        """
        return self._schedule(self._now + delay, float(delay), callback, args, context)

    def call_at(
        self,
        when: float,
        callback: Callable[[*_Ts], object],
        *args: *_Ts,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        """Schedule ``callback(*args)`` at workflow time ``when``; see ``call_later``.

        The delay given to ``start_timer`` is ``when - time()`` rounded to the microsecond: at
        epoch-sized clock values the subtraction leaves float noise (``asyncio.timeout(0.1)``
        would otherwise record a timer of 0.09999990463256836 s). Rounding is deterministic, so
        replay computes the same delay.

        Args:
            when: due time on the ``time()`` clock.
            callback: the function to call.
            *args: its positional arguments.
            context: the contextvars context to run it in.

        Returns:
            A handle whose ``cancel()`` before the timer fired calls ``cancel_timer``.

        Raises:
            ValueError: ``when`` is NaN.
        """
        delay = when - self._now
        if math.isfinite(delay):
            delay = round(delay, 6)
        return self._schedule(when, delay, callback, args, context)

    def _schedule(
        self,
        when: float,
        delay: float,
        callback: Callable[..., object],
        args: tuple[Any, ...],
        context: Context | None,
    ) -> _WorkflowTimerHandle:
        self._check_closed()
        if math.isnan(delay):
            raise ValueError("a timer delay must be a number, not NaN")
        handle = _WorkflowTimerHandle(when, callback, args, self, context)
        if delay <= 0:
            self._ready.append(handle)
        elif delay != math.inf:
            seq = self._start_timer(delay)
            if seq in self._timers:
                raise RuntimeError(f"start_timer returned {seq}, the sequence number of a live timer")
            handle._seq = seq
            self._timers[seq] = handle
        return handle

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        # Called by TimerHandle.cancel(). Only a live timer becomes a cancel_timer: a handle that
        # already fired (wait_for cancels its handle in a finally either way), one that never had a
        # timer (delay <= 0 or infinite) or one on a closed loop records nothing.
        seq = handle._seq if isinstance(handle, _WorkflowTimerHandle) else None
        if seq is not None and self._timers.pop(seq, None) is not None:
            self._cancel_timer(seq)

    # --------------------------------------------------------------- futures and tasks

    def create_future(self) -> asyncio.Future[Any]:
        """Return a new future bound to this loop."""
        return asyncio.Future(loop=self)

    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: str | None = None,
        context: Context | None = None,
    ) -> asyncio.Task[_T]:
        """Wrap a coroutine in a task that starts on this loop's next step.

        An unnamed task is named ``workflow-task-N``, N counting the tasks created on this loop
        (asyncio's default ``Task-N`` counts every task in the process, so it would differ between
        the first run and a replay). The loop keeps each task alive until it finishes.

        Args:
            coro: the coroutine to run.
            name: the task's name.
            context: the contextvars context to run it in (default: a copy of the current one).

        Returns:
            The task (whatever the task factory returned, if one is set).
        """
        self._check_closed()
        # Every task takes a number, named or not: asyncio.create_task(coro, name=...) calls this
        # without the name and renames the task afterwards.
        self._task_counter += 1
        if name is None:
            name = f"workflow-task-{self._task_counter}"
        task: asyncio.Task[_T]
        if self._task_factory is None:
            task = asyncio.Task(coro, loop=self, name=name, context=context)
        else:
            factory = cast(Callable[..., "asyncio.Task[_T]"], self._task_factory)
            task = factory(self, coro) if context is None else factory(self, coro, context=context)
            task.set_name(name)
        if isinstance(task, asyncio.Task) and not task.done():
            self._tasks[task] = None
            task.add_done_callback(self._forget_task)
        return task

    def _forget_task(self, task: asyncio.Future[Any]) -> None:
        self._tasks.pop(cast("asyncio.Task[Any]", task), None)

    def set_task_factory(self, factory: _TaskFactory | None) -> None:
        """Set the factory ``create_task`` uses (``None``: plain ``asyncio.Task``).

        Args:
            factory: called as ``factory(loop, coro)`` or ``factory(loop, coro, context=...)``.
        """
        self._task_factory = factory

    def get_task_factory(self) -> _TaskFactory | None:
        """Return the task factory, or ``None``."""
        return self._task_factory

    # ------------------------------------------------------------------ errors

    def set_exception_handler(
        self, handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None
    ) -> None:
        """Set the handler ``call_exception_handler`` uses (``None``: ``default_exception_handler``).

        Args:
            handler: called as ``handler(loop, context)``.
        """
        self._exception_handler = handler

    def get_exception_handler(self) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None:
        """Return the exception handler, or ``None`` for the default."""
        return self._exception_handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Record ``context`` in ``unhandled_errors`` (instead of logging, as asyncio does).

        Args:
            context: asyncio's error context: ``message`` and optionally ``exception``,
                ``future``, ``task``, ``handle``, ...
        """
        self.unhandled_errors.append(context)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Pass ``context`` to the exception handler; a failing handler is recorded too.

        Args:
            context: asyncio's error context.
        """
        if self._exception_handler is None:
            self.default_exception_handler(context)
            return
        try:
            self._exception_handler(self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self.default_exception_handler(
                {"message": "unhandled error in the exception handler", "exception": exc, "context": context}
            )

    # ------------------------------------------------------------ async generators

    @property
    def _asyncgens(self) -> weakref.WeakKeyDictionary[Any, None]:
        if self._asyncgens_map is None:
            self._asyncgens_map = weakref.WeakKeyDictionary()
        return self._asyncgens_map

    def _asyncgen_firstiter(self, agen: AsyncGenerator[Any, Any]) -> None:
        self._asyncgens[agen] = None

    def _asyncgen_finalizer(self, agen: AsyncGenerator[Any, Any]) -> None:
        # Called by the interpreter when an unfinished async generator first iterated on this loop
        # is collected, possibly outside run_until_quiescent: its aclose() is scheduled here, so
        # its finally blocks run as workflow code on this loop, not on the worker's real loop.
        self._asyncgens.pop(agen, None)
        if not self._closed:
            self.call_soon(self._close_asyncgen, agen)

    def _close_asyncgen(self, agen: AsyncGenerator[Any, Any]) -> None:
        # Not through create_task: a collector-timed finalization must not shift workflow-task-N.
        task = asyncio.Task(
            agen.aclose(), loop=self, name=f"workflow-aclose-{getattr(agen, '__qualname__', 'asyncgen')}"
        )
        self._tasks[task] = None
        task.add_done_callback(self._forget_task)

    async def shutdown_asyncgens(self) -> None:
        """Close every unfinished async generator first iterated on this loop, oldest first."""
        agens = list(self._asyncgens)
        self._asyncgens.clear()
        results = await asyncio.gather(*(agen.aclose() for agen in agens), return_exceptions=True)
        for agen, result in zip(agens, results, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {"message": f"error closing {agen!r}", "exception": result, "asyncgen": agen}
                )

    # ------------------------------------------------------- entering and leaving a run

    def _activate(self) -> tuple[asyncio.AbstractEventLoop | None, Any]:
        saved = (asyncio.events._get_running_loop(), sys.get_asyncgen_hooks())
        self._running = True
        asyncio.events._set_running_loop(self)
        sys.set_asyncgen_hooks(*self._asyncgen_hooks)
        _arm_guard()
        return saved

    def _deactivate(self, saved: tuple[asyncio.AbstractEventLoop | None, Any]) -> None:
        previous_loop, previous_hooks = saved
        _disarm_guard()
        sys.set_asyncgen_hooks(*previous_hooks)
        asyncio.events._set_running_loop(previous_loop)
        self._running = False

    def _check_closed(self) -> None:
        if self._closed:
            raise RuntimeError("Event loop is closed")

    # ---------------------------------------------------- refused: the engine drives the loop

    run_forever = _not_driven_here("run_forever")
    run_until_complete = _not_driven_here("run_until_complete")
    stop = _not_driven_here("stop")

    # ------------------------------------------------------ refused: threads and real I/O

    # The five with generic (TypeVarTuple) signatures are spelled out: a Callable[..., NoReturn]
    # attribute is not accepted by mypy as their override.

    def call_soon_threadsafe(
        self, callback: Callable[[*_Ts], object], *args: *_Ts, context: Context | None = None
    ) -> NoReturn:
        """Refused in workflow code (is for other threads): raises WorkflowIOError."""
        raise _io_refusal("call_soon_threadsafe", "is for other threads")

    def run_in_executor(self, executor: Executor | None, func: Callable[[*_Ts], _T], *args: *_Ts) -> NoReturn:
        """Refused in workflow code (runs a function in a thread or process): raises WorkflowIOError."""
        raise _io_refusal("run_in_executor", "runs a function in a thread or process")

    def add_reader(self, fd: FileDescriptorLike, callback: Callable[[*_Ts], object], *args: *_Ts) -> NoReturn:
        """Refused in workflow code (watches a file descriptor): raises WorkflowIOError."""
        raise _io_refusal("add_reader", "watches a file descriptor")

    def add_writer(self, fd: FileDescriptorLike, callback: Callable[[*_Ts], object], *args: *_Ts) -> NoReturn:
        """Refused in workflow code (watches a file descriptor): raises WorkflowIOError."""
        raise _io_refusal("add_writer", "watches a file descriptor")

    def add_signal_handler(self, sig: int, callback: Callable[[*_Ts], object], *args: *_Ts) -> NoReturn:
        """Refused in workflow code (handles process signals): raises WorkflowIOError."""
        raise _io_refusal("add_signal_handler", "handles process signals")

    set_default_executor = _refused("set_default_executor", "manages a thread pool")
    shutdown_default_executor = _refused("shutdown_default_executor", "manages a thread pool")
    getaddrinfo = _refused("getaddrinfo", "resolves a name over the network")
    getnameinfo = _refused("getnameinfo", "resolves an address over the network")
    create_connection = _refused("create_connection", "opens a network connection")
    create_server = _refused("create_server", "listens on a socket")
    create_datagram_endpoint = _refused("create_datagram_endpoint", "opens a socket")
    create_unix_connection = _refused("create_unix_connection", "opens a socket")
    create_unix_server = _refused("create_unix_server", "listens on a socket")
    connect_accepted_socket = _refused("connect_accepted_socket", "uses a socket")
    start_tls = _refused("start_tls", "uses a network connection")
    sendfile = _refused("sendfile", "sends a file over a network connection")
    sock_recv = _refused("sock_recv", "reads a socket")
    sock_recv_into = _refused("sock_recv_into", "reads a socket")
    sock_recvfrom = _refused("sock_recvfrom", "reads a socket")
    sock_recvfrom_into = _refused("sock_recvfrom_into", "reads a socket")
    sock_sendall = _refused("sock_sendall", "writes a socket")
    sock_sendto = _refused("sock_sendto", "writes a socket")
    sock_sendfile = _refused("sock_sendfile", "sends a file over a socket")
    sock_connect = _refused("sock_connect", "connects a socket")
    sock_accept = _refused("sock_accept", "accepts a connection")
    connect_read_pipe = _refused("connect_read_pipe", "reads a pipe")
    connect_write_pipe = _refused("connect_write_pipe", "writes a pipe")
    subprocess_exec = _refused("subprocess_exec", "starts a subprocess")
    subprocess_shell = _refused("subprocess_shell", "starts a subprocess")
    remove_reader = _refused("remove_reader", "watches a file descriptor")
    remove_writer = _refused("remove_writer", "watches a file descriptor")
    remove_signal_handler = _refused("remove_signal_handler", "handles process signals")


# ---------------------------------------------------------------------------------------------
# The I/O guard: an audit hook that refuses I/O workflow code does without going through the loop
# (open(), socket, subprocess, threads).
#
# The hook sees every audited event of the whole process, from every thread, so its common path
# must cost next to nothing: while no WorkflowLoop is running anywhere, _armed_threads is empty
# and the hook returns after one global read. While one is, the hook checks whether the current
# thread is one of those running a WorkflowLoop; other threads (the worker's own I/O, activity
# threads) are never affected. Only the thread that owns a key writes it, so no lock is needed.

_armed_threads: dict[int, int] = {}  # thread ident -> depth of nested WorkflowLoop runs
_get_ident = threading.get_ident
_running_loop = asyncio.events._get_running_loop
_install_lock = threading.Lock()
_installed = False


def _arm_guard() -> None:
    ident = _get_ident()
    _armed_threads[ident] = _armed_threads.get(ident, 0) + 1


def _disarm_guard() -> None:
    ident = _get_ident()
    depth = _armed_threads[ident] - 1
    if depth:
        _armed_threads[ident] = depth
    else:
        del _armed_threads[ident]


# Events refused outright, with what they mean to the user. Prefixes cover families of events.
_REFUSED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("socket.", "uses the network"),
    ("subprocess.", "starts a subprocess"),
    ("os.exec", "replaces the process"),
    ("os.posix_spawn", "starts a process"),
    ("os.spawn", "starts a process"),
    ("os.fork", "forks the process"),
    ("os.system", "runs a shell command"),
    ("os.startfile", "starts a program"),
    ("os.kill", "sends a signal"),
    ("pty.", "starts a process"),
    ("_thread.start", "starts a thread"),
    ("sqlite3.connect", "opens a database file"),
    ("os.rmdir", "changes the file system"),
    ("os.truncate", "changes the file system"),
    ("os.link", "changes the file system"),
    ("os.symlink", "changes the file system"),
)
_REFUSED_EVENT_PREFIXES = tuple(prefix for prefix, _ in _REFUSED_PREFIXES)

# File system changes that the import system itself makes when it writes a bytecode cache
# (__pycache__/x.cpython-311.pyc via a temporary file and a rename): allowed there only.
_PYCACHE_EVENTS = frozenset({"os.mkdir", "os.rename", "os.remove"})

# Reading these is how the import system, and traceback formatting (linecache), read installed
# code: Python sources and bytecode, extension modules, Cython sources of compiled frames.
_CODE_SUFFIXES = (".py", ".pyc", ".pyi", ".so", ".pyd", ".pyx", ".pxd")
# Package metadata read by importlib.metadata, which many packages consult when imported.
_METADATA_DIR_SUFFIXES = (".dist-info", ".egg-info")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _guarded_here() -> bool:
    """Whether this thread runs workflow code now, outside any ``ctx.unsafe()`` block."""
    if not _armed_threads or _get_ident() not in _armed_threads:
        return False
    loop = _running_loop()
    return loop is None or not getattr(loop, "unsafe_depth", 0)


def _audit_hook(event: str, args: tuple[Any, ...]) -> None:
    if not _armed_threads or not _guarded_here():
        return
    if event == "open":
        if not _open_allowed(args):
            path, mode = (*args, None, None)[:2]
            what = f"open({path!r}, {mode!r})" if mode is not None else f"os.open({path!r})"
            raise WorkflowIOError(f"{what} inside workflow code opens a file: {_DETERMINISM_HINT}")
    elif event.startswith(_REFUSED_EVENT_PREFIXES):
        raise _refusal(event, args)
    elif event in _PYCACHE_EVENTS:
        paths = [arg for arg in args if isinstance(arg, str | bytes | os.PathLike)]
        if not paths or not all(_in_pycache(path) for path in paths):
            what = f"{event}{reprlib.repr(args)}"
            raise WorkflowIOError(f"{what} inside workflow code changes the file system: {_DETERMINISM_HINT}")
    elif event == "time.sleep":
        raise WorkflowIOError(
            f"time.sleep{reprlib.repr(args)} inside workflow code blocks the worker: use asyncio.sleep() "
            f"(a durable timer) instead; {_DETERMINISM_HINT}"
        )


def _refusal(event: str, args: tuple[Any, ...]) -> WorkflowIOError:
    reason = next(reason for prefix, reason in _REFUSED_PREFIXES if event.startswith(prefix))
    return WorkflowIOError(f"{event}{reprlib.repr(args)} inside workflow code {reason}: {_DETERMINISM_HINT}")


def _open_allowed(args: tuple[Any, ...]) -> bool:
    path, mode, flags = (*args, None, None, None)[:3]  # (path, mode, flags); mode is None for os.open
    if isinstance(path, int):
        # Wrapping a descriptor that is already open (the import system does it to write a
        # bytecode cache file); whatever opened the descriptor was checked when it did.
        return True
    name = os.fsdecode(path)
    if isinstance(flags, int):
        writing = bool(flags & _WRITE_FLAGS)
    else:
        writing = isinstance(mode, str) and any(c in mode for c in "wax+")
    if writing:
        return _in_pycache(name)
    if name.endswith(_CODE_SUFFIXES) or name in sys.path:  # sys.path entries: zip archives
        return True
    if os.path.basename(os.path.dirname(name)).endswith(_METADATA_DIR_SUFFIXES):
        return True
    return os.path.isdir(name) or _in_tz_database(name)


def _in_tz_database(name: str) -> bool:
    """Whether ``name`` is in the time-zone database ``zoneinfo`` reads (read-only opens only).

    ``ZoneInfo("Europe/Paris")`` reads its file the first time a process asks for the zone; the
    data is fixed for the life of the process (ZoneInfo caches it), so converting ``ctx.now()``
    to a local time is as deterministic as the rest of the workflow.
    """
    zoneinfo = sys.modules.get("zoneinfo")
    if zoneinfo is None:
        return False  # nothing has asked for a zone yet: not zoneinfo's open
    roots = [os.path.join(root, "") for root in zoneinfo.TZPATH]
    tzdata = sys.modules.get("tzdata")  # the PyPI package zoneinfo falls back to
    tzdata_file = getattr(tzdata, "__file__", None)
    if tzdata_file:
        roots.append(os.path.join(os.path.dirname(tzdata_file), ""))
    path = os.path.abspath(name)
    return any(path.startswith(root) for root in roots)


def _in_pycache(path: str | bytes | os.PathLike[Any]) -> bool:
    name = os.fsdecode(path)
    base = os.path.basename(name)
    if base == "__pycache__":
        return True
    return os.path.basename(os.path.dirname(name)) == "__pycache__" and ".pyc" in base


def install_io_guard() -> None:
    """Refuse real I/O that workflow code does directly, without going through the loop.

    Adds a ``sys.addaudithook`` hook (once per process; calling this again does nothing). While
    a ``WorkflowLoop`` is inside ``run_until_quiescent`` in a thread, that thread's audited
    events raise ``WorkflowIOError`` for: sockets (``socket.*``), subprocesses and process
    control (``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.posix_spawn``, ``os.fork``,
    ``os.kill``), starting threads, ``sqlite3.connect``, ``time.sleep`` (from Python 3.12; 3.11
    has no event for it), changes to the file system, and opening files, except what the import
    system and tracebacks need: reading Python code (``.py``, ``.pyc``, ``.pyi``, ``.so``,
    ``.pyd``, ``.pyx``, ``.pxd``), package metadata, directories and ``sys.path`` entries, and
    writing the ``__pycache__`` bytecode cache. So ``import json`` inside a workflow function
    keeps working. Outside a run, and in other threads, nothing changes.

    Python 3.11 raises no audit event when a thread starts, so there the guard also wraps
    ``threading``'s thread starter (and ``_thread.start_new_thread``) with the same check.
    """
    global _installed
    with _install_lock:
        if _installed:
            return
        sys.addaudithook(_audit_hook)
        if sys.version_info < (3, 12):
            _guard_thread_start()
        _installed = True


def _guard_thread_start() -> None:
    import _thread

    original = _thread.start_new_thread

    def start_new_thread(function: Callable[..., object], args: tuple[Any, ...], kwargs: Any = None) -> int:
        if _armed_threads and _guarded_here():
            raise _refusal("_thread.start_new_thread", (function, args))
        if kwargs is None:
            return original(function, args)
        return original(function, args, kwargs)

    # threading copied the function into its own namespace at import time: replace both.
    threading_module: Any = threading
    threading_module._start_new_thread = start_new_thread
    thread_module: Any = _thread
    thread_module.start_new_thread = start_new_thread
