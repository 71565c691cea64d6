"""Queries and updates from a handle: answered in this process, or by a worker of another process.

Order for a query: a live instance held by a worker of this process; else a replay of the history
here, when this process has the workflow's code; else a request through the store to the workers
of the run's task queue in other processes. Updates go to a worker of this process, or through
the store to one in another process, which answers once the update is accepted; the caller then
waits for its outcome (``duro._updates``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import orjson

from duro._instance import WorkflowInstance
from duro._local import local_dispatch
from duro._updates import recorded_outcome, wait_outcome
from duro.converter import decode_failure, encode_failure
from duro.errors import DuroError
from duro.interceptor import check_headers
from duro.stores.base import RUNNING, WrongBuild, new_run_id, pack, run_key_of, unpack

if TYPE_CHECKING:
    from duro._core.codec import Event
    from duro.client import WorkflowHandle
    from duro.worker import Worker
    from duro.workflow import WorkflowDefinition

REMOTE_TIMEOUT_S = 10.0


async def run_query(handle: WorkflowHandle, name: str, args: tuple[Any, ...],
                    headers: dict[str, str] | None = None, result_type: Any = None) -> Any:
    """Answer query ``name`` (see the module docstring for who answers)."""
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
    inst = WorkflowInstance(defn, run_key, events[0], conv, handle.client.interceptors)
    try:
        inst.replay(events)
        return inst.query(name, conv.decode_args(payload, ()), headers)
    finally:
        inst.close()


def _local_definition(handle: WorkflowHandle, workflow_type: str) -> WorkflowDefinition | None:
    defn = handle._defn
    if defn is not None and defn.name == workflow_type:
        return defn
    return local_dispatch(handle.client.store).definition(workflow_type)


def _head(kind: str, run_id: str, name: str, headers: dict[str, str] | None, update_id: str | None = None) -> bytes:
    """The head of a request to another process's worker (headers travel with it)."""
    head: dict[str, Any] = {"kind": kind, "run": run_id, "name": name}
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
        # A retry of an update that the run completed before it closed: its outcome stands.
        outcome = await recorded_outcome(client.store, info.run_id, update_id)
        if outcome is not None:
            return info.run_id, 1, outcome
        raise DuroError(f"workflow {handle.id!r} is {info.status}; updates need a running workflow")
    payload = client.converter.encode_args(args)
    pinned = info.build_id if info.versioning_behavior == "pinned" else None  # worker versioning
    worker = local_dispatch(client.store).update_worker(info.workflow_type, info.task_queue, pinned)
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
    return info.run_id, int(first), None


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
            fresh = WorkflowInstance(defn, run_key, events[0], worker.converter, worker.interceptors,
                                     worker.failure_types)
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
