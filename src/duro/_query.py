"""Queries and updates from a handle: answered in this process, or by a worker of another process.

Order for a query: a live instance held by a worker of this process; else a replay of the history
here, when this process has the workflow's code; else a request through the store to the workers
of the run's task queue in other processes. Updates go to a worker of this process, or through
the store to one in another process, which answers once the update is accepted; the caller then
waits for its outcome (``duro._updates``).

A time-travel query (``at_event``, ``query_states``; see ``duro._time_travel`` for what "right
after event N" means) never asks a live instance: it replays the history here when this process
has the code, else it goes to another process's worker as a request of kind ``query_at``. That
request names its query under ``"query"``, not ``"name"``: a worker of a duro without time travel
answers any kind it does not know as a query of the present, and fails on the missing ``"name"``
instead, so it can only return an error (recognised and explained here), never the present state
passed off as the past.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from duro._core import codec
from duro._determinism import guard_workflow
from duro._instance import WorkflowInstance
from duro._local import local_dispatch
from duro._time_travel import replay_answers
from duro._updates import recorded_outcome, wait_outcome
from duro._validate import check_event_id
from duro.converter import decode_failure, encode_failure
from duro.errors import ApplicationError, DuroError, WorkflowClosedError
from duro.interceptor import check_headers
from duro.stores.base import RUNNING, WrongBuild, new_run_id, pack, run_key_of, unpack

if TYPE_CHECKING:
    from collections.abc import Sequence

    from duro._core.codec import Event
    from duro.client import Client, WorkflowHandle
    from duro.history import History
    from duro.worker import Worker
    from duro.workflow import WorkflowDefinition

REMOTE_TIMEOUT_S = 10.0


async def run_query(handle: WorkflowHandle, name: str, args: tuple[Any, ...],
                    headers: dict[str, str] | None = None, result_type: Any = None,
                    at_event: int | None = None) -> Any:
    """Answer query ``name`` (see the module docstring for who answers); ``at_event``: as of that event."""
    if at_event is not None:
        [then] = await query_states(handle, name, args, [at_event], headers)
        if isinstance(then, BaseException):
            raise then
        return handle.client.converter.decode(then, result_type)
    client = handle.client
    store = client.store
    conv = client.converter
    info = await handle._info()
    run_key = run_key_of(info.run_id)
    payload = conv.encode_args(args)
    for worker, inst in local_dispatch(store).cached(run_key):
        while inst.busy and worker.cached_instance(run_key) is inst:
            await asyncio.sleep(0.0005)
        if worker.cached_instance(run_key) is inst:
            return conv.decode(conv.encode(inst.query(name, conv.decode_args(payload, ()), headers)), result_type)
    defn = _local_definition(handle, info.workflow_type)
    if defn is not None:
        events = await store.aread_history(run_key)
        answer_b = conv.encode(_query_by_replay(handle, defn, run_key, events, name, payload, headers))
        return conv.decode(answer_b, result_type)
    head = _head("query", info.run_id, name, headers)
    answer = await store.request(info.task_queue, head, payload, REMOTE_TIMEOUT_S)
    if answer is None:
        raise DuroError(
            f"cannot answer query {name!r} for workflow {handle.id!r}: no worker of task queue {info.task_queue!r} "
            f"answered within {REMOTE_TIMEOUT_S:.0f}s and this process does not have the code of workflow type "
            f"{info.workflow_type!r}. Run a worker for that queue, or query through a handle from "
            "start_workflow(fn, ...) or client.get_handle(id, workflow=fn)")
    return _unwrap(client.converter, answer, result_type)


def _query_by_replay(handle: WorkflowHandle, defn: WorkflowDefinition, run_key: bytes, events: list[Event],
                     name: str, payload: bytes, headers: dict[str, str] | None) -> Any:
    conv = handle.client.converter
    inst = _local_instance(handle, defn, run_key, events)
    try:
        inst.replay(events)
        return inst.query(name, conv.decode_args(payload, ()), headers)
    finally:
        inst.close()


async def query_states(handle: WorkflowHandle, name: str, args: tuple[Any, ...], points: Sequence[int],
                       headers: dict[str, str] | None = None,
                       events: list[Event] | None = None) -> list[bytes | BaseException]:
    """Answer query ``name`` as the handle's run stood right after each event id of ``points``.

    One replay of the history answers every point (``duro._time_travel``): here when this process
    has the workflow's code (``events``: the run's history when the caller has read it already),
    else in a worker of the run's task queue in another process (one request for all the points).

    Returns:
        For each point, in order: the encoded answer, or the exception that is that point's answer
        (the handler raised, had not been set by then, or the code had not run yet; from where the
        code stops replaying the history on, the NonDeterminismError).

    Raises:
        TypeError: a point is not an int.
        ValueError: a point is not an event id of the run (1 to its last event).
        duro.DuroError: nobody could replay the run.
    """
    client = handle.client
    conv = client.converter
    info = await handle._info()
    # A history only grows: ids up to the length read now are there for whoever replays it.
    at = [check_event_id("at_event", p, info.history_length) for p in points]
    if not at:
        return []
    payload = conv.encode_args(args)
    run_key = run_key_of(info.run_id)
    defn = _local_definition(handle, info.workflow_type)
    if defn is not None:
        if events is None or len(events) < max(at):
            events = await client.store.aread_history(run_key)
        inst = _local_instance(handle, defn, run_key, events)
        return _states_by_replay(inst, events, at, name, payload, headers)
    head = _head("query_at", info.run_id, name, headers, at=at)
    reply = await client.store.request(info.task_queue, head, payload, REMOTE_TIMEOUT_S)
    if reply is None:
        raise DuroError(
            f"cannot answer query {name!r} at {_events_phrase(at)} for workflow {handle.id!r}: "
            f"no worker of task queue {info.task_queue!r} answered within {REMOTE_TIMEOUT_S:.0f}s and this process "
            f"does not have the code of workflow type {info.workflow_type!r}. Run a worker for that queue, or "
            "query through a handle from start_workflow(fn, ...) or client.get_handle(id, workflow=fn)")
    parts = unpack(reply)
    if not orjson.loads(parts[0])["ok"]:
        err = decode_failure(parts[1])
        if isinstance(err, ApplicationError) and err.type == "KeyError" and err.message == "'name'":
            raise DuroError(
                f"the worker of task queue {info.task_queue!r} that took query {name!r} at an event runs a "
                "version of duro without time-travel queries (at_event); upgrade the workers of that queue") from err
        raise err
    oks = orjson.loads(parts[1])
    return [p if ok else decode_failure(p) for ok, p in zip(oks, parts[2:], strict=True)]


async def task_states(client: Client, history: History, name: str, args: Sequence[Any]) -> dict[int, Any]:
    """The answer of query ``name`` as of each WorkflowTaskCompleted of ``history``, decoded, or its error.

    For ``duro history --state`` and the web UI's history. One request: whoever has the code
    replays the run once and asks the query at each task.
    """
    points = [e.event_id for e in history if e.type_code == codec.WORKFLOW_TASK_COMPLETED]
    handle = client.get_handle(history.workflow_id, history.run_id)  # the run read, even if a newer one started
    answers = await query_states(handle, name, tuple(args), points, events=history.core_events)
    return {p: a if isinstance(a, BaseException) else client.converter.decode(a)
            for p, a in zip(points, answers, strict=True)}


def _events_phrase(at: Sequence[int]) -> str:
    """``event 7``, or ``events 2, 5 and 7`` (``duro history --state`` asks one per workflow task)."""
    if len(at) == 1:
        return f"event {at[0]}"
    shown = [str(e) for e in at[:5]] + ([f"{len(at) - 5} more"] if len(at) > 5 else [])
    return f"events {', '.join(shown[:-1])} and {shown[-1]}"


def _states_by_replay(inst: WorkflowInstance, events: list[Event], points: list[int], name: str, payload: bytes,
                      headers: dict[str, str] | None) -> list[bytes | BaseException]:
    """Query ``inst`` (a fresh instance, closed here) at each point of one replay; encoded answers or errors."""
    conv = inst.converter
    try:
        found = replay_answers(inst, events, points, lambda: inst.query(name, conv.decode_args(payload, ()), headers))
    finally:
        inst.close()
    out: list[bytes | BaseException] = []
    for answer in found:
        if isinstance(answer, BaseException):
            out.append(answer)
            continue
        try:
            out.append(conv.encode(answer))
        except Exception as e:  # not encodable, or too large: that point's answer is the error
            out.append(e)
    return out


def _local_definition(handle: WorkflowHandle, workflow_type: str) -> WorkflowDefinition | None:
    defn = handle._defn
    if defn is not None and defn.name == workflow_type:
        return defn
    return local_dispatch(handle.client.store).definition(workflow_type)


def _head(kind: str, run_id: str, name: str, headers: dict[str, str] | None, update_id: str | None = None,
          at: list[int] | None = None) -> bytes:
    """The head of a request to another process's worker (headers travel with it).

    A ``query_at`` request (``at``: the event ids) carries the query under ``"query"``, never
    ``"name"``: see the module docstring.
    """
    head: dict[str, Any] = {"kind": kind, "run": run_id}
    if at is None:
        head["name"] = name
    else:
        head["query"] = name
        head["at"] = at
    if headers:
        head["headers"] = check_headers(headers)
    if update_id is not None:
        head["id"] = update_id
    return orjson.dumps(head)


async def start_update(handle: WorkflowHandle, name: str, args: tuple[Any, ...], update_id: str,
                       headers: dict[str, str] | None = None) -> tuple[str, int, bytes | None]:
    """Have update ``name`` accepted by a worker of the run's task queue (this process first).

    An update with the same id accepted on the run before is not applied again. Returns the run id,
    the event id to look for the outcome from, and the outcome when it is known already (a run
    closed after completing an update with this id).
    """
    client = handle.client
    info = await handle._info()
    if info.status != RUNNING:
        return await _closed_for_update(handle, info.run_id, str(info.status), update_id)
    payload = client.converter.encode_args(args)
    pinned = info.build_id if info.versioning_behavior == "pinned" else None  # worker versioning
    worker = local_dispatch(client.store).update_worker(info.workflow_type, info.task_queue, pinned)
    try:
        if worker is not None:
            first = await worker.accept_update(run_key_of(info.run_id), name, payload, headers, update_id)
            return info.run_id, first, None
        head = _head("update_accept", info.run_id, name, headers, update_id)
        reply = await client.store.request(info.task_queue, head, payload, REMOTE_TIMEOUT_S)
        if reply is None:
            raise DuroError(
                f"no worker of task queue {info.task_queue!r} took update {name!r} within {REMOTE_TIMEOUT_S:.0f}s; "
                "updates are validated by a worker before anything is written, so one must be running")
        first = _unwrap(client.converter, reply)
    except WorkflowClosedError:  # the run closed after it was read: as if it had been closed then
        now = await client.store.afind_run(handle.id, info.run_id)
        return await _closed_for_update(handle, info.run_id, str(now.status), update_id)
    return info.run_id, int(first), None


async def _closed_for_update(handle: WorkflowHandle, run_id: str, status: str,
                             update_id: str) -> tuple[str, int, bytes]:
    """The outcome of update ``update_id`` on a closed run, if the run completed it: else WorkflowClosedError."""
    # A retry of an update that the run completed before it closed: its outcome stands.
    outcome = await recorded_outcome(handle.client.store, run_id, update_id)
    if outcome is not None:
        return run_id, 1, outcome
    raise WorkflowClosedError(f"workflow {handle.id!r} is {status}; updates need a running workflow",
                              workflow_id=handle.id, run_id=run_id, status=status)


def _unwrap(conv: Any, answer: bytes, result_type: Any = None) -> Any:
    meta_b, result = unpack(answer)
    if orjson.loads(meta_b)["ok"]:
        return conv.decode(result, result_type)
    raise decode_failure(result)


async def answer_request(worker: Worker, raw: bytes) -> bytes:
    """A worker's answer to a request from another process: pack({"ok"}, result or failure)."""
    head_b, payload = unpack(raw)
    head = orjson.loads(head_b)
    try:
        run_key = run_key_of(head["run"])
        headers = head.get("headers")
        kind = head["kind"]
        if kind == "update_accept":  # answered once accepted; the caller waits for the outcome itself
            first = await worker.accept_update(run_key, head["name"], payload, headers, head["id"])
            return pack(b'{"ok":true}', worker.converter.encode(first))
        if kind == "update":  # from a client before update ids: answered with the outcome
            update_id = new_run_id()
            first = await worker.accept_update(run_key, head["name"], payload, headers, update_id)
            return await wait_outcome(worker.store, "?", head["run"], update_id, from_event_id=first)
        if kind == "query_at":  # a time-travel query: by replay, never from the live instance
            return await _answer_at(worker, run_key, head["query"], head["at"], payload, headers)
        if kind != "query":  # from a newer duro: answering it as a query of the present could be wrong
            raise DuroError(f"this worker does not know requests of kind {kind!r}; upgrade it to the "
                            "version of duro that sent it")
        inst = worker.cached_instance(run_key)
        if inst is not None:
            while inst.busy:
                await asyncio.sleep(0.0005)
            result = inst.query(head["name"], worker.converter.decode_args(payload, ()), headers)
        else:
            events = await worker.store.aread_history(run_key)
            defn = worker.definition(events[0].name) if events else None
            if defn is None:
                raise DuroError(f"this worker does not run workflow type {events[0].name if events else '?'!r}")
            fresh = _fresh_instance(worker, defn, run_key, events)
            try:
                fresh.replay(events)
                result = fresh.query(head["name"], worker.converter.decode_args(payload, ()), headers)
            finally:
                fresh.close()
        return pack(b'{"ok":true}', worker.converter.encode(result))
    except WrongBuild:
        raise  # worker versioning: the run is another build's; the worker leaves the request to one of it
    except Exception as e:  # the error goes back to the asking process
        return pack(b'{"ok":false}', encode_failure(e))


async def _answer_at(worker: Worker, run_key: bytes, name: str, at: Any, payload: bytes,
                     headers: dict[str, str] | None) -> bytes:
    """Answer a ``query_at`` request: pack({"ok"}, [ok per point], answer or failure per point)."""
    events = await worker.store.aread_history(run_key)
    defn = worker.definition(events[0].name) if events else None
    if defn is None:
        raise DuroError(f"this worker does not run workflow type {events[0].name if events else '?'!r}")
    last = events[-1].event_id
    if not isinstance(at, list):
        raise DuroError(f"a query_at request needs a list of event ids, not {type(at).__name__}")
    points = [check_event_id("at_event", p, last) for p in at]
    answers = _states_by_replay(_fresh_instance(worker, defn, run_key, events), events, points, name, payload,
                                headers)
    oks = [not isinstance(a, BaseException) for a in answers]
    parts = [a if isinstance(a, bytes) else encode_failure(a) for a in answers]
    return pack(b'{"ok":true}', orjson.dumps(oks), *parts)


def _local_instance(handle: WorkflowHandle, defn: WorkflowDefinition, run_key: bytes,
                    events: list[Event]) -> WorkflowInstance:
    """A new instance of a run for this process to replay (to answer a query).

    With the failure types and the determinism guard of the worker here that registers the
    workflow, if one does: the replay then takes the path the worker's own did.
    """
    client = handle.client
    worker = local_dispatch(client.store).registering_worker(defn.name)
    if worker is None:
        # No worker here set the guard up: the replay is guarded all the same (by the workflow's
        # own mode, else "raise", as a Replayer's), not only once something else installed it.
        guard_workflow(defn)
        return WorkflowInstance(defn, run_key, events[0], client.converter, client.interceptors)
    return WorkflowInstance(defn, run_key, events[0], client.converter, client.interceptors, worker.failure_types,
                            worker.determinism)


def _fresh_instance(worker: Worker, defn: WorkflowDefinition, run_key: bytes, events: list[Event]) -> WorkflowInstance:
    """A new instance of a run for a worker to replay (to answer a request), set up as the worker's own are."""
    return WorkflowInstance(defn, run_key, events[0], worker.converter, worker.interceptors, worker.failure_types,
                            worker.determinism)
