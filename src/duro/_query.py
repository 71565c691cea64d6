"""Queries and updates from a handle: answered by an in-process worker or by local replay."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from duro._instance import WorkflowInstance
from duro.errors import DuroError
from duro.stores.base import RUNNING, run_key_of, unpack

if TYPE_CHECKING:
    from duro.client import WorkflowHandle
    from duro.workflow import WorkflowDefinition


async def run_query(handle: WorkflowHandle, name: str, args: tuple[Any, ...]) -> Any:
    """Answer query ``name``: from a live cached instance in this process, else by replaying here."""
    client = handle.client
    store = client.store
    conv = client.converter
    info = handle._info()
    run_key = run_key_of(info.run_id)
    # Arguments and the answer cross as payloads, as they would between processes.
    decoded_args = conv.decode_args(conv.encode_args(args), ())
    for worker in list(store.local_workers):
        inst = worker._cache.get(run_key)
        if inst is None:
            continue
        while inst.busy and worker._cache.get(run_key) is inst:
            await asyncio.sleep(0.0005)
        if worker._cache.get(run_key) is inst:
            return conv.decode(conv.encode(inst.query(name, decoded_args)), handle._result_hint_for(name))
    defn = _definition(handle, info.workflow_type)
    events = store.read_history(run_key)
    inst = WorkflowInstance(defn, run_key, events[0], conv)
    try:
        inst.replay(events)
        answer = inst.query(name, decoded_args)
    finally:
        inst.close()
    return conv.decode(conv.encode(answer), None)


def _definition(handle: WorkflowHandle, workflow_type: str) -> WorkflowDefinition:
    defn = handle._defn
    if defn is not None and defn.name == workflow_type:
        return defn
    for worker in handle.client.store.local_workers:
        found = worker._workflows.get(workflow_type)
        if found is not None:
            return found  # type: ignore[no-any-return]
    raise DuroError(
        f"cannot answer a query for workflow {handle.id!r}: no worker in this process holds it and this process "
        f"does not have the code of workflow type {workflow_type!r}. Query through a handle from "
        "start_workflow(fn, ...) or client.get_handle(id, workflow=fn), or run a Worker that registers it here")


async def run_update(handle: WorkflowHandle, name: str, args: tuple[Any, ...]) -> Any:
    """Deliver update ``name`` through a worker of the run's task queue in this process."""
    client = handle.client
    info = handle._info()
    if info.status != RUNNING:
        raise DuroError(f"workflow {handle.id!r} is {info.status}; updates need a running workflow")
    for worker in list(client.store.local_workers):
        if worker.task_queue == info.task_queue and info.workflow_type in worker._workflows:
            payload = await worker.execute_update(run_key_of(info.run_id), name, client.converter.encode_args(args))
            meta_b, result = unpack(payload)
            import orjson

            from duro.converter import decode_failure

            if orjson.loads(meta_b)["ok"]:
                return client.converter.decode(result)
            raise decode_failure(result)
    raise DuroError(
        f"no worker for task queue {info.task_queue!r} with workflow {info.workflow_type!r} runs in this process; "
        "execute_update needs one (updates are validated by the worker before anything is written)")
