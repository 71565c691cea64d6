"""Restate peer services for the side-by-side benchmark (see shared/WORKLOADS.md).

Served by hypercorn (HTTP/2 cleartext, one process) from the venv made by setup_restate.sh and
registered with restate-server by start_restate.sh:

    .envs/restate/bin/hypercorn restate_service:app --bind 127.0.0.1:19080

Every step is a ``ctx.run`` on a trivial ``async`` function: Restate journals its result durably
(the server appends it to its log before the handler is allowed to go on) and skips it on replay.

- ``order`` (Workflow, key = order id): validate, charge, ship sequentially (W1, W1L).
- ``fanout`` (Workflow): K concurrent ``ctx.run`` steps, gathered, summed (W2).
- ``approval`` (Workflow): waits on the durable promise "approve", resolved by its shared
  handler ``approve`` (W3).
- ``long`` (Service): n sequential ``ctx.run`` steps (W4). A Service, not a Workflow, because
  Restate's "restart as new" (used to re-run it from its recorded journal) refuses workflows.

``GET /_bench/stats`` (answered here, not through Restate) returns how many step bodies this
process has actually executed, so the W4 client can check that a replay executed none.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import restate
from restate import Context, RunOptions, Service, Workflow, WorkflowContext, WorkflowSharedContext

STEPS_EXECUTED = 0


# --------------------------------------------------------------------------- step bodies
async def validate(order: dict[str, Any]) -> dict[str, Any]:
    global STEPS_EXECUTED
    STEPS_EXECUTED += 1
    return {"ok": True}


async def charge(order: dict[str, Any]) -> dict[str, Any]:
    global STEPS_EXECUTED
    STEPS_EXECUTED += 1
    return {"charged": order["amount"]}


async def ship(order: dict[str, Any]) -> dict[str, Any]:
    global STEPS_EXECUTED
    STEPS_EXECUTED += 1
    return {"tracking": "T-" + order["order_id"]}


async def echo(i: int) -> int:
    global STEPS_EXECUTED
    STEPS_EXECUTED += 1
    return i


# --------------------------------------------------------------------------- W1 / W1L
order = Workflow("order")


@order.main(name="run")
async def order_run(ctx: WorkflowContext, req: dict[str, Any]) -> dict[str, Any]:
    await ctx.run_typed("validate", validate, RunOptions(), req)
    await ctx.run_typed("charge", charge, RunOptions(), req)
    shipped = await ctx.run_typed("ship", ship, RunOptions(), req)
    return {"order_id": req["order_id"], "tracking": shipped["tracking"]}


# --------------------------------------------------------------------------- W2
fanout = Workflow("fanout")


@fanout.main(name="run")
async def fanout_run(ctx: WorkflowContext, k: int) -> int:
    futures = [ctx.run_typed(f"item-{i}", echo, RunOptions(), i) for i in range(k)]
    await restate.gather(*futures)
    total = 0
    for f in futures:
        total += await f
    return total


# --------------------------------------------------------------------------- W3
approval = Workflow("approval")


@approval.main(name="run")
async def approval_run(ctx: WorkflowContext) -> dict[str, Any]:
    value: dict[str, Any] = await ctx.promise("approve", type_hint=dict).value()
    return value


@approval.handler(name="approve")
async def approve(ctx: WorkflowSharedContext, payload: dict[str, Any]) -> None:
    await ctx.promise("approve", type_hint=dict).resolve(payload)


# --------------------------------------------------------------------------- W4
long = Service("long")


# The journal must outlive the invocation for "restart as new" to copy it (1 day is also the
# server default, default-journal-retention).
@long.handler(name="run", journal_retention=timedelta(days=1))
async def long_run(ctx: Context, n: int) -> int:
    total = 0
    for i in range(n):
        total += await ctx.run_typed("echo", echo, RunOptions(), i)
    return total


_restate_app = restate.app(services=[order, fanout, approval, long])


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI entry point: the Restate endpoint, plus ``GET /_bench/stats`` for the W4 check."""
    if scope["type"] == "lifespan":
        # Answered here, not passed to the SDK app, which refuses the lifespan scope (hypercorn then
        # logs an error) and installs its own SIGTERM handler on whatever scope it sees first,
        # replacing hypercorn's (so stop_restate.sh stops this process with SIGINT).
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "http" and scope["path"] == "/_bench/stats":
        body = f'{{"steps_executed": {STEPS_EXECUTED}}}'.encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    await _restate_app(scope, receive, send)
