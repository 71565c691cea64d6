"""Activities: ``@duro.activity``, ``ActivityContext`` and ``RetryPolicy``."""

from __future__ import annotations

import datetime
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from duro.converter import parameter_hints

__all__ = ["ActivityContext", "ActivityDefinition", "ActivityInfo", "RetryPolicy", "activity", "to_seconds"]

F = TypeVar("F", bound=Callable[..., Any])


def to_seconds(value: float | datetime.timedelta | None, what: str) -> float | None:
    """Normalise a timeout given as seconds or a timedelta; reject negatives with a clear error."""
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(f"{what} must be seconds (a number) or a datetime.timedelta, not {type(value).__name__}")
    if seconds < 0 or seconds != seconds:
        raise ValueError(f"{what} must be zero or positive, got {value!r}")
    return seconds or None


@dataclass(frozen=True)
class RetryPolicy:
    """How a failed activity is retried: exponential backoff, capped, with a maximum of attempts.

    Args:
        initial_interval: seconds before the first retry.
        backoff_coefficient: each retry waits this many times longer than the one before.
        maximum_interval: the longest wait between attempts (default: 100 times initial_interval).
        maximum_attempts: attempts in all, the first included; 0 means unlimited.
        non_retryable_error_types: error type names (``ApplicationError.type`` or the exception
            class name) that fail the activity at once.
    """

    initial_interval: float | datetime.timedelta = 1.0
    backoff_coefficient: float = 2.0
    maximum_interval: float | datetime.timedelta | None = None
    maximum_attempts: int = 0
    non_retryable_error_types: tuple[str, ...] | list[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        initial = to_seconds(self.initial_interval, "RetryPolicy.initial_interval")
        if initial is None:
            raise ValueError("RetryPolicy.initial_interval must be positive")
        if self.backoff_coefficient < 1:
            raise ValueError(f"RetryPolicy.backoff_coefficient must be >= 1, got {self.backoff_coefficient}")
        if not isinstance(self.maximum_attempts, int) or self.maximum_attempts < 0:
            raise ValueError(f"RetryPolicy.maximum_attempts must be an int >= 0 (0 = unlimited), "
                             f"got {self.maximum_attempts!r}")
        maximum = to_seconds(self.maximum_interval, "RetryPolicy.maximum_interval")
        if maximum is not None and maximum < initial:
            raise ValueError("RetryPolicy.maximum_interval must not be shorter than initial_interval")
        if isinstance(self.non_retryable_error_types, str):
            raise TypeError("RetryPolicy.non_retryable_error_types must be a list of names, not one string")

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
    """

    def wrap(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@duro.activity decorates a function, not {type(f).__name__}")
        params = list(inspect.signature(f).parameters.values())
        if not params:
            raise TypeError(f"activity {f.__qualname__} must take an ActivityContext as its first parameter")
        arg_hints, ret = parameter_hints(f)
        f.__duro_activity__ = ActivityDefinition(  # type: ignore[attr-defined]
            name=name or f.__name__,
            fn=f,
            is_async=inspect.iscoroutinefunction(f),
            arg_hints=arg_hints,
            return_hint=ret,
            start_to_close_timeout=to_seconds(start_to_close_timeout, "start_to_close_timeout"),
            schedule_to_close_timeout=to_seconds(schedule_to_close_timeout, "schedule_to_close_timeout"),
            heartbeat_timeout=to_seconds(heartbeat_timeout, "heartbeat_timeout"),
            retry_policy=retry_policy,
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


class ActivityContext:
    """What an activity gets as its first argument: ``info``, ``heartbeat()`` and ``is_cancelled``."""

    __slots__ = ("_cancelled", "_heartbeat", "_heartbeater", "_task", "info", "last_heartbeat")

    def __init__(self, info: ActivityInfo, heartbeat: Callable[[ActivityContext, Any], None],
                 task: Any = None) -> None:
        self.info = info
        self._heartbeat = heartbeat
        self._task = task
        self._heartbeater: Any = None  # made by the worker on the first heartbeat
        self._cancelled = False
        self.last_heartbeat: float = 0.0

    def heartbeat(self, details: Any = None) -> None:
        """Report progress; ``details`` survive into the next attempt as ``info.heartbeat_details``.

        Callable from async and sync (thread pool) activities alike; the write is batched by the
        worker and does not block the activity.
        """
        self._heartbeat(self, details)

    @property
    def is_cancelled(self) -> bool:
        """True once the worker learned (through a heartbeat) that this attempt is no longer wanted."""
        return self._cancelled

    def _cancel(self) -> None:
        self._cancelled = True
