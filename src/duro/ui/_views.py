"""What the UI's JSON API says: plain JSON-ready dicts built from duro's public types, no HTTP here."""

from __future__ import annotations

import base64
import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

from duro.client import WorkflowExecution
from duro.history import HistoryEvent
from duro.schedules import ScheduleDescription

__all__ = [
    "MAX_SPANS",
    "STATUSES",
    "event_doc",
    "execution_doc",
    "jsonable",
    "parse_attribute",
    "parse_time",
    "run_view",
    "schedule_doc",
    "with_pending_details",
]

STATUSES = ("running", "completed", "failed", "canceled", "terminated", "continued_as_new", "timed_out")

#: The timeline keeps the latest spans only: a browser draws a few thousand SVG bars without trouble, not 100,000.
MAX_SPANS = 1000

_CLOSING = {
    "WorkflowExecutionCompleted": "completed",
    "WorkflowExecutionFailed": "failed",
    "WorkflowExecutionTerminated": "terminated",
    "WorkflowExecutionCanceled": "canceled",
    "WorkflowExecutionTimedOut": "timed_out",
    "WorkflowExecutionContinuedAsNew": "continued_as_new",
}
_ACTIVITY_CLOSE = {"ActivityTaskCompleted": "completed", "ActivityTaskFailed": "failed",
                   "ActivityTaskCanceled": "canceled"}
_TIMER_CLOSE = {"TimerFired": "fired", "TimerCanceled": "canceled"}
_CHILD_CLOSE = {"ChildWorkflowExecutionCompleted": "completed", "ChildWorkflowExecutionFailed": "failed",
                "ChildWorkflowExecutionCanceled": "canceled"}


def iso(value: datetime.datetime | None) -> str | None:
    """``value`` as ISO 8601 in UTC (what the page's ``new Date()`` reads), or None."""
    return value.astimezone(datetime.UTC).isoformat() if value is not None else None


def jsonable(value: Any) -> Any:
    """``value`` made safe for JSON: bytes as base64 (a custom converter's payloads), NaN and sets as text."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return {"$bytes_base64": base64.b64encode(raw).decode(), "length": len(raw)}
    if isinstance(value, datetime.datetime):
        return iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return repr(value)


def execution_doc(e: WorkflowExecution) -> dict[str, Any]:
    """A run as the list and the workflow page show it."""
    return {
        "workflow_id": e.workflow_id, "run_id": e.run_id, "workflow_type": e.workflow_type,
        "task_queue": e.task_queue, "status": str(e.status), "start_time": iso(e.start_time),
        "close_time": iso(e.close_time), "history_length": e.history_length, "task_failures": e.task_failures,
        "search_attributes": jsonable(e.search_attributes), "memo": jsonable(e.memo), "next_run_id": e.next_run_id,
    }


def event_doc(e: HistoryEvent) -> dict[str, Any]:
    """One history event: its fields, and its payload decoded where it is JSON."""
    return {"event_id": e.event_id, "type": e.event_type, "time": iso(e.timestamp), "ref": e.ref,
            "attempt": e.attempt, "name": e.name, "data": jsonable(e.data())}


def _args_of(data: Any) -> Any:
    """The arguments of a packed record (``{"meta", "args"}``), else the data as it is."""
    if isinstance(data, dict) and set(data) == {"meta", "args"}:
        return data["args"]
    return data


def _meta_of(data: Any) -> dict[str, Any]:
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        meta: dict[str, Any] = data["meta"]
        return meta
    return {}


def _cancel_target(data: Any) -> str | None:
    """The workflow id a RequestCancelExternalWorkflowExecutionInitiated names (``{"id": ..., "run": ...}``)."""
    target = data.get("id") if isinstance(data, dict) else None
    return target if isinstance(target, str) else None


def _child_outcome(data: Any) -> str:
    """A child's failure says whether it failed, was cancelled or terminated (``failure_to_dict``'s kind)."""
    kind = data.get("kind") if isinstance(data, dict) else None
    return {"cancelled": "canceled", "terminated": "terminated", "timeout": "timed_out"}.get(str(kind), "failed")


def _failure_text(data: Any) -> str | None:
    if isinstance(data, dict) and "message" in data:
        kind = data.get("type")
        return f"{kind}: {data['message']}" if kind else str(data["message"])
    return None if data is None else str(data)


def run_view(events: Iterable[HistoryEvent]) -> dict[str, Any]:
    """What the workflow page derives from a run's history, in one pass.

    Activities, timers and child workflows become spans from their first event to their closing
    one (the same ``ref``: the command's sequence number); a span without a closing event is
    pending. ``with_pending_details`` adds what ``describe()`` knows of the pending activities.
    """
    spans: dict[tuple[str, int], dict[str, Any]] = {}
    signals: list[dict[str, Any]] = []
    reset_points: list[dict[str, Any]] = []
    view: dict[str, Any] = {"input": None, "outcome": None}
    for e in events:
        t = e.event_type
        if t == "WorkflowExecutionStarted":
            data = e.data()
            view["input"] = jsonable(_args_of(data))
            parent = _meta_of(data).get("parent")
            view["parent"] = jsonable(parent) if isinstance(parent, dict) else None
        elif t in _CLOSING:
            view["outcome"] = {"status": _CLOSING[t], "event_id": e.event_id, "time": iso(e.timestamp),
                               "value": jsonable(_args_of(e.data()))}
        elif t == "WorkflowTaskCompleted":
            reset_points.append({"event_id": e.event_id, "time": iso(e.timestamp)})
        elif t == "WorkflowExecutionSignaled":
            signals.append({"event_id": e.event_id, "name": e.name, "time": iso(e.timestamp)})
        elif t == "ActivityTaskScheduled":
            spans[("activity", e.ref)] = _span("activity", e, e.name, args=jsonable(_args_of(e.data())))
        elif t == "TimerStarted":
            data = e.data()
            duration = data.get("duration") if isinstance(data, dict) else None
            span = _span("timer", e, _seconds_text(duration) if duration is not None else "")
            if isinstance(duration, (int, float)) and math.isfinite(duration):
                span["duration"] = duration
                span["due"] = iso(e.timestamp + datetime.timedelta(seconds=min(duration, 1e10)))
            spans[("timer", e.ref)] = span
        elif t == "StartChildWorkflowExecutionInitiated":
            meta = _meta_of(e.data())
            span = _span("child", e, str(meta.get("id", e.name)))
            span.update(workflow_type=e.name, child_id=meta.get("id"), child_run_id=meta.get("run"))
            spans[("child", e.ref)] = span
        elif t in _ACTIVITY_CLOSE:
            _close(spans.get(("activity", e.ref)), e, _ACTIVITY_CLOSE[t])
        elif t == "ActivityTaskCancelRequested":
            requested = spans.get(("activity", e.ref))
            if requested is not None:
                requested["cancel_requested"] = True
        elif t == "RequestCancelExternalWorkflowExecutionInitiated":
            # Its record names the target by workflow id: an open child of that id is being cancelled.
            target = _cancel_target(e.data())
            for span in spans.values() if target is not None else ():
                if span["kind"] == "child" and span["end"] is None and span.get("child_id") == target:
                    span["cancel_requested"] = True
        elif t in _TIMER_CLOSE:
            _close(spans.get(("timer", e.ref)), e, _TIMER_CLOSE[t])
        elif t in _CHILD_CLOSE:
            outcome = _CHILD_CLOSE[t]
            if outcome == "failed":
                outcome = _child_outcome(e.data())
            _close(spans.get(("child", e.ref)), e, outcome)
    ordered = list(spans.values())
    pending = [s for s in ordered if s["end"] is None]
    view.update(
        spans=ordered[-MAX_SPANS:], spans_total=len(ordered), signals=signals[-MAX_SPANS:],
        reset_points=reset_points,
        pending_activities=[s for s in pending if s["kind"] == "activity"],
        pending_timers=[s for s in pending if s["kind"] == "timer"],
        pending_children=[s for s in pending if s["kind"] == "child"],
    )
    return view


def _span(kind: str, e: HistoryEvent, label: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "seq": e.ref, "label": label, "name": e.name, "start": iso(e.timestamp),
            "start_event": e.event_id, "end": None, "end_event": None, "outcome": "open", "attempt": e.attempt,
            "detail": None, **extra}


def _close(span: dict[str, Any] | None, e: HistoryEvent, outcome: str) -> None:
    if span is None:  # a closing event with no opening one (a reset run's carried-over work): nothing to draw
        return
    span.update(end=iso(e.timestamp), end_event=e.event_id, outcome=outcome, attempt=max(span["attempt"], e.attempt))
    if outcome != "completed" and outcome != "fired":
        span["detail"] = _failure_text(e.data())


def _seconds_text(value: Any) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if value >= 3600:
        return f"{value / 3600:g}h"
    if value >= 60:
        return f"{value / 60:g}m"
    return f"{value:g}s"


def with_pending_details(pending: list[dict[str, Any]], described: Iterable[Any] | None) -> list[dict[str, Any]]:
    """The pending activities of ``run_view`` with what ``describe().pending_activities`` says of each.

    Matched by sequence number (``activity_id``, or ``seq``): the attempt now running, its state,
    the last heartbeat and its details, the previous attempt's failure, when a retry is due.
    Attributes are read with ``getattr``: a client without some of them still gives the rest.
    """
    by_seq: dict[int, Any] = {}
    for info in described or ():
        seq = getattr(info, "activity_id", getattr(info, "seq", None))
        if isinstance(seq, int):
            by_seq[seq] = info
    out = []
    for span in pending:
        doc = dict(span)
        info = by_seq.get(span["seq"])
        if info is not None:
            doc.update(
                attempt=getattr(info, "attempt", span["attempt"]),
                state=jsonable(getattr(info, "state", None)),
                last_heartbeat_time=_time_of(getattr(info, "last_heartbeat_time", None)),
                heartbeat_details=jsonable(getattr(info, "heartbeat_details", None)),
                last_failure=jsonable(getattr(info, "last_failure", None)),
                next_attempt_time=_time_of(getattr(info, "next_attempt_time", None)),
            )
        out.append(doc)
    return out


def _time_of(value: Any) -> str | None:
    return iso(value) if isinstance(value, datetime.datetime) and value.tzinfo is not None else None


def parse_time(name: str, text: str) -> datetime.datetime:
    """An ISO 8601 time with its offset (``2026-01-01T00:00:00Z``); ValueError naming ``name`` otherwise."""
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 time such as 2026-01-01T00:00:00Z, got {text!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"{name} must carry its time zone (e.g. a trailing Z for UTC), got {text!r}")
    return value


def parse_attribute(text: str) -> tuple[str, Any]:
    """A ``key=value`` search attribute filter; the value typed as in JSON where it reads as a number or bool.

    ``amount=5`` filters on the int 5, ``vip=true`` on True, ``code="5"`` on the string "5",
    ``customer=alice`` on the string "alice" (search attributes compare by type and value).
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"a search attribute filter is key=value, got {text!r}")
    value: Any = raw
    if raw in ("true", "false"):
        value = raw == "true"
    elif len(raw) >= 2 and raw[0] == raw[-1] == '"':
        value = raw[1:-1]
    else:
        try:
            value = int(raw)
        except ValueError:
            number = _float_or_none(raw)
            if number is not None and math.isfinite(number):
                value = number
    return key, value


def _float_or_none(raw: str) -> float | None:
    """``raw`` as a float, or None when it is not a number (it is then kept as text)."""
    try:
        return float(raw)
    except ValueError:
        return None


def schedule_doc(d: ScheduleDescription) -> dict[str, Any]:
    """A schedule as the schedules page shows it."""
    spec = d.spec
    return {
        "id": d.id, "workflow_type": d.workflow_type, "task_queue": d.task_queue, "args": jsonable(d.args),
        "cron": spec.cron, "every_seconds": spec.every.total_seconds() if spec.every else None,
        "time_zone": spec.time_zone, "overlap": d.overlap, "paused": d.paused, "note": d.note,
        "next_run_times": [iso(t) for t in d.next_run_times], "next_fire_time": iso(d.next_fire_time),
        "recent_runs": [{"workflow_id": a.workflow_id, "run_id": a.run_id, "scheduled_time": iso(a.scheduled_time),
                         "started_at": iso(a.started_at), "trigger": a.trigger} for a in d.recent_runs],
        "running_workflow_ids": list(d.running_workflow_ids), "fired_count": d.fired_count,
        "skipped_count": d.skipped_count, "missed_count": d.missed_count,
    }
