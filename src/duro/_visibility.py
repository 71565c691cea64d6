"""Search attributes and memos: what values they may hold, checked before anything is stored.

Search attributes are what ``list_workflows`` / ``count_workflows`` filter on (equality), so their
values are scalars that compare the same way in every store: ``str``, ``int``, ``float``, ``bool``,
and ``datetime`` (kept as an ISO-8601 UTC string, so a filter with the same datetime matches). A
memo is any JSON object, shown by ``describe()`` and never filtered on.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping
from typing import Any

import orjson

from duro._validate import check_name

__all__ = ["MAX_MEMO_BYTES", "MAX_VALUE_BYTES", "check_memo", "check_search_attributes", "page_token", "parse_page"]

MAX_VALUE_BYTES = 2048  # a string value, in UTF-8 (Temporal's keyword limit is of this order)
MAX_ATTRIBUTES = 100
MAX_MEMO_BYTES = 64 * 1024
_INT64 = 1 << 63


def _value(name: str, value: Any, *, allow_none: bool) -> Any:
    if value is None:
        if allow_none:
            return None  # upsert: remove the attribute
    elif isinstance(value, bool):
        return value
    elif isinstance(value, int):
        if -_INT64 <= value < _INT64:
            return value
        raise ValueError(f"search attribute {name!r}: {value} does not fit in 64 bits")
    elif isinstance(value, float):
        if math.isfinite(value):
            return value
        raise ValueError(f"search attribute {name!r}: {value} is not a finite number")
    elif isinstance(value, str):
        if len(value.encode()) <= MAX_VALUE_BYTES and "\x00" not in value:
            return value
        raise ValueError(f"search attribute {name!r}: a string value must be at most {MAX_VALUE_BYTES} bytes "
                         "in UTF-8 and hold no NUL")
    elif isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise ValueError(f"search attribute {name!r}: a datetime must be timezone-aware (e.g. tz=datetime.UTC)")
        return value.astimezone(datetime.UTC).isoformat()
    raise TypeError(f"search attribute {name!r}: a value of type {type(value).__name__} is not supported; use "
                    "str, int, float, bool or a timezone-aware datetime")


def check_search_attributes(attrs: Any, *, allow_none: bool = False) -> dict[str, Any]:
    """The attributes as stored (datetimes as ISO strings); a clear error for anything else.

    Args:
        attrs: a mapping of name to value.
        allow_none: whether a value may be None (``upsert_search_attributes``: remove it).

    Raises:
        TypeError: not a mapping, or a value of an unsupported type.
        ValueError: a bad name (empty, NUL, over 255 bytes), a value out of range, too many.
    """
    if not isinstance(attrs, Mapping):
        raise TypeError(f"search_attributes must be a dict of name to value, got {type(attrs).__name__}")
    if len(attrs) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} search attributes, got {len(attrs)}")
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        if not isinstance(name, str):
            raise TypeError(f"search attribute names are str, got {type(name).__name__}")
        check_name("search attribute name", name)
        out[name] = _value(name, value, allow_none=allow_none)
    return out


def check_memo(memo: Any) -> dict[str, Any]:
    """The memo as stored: a JSON object with str keys, at most ``MAX_MEMO_BYTES`` encoded."""
    if not isinstance(memo, Mapping):
        raise TypeError(f"memo must be a dict, got {type(memo).__name__}")
    try:
        raw = orjson.dumps(dict(memo))
    except TypeError as e:
        raise TypeError(f"memo must be JSON-encodable with str keys: {e}") from None
    if len(raw) > MAX_MEMO_BYTES:
        raise ValueError(f"memo is {len(raw)} bytes encoded; at most {MAX_MEMO_BYTES}")
    decoded: dict[str, Any] = orjson.loads(raw)
    return decoded


def page_token(start_us: int, workflow_id: str) -> str:
    """The opaque token of a page position: the last workflow of a page (its start µs and id)."""
    return orjson.dumps([start_us, workflow_id]).hex()


def parse_page(token: str) -> tuple[int, str]:
    """A page position from ``page_token``; ValueError for anything else."""
    try:
        start_us, workflow_id = orjson.loads(bytes.fromhex(token))
    except (ValueError, TypeError, orjson.JSONDecodeError):
        start_us = workflow_id = None
    if isinstance(start_us, int) and isinstance(workflow_id, str):
        return start_us, workflow_id
    raise ValueError("page_token is not one that list_workflows returned (pass .next_page_token of a page)")
