"""``duro.History``: a run's recorded events, readable and exportable as JSON."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import orjson

from duro._core import codec
from duro._core.codec import Event
from duro.errors import CorruptHistoryError
from duro.stores.base import FLAG_HEADERS, split_headed

__all__ = ["History", "HistoryEvent"]


_NOT_JSON = object()


def _json(raw: bytes) -> Any:
    """``raw`` decoded as JSON, or ``_NOT_JSON``."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _NOT_JSON


@dataclass(frozen=True)
class HistoryEvent:
    """One recorded event, in readable form. ``payload`` holds the exact recorded bytes."""

    event_id: int
    event_type: str
    timestamp: datetime.datetime
    ref: int
    attempt: int
    name: str
    payload: bytes
    type_code: int
    #: The recorded time exactly, in microseconds since the epoch (``timestamp`` is its readable
    #: form, clamped to what ``datetime`` can hold).
    timestamp_us: int | None = None
    #: The event's flags as recorded (``FLAG_HEADERS``: the payload carries interceptor headers).
    flags: int = 0

    @property
    def headers(self) -> dict[str, str]:
        """The interceptor headers recorded with this event (a start's, a signal's, an activity's...)."""
        if self.flags & FLAG_HEADERS:
            return split_headed(self.payload, self.flags)[0]
        if self.type_code in (codec.WORKFLOW_STARTED, codec.CHILD_STARTED) and len(self.payload) >= 4:
            n = int.from_bytes(self.payload[:4], "little")
            meta = _json(self.payload[4 : 4 + n])
            if isinstance(meta, dict) and isinstance(meta.get("headers"), dict):
                return dict(meta["headers"])
        return {}

    def data(self) -> Any:
        """The payload decoded as JSON where it is JSON (arguments, results), else the raw bytes."""
        raw = self.payload
        if not raw:
            return None
        if self.flags & FLAG_HEADERS:
            headers, body = split_headed(raw, self.flags)
            args = _json(body) if body else None
            return {"headers": headers, "args": body if args is _NOT_JSON else args}
        value = _json(raw)
        if value is not _NOT_JSON:
            return value
        if len(raw) >= 4:  # a packed record: u32 length + JSON metadata, then the arguments
            n = int.from_bytes(raw[:4], "little")
            rest = raw[4 + n :]
            meta = _json(raw[4 : 4 + n]) if 4 + n <= len(raw) else _NOT_JSON
            args = _json(rest[4:]) if len(rest) >= 4 else None
            if meta is not _NOT_JSON and args is not _NOT_JSON:
                return {"meta": meta, "args": args}
        return raw

    def to_event(self) -> Event:
        """The compiled core's event for this entry."""
        if self.timestamp_us is not None:
            time_us = self.timestamp_us
        else:  # integer arithmetic: a float product would lose a microsecond now and then
            delta = self.timestamp - _EPOCH
            time_us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        return Event(self.type_code, self.event_id, time_us, self.ref, self.attempt, self.name, self.payload,
                     self.flags)


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MIN_TIME = datetime.datetime.min.replace(tzinfo=datetime.UTC)
_MAX_TIME = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _readable_time(time_us: int) -> datetime.datetime:
    """``time_us`` as an aware UTC datetime, clamped to datetime's range (a damaged stamp stays readable)."""
    try:
        return _EPOCH + datetime.timedelta(microseconds=time_us)
    except OverflowError:
        return _MIN_TIME if time_us < 0 else _MAX_TIME


def _from_event(ev: Event) -> HistoryEvent:
    return HistoryEvent(
        event_id=ev.event_id, event_type=ev.type_name, timestamp=_readable_time(ev.timestamp_us),
        ref=ev.ref, attempt=ev.attempt, name=ev.name, payload=ev.payload, type_code=ev.type,
        timestamp_us=ev.timestamp_us, flags=ev.flags,
    )


class History(Sequence[HistoryEvent]):
    """The events of one workflow run, oldest first."""

    def __init__(self, workflow_id: str, run_id: str, events: Sequence[Event]) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id
        self._raw = list(events)
        self._readable: list[HistoryEvent] | None = None

    @property
    def _events(self) -> list[HistoryEvent]:
        # Built on first use: replay needs only the core events, and a long history has many.
        if self._readable is None:
            self._readable = [_from_event(e) for e in self._raw]
        return self._readable

    @overload
    def __getitem__(self, i: int) -> HistoryEvent: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[HistoryEvent]: ...

    def __getitem__(self, i: int | slice) -> HistoryEvent | Sequence[HistoryEvent]:
        return self._events[i]

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[HistoryEvent]:
        return iter(self._events)

    def __repr__(self) -> str:
        return f"History(workflow_id={self.workflow_id!r}, run_id={self.run_id!r}, events={len(self)})"

    @property
    def core_events(self) -> list[Event]:
        """The events as the compiled core's ``Event`` objects (what replay consumes)."""
        return list(self._raw)

    def to_json(self) -> str:
        """JSON text holding every event exactly (payload bytes base64) plus readable data."""
        doc = {
            "format": "duro-history",
            "version": codec.VERSION,
            "workflow_id": self.workflow_id,
            "run_id": self.run_id,
            "events": [
                {
                    "event_id": e.event_id, "type": e.event_type, "type_code": e.type_code,
                    "time": e.timestamp.isoformat(), "time_us": ev.timestamp_us, "ref": e.ref,
                    "attempt": e.attempt, "name": e.name, "payload": base64.b64encode(e.payload).decode(),
                    "flags": ev.flags,
                }
                for e, ev in zip(self._events, self._raw, strict=True)
            ],
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> History:
        """Read what ``to_json`` wrote; raises CorruptHistoryError on anything else."""
        try:
            doc = orjson.loads(text)
            if doc.get("format") != "duro-history":
                raise CorruptHistoryError("not a duro history document (missing \"format\": \"duro-history\")")
            events = [
                Event(int(e["type_code"]), int(e["event_id"]), int(e["time_us"]), int(e["ref"]), int(e["attempt"]),
                      str(e["name"]), base64.b64decode(e["payload"], validate=True), int(e.get("flags", 0)))
                for e in doc["events"]
            ]
            return cls(str(doc["workflow_id"]), str(doc["run_id"]), events)
        except CorruptHistoryError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorruptHistoryError(f"cannot read history JSON: {e}") from None
