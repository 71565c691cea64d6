"""Argument checks shared by every public call: names, durations, retry settings and call signatures.

Each check runs where the user called, before anything is written, and raises a plain
``ValueError`` or ``TypeError`` that names the argument, the value and what is accepted. A value
that passed these checks fits the store's records: names fit LMDB keys (511 bytes, task queue and
run key included), durations fit the microsecond clock of timers and leases.
"""

from __future__ import annotations

import datetime
import inspect
import math
import reprlib
from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

__all__ = [
    "MAX_ATTEMPTS",
    "MAX_DURATION_S",
    "MAX_NAME_BYTES",
    "VERSIONING_BEHAVIORS",
    "check_call_args",
    "check_duration",
    "check_event_id",
    "check_name",
    "check_versioning_behavior",
    "signature_of",
]

MAX_NAME_BYTES = 255
"""Longest id or name (workflow id, task queue, workflow type, activity, signal, query, update), in UTF-8 bytes.

LMDB keys hold at most 511 bytes and a task key is ``queue + NUL + run key (16) + seq (8)``; 255
leaves room for every key duro builds from a name, on every store.
"""

MAX_DURATION_S = 100 * 365.25 * 86400.0
"""Longest duration, timeout or retry interval accepted: 100 years (3,155,760,000 s)."""

MAX_ATTEMPTS = 2**31 - 1
"""Largest ``RetryPolicy.maximum_attempts`` (attempt numbers are stored as 32-bit integers)."""


_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def _show(value: object) -> str:
    """A short repr of a rejected value, safe to put in an error message."""
    return _repr.repr(value)


@overload
def check_name(what: str, value: object, *, allow_none: Literal[False] = False) -> str: ...


@overload
def check_name(what: str, value: object, *, allow_none: bool) -> str | None: ...


def check_name(what: str, value: object, *, allow_none: bool = False) -> str | None:
    """Check an id or a name: a non-empty ``str`` without NUL, at most ``MAX_NAME_BYTES`` in UTF-8.

    Args:
        what: how the argument is called in the error message (``"workflow id"``, ``"task_queue"``).
        value: what the caller passed.
        allow_none: whether None (meaning "the default") is accepted; it is returned as is.

    Returns:
        The name, unchanged.

    Raises:
        TypeError: not a str.
        ValueError: empty, containing NUL, or too long.
    """
    if type(value) is str and value.isascii() and 0 < len(value) <= MAX_NAME_BYTES and "\x00" not in value:
        return value  # the common case: ASCII, one byte a character, nothing to encode
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__} ({_show(value)})")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters, got {_show(value)}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (it holds a lone surrogate): {_show(value)}") from None
    if size > MAX_NAME_BYTES:
        raise ValueError(f"{what} is {size} bytes long in UTF-8; the limit is {MAX_NAME_BYTES} bytes "
                         f"(got {_show(value)})")
    return value


@overload
def check_duration(what: str, value: object, *, allow_zero: bool = True,
                   allow_none: Literal[False] = False) -> float: ...


@overload
def check_duration(what: str, value: object, *, allow_zero: bool = True,
                   allow_none: bool) -> float | None: ...


def check_duration(what: str, value: object, *, allow_zero: bool = True, allow_none: bool = False) -> float | None:
    """Check a duration in seconds (a number or a ``datetime.timedelta``) and return it as a float.

    Accepted: finite, not negative (positive when ``allow_zero`` is false) and at most
    ``MAX_DURATION_S`` (100 years); None when ``allow_none``.

    Args:
        what: how the argument is called in the error message.
        value: what the caller passed.
        allow_zero: whether 0 is accepted.
        allow_none: whether None is accepted (returned as None).

    Raises:
        TypeError: neither a number nor a timedelta (a bool is not a number here).
        ValueError: NaN, infinite, negative, zero when not allowed, or over 100 years.
    """
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{what} must be seconds (a number) or a datetime.timedelta, not None")
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    else:
        raise TypeError(f"{what} must be seconds (a number) or a datetime.timedelta, "
                        f"not {type(value).__name__} ({_show(value)})")
    if 0.0 < seconds <= MAX_DURATION_S or (seconds == 0.0 and allow_zero):
        return seconds
    low = "zero or positive" if allow_zero else "positive"
    raise ValueError(f"{what} must be {low}, finite and at most {MAX_DURATION_S:.0f} seconds (100 years), as a "
                     f"number or a datetime.timedelta; got {_show(value)}"
                     + (" (None means no limit)" if allow_none else ""))


def check_event_id(what: str, value: object, last: int | None = None) -> int:
    """Check an event id of a run: an int from 1 to ``last`` (the run's last event id, when known).

    Returns:
        The id as a plain int.

    Raises:
        TypeError: not an int (a bool is not one here).
        ValueError: less than 1, or past ``last``; the message names the valid range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (an event id of the run), not {type(value).__name__} ({_show(value)})")
    if last is None:
        if value < 1:
            raise ValueError(f"{what} must be an event id of the run, 1 or more; got {value}")
    elif not 1 <= value <= last:
        raise ValueError(f"{what} must be an event id of the run, from 1 to {last} (its last event); got {value}")
    return int(value)


VERSIONING_BEHAVIORS = ("pinned", "auto_upgrade")
"""The versioning behaviours a workflow or a worker may declare (``duro.VersioningBehavior``'s values)."""


def check_versioning_behavior(what: str, value: object, *, allow_none: bool = False) -> str | None:
    """Check a versioning behaviour: ``"pinned"`` or ``"auto_upgrade"`` (or a ``VersioningBehavior``).

    Returns:
        The behaviour as a plain str (None when ``allow_none`` and None was given).

    Raises:
        ValueError: anything else.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value in VERSIONING_BEHAVIORS:
        return str(value)
    raise ValueError(f"{what} must be one of {', '.join(map(repr, VERSIONING_BEHAVIORS))}"
                     f"{' or None' if allow_none else ''}, got {_show(value)}")


def signature_of(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature of ``fn``, or None for callables that have none (some builtins)."""
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


# Signature objects hash slowly (every parameter): the bounds are cached by identity instead.
_ARITY: dict[int, tuple[inspect.Signature, tuple[int, float] | None]] = {}


def _arity(sig: inspect.Signature) -> tuple[int, float] | None:
    """(fewest, most) positional arguments ``sig`` takes, when that alone decides a positional call."""
    lo, hi = 0, 0.0
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            hi += 1
            if p.default is p.empty:
                if hi != lo + 1:
                    return None  # a required parameter after an optional one: let bind decide
                lo += 1
        elif p.kind is p.VAR_POSITIONAL:
            hi = math.inf
        elif p.kind is p.KEYWORD_ONLY and p.default is p.empty:
            return None  # a required keyword-only parameter cannot be given positionally
    return lo, hi


def check_call_args(kind: str, name: str, sig: inspect.Signature | None, args: Sequence[Any]) -> None:
    """Check that ``args`` fit a workflow's or activity's parameters after its context.

    Args:
        kind: ``"workflow"`` or ``"activity"``, for the message.
        name: the registered name, for the message.
        sig: the function's signature (its first parameter is the context); None skips the check.
        args: the positional arguments the caller passed.

    Raises:
        TypeError: too many or too few arguments, naming the workflow or activity and its parameters.
    """
    if sig is None:
        return
    entry = _ARITY.get(id(sig))
    if entry is None or entry[0] is not sig:
        entry = _ARITY[id(sig)] = (sig, _arity(sig))  # keeps sig alive, so its id stays its own
    bounds = entry[1]
    if bounds is not None and bounds[0] <= len(args) + 1 <= bounds[1]:
        return  # the common case, without Signature.bind (~10 µs a call on the hot path)
    try:
        sig.bind(None, *args)
    except TypeError as e:
        params = list(sig.parameters.values())[1:]
        shown = ", ".join(str(p) for p in params) or "no arguments"
        raise TypeError(f"arguments do not fit {kind} {name!r}: {e} (it takes ({shown}) after its context; "
                        f"got {len(args)} positional argument{'' if len(args) == 1 else 's'})") from None
