"""Signals, queries and updates: a shopping cart that lives in a workflow.

* signals (``handle.signal``) add items; the workflow's signal handler collects them. A signal is
  recorded in the history; ``signal()`` returns once it is durable, with no answer.
* queries (``handle.query``) read the cart while the workflow runs; they write nothing. Here a
  worker in this process answers from its live workflow; without one, the client replays the
  history to answer (it needs the workflow's code for that).
* updates (``handle.execute_update``) apply a coupon and return the new total. A validator runs
  first: it rejects a bad coupon before anything is written. An accepted update is recorded.
  ``execute_update`` needs a worker for the workflow (in this process or another); with
  ``id=...`` a retried update is applied once.
* a final "checkout" signal ends the workflow, which charges the customer and returns a receipt.

    .venv/bin/python examples/signal_query.py [DATA_DIR | STORE_URL]    # default: ./duro-data/signal-query-<timestamp>
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import duro

COUPONS = {"WELCOME10": 10, "SPRING25": 25}  # percent off


@duro.activity
async def charge(ctx: duro.ActivityContext, customer: str, cents: int) -> str:
    print(f"  [activity] charge {customer} ${cents / 100:.2f} ... ok")
    return f"PAY-{customer}-{cents}"


@duro.workflow
async def shopping_cart(ctx: duro.WorkflowContext, customer: str) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    discount = 0  # percent

    def total() -> int:
        return sum(i["price_cents"] * i["qty"] for i in items) * (100 - discount) // 100

    # Signal and query handlers are installed first thing; signals that arrived earlier are
    # delivered to the handler as soon as it is set, in order.
    ctx.set_signal_handler("add_item", items.append)
    ctx.set_query_handler("items", lambda: [f"{i['qty']} x {i['sku']}" for i in items])
    ctx.set_query_handler("total", total)

    def check_coupon(code: str) -> None:  # the validator: a plain function, it must not change state
        if code not in COUPONS:
            raise duro.ApplicationError(f"unknown coupon {code!r}", type="InvalidCoupon")

    def apply_coupon(code: str) -> int:  # the handler: changes state, its return value is the answer
        nonlocal discount
        discount = COUPONS[code]
        return total()

    ctx.set_update_handler("apply_coupon", apply_coupon, validator=check_coupon)

    await ctx.wait_signal("checkout")  # the workflow waits here; the handlers run meanwhile
    payment = await ctx.execute_activity(charge, customer, total(), start_to_close_timeout=10)
    return {"customer": customer, "items": len(items), "total_cents": total(), "payment": payment}


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="carts", workflows=[shopping_cart], activities=[charge]):
            # Each line is printed before its call: the worker may act on a start or a signal (and
            # print) before the call returns, which it does once what it sent is on disk.
            print("starting workflow cart-alice")
            cart = await client.start_workflow(shopping_cart, "alice", id="cart-alice", task_queue="carts")

            for sku, qty, price in [("book", 2, 1500), ("pen", 3, 250)]:
                print(f"signal add_item: {qty} x {sku}")
                await cart.signal("add_item", {"sku": sku, "qty": qty, "price_cents": price})

            # An update is applied after everything already in the history (the two signals). A query
            # answers from the state the worker has reached: right after signal() returns, the signal
            # is durable but may not have reached the workflow's handler yet.
            new_total = await cart.execute_update("apply_coupon", "WELCOME10")
            print(f"update apply_coupon('WELCOME10'): accepted, new total {new_total} cents")
            print(f"query items: {await cart.query('items')}")
            print(f"query total: {await cart.query('total')} cents")

            before = len(await cart.fetch_history())
            try:
                await cart.execute_update("apply_coupon", "FREESTUFF")
            except duro.ApplicationError as e:
                after = len(await cart.fetch_history())
                print(f"update apply_coupon('FREESTUFF'): rejected by the validator: {e} "
                      f"(history: {before} events before, {after} after)")

            print("signal checkout")
            await cart.signal("checkout")
            print(f"result: {await cart.result()}")
            history = await cart.fetch_history()

    print("\nthe history, without workflow tasks (queries and the rejected update left no trace):")
    for event in history:
        if event.event_type != "WorkflowTaskCompleted":
            # (the name of UpdateCompleted is the update's id: left out)
            name = "" if event.event_type == "WorkflowExecutionUpdateCompleted" else event.name
            print(f"  {event.event_id:>3}  {event.event_type:<34} {name}")

if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/signal-query-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(directory))
    else:
        uvloop.run(main(directory))
