"""Sagas: register a compensating activity after each step; on failure they run in reverse."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from duro._validate import check_call_args, check_name
from duro.activity import RetryPolicy, get_activity_definition, to_seconds
from duro.errors import ApplicationError
from duro.workflow import WorkflowContext

__all__ = ["Saga", "SagaError"]


class SagaError(ApplicationError):
    """Some compensations of a saga failed.

    Raised from the saga block in place of the error that triggered compensation, which is
    chained as ``__cause__`` (it is ``None`` for an explicit ``Saga.compensate()`` call). Like
    any ``ApplicationError`` it can be the workflow's failure: a client then sees, through
    ``WorkflowFailedError.__cause__``, an ``ApplicationError`` of type ``"SagaError"`` whose
    ``details`` list the failed compensations as strings and whose own ``__cause__`` is the
    original error.

    Attributes:
        compensation_errors: the exception of each failed compensation, in the order the
            compensations were started (reverse registration order). Only present in the
            workflow that raised it, not after the error crossed a process boundary.
    """

    def __init__(self, message: str, compensation_errors: list[BaseException], details: list[str]) -> None:
        super().__init__(message, type="SagaError", details=details)
        self.compensation_errors = compensation_errors

    def __repr__(self) -> str:
        return f"SagaError({self.message!r}, compensation_errors={self.compensation_errors!r})"


@dataclass(frozen=True, slots=True)
class _Compensation:
    """One registered compensation: an activity call, its arguments and its options."""

    activity: Callable[..., Any] | str
    name: str
    args: tuple[Any, ...]
    start_to_close_timeout: float | datetime.timedelta | None
    schedule_to_close_timeout: float | datetime.timedelta | None
    heartbeat_timeout: float | datetime.timedelta | None
    retry_policy: RetryPolicy | None
    task_queue: str | None


class Saga:
    """Undo completed steps of a workflow when a later step fails.

    Use inside a workflow: after each step succeeds, register the activity that undoes it. If the
    block raises, the registered compensations run as activities — in reverse order of
    registration, one after another, or all at once with ``parallel=True`` — and then the error
    propagates. Compensations are activities, so they are durable: they survive crashes and are
    retried per their retry policy like any other activity, and they should be idempotent.

    A failing compensation does not stop the others. When all succeed, the original error is
    re-raised unchanged; when some fail, a ``SagaError`` listing them is raised instead, with the
    original error as its ``__cause__``. If the block is cancelled (``asyncio.CancelledError``),
    compensations still run to the end, shielded from further cancellation, and the
    ``CancelledError`` is re-raised (failed compensations are then described in its notes). When
    the block completes normally, nothing runs and the registrations are dropped.

    Example::

        async with duro.Saga(ctx) as saga:
            flight = await ctx.execute_activity(book_flight, trip)
            saga.add_compensation(cancel_flight, flight)
            hotel = await ctx.execute_activity(book_hotel, trip)
            saga.add_compensation(cancel_hotel, hotel, start_to_close_timeout=30)

    Args:
        ctx: the running workflow's context.
        parallel: run the compensations concurrently instead of one after another (they are
            still scheduled in reverse registration order).
    """

    __slots__ = ("_compensations", "_ctx", "_parallel")

    def __init__(self, ctx: WorkflowContext, *, parallel: bool = False) -> None:
        if not isinstance(ctx, WorkflowContext):
            raise TypeError(f"duro.Saga needs the workflow's WorkflowContext, not {type(ctx).__name__}; "
                            "a saga is used inside a @duro.workflow function")
        self._ctx = ctx
        self._parallel = parallel
        self._compensations: list[_Compensation] = []

    def __repr__(self) -> str:
        names = [c.name for c in self._compensations]
        return f"Saga(parallel={self._parallel}, compensations={names!r})"

    @property
    def parallel(self) -> bool:
        """Whether compensations run concurrently."""
        return self._parallel

    def add_compensation(
        self,
        activity: Callable[..., Any] | str,
        *args: Any,
        start_to_close_timeout: float | datetime.timedelta | None = None,
        schedule_to_close_timeout: float | datetime.timedelta | None = None,
        heartbeat_timeout: float | datetime.timedelta | None = None,
        retry_policy: RetryPolicy | None = None,
        task_queue: str | None = None,
    ) -> None:
        """Register an activity that undoes a step that has completed.

        Nothing runs now: on failure the saga calls ``ctx.execute_activity(activity, *args,
        **options)``. The options are those of ``WorkflowContext.execute_activity``; unset ones
        take the activity's decorator defaults. Note that with the default retry policy a
        compensation that keeps failing is retried forever; give it a ``retry_policy`` with
        ``maximum_attempts`` if it should be allowed to fail.

        Args:
            activity: a ``@duro.activity`` function, or the registered name of one.
            *args: the activity's arguments (recorded when the compensation runs).
            start_to_close_timeout: limit on one attempt, seconds or ``timedelta``.
            schedule_to_close_timeout: limit on all attempts together.
            heartbeat_timeout: longest silence between heartbeats.
            retry_policy: how failed attempts are retried.
            task_queue: the queue to run it on (default: the workflow's).

        Raises:
            TypeError: ``activity`` is not an activity (compensations must be activities, so
                that they are durable), its arguments do not fit its signature, or an option has
                the wrong type.
            ValueError: a timeout is NaN, infinite, negative or over 100 years; the activity name or
                ``task_queue`` is empty, holds NUL or is over 255 bytes.
        """
        if isinstance(activity, str):
            name = check_name("add_compensation() activity name", activity)
        else:
            try:
                defn = get_activity_definition(activity)
            except TypeError:
                raise TypeError(
                    f"add_compensation() takes an activity, and {getattr(activity, '__qualname__', activity)!r} is "
                    "not one: decorate it with @duro.activity (a compensation runs as an activity so that it is "
                    "durable; a plain function would be lost in a crash)"
                ) from None
            name = defn.name
            check_call_args("activity", name, defn.signature, args)
        to_seconds(start_to_close_timeout, "start_to_close_timeout")
        to_seconds(schedule_to_close_timeout, "schedule_to_close_timeout")
        to_seconds(heartbeat_timeout, "heartbeat_timeout")
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a duro.RetryPolicy, not {type(retry_policy).__name__}")
        check_name("task_queue", task_queue, allow_none=True)
        self._compensations.append(_Compensation(
            activity, name, args, start_to_close_timeout, schedule_to_close_timeout, heartbeat_timeout,
            retry_policy, task_queue,
        ))

    def clear(self) -> None:
        """Forget every registered compensation (for example once the saga's outcome is final)."""
        self._compensations.clear()

    async def compensate(self) -> None:
        """Run the registered compensations now, and forget them.

        For a workflow that decides to roll back without raising. The same rules apply as on
        failure of the block, including the shield against cancellation.

        Raises:
            SagaError: one or more compensations failed (after all of them ran).
        """
        failures, cancelled = await self._run_shielded()
        if cancelled is not None:
            _note(cancelled, failures)
            raise cancelled
        if failures:
            raise _saga_error(failures, None)

    async def __aenter__(self) -> Saga:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            self._compensations.clear()
            return False
        if not isinstance(exc, (Exception, asyncio.CancelledError)):
            # GeneratorExit (the engine dropping the coroutine: a cache eviction, not a failure of
            # the workflow), KeyboardInterrupt, SystemExit: nothing may be awaited now.
            return False
        failures, cancelled = await self._run_shielded()
        if cancelled is not None:  # cancelled again while compensating: that cancellation wins
            _note(cancelled, failures)
            raise cancelled  # (its __context__ becomes the error that started the compensation)
        if isinstance(exc, asyncio.CancelledError):
            _note(exc, failures)
            return False
        if failures:
            raise _saga_error(failures, exc) from exc
        return False  # every compensation succeeded: the original error propagates unchanged

    # ------------------------------------------------------------------ running

    async def _run_shielded(self) -> tuple[list[tuple[_Compensation, BaseException]], asyncio.CancelledError | None]:
        """Run (and forget) the registered compensations, shielded from cancellation.

        They run in the caller's task, so a replay divergence names the workflow's line that
        started them (the ``async with`` or the ``compensate()`` call). Each activity future is
        awaited through ``asyncio.shield``: cancelling the caller neither cancels the activity
        nor stops the compensations that follow.

        Returns:
            The failed compensations with their errors, in the order they were started, and the
            last ``CancelledError`` the caller received while they ran (None if it was not
            cancelled meanwhile): the caller must re-raise it.
        """
        compensations = self._compensations[::-1]
        self._compensations = []
        failures: list[tuple[_Compensation, BaseException]] = []
        cancelled: asyncio.CancelledError | None = None
        if self._parallel:
            # Start them all (in reverse registration order), then wait for all of them together.
            started: list[tuple[_Compensation, asyncio.Future[Any] | Exception]] = []
            for c in compensations:
                try:
                    started.append((c, self._start(c)))
                except Exception as e:  # for example arguments the converter cannot encode
                    started.append((c, e))
            futures = [f for _, f in started if isinstance(f, asyncio.Future)]
            outcomes: list[Any] = []
            if futures:
                together = asyncio.gather(*futures, return_exceptions=True)
                cancelled = await _wait_shielded(together)
                outcomes = together.result()
            results = iter(outcomes)
            for c, f in started:
                outcome = f if isinstance(f, Exception) else next(results)
                if isinstance(outcome, BaseException):
                    failures.append((c, outcome))
            return failures, cancelled
        for c in compensations:
            try:
                fut = self._start(c)
            except Exception as e:
                failures.append((c, e))
                continue
            cancelled = await _wait_shielded(fut) or cancelled
            error = asyncio.CancelledError("the compensation was cancelled") if fut.cancelled() else fut.exception()
            if error is not None:
                failures.append((c, error))
        return failures, cancelled

    def _start(self, c: _Compensation) -> asyncio.Future[Any]:
        return self._ctx.execute_activity(
            c.activity, *c.args, start_to_close_timeout=c.start_to_close_timeout,
            schedule_to_close_timeout=c.schedule_to_close_timeout, heartbeat_timeout=c.heartbeat_timeout,
            retry_policy=c.retry_policy, task_queue=c.task_queue,
        )


async def _wait_shielded(fut: asyncio.Future[Any]) -> asyncio.CancelledError | None:
    """Wait until ``fut`` is done, whatever cancellations the waiting task receives meanwhile.

    Returns the last ``CancelledError`` the waiting task received (None if it received none);
    the outcome of ``fut`` is left in ``fut`` (its exception counts as retrieved).
    """
    cancelled: asyncio.CancelledError | None = None
    while not fut.done():
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError as e:
            if not fut.cancelled():  # not fut's own cancellation: the waiting task's
                cancelled = e
        except Exception:  # fut failed: the caller reads the error from fut
            break
    return cancelled


def _describe(failures: list[tuple[_Compensation, BaseException]]) -> list[str]:
    out = []
    for c, e in failures:
        cause = e.__cause__
        text = f"{c.name}: {type(e).__name__}: {e}"
        if cause is not None and str(cause) not in str(e):
            text += f" (caused by {type(cause).__name__}: {cause})"
        out.append(text)
    return out


def _note(exc: BaseException, failures: list[tuple[_Compensation, BaseException]]) -> None:
    for line in _describe(failures):
        exc.add_note(f"saga compensation failed: {line}")


def _saga_error(failures: list[tuple[_Compensation, BaseException]], original: BaseException | None) -> SagaError:
    details = _describe(failures)
    n = len(failures)
    what = f"{n} compensation{'s' if n != 1 else ''} failed ({', '.join(c.name for c, _ in failures)})"
    if original is not None:
        what += f" while undoing after {type(original).__name__}: {original}"
    return SagaError(f"saga: {what}", [e for _, e in failures], details)
