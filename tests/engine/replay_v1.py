"""Version 1 of the workflows whose stored runs the replay tests check (``replay_v2`` is the next deploy).

The CLI tests import it by name (``duro replay --module tests.engine.replay_v1``), as a deploy check
imports an application's workflow module.
"""

from __future__ import annotations

import asyncio

import duro


@duro.activity
async def greet(ctx: duro.ActivityContext, name: str) -> str:
    return f"hello {name}"


@duro.activity
async def shout(ctx: duro.ActivityContext, text: str) -> str:
    return text.upper()


@duro.workflow(name="replay_greeting")
async def greeting(ctx: duro.WorkflowContext, name: str) -> str:
    """Completes: greet, then shout and greet at once (two commands in one workflow task)."""
    hello = await ctx.execute_activity(greet, name)
    loud, again = await asyncio.gather(ctx.execute_activity(shout, hello), ctx.execute_activity(greet, hello))
    return f"{loud} / {again}"


@duro.workflow(name="replay_failing")
async def failing(ctx: duro.WorkflowContext, name: str) -> str:
    """Fails after one activity."""
    await ctx.execute_activity(greet, name)
    raise duro.ApplicationError("refused", type="Refused", non_retryable=True)


@duro.workflow(name="replay_waiting")
async def waiting(ctx: duro.WorkflowContext, name: str) -> str:
    """Stays running after one activity, waiting for the signal "go"."""
    hello = await ctx.execute_activity(greet, name)
    by = await ctx.wait_signal("go")
    return str(await ctx.execute_activity(shout, f"{hello} by {by}"))
