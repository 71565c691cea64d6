"""Activities: ``@duro.activity``, ``ActivityContext`` and ``RetryPolicy``."""

from __future__ import annotations

import datetime
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from duro._validate import MAX_ATTEMPTS, check_duration, check_name, signature_of
from duro.converter import parameter_hints
from duro.errors import CancelledError

__all__ = ["ActivityContext", "ActivityDefinition", "ActivityInfo", "RetryPolicy", "activity", "to_seconds"]

F = TypeVar("F", bound=Callable[..., Any])


def to_seconds(value: float | datetime.timedelta | None, what: str) -> float | None:
    """Normalise a timeout given as seconds or a timedelta; 0 and None mean "no timeout" (None).

    Raises:
        TypeError: neither a number nor a timedelta.
        ValueError: NaN, infinite, negative or longer than 100 years.
    """
    return check_duration(what, value, allow_none=True) or None


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed activity is retried: exponential backoff, capped, with a maximum of attempts.

    Every field is checked when the policy is made (a ``ValueError`` or ``TypeError`` naming the
    field, the value and the accepted range), so a bad policy never reaches the store.

    Args:
        initial_interval: seconds (or a timedelta) before the first retry; positive, at most 100 years.
        backoff_coefficient: each retry waits this many times longer than the one before; a finite
            number >= 1.
        maximum_interval: the longest wait between attempts (default: 100 times initial_interval);
            at least initial_interval, at most 100 years.
        maximum_attempts: attempts in all, the first included; 0 means unlimited. An int from 0 to
            2**31 - 1.
        non_retryable_error_types: error type names (``ApplicationError.type`` or the exception
            class name) that fail the activity at once; a list or tuple of str.
    """

    initial_interval: float | datetime.timedelta = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | datetime.timedelta | None = None
    maximum_attempts: int = 0
    non_retryable_error_types: tuple[str, ...] | list[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        initial = check_duration("RetryPolicy.initial_interval", self.initial_interval, allow_zero=False)
        coef = self.backoff_coefficient
        if not isinstance(coef, (int, float)) or isinstance(coef, bool):
            raise TypeError(f"RetryPolicy.backoff_coefficient must be a number, not {type(coef).__name__}")
        if not (1.0 <= coef < math.inf):  # also false for NaN
            raise ValueError(f"RetryPolicy.backoff_coefficient must be a finite number >= 1, got {coef!r}")
        attempts = self.maximum_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 0 <= attempts <= MAX_ATTEMPTS:
            raise ValueError(f"RetryPolicy.maximum_attempts must be an int from 0 (unlimited) to {MAX_ATTEMPTS}, "
                             f"got {attempts!r}")
        maximum = check_duration("RetryPolicy.maximum_interval", self.maximum_interval, allow_zero=False,
                                 allow_none=True)
        if maximum is not None and maximum < initial:
            raise ValueError(f"RetryPolicy.maximum_interval ({maximum}s) must not be shorter than initial_interval "
                             f"({initial}s)")
        types = self.non_retryable_error_types
        if not isinstance(types, (list, tuple)):
            raise TypeError("RetryPolicy.non_retryable_error_types must be a list of error type names, not "
                            f"{type(types).__name__}")
        for i, t in enumerate(types):
            check_name(f"RetryPolicy.non_retryable_error_types[{i}]", t)

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON data, stored with each activity task."""
        return {
            "initial_interval": to_seconds(self.initial_interval, "initial_interval"),
            "backoff_coefficient": self.backoff_coefficient,
            "maximum_interval": to_seconds(self.maximum_interval, "maximum_interval"),
            "maximum_attempts": self.maximum_attempts,
            "non_retryable_error_types": list(self.non_retryable_error_types),
        }


@dataclass(frozen=True)
class ActivityDefinition:
    """A registered activity: its name, function and defaults."""

    name: str
    fn: Callable[..., Any]
    is_async: bool
    arg_hints: list[Any]
    return_hint: Any
    start_to_close_timeout: float | None = None
    schedule_to_close_timeout: float | None = None
    heartbeat_timeout: float | None = None
    retry_policy: RetryPolicy | None = None
    signature: inspect.Signature | None = field(default=None, compare=False, repr=False)
    #: a method (its first parameter is ``self``): a worker registers it bound to an instance,
    #: ``activities=[obj.method]``, and calls it on that instance.
    is_method: bool = False


def get_activity_definition(fn: Any) -> ActivityDefinition:
    """The definition ``@duro.activity`` attached to ``fn``; a clear TypeError otherwise."""
    defn = getattr(fn, "__duro_activity__", None)
    if not isinstance(defn, ActivityDefinition):
        raise TypeError(f"{getattr(fn, '__qualname__', fn)!r} is not an activity: decorate it with @duro.activity")
    return defn


@overload
def activity(fn: F) -> F: ...


@overload
def activity(
    *,
    name: str | None = None,
    start_to_close_timeout: float | datetime.timedelta | None = None,
    schedule_to_close_timeout: float | datetime.timedelta | None = None,
    heartbeat_timeout: float | datetime.timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Callable[[F], F]: ...


def activity(
    fn: Any = None,
    *,
    name: str | None = None,
    start_to_close_timeout: float | datetime.timedelta | None = None,
    schedule_to_close_timeout: float | datetime.timedelta | None = None,
    heartbeat_timeout: float | datetime.timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Any:
    """Mark a function as an activity. Use bare (``@duro.activity``) or with options.

    The function takes an ``ActivityContext`` first, then its arguments. ``async def`` activities
    run on the worker's event loop; plain ``def`` ones run in the worker's thread pool. The options
    are defaults that ``ctx.execute_activity`` arguments override.

    Raises:
        TypeError: ``fn`` is not a function taking a context, or an option has the wrong type.
        ValueError: ``name`` is empty, holds NUL or is over 255 bytes; a timeout is NaN, infinite,
            negative or over 100 years.
    """

    def wrap(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@duro.activity decorates a function, not {type(f).__name__}")
        params = list(inspect.signature(f).parameters.values())
        # A method, decorated in its class body (a plain function then): self comes before the context.
        is_method = bool(params) and params[0].name == "self"
        if len(params) < 1 + is_method:
            what = "after self " if is_method else ""
            raise TypeError(f"activity {f.__qualname__} must take an ActivityContext as its first parameter {what}")
        activity_name = check_name("activity name", name if name is not None else f.__name__)
        if retry_policy is not None and not isinstance(retry_policy, RetryPolicy):
            raise TypeError(f"retry_policy must be a duro.RetryPolicy, not {type(retry_policy).__name__}")
        arg_hints, ret = parameter_hints(f)
        sig = signature_of(f)
        if is_method:  # the hints and the signature callers are checked against start at the context
            arg_hints = arg_hints[1:]
            if sig is not None:
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])
        f.__duro_activity__ = ActivityDefinition(  # type: ignore[attr-defined]
            name=activity_name,
            fn=f,
            is_async=inspect.iscoroutinefunction(f),
            arg_hints=arg_hints,
            return_hint=ret,
            start_to_close_timeout=to_seconds(start_to_close_timeout, "start_to_close_timeout"),
            schedule_to_close_timeout=to_seconds(schedule_to_close_timeout, "schedule_to_close_timeout"),
            heartbeat_timeout=to_seconds(heartbeat_timeout, "heartbeat_timeout"),
            retry_policy=retry_policy,
            signature=sig,
            is_method=is_method,
        )
        return f

    if fn is not None:
        return wrap(fn)
    return wrap


@dataclass(slots=True)
class ActivityInfo:
    """Facts about the running attempt of an activity."""

    activity_id: int
    activity_type: str
    attempt: int
    workflow_id: str
    workflow_run_id: str
    workflow_type: str
    task_queue: str
    scheduled_time: float
    heartbeat_details: Any
    start_to_close_timeout: float | None
    heartbeat_timeout: float | None
    #: the interceptor headers the workflow scheduled the activity with (recorded in its history).
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def task_token(self) -> bytes:
        """Opaque bytes naming this attempt, for ``client.get_async_activity_handle(token)``.

        Hand it to whoever completes the activity from outside (a webhook, a person), then raise
        ``duro.CompleteAsync()``. ``token.hex()`` / ``bytes.fromhex(text)`` carry it as text.
        """
        from duro._async_completion import encode_task_token

        return encode_task_token(bytes.fromhex(self.workflow_run_id), self.task_queue, self.activity_id, self.attempt)


class ActivityContext:
    """What an activity gets as its first argument: ``info``, ``heartbeat()``, ``is_cancelled``, ``logger``.

    Cancellation (the workflow no longer wants the attempt) is learned by the worker from the
    reply to a heartbeat. It then reaches the activity as in Temporal: an ``async def`` activity
    gets ``asyncio.CancelledError`` at the ``await`` where it waits; a sync one (a thread or a
    process cannot be interrupted) sees ``is_cancelled`` true and its next ``heartbeat()`` raises
    ``duro.CancelledError``.
    """

    __slots__ = ("_cancelled", "_heartbeat", "_heartbeater", "_logger", "_on_cancel", "_sync", "_task", "info",
                 "last_heartbeat")

    def __init__(self, info: ActivityInfo, heartbeat: Callable[[ActivityContext, Any], None],
                 task: Any = None) -> None:
        self.info = info
        self._heartbeat = heartbeat
        self._task = task
        self._heartbeater: Any = None  # made by the worker on the first heartbeat
        self._cancelled = False
        # Set by the worker: what delivers a cancellation (cancel an async activity's task, tell a
        # process-pool activity's process); and whether the activity is sync (heartbeat() raises).
        self._on_cancel: Callable[[], object] | None = None
        self._sync = False
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self.last_heartbeat: float = 0.0

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger (``duro.activity``) whose records carry this attempt's ids.

        Each record has the attributes ``workflow_id``, ``run_id``, ``workflow_type``,
        ``task_queue``, ``activity_type``, ``activity_id`` and ``attempt`` (for formatters and
        filters), and its message starts with them.
        """
        if self._logger is None:
            from duro._logging import ActivityLogger

            self._logger = ActivityLogger(self.info)
        return self._logger

    def heartbeat(self, details: Any = None) -> None:
        """Report progress; ``details`` survive into the next attempt as ``info.heartbeat_details``.

        Callable from async and sync (thread pool) activities alike; the write is batched by the
        worker and does not block the activity. Its reply tells the worker whether the attempt is
        still wanted.

        Raises:
            duro.CancelledError: in a sync (``def``) activity, once the worker has learned that the
                attempt is cancelled (from the reply to an earlier heartbeat): every call from then
                on. Letting it propagate ends the attempt as cancelled. An ``async def`` activity
                gets ``asyncio.CancelledError`` at its current ``await`` instead.
        """
        if self._cancelled and self._sync:
            raise CancelledError(f"activity {self.info.activity_type!r} (attempt {self.info.attempt}) was cancelled")
        self._heartbeat(self, details)

    @property
    def is_cancelled(self) -> bool:
        """True once the worker learned (through a heartbeat) that this attempt is no longer wanted."""
        return self._cancelled

    def _cancel(self) -> None:
        """The worker learned that the attempt is cancelled: set the flag and deliver it (once)."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._on_cancel is not None:
            self._on_cancel()
