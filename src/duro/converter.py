"""The data converter: user values <-> payload bytes (orjson by default, never pickle)."""

from __future__ import annotations

import dataclasses
import inspect
import traceback
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Protocol, Union, get_args, get_origin

import orjson

from duro.errors import (
    ActivityError,
    ApplicationError,
    CancelledError,
    TerminatedError,
    TimeoutError,
)

__all__ = ["DataConverter", "JsonConverter", "default_converter"]


class DataConverter(Protocol):
    """Turns argument lists and values into bytes and back, restoring the annotated types."""

    def encode(self, value: Any) -> bytes:
        """Encode one value; raise TypeError when it cannot be encoded."""

    def decode(self, data: bytes, hint: Any = None) -> Any:
        """Decode one value, converted to ``hint`` when a type is given."""

    def encode_args(self, args: Sequence[Any]) -> bytes:
        """Encode a positional argument list."""

    def decode_args(self, data: bytes, hints: Sequence[Any]) -> list[Any]:
        """Decode a positional argument list, each converted to its hint."""


def _default(obj: Any) -> Any:
    # orjson calls this only for types it does not know natively (it handles dataclasses,
    # datetimes, UUIDs and enums itself).
    to_builtins = getattr(type(obj), "__struct_config__", None)
    if to_builtins is not None:  # a msgspec Struct
        import msgspec

        return msgspec.to_builtins(obj)
    dump = getattr(obj, "model_dump", None)
    if dump is not None:  # a pydantic model
        return dump(mode="json")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        raise TypeError("bytes are not JSON; encode them (base64) or pass a str")
    raise TypeError(f"type {type(obj).__qualname__} is not JSON-encodable")


_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class JsonConverter:
    """The default converter: orjson, with dataclasses, msgspec Structs and pydantic models."""

    def encode(self, value: Any) -> bytes:
        """Encode one value as JSON bytes.

        Raises:
            TypeError: the value (or something inside it) cannot be encoded; nothing is stored.
        """
        try:
            return orjson.dumps(value, default=_default, option=_OPTS)
        except orjson.JSONEncodeError as e:
            # orjson replaces the message of an error raised in _default; that one says more.
            reason = e.__cause__ if isinstance(e.__cause__, TypeError) else e
            raise TypeError(
                f"cannot encode {type(value).__qualname__} for duro: {reason}. Pass JSON types, dataclasses, "
                "msgspec Structs or pydantic models"
            ) from None

    def decode(self, data: bytes, hint: Any = None) -> Any:
        """Decode JSON bytes and convert the result to ``hint``."""
        value = orjson.loads(data)
        return convert(value, hint) if hint is not None else value

    def encode_args(self, args: Sequence[Any]) -> bytes:
        """Encode the positional arguments as a JSON array."""
        return self.encode(list(args))

    def decode_args(self, data: bytes, hints: Sequence[Any]) -> list[Any]:
        """Decode a JSON array of arguments, converting each to its parameter's annotation."""
        values = orjson.loads(data)
        if not isinstance(values, list):
            raise TypeError("an argument payload must be a JSON array")
        out = []
        for i, v in enumerate(values):
            hint = hints[i] if i < len(hints) else None
            out.append(convert(v, hint) if hint is not None else v)
        return out


default_converter = JsonConverter()


def convert(value: Any, hint: Any) -> Any:
    """Convert a decoded JSON value to the annotated type ``hint`` (best effort, recursive)."""
    if hint is None or value is None:
        return value
    try:
        plan = _PLANS[hint]
    except KeyError:
        plan = _PLANS[hint] = _plan(hint)
    except TypeError:  # an unhashable annotation: plan it every time
        plan = _plan(hint)
    return value if plan is None else plan(value)


# hint -> function converting a decoded JSON value to it (None: the value is already right).
# Planned once per annotation, so decoding a result costs one dict lookup in the common case.
_PLANS: dict[Any, Callable[[Any], Any] | None] = {}
_PASSTHROUGH = (int, str, bool, dict, list, object)


def _plan(hint: Any) -> Callable[[Any], Any] | None:
    if hint is Any or hint in _PASSTHROUGH:
        return None
    if hint is float:
        return lambda v: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return lambda v: _to_dataclass(v, hint)
        if hasattr(hint, "__struct_config__"):
            import msgspec

            return lambda v: msgspec.convert(v, hint)
        if hasattr(hint, "model_validate"):
            return hint.model_validate  # type: ignore[no-any-return]
        if issubclass(hint, tuple):
            return lambda v: tuple(v) if isinstance(v, list) else v
        return None
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            inner = non_none[0]
            return lambda v: convert(v, inner)
        return None
    if origin in (list, Sequence, typing.Sequence) and args:
        item = args[0]
        if _plan(item) is None:
            return None
        return lambda v: [convert(x, item) for x in v] if isinstance(v, list) else v
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
            return lambda v: tuple(convert(x, item) for x in v) if isinstance(v, list) else v
        return lambda v: tuple(convert(x, a) for x, a in zip(v, args, strict=False)) if isinstance(v, list) else v
    if origin is dict and len(args) == 2:
        val = args[1]
        if _plan(val) is None:
            return None
        return lambda v: {k: convert(x, val) for k, x in v.items()} if isinstance(v, dict) else v
    return None


def _to_dataclass(value: Any, cls: type) -> Any:
    if not isinstance(value, dict):
        return value
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in value:
            kwargs[f.name] = convert(value[f.name], hints.get(f.name))
    return cls(**kwargs)


_HINTS_CACHE: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    h = _HINTS_CACHE.get(cls)
    if h is None:
        try:
            h = typing.get_type_hints(cls)
        except Exception:
            h = {}
        _HINTS_CACHE[cls] = h
    return h


def parameter_hints(fn: Callable[..., Any], skip_first: bool = True) -> tuple[list[Any], Any]:
    """Return the type hints of ``fn``'s positional parameters (after the context) and of its result."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = {}
    params = list(inspect.signature(fn).parameters.values())
    if skip_first and params:
        params = params[1:]
    arg_hints = [
        hints.get(p.name)
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return arg_hints, hints.get("return")


# --- failures -------------------------------------------------------------------------------------
# A failure payload is a JSON object: {"kind", "message", "type", "non_retryable", "details",
# "stack", "cause"?, plus kind-specific fields}. It must round-trip through any process, so it is
# built from plain data only (never a pickled exception).


def failure_to_dict(exc: BaseException) -> dict[str, Any]:
    """Describe an exception (and its cause chain) as JSON-encodable data."""
    d: dict[str, Any] = {
        "message": str(exc),
        "stack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))[-4000:],
    }
    if isinstance(exc, ApplicationError):
        d.update(kind="application", type=exc.type, non_retryable=exc.non_retryable)
        try:
            orjson.dumps(exc.details, default=_default)
            d["details"] = exc.details
        except (TypeError, orjson.JSONEncodeError):
            d["details"] = repr(exc.details)
    elif isinstance(exc, ActivityError):
        d.update(kind="activity", activity_type=exc.activity_type, activity_id=exc.activity_id,
                 attempt=exc.attempt, type="ActivityError")
    elif isinstance(exc, TimeoutError):
        d.update(kind="timeout", timeout_type=exc.timeout_type, type="TimeoutError")
    elif isinstance(exc, (CancelledError, _asyncio_cancelled())):
        d.update(kind="cancelled", type="CancelledError")
    elif isinstance(exc, TerminatedError):
        d.update(kind="terminated", type="TerminatedError")
    else:
        d.update(kind="application", type=type(exc).__name__, non_retryable=False)
    if exc.__cause__ is not None:
        d["cause"] = failure_to_dict(exc.__cause__)
    return d


def _asyncio_cancelled() -> type[BaseException]:
    import asyncio

    return asyncio.CancelledError


def failure_from_dict(d: dict[str, Any]) -> BaseException:
    """Rebuild an exception (with ``__cause__`` chain) from ``failure_to_dict`` data."""
    kind = d.get("kind", "application")
    message = d.get("message", "")
    exc: BaseException
    if kind == "activity":
        exc = ActivityError(message, activity_type=d.get("activity_type", ""),
                            activity_id=d.get("activity_id", 0), attempt=d.get("attempt", 0))
    elif kind == "timeout":
        exc = TimeoutError(message, timeout_type=d.get("timeout_type", ""))
    elif kind == "cancelled":
        exc = CancelledError(message or "cancelled")
    elif kind == "terminated":
        exc = TerminatedError(message)
    else:
        exc = ApplicationError(message, type=d.get("type"), non_retryable=bool(d.get("non_retryable")),
                               details=d.get("details"))
    stack = d.get("stack")
    if stack:
        exc.__notes__ = [f"remote traceback:\n{stack}"]
    cause = d.get("cause")
    if cause:
        exc.__cause__ = failure_from_dict(cause)
    return exc


def encode_failure(exc: BaseException) -> bytes:
    """Failure payload bytes for an exception."""
    return orjson.dumps(failure_to_dict(exc))


def decode_failure(data: bytes) -> BaseException:
    """The exception a failure payload describes."""
    return failure_from_dict(orjson.loads(data))
