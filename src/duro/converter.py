"""The data converter: user values <-> payload bytes (orjson by default, never pickle)."""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import enum
import inspect
import math
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
    PayloadTooLargeError,
    TerminatedError,
    TimeoutError,
    WorkflowClosedError,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD_SIZE",
    "DataConverter",
    "JsonConverter",
    "default_converter",
    "with_max_payload_size",
]

DEFAULT_MAX_PAYLOAD_SIZE = 2 * 1024 * 1024
"""Default limit on one encoded payload (an argument list, a result, a signal, a heartbeat): 2 MiB.

Temporal refuses blobs over 2 MB for the same reason: a history holds every payload of a run,
and a replay (or a query by replay) reads them all back. Large data belongs in a file or an object
store, passed by reference.
"""


class DataConverter(Protocol):
    """Turns argument lists and values into bytes and back, restoring the annotated types."""

    def encode(self, value: Any) -> bytes:
        """Encode one value.

        Raise TypeError when it cannot be encoded, ValueError when it holds something the format
        cannot represent faithfully, ``duro.PayloadTooLargeError`` when it is over the size limit.
        """

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
    if hasattr(type(obj), "__fields__") and hasattr(obj, "json") and hasattr(type(obj), "parse_obj"):
        return orjson.loads(obj.json())  # a pydantic v1 model (or pydantic.v1 in pydantic 2)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        raise TypeError("bytes are not JSON; encode them (base64) or pass a str")
    raise TypeError(f"type {type(obj).__qualname__} is not JSON-encodable")


_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class JsonConverter:
    """The default converter: orjson, with dataclasses, msgspec Structs and pydantic models.

    Args:
        max_payload_size: the largest encoded payload accepted, in bytes (default 2 MiB,
            ``DEFAULT_MAX_PAYLOAD_SIZE``); None for no limit. A larger one raises
            ``duro.PayloadTooLargeError`` where it is encoded: in the caller for arguments and
            signals, in the workflow for activity arguments and results, in the activity attempt
            for its result and heartbeats.
    """

    def __init__(self, *, max_payload_size: int | None = DEFAULT_MAX_PAYLOAD_SIZE) -> None:
        self.max_payload_size = _check_limit(max_payload_size)

    def encode(self, value: Any) -> bytes:
        """Encode one value as JSON bytes.

        Raises:
            TypeError: the value (or something inside it) cannot be encoded; nothing is stored.
            ValueError: the value holds a NaN or an infinity (JSON has neither; orjson would write
                null); the message says where.
            duro.PayloadTooLargeError: the encoded value is over ``max_payload_size``.
        """
        return self._encode(value, "value")

    def _encode(self, value: Any, root: str) -> bytes:
        try:
            data = orjson.dumps(value, default=_default, option=_OPTS)
        except orjson.JSONEncodeError as e:
            # orjson replaces the message of an error raised in _default; that one says more.
            reason = e.__cause__ if isinstance(e.__cause__, TypeError) else e
            raise TypeError(
                f"cannot encode {type(value).__qualname__} for duro: {reason}. Pass JSON types, dataclasses, "
                "msgspec Structs or pydantic models"
            ) from None
        limit = self.max_payload_size
        if limit is not None and len(data) > limit:
            raise PayloadTooLargeError(
                f"the encoded payload is {len(data):,} bytes, over the limit of {limit:,} bytes (max_payload_size); "
                "pass large data by reference (a file or object-store key), or raise the limit with "
                "Client.connect(url, max_payload_size=...)", size=len(data), limit=limit)
        # orjson writes NaN and +-inf as null: only a payload with a null can hold one, and only a
        # value with something besides str/int/bool/None in it (the byte search costs ~1 ns a byte,
        # so a payload of plain strings skips it).
        if not _plain(value) and b"null" in data:
            _check_finite(value, root)
        return data

    def decode(self, data: bytes, hint: Any = None) -> Any:
        """Decode JSON bytes and convert the result to ``hint``."""
        value = orjson.loads(data)
        if hint is None or value is None:
            return value
        # convert(value, hint), its common case inlined: every activity result comes here.
        try:
            plan = _PLANS[hint]
        except (KeyError, TypeError):
            return convert(value, hint)
        return value if plan is None else plan(value)

    def encode_args(self, args: Sequence[Any]) -> bytes:
        """Encode the positional arguments as a JSON array (same errors as ``encode``)."""
        return self._encode(list(args), "args")

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


def _check_limit(limit: object) -> int | None:
    if limit is None:
        return None
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"max_payload_size must be a positive int (bytes) or None for no limit, got {limit!r}")
    return limit


class _SizeLimited:
    """A converter of the user's with a payload size limit on top (``with_max_payload_size``)."""

    def __init__(self, inner: DataConverter, limit: int) -> None:
        self.inner = inner
        self.max_payload_size = limit

    def _checked(self, data: bytes) -> bytes:
        if len(data) > self.max_payload_size:
            raise PayloadTooLargeError(
                f"the encoded payload is {len(data):,} bytes, over the limit of {self.max_payload_size:,} bytes "
                "(max_payload_size); pass large data by reference (a file or object-store key)",
                size=len(data), limit=self.max_payload_size)
        return data

    def encode(self, value: Any) -> bytes:
        return self._checked(self.inner.encode(value))

    def decode(self, data: bytes, hint: Any = None) -> Any:
        return self.inner.decode(data, hint)

    def encode_args(self, args: Sequence[Any]) -> bytes:
        return self._checked(self.inner.encode_args(args))

    def decode_args(self, data: bytes, hints: Sequence[Any]) -> list[Any]:
        return self.inner.decode_args(data, hints)


def with_max_payload_size(converter: DataConverter, limit: int | None) -> DataConverter:
    """``converter`` with its payload size limit set to ``limit`` bytes (None: no limit).

    A ``JsonConverter`` is copied with the new limit; another converter is wrapped in one that
    checks the size of what it encodes.

    Raises:
        ValueError: ``limit`` is not a positive int or None.
    """
    limit = _check_limit(limit)
    if isinstance(converter, JsonConverter):
        out = copy.copy(converter)
        out.max_payload_size = limit
        return out
    if isinstance(converter, _SizeLimited):
        converter = converter.inner
    return converter if limit is None else _SizeLimited(converter, limit)


def _check_finite(value: Any, root: str) -> None:
    """Raise ValueError naming where ``value`` holds a NaN or an infinity (JSON has neither)."""
    found = _find_non_finite(value)
    if found is not None:
        where, bad = found
        raise ValueError(f"cannot encode {bad!r} at {root}{''.join(reversed(where))}: JSON has no NaN or infinity "
                         "(it would be stored as null); send a finite number, None or a string instead")


_ATOMS = (str, int, bool, type(None))


def _plain(value: Any) -> bool:
    """Whether ``value`` is trivially free of floats: an atom, or a short list of atoms (an argument list)."""
    t = type(value)
    if t in _ATOMS:
        return True
    if t is list and len(value) <= 8:
        for v in value:
            if type(v) not in _ATOMS:
                return False
        return True
    return False


def _find_non_finite(value: Any) -> tuple[list[str], Any] | None:
    """The first NaN or infinity in ``value``, walked as orjson encodes it.

    Returns the path to it (its segments innermost first, built only once one is found) and the
    value, or None. Containers are scanned with the common element types checked inline: this
    runs on every payload that holds a null.
    """
    t = type(value)
    if t is dict:
        for k, v in value.items():
            tv = type(v)
            if tv is float:
                if v - v != 0.0:  # NaN or an infinity (for finite v, v - v is 0.0)
                    return [f"[{k!r}]"], v
            elif tv not in _ATOMS:
                found = _find_non_finite(v)
                if found is not None:
                    found[0].append(f"[{k!r}]")
                    return found
            if type(k) is float and k - k != 0.0:
                return [f" (the key {k!r})"], k
        return None
    if t is list or t is tuple:
        for i, v in enumerate(value):
            tv = type(v)
            if tv is float:
                if v - v != 0.0:
                    return [f"[{i}]"], v
            elif tv not in _ATOMS:
                found = _find_non_finite(v)
                if found is not None:
                    found[0].append(f"[{i}]")
                    return found
        return None
    if t in _ATOMS:
        return None
    if isinstance(value, float):  # float, its subclasses (numpy.float64, float enums)
        return None if math.isfinite(value) else ([], value)
    if isinstance(value, (dict, list, tuple)):  # subclasses: walk them as the plain types
        return _find_non_finite(dict(value) if isinstance(value, dict) else list(value))
    if isinstance(value, enum.Enum):
        return _find_non_finite(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            found = _find_non_finite(getattr(value, f.name, None))
            if found is not None:
                found[0].append(f".{f.name}")
                return found
        return None
    dtype = getattr(value, "dtype", None)
    if dtype is not None:  # a numpy array or scalar: only floating kinds hold NaN
        if getattr(dtype, "kind", None) != "f":
            return None
        import numpy

        bad = ~numpy.isfinite(value)
        if not bad.any():
            return None
        if getattr(value, "ndim", 0) == 0:
            return [], value.item()
        index = tuple(int(i) for i in numpy.argwhere(bad)[0])
        return [str(list(index))], value[index].item()
    try:  # msgspec Structs, pydantic models, sets: checked as they are encoded
        plain = _default(value)
    except Exception:
        return None
    return _find_non_finite(plain)


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
        if hasattr(hint, "parse_obj") and hasattr(hint, "__fields__"):  # pydantic v1
            return hint.parse_obj  # type: ignore[no-any-return]
        if issubclass(hint, enum.Enum):  # IntEnum, StrEnum, Flag...: stored as their value
            return lambda v: v if isinstance(v, hint) else hint(v)
        if issubclass(hint, (set, frozenset)):
            return lambda v: hint(v) if isinstance(v, list) else v
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
        if all(_plan(a) is None for a in non_none):
            return None
        return lambda v: _to_union(v, non_none)
    if origin in (set, frozenset, typing.AbstractSet, collections.abc.Set, collections.abc.MutableSet):
        item = args[0] if args else None
        kind = frozenset if origin is frozenset else set
        return lambda v: kind(convert(x, item) for x in v) if isinstance(v, list) else v
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


def _to_union(value: Any, options: list[Any]) -> Any:
    """``value`` as the first member of a Union it fits (checked strictly), else as it is.

    JSON does not say which member a value was, so members are tried in the annotation's order:
    a dataclass fits a JSON object holding its required fields and no others; a model or Struct
    fits when it validates; an Enum when the value is one of its values; a plain type when the
    decoded value already has it.
    """
    for option in options:
        fits, converted = _fit(value, option)
        if fits:
            return converted
    return value


def _fit(value: Any, hint: Any) -> tuple[bool, Any]:
    if hint is Any:
        return True, value
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                return False, None
            fields = dataclasses.fields(hint)
            names = {f.name for f in fields}
            required = {f.name for f in fields if f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING and f.init}
            if not required <= value.keys() <= names:
                return False, None
        elif hint is float:
            return (isinstance(value, (int, float)) and not isinstance(value, bool)), convert(value, hint)
        elif hint is int:
            return (isinstance(value, int) and not isinstance(value, bool)), value
        elif hint in (str, bool, dict, list):
            return isinstance(value, hint), value
        elif issubclass(hint, (set, frozenset, tuple)):
            if not isinstance(value, list):
                return False, None
        try:
            return True, convert(value, hint)
        except Exception:  # pydantic/msgspec validation errors, Enum ValueErrors...
            return False, None
    origin = get_origin(hint)
    if origin is not None and isinstance(origin, type):
        container = list if origin in (tuple, set, frozenset) or issubclass(origin, Sequence) else origin
        if not isinstance(value, container if container in (list, dict) else (list, dict)):
            return False, None
    try:
        return True, convert(value, hint)
    except Exception:
        return False, None


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
    elif isinstance(exc, WorkflowClosedError):  # a worker of another process refused an update
        d.update(kind="closed", type="WorkflowClosedError", workflow_id=exc.workflow_id, run_id=exc.run_id,
                 status=exc.status)
    else:
        d.update(kind="application", type=type(exc).__name__, non_retryable=False)
    if exc.__cause__ is not None:
        d["cause"] = failure_to_dict(exc.__cause__)
    return d


def _asyncio_cancelled() -> type[BaseException]:
    import asyncio

    return asyncio.CancelledError


_MAX_CAUSES = 64  # a longer chain is cut: nobody reads it, and rebuilding it must not recurse without bound


def failure_from_dict(d: dict[str, Any]) -> BaseException:
    """Rebuild an exception (with ``__cause__`` chain) from ``failure_to_dict`` data.

    Raises ValueError for data that is not a failure object. A chain of causes longer than 64
    is cut there.
    """
    chain: list[dict[str, Any]] = []
    node: Any = d
    while True:
        if not isinstance(node, dict):
            raise ValueError(f"a failure payload must be a JSON object, not {type(node).__name__}")
        chain.append(node)
        node = node.get("cause")
        if not node or len(chain) >= _MAX_CAUSES:
            break
    exc: BaseException | None = None
    for item in reversed(chain):  # innermost cause first, so no recursion
        outer = _one_failure(item)
        if exc is not None:
            outer.__cause__ = exc
        exc = outer
    assert exc is not None
    return exc


def _one_failure(d: dict[str, Any]) -> BaseException:
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
    elif kind == "closed":
        exc = WorkflowClosedError(message, workflow_id=str(d.get("workflow_id") or ""),
                                  run_id=str(d.get("run_id") or ""), status=str(d.get("status") or ""))
    else:
        exc = ApplicationError(message, type=d.get("type"), non_retryable=bool(d.get("non_retryable")),
                               details=d.get("details"))
    stack = d.get("stack")
    if stack:
        exc.__notes__ = [f"remote traceback:\n{stack}"]
    return exc


def encode_failure(exc: BaseException) -> bytes:
    """Failure payload bytes for an exception."""
    return orjson.dumps(failure_to_dict(exc))


def decode_failure(data: bytes) -> BaseException:
    """The exception a failure payload describes."""
    return failure_from_dict(orjson.loads(data))
