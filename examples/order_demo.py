"""Order processing, end to end, on the embedded LMDB store: no server, one process.

validate the order -> reserve inventory and take the payment in parallel -> wait for an approval
signal -> ship. Then print the event history duro recorded, reopen the store and look again.

    .venv/bin/python examples/order_demo.py [DATA_DIR | STORE_URL]    # default: ./duro-data/demo-<timestamp>
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass

import duro


@dataclass
class Order:
    order_id: str
    customer: str
    items: list[str]
    amount_cents: int


@dataclass
class Validation:
    is_valid: bool
    reason: str | None = None


@dataclass
class Receipt:
    order_id: str
    payment_id: str
    reservation_id: str
    tracking_number: str
    approved_by: str


# Activities do the real work (I/O, calls to other services). They may run more than once.
@duro.activity
async def validate_order(ctx: duro.ActivityContext, order: Order) -> Validation:
    ok = bool(order.items) and order.amount_cents > 0
    print(f"  [activity] validate order {order.order_id} ... {'ok' if ok else 'invalid'}")
    return Validation(is_valid=ok, reason=None if ok else "no items or nothing to charge")


@duro.activity
async def reserve_inventory(ctx: duro.ActivityContext, order: Order) -> str:
    await asyncio.sleep(0.05)  # stands in for a call to the inventory service
    print(f"  [activity] reserve {len(order.items)} items for {order.order_id} ... ok")
    return f"RSV-{order.order_id}"


@duro.activity
async def process_payment(ctx: duro.ActivityContext, order: Order) -> str:
    await asyncio.sleep(0.05)  # stands in for a call to the payment provider
    print(f"  [activity] charge {order.customer} ${order.amount_cents / 100:.2f} ... ok")
    return f"PAY-{order.order_id}"


@duro.activity
async def ship_order(ctx: duro.ActivityContext, order: Order) -> str:
    print(f"  [activity] ship order {order.order_id} ... ok")
    return f"TRK-{order.order_id}"


# The workflow only decides what happens next; every step it takes is recorded, so it can be
# replayed after a crash. It must be deterministic: no I/O, clocks or randomness of its own.
@duro.workflow
async def order_processing(ctx: duro.WorkflowContext, order: Order) -> Receipt:
    retry = duro.RetryPolicy(initial_interval=1, maximum_attempts=3)
    check = await ctx.execute_activity(validate_order, order, start_to_close_timeout=30, retry_policy=retry)
    if not check.is_valid:  # results come back as the activity's annotated type: a Validation
        raise duro.ApplicationError(f"order {order.order_id}: {check.reason}", type="ValidationError")
    reservation, payment = await asyncio.gather(
        ctx.execute_activity(reserve_inventory, order, start_to_close_timeout=30),
        ctx.execute_activity(process_payment, order, start_to_close_timeout=30),
    )
    if not ctx.is_replaying:  # replay re-runs this code; print only the first time
        print("  [workflow] waiting for approval...")
    approval = await ctx.wait_signal("approve")
    tracking = await ctx.execute_activity(ship_order, order, start_to_close_timeout=30)
    return Receipt(order.order_id, payment, reservation, tracking, approval["by"])


def summary(event: duro.HistoryEvent, width: int = 48) -> str:
    """The event's payload as short JSON (a start event carries metadata and the arguments)."""
    data = event.data()
    if isinstance(data, dict) and "args" in data and "meta" in data:
        data = data["args"]
    if isinstance(data, bytes):
        return "" if not data else f"<{len(data)} bytes>"
    text = json.dumps(data, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 3] + "..."


def print_history(history: duro.History) -> None:
    t0 = history[0].timestamp
    print(f"  {'id':>3}  {'+ms':>7}  {'event type':<28} {'name / seq':<22} payload")
    for e in history:
        ms = (e.timestamp - t0).total_seconds() * 1000
        label = e.name
        if e.event_type.startswith("Activity"):
            label = f"{e.name} #{e.ref}"  # ref: the activity's sequence number in this run
        print(f"  {e.event_id:>3}  {ms:>7.1f}  {e.event_type:<28} {label:<22} {summary(e)}".rstrip())
    print("  (WorkflowTaskCompleted: the workflow code ran; the events right after it are what it decided)")


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    order = Order("A-1001", customer="alice@example.com", items=["keyboard", "mouse"], amount_cents=12_900)
    print(f"store: {url}")
    t_start = time.perf_counter()
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="orders", workflows=[order_processing],
                               activities=[validate_order, reserve_inventory, process_payment, ship_order]):
            # Printed before the call: the worker may begin (and print) before the call returns, which
            # it does once the start is on disk.
            print(f"starting workflow order-{order.order_id}")
            handle = await client.start_workflow(order_processing, order, id=f"order-{order.order_id}",
                                                 task_queue="orders")
            # A person takes a moment to approve. (A signal sent earlier would not be lost: the
            # workflow would find it waiting. The pause only makes the output read in order.)
            await asyncio.sleep(0.2)
            print("sending approval signal from alice")
            await handle.signal("approve", {"by": "alice"})
            receipt = await handle.result()
            elapsed_ms = (time.perf_counter() - t_start) * 1000
            history = await handle.fetch_history()

    print(f"\nevent history of {handle.id}, run {handle.run_id} ({len(history)} events):")
    print_history(history)
    print(f"\nresult: {receipt}")
    print(f"finished in {elapsed_ms:.0f} ms (including the 200 ms pause before approving)")

    # Everything above is on disk: a new client on the same directory finds the finished run.
    async with duro.Client.connect(url) as client:
        handle = client.get_handle(f"order-{order.order_id}", result_type=Receipt)
        info = await handle.describe()
        print(f"\nreopened the store: {info.workflow_id} is {info.status}, {info.history_length} events, "
              f"same result: {await handle.result() == receipt}")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(directory))
    else:
        uvloop.run(main(directory))
