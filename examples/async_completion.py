"""Completing an activity from outside: expense approvals decided by people, through a webhook.

An expense workflow asks for an approval. Its activity cannot wait for a person: it posts a
request with its **task token** (``ctx.info.task_token``) to the approvals inbox and raises
``duro.CompleteAsync()``, which ends the attempt without a result and frees the worker. Later the
approval tool's webhook — any process on the same store — completes, fails or heartbeats the
activity with ``client.get_async_activity_handle(token)``, and the workflow goes on. The
activity's timeouts still apply while it waits (a start-to-close timeout of an hour here).

Both loggers appear too: ``ctx.logger`` in the workflow (it stays silent while a workflow is
replayed) and ``actx.logger`` in the activity; their records carry the workflow's ids.

    .venv/bin/python examples/async_completion.py [DATA_DIR | STORE_URL]

(default: a fresh ./duro-data/async-completion-<timestamp>)
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import duro

# Stands for the approval tool's queue of requests (an email with a link, a Slack message, ...).
INBOX: asyncio.Queue[dict[str, Any]] = asyncio.Queue()


@duro.activity
async def request_approval(ctx: duro.ActivityContext, expense: dict[str, Any]) -> dict[str, Any]:
    token = ctx.info.task_token
    INBOX.put_nowait({"token": token.hex(), "expense": expense})  # the token travels as text
    ctx.logger.info("approval of %s requested", expense["id"])
    print(f"  [activity] approval of {expense['id']} requested ({len(token)}-byte task token); "
          "the attempt ends without a result")
    raise duro.CompleteAsync()


@duro.activity
async def pay(ctx: duro.ActivityContext, expense: dict[str, Any]) -> str:
    print(f"  [activity] pay {expense['amount']:.2f} EUR to {expense['employee']} ... ok")
    return f"PAY-{expense['id']}"


@duro.workflow
async def expense_report(ctx: duro.WorkflowContext, expense: dict[str, Any]) -> dict[str, Any]:
    ctx.logger.info("expense %s: %.2f EUR", expense["id"], expense["amount"])
    try:
        decision = await ctx.execute_activity(
            request_approval, expense, start_to_close_timeout=3600,  # a person has an hour to decide
            retry_policy=duro.RetryPolicy(maximum_attempts=1))
    except duro.ActivityError as e:
        ctx.logger.warning("expense %s not approved: %s", expense["id"], e.__cause__)
        return {"id": expense["id"], "status": "rejected", "reason": str(e.__cause__)}
    payment = await ctx.execute_activity(pay, expense, start_to_close_timeout=10)
    return {"id": expense["id"], "status": "paid", "approved_by": decision["by"], "payment": payment}


async def webhook(url: str, decide: dict[str, str]) -> bytes:
    """The approval tool's webhook: a separate client (it could be another process or machine)."""
    async with duro.Client.connect(url) as client:
        request = await INBOX.get()
        expense, token = request["expense"], bytes.fromhex(request["token"])
        handle = client.get_async_activity_handle(token)
        who = decide["by"]
        await handle.heartbeat({"reviewer": who})  # "still looking": resets a heartbeat timeout, if any
        print(f"  [webhook] {who} is looking at {expense['id']}")
        if decide["verdict"] == "approve":
            await handle.complete({"by": who})
            print(f"  [webhook] {who} approves {expense['id']}")
        else:
            # Like an activity raising it: non_retryable ends the activity at once.
            await handle.fail(duro.ApplicationError(decide["reason"], type="Rejected", non_retryable=True))
            print(f"  [webhook] {who} rejects {expense['id']}: {decide['reason']}")
        return token


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="  [log] %(name)s %(message)s")
    logging.getLogger("duro.workflow").setLevel(logging.INFO)
    logging.getLogger("duro.activity").setLevel(logging.INFO)
    expenses = [
        ({"id": "E-1", "employee": "ada", "amount": 120.0}, {"verdict": "approve", "by": "alice"}),
        ({"id": "E-2", "employee": "bob", "amount": 9800.0}, {"verdict": "reject", "by": "carol",
                                                              "reason": "over the travel budget"}),
    ]
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="expenses", workflows=[expense_report],
                               activities=[request_approval, pay]):
            for expense, decision in expenses:
                # Printed before the call: the worker may begin (and print) before the call returns.
                print(f"starting workflow expense-{expense['id']}")
                handle = await client.start_workflow(expense_report, expense, id=f"expense-{expense['id']}",
                                                     task_queue="expenses")
                token = await webhook(url, decision)
                print(f"result: {await handle.result()}")

            # A token does its job once: using it again is refused, and nothing is written.
            try:
                await client.get_async_activity_handle(token).complete({"by": "mallory"})
            except duro.TaskTokenError as e:
                print(f"the same token again: TaskTokenError ({e.reason})")
            try:
                client.get_async_activity_handle(b"not a token")
            except duro.TaskTokenError as e:
                print(f"a forged token: TaskTokenError ({e.reason})")

            history = await handle.fetch_history()
    print(f"\nthe history of {handle.id}, without workflow tasks:")
    for event in history:
        if event.event_type != "WorkflowTaskCompleted":
            print(f"  {event.event_id:>3}  {event.event_type:<34} {event.name}")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/async-completion-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(directory))
    else:
        uvloop.run(main(directory))
