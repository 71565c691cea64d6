"""Child workflows: a parent fans out to children and talks to one of them with a signal.

A child workflow is a full workflow of its own (its own id, history and status) that a parent
starts and waits for. ``ctx.execute_child_workflow`` starts one and waits for its result;
``asyncio.gather`` of several runs them in parallel. ``await ctx.start_child_workflow`` returns a
handle instead: the parent can signal or cancel the child, and await ``handle.result()`` later.
If the parent closes first, its children are terminated (``parent_close_policy="terminate"``, the
default; "request_cancel" and "abandon" are the others).

    .venv/bin/python examples/child_workflow.py [DATA_DIR | STORE_URL]    # default: ./duro-data/children-<timestamp>
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import duro


@duro.activity
async def pack(ctx: duro.ActivityContext, order_id: str, warehouse: str) -> str:
    await asyncio.sleep(0.05)  # stands in for the warehouse system
    print(f"  [activity] pack {order_id} in {warehouse} ... ok")
    return f"TRK-{warehouse[:3].upper()}-{order_id}"


@duro.activity
async def send_invoice(ctx: duro.ActivityContext, order_id: str, parcels: int) -> str:
    print(f"  [activity] invoice {order_id} for {parcels} parcels ... ok")
    return f"INV-{order_id}"


@duro.workflow
async def ship_from(ctx: duro.WorkflowContext, order_id: str, warehouse: str) -> str:
    """Child: ship the part of the order that one warehouse holds."""
    return await ctx.execute_activity(pack, order_id, warehouse, start_to_close_timeout=10)


@duro.workflow
async def invoice(ctx: duro.WorkflowContext, order_id: str) -> str:
    """Child: waits for the parent to say how many parcels went out, then sends the invoice."""
    parcels = await ctx.wait_signal("parcels")
    return await ctx.execute_activity(send_invoice, order_id, parcels, start_to_close_timeout=10)


@duro.workflow
async def fulfil_order(ctx: duro.WorkflowContext, order_id: str, warehouses: list[str]) -> dict[str, Any]:
    """Parent: one child per warehouse in parallel, and an invoice child it signals at the end."""
    wid = ctx.info.workflow_id
    invoicing = await ctx.start_child_workflow(invoice, order_id, id=f"{wid}/invoice")
    tracking = await asyncio.gather(*(
        ctx.execute_child_workflow(ship_from, order_id, w, id=f"{wid}/ship-{w}") for w in warehouses))
    await invoicing.signal("parcels", len(tracking))
    return {"tracking": tracking, "invoice": await invoicing.result()}


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="orders", workflows=[fulfil_order, ship_from, invoice],
                               activities=[pack, send_invoice]):
            print("starting workflow order-A-7")  # before the call: the worker may begin before it returns
            handle = await client.start_workflow(fulfil_order, "A-7", ["berlin", "lyon", "porto"],
                                                 id="order-A-7", task_queue="orders")
            print(f"result: {await handle.result()}")

            print("\nthe workflows in the store (each child has its own id, status and history):")
            runs = sorted(await client.list_workflows(), key=lambda r: r.workflow_id)
            for run in runs:
                result = await client.get_handle(run.workflow_id).result()
                print(f"  {run.workflow_id:<22} {run.workflow_type:<13} {run.status:<10} -> {result}")
            history = await handle.fetch_history()

    print("\nthe parent's history, without workflow tasks:")
    for e in history:
        if e.event_type != "WorkflowTaskCompleted":
            print(f"  {e.event_id:>3}  {e.event_type:<44} {e.name}")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/children-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(directory))
    else:
        uvloop.run(main(directory))
