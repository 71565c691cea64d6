"""The UI's JSON API under ``/api/``: reads and actions, each one call of duro's public client API."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections import OrderedDict
from typing import Any

import orjson
from aiohttp import web

import duro
from duro._cli_output import state_dict
from duro._query import task_states
from duro.ui._views import (
    STATUSES,
    event_doc,
    execution_doc,
    jsonable,
    parse_attribute,
    parse_time,
    run_view,
    schedule_doc,
    with_pending_details,
)

__all__ = ["Api", "json_response"]

DEFAULT_PAGE = 50
MAX_PAGE = 1000
HISTORY_PAGE = 1000
_VIEW_CACHE = 64  # derived views kept, keyed by run and history length: a poll of an idle run reads no history twice


def json_response(data: Any, status: int = 200) -> web.Response:
    """``data`` as a JSON response (orjson: datetimes as ISO 8601)."""
    return web.Response(body=orjson.dumps(data, default=jsonable), status=status, content_type="application/json")


def _one(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ValueError(f"give {name} once, got it {len(values)} times")
    value = values[0] if values else None
    return value or None


def _filters(request: web.Request) -> dict[str, Any]:
    """``list_workflows``/``count_workflows`` keyword arguments from the query string; ValueError for bad ones."""
    out: dict[str, Any] = {}
    status = _one(request, "status")
    if status is not None:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        out["status"] = status
    workflow_type = _one(request, "type")
    if workflow_type is not None:
        out["workflow_type"] = workflow_type
    attrs = dict(parse_attribute(a) for a in request.query.getall("attr", []) if a.strip())
    if attrs:
        out["search_attributes"] = attrs
    for name in ("started_after", "started_before"):
        text = _one(request, name)
        if text is not None:
            out[name] = parse_time(name, text)
    return out


def _int(value: Any, name: str, *, low: int, high: int | None = None) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"{low} or more"
        raise ValueError(f"{name} must be an integer {bounds}, got {value!r}")
    return value


def _json(raw: str | bytes, what: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """``raw`` parsed as JSON, which must be a ``kind`` (a list: an array, a dict: an object)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, kind):
        expected = "array" if kind is list else "object"
        raise ValueError(f"{what} must be a JSON {expected}, got {type(value).__name__}")
    return value


def _str(body: dict[str, Any], name: str, *, required: bool = False, default: str = "") -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise ValueError(f"the request needs {name!r} (a string)")
        return default
    if not isinstance(value, str):
        raise ValueError(f"{name!r} must be a string, got {type(value).__name__}")
    return value


async def _body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (the security middleware has checked its content type already)."""
    raw = await request.read()
    if not raw.strip():
        return {}
    body: dict[str, Any] = _json(raw, "the request body", dict)
    return body


def _run_id(request: web.Request, body: dict[str, Any] | None = None) -> str | None:
    if body is not None and body.get("run_id") is not None:
        return _str(body, "run_id") or None
    return _one(request, "run_id")


class Api:
    """The handlers, around one client.

    Args:
        client: the connected client every call goes through.
        token_required: whether actions need the server's token (the page asks for it then).
        query_timeout: how long the page waits for a worker to answer the stack-trace query.
    """

    def __init__(self, client: duro.Client, *, token_required: bool, query_timeout: float = 2.0) -> None:
        self.client = client
        self.token_required = token_required
        self.query_timeout = query_timeout
        self._views: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()
        # One stack query per run at a time: a query nobody answers runs to the client's own timeout in the
        # background (cancelling it would leave its request behind in the store), later polls join it.
        self._stack_queries: dict[tuple[str, str], asyncio.Task[Any]] = {}

    def add_routes(self, app: web.Application) -> None:
        """Register the API's routes on ``app``."""
        r = app.router
        r.add_get("/api/info", self.info)
        r.add_get("/api/workflows", self.list_workflows)
        r.add_get("/api/counts", self.counts)
        r.add_get("/api/workflows/{id}", self.workflow)
        r.add_get("/api/workflows/{id}/history", self.history)
        r.add_get("/api/workflows/{id}/stack", self.stack)
        r.add_get("/api/workflows/{id}/states", self.states)
        for action in ("signal", "cancel", "terminate", "reset"):
            r.add_post(f"/api/workflows/{{id}}/{action}", getattr(self, f"do_{action}"))
        r.add_get("/api/schedules", self.schedules)
        for action in ("pause", "unpause", "trigger"):
            r.add_post(f"/api/schedules/{{id}}/{action}", getattr(self, f"schedule_{action}"))
        app.on_cleanup.append(self._cleanup)

    async def _cleanup(self, app: web.Application) -> None:
        for task in self._stack_queries.values():
            task.cancel()
        for task in list(self._stack_queries.values()):
            with contextlib.suppress(BaseException):
                await task

    # ------------------------------------------------------------------ reads

    async def info(self, request: web.Request) -> web.Response:
        """The server: duro's version, the store's kind, and whether actions need a token."""
        url = getattr(self.client.store, "url", "")
        kind = url.split(":", 1)[0] if isinstance(url, str) else ""  # the scheme only: the URL may hold a password
        return json_response({"version": duro.__version__, "store": kind, "statuses": list(STATUSES),
                              "token_required": self.token_required})

    async def list_workflows(self, request: web.Request) -> web.Response:
        """A page of workflows, newest first, filtered as the query string says."""
        filters = _filters(request)
        limit = _int(_one(request, "limit") or DEFAULT_PAGE, "limit", low=1, high=MAX_PAGE)
        page = await self.client.list_workflows(**filters, limit=limit, page_token=_one(request, "page_token"))
        return json_response({"workflows": [execution_doc(e) for e in page], "next_page_token": page.next_page_token})

    async def counts(self, request: web.Request) -> web.Response:
        """How many workflows match the filters (but status), in all and per status."""
        filters = _filters(request)
        filters.pop("status", None)
        total, *per = await asyncio.gather(self.client.count_workflows(**filters),
                                           *(self.client.count_workflows(status=s, **filters) for s in STATUSES))
        return json_response({"total": total, "by_status": dict(zip(STATUSES, per, strict=True))})

    async def workflow(self, request: web.Request) -> web.Response:
        """One run: its description and what its history says (input, outcome, pending work, timeline)."""
        handle = self.client.get_handle(request.match_info["id"], _run_id(request))
        desc = await handle.describe()
        key = (desc.workflow_id, desc.run_id, desc.history_length)
        view = self._views.get(key)
        if view is None:
            history = await self.client.get_handle(desc.workflow_id, desc.run_id).fetch_history()
            view = run_view(history)
            # Keyed by what was read: the run may have grown between describe() and the read.
            self._views[(desc.workflow_id, desc.run_id, len(history))] = view
            while len(self._views) > _VIEW_CACHE:
                self._views.popitem(last=False)
        else:
            self._views.move_to_end(key)
        # Attempts and heartbeats change without a new event: never from the cache.
        pending = with_pending_details(view["pending_activities"], getattr(desc, "pending_activities", None))
        now = datetime.datetime.now(datetime.UTC)
        return json_response({"execution": execution_doc(desc), **view, "pending_activities": pending,
                              "now": now.isoformat()})

    async def history(self, request: web.Request) -> web.Response:
        """The run's events after event ``after`` (0: from the first), at most ``limit`` of them."""
        after = _int(_one(request, "after") or 0, "after", low=0)
        limit = _int(_one(request, "limit") or HISTORY_PAGE, "limit", low=1, high=HISTORY_PAGE)
        history = await self.client.get_handle(request.match_info["id"], _run_id(request)).fetch_history()
        events = [event_doc(e) for e in history[after:after + limit]]
        more = len(history) > after + limit
        return json_response({"run_id": history.run_id, "events": events, "total": len(history), "more": more})

    async def stack(self, request: web.Request) -> web.Response:
        """Where the workflow waits now: the ``__stack_trace`` query, if a worker answers in time."""
        handle = self.client.get_handle(request.match_info["id"], _run_id(request))
        desc = await handle.describe()
        if desc.status != "running":
            return json_response({"answered": False, "error": f"the run is {desc.status}"})
        key = (desc.workflow_id, desc.run_id)
        task = self._stack_queries.get(key)
        if task is None:
            run_handle = self.client.get_handle(desc.workflow_id, desc.run_id)
            task = asyncio.ensure_future(run_handle.query("__stack_trace"))
            self._stack_queries[key] = task
            task.add_done_callback(lambda t: self._query_done(key, t))
        done, _ = await asyncio.wait({task}, timeout=self.query_timeout)
        if not done:
            return json_response({"answered": False, "error": f"no worker answered within {self.query_timeout:g}s"})
        if task.cancelled():
            return json_response({"answered": False, "error": "the query was cancelled"})
        error = task.exception()
        if error is not None:
            return json_response({"answered": False, "error": f"{type(error).__name__}: {error}"})
        result = task.result()
        return json_response({"answered": True, "stack": result if isinstance(result, str) else jsonable(result)})

    async def states(self, request: web.Request) -> web.Response:
        """The answer of query ``query`` (arguments ``args``, a JSON array) as of each workflow task of the run.

        Time travel (``handle.query(..., at_event=N)`` at every WorkflowTaskCompleted), in one replay
        by whoever has the code: this process, or a worker of the run's queue (409 if none answers).
        """
        name = _one(request, "query")
        if name is None:
            raise ValueError("give the query to ask at each workflow task: ?query=NAME (and args=[...] if it "
                             "takes arguments)")
        args: list[Any] = _json(_one(request, "args") or "[]", "args (the query's arguments)", list)
        history = await self.client.get_handle(request.match_info["id"], _run_id(request)).fetch_history()
        states = await task_states(self.client, history, name, args)
        return json_response({"run_id": history.run_id, **state_dict(name, args, states)})

    def _query_done(self, key: tuple[str, str], task: asyncio.Task[Any]) -> None:
        if self._stack_queries.get(key) is task:
            del self._stack_queries[key]
        if not task.cancelled():
            task.exception()  # retrieved: an unanswered query is no error of the server's

    # ------------------------------------------------------------------ workflow actions

    async def do_signal(self, request: web.Request) -> web.Response:
        """Signal the run: ``{"name": str, "args": [..]}``."""
        body = await _body(request)
        name = _str(body, "name", required=True)
        args = body.get("args", [])
        if not isinstance(args, list):
            raise ValueError(f"'args' must be a JSON array of the signal's arguments, got {type(args).__name__}")
        await self.client.get_handle(request.match_info["id"], _run_id(request, body)).signal(name, *args)
        return json_response({"ok": True})

    async def do_cancel(self, request: web.Request) -> web.Response:
        """Ask the run to cancel."""
        body = await _body(request)
        await self.client.get_handle(request.match_info["id"], _run_id(request, body)).cancel()
        return json_response({"ok": True})

    async def do_terminate(self, request: web.Request) -> web.Response:
        """Terminate the run: ``{"reason": str}``."""
        body = await _body(request)
        reason = _str(body, "reason")
        await self.client.get_handle(request.match_info["id"], _run_id(request, body)).terminate(reason)
        return json_response({"ok": True})

    async def do_reset(self, request: web.Request) -> web.Response:
        """Reset the run to a WorkflowTaskCompleted event: ``{"event_id": int, "reason": str}``; the new run's id."""
        body = await _body(request)
        if "event_id" not in body:
            raise ValueError("the request needs 'event_id' (the id of a WorkflowTaskCompleted event)")
        event_id = _int(body["event_id"], "event_id", low=1)
        reason = _str(body, "reason")
        handle = self.client.get_handle(request.match_info["id"], _run_id(request, body))
        new = await handle.reset(event_id=event_id, reason=reason)
        return json_response({"ok": True, "run_id": new.run_id})

    # ------------------------------------------------------------------ schedules

    async def schedules(self, request: web.Request) -> web.Response:
        """Every schedule; ``available`` is false on a store without schedules."""
        try:
            found = await self.client.list_schedules()
        except NotImplementedError as e:
            return json_response({"available": False, "reason": f"this store has no schedules ({e})",
                                  "schedules": []})
        return json_response({"available": True, "schedules": [schedule_doc(d) for d in found]})

    async def schedule_pause(self, request: web.Request) -> web.Response:
        """Pause the schedule: ``{"note": str}``."""
        body = await _body(request)
        await self.client.get_schedule_handle(request.match_info["id"]).pause(note=_str(body, "note"))
        return json_response({"ok": True})

    async def schedule_unpause(self, request: web.Request) -> web.Response:
        """Unpause the schedule."""
        body = await _body(request)
        await self.client.get_schedule_handle(request.match_info["id"]).unpause(note=_str(body, "note"))
        return json_response({"ok": True})

    async def schedule_trigger(self, request: web.Request) -> web.Response:
        """Fire the schedule now; the workflow id started (null: its overlap policy skipped or buffered it)."""
        await _body(request)
        started = await self.client.get_schedule_handle(request.match_info["id"]).trigger()
        return json_response({"ok": True, "workflow_id": started})
