"""The next deploy of ``replay_v1``: greeting and waiting changed incompatibly, failing did not.

Registered under the same workflow names as version 1, so version 1's stored runs replay against it.
"""

from __future__ import annotations

import asyncio

import duro
from tests.engine.replay_v1 import greet, shout


@duro.workflow(name="replay_greeting")
async def greeting(ctx: duro.WorkflowContext, name: str) -> str:
    """Version 1 asked for greet first: now shout."""
    hello = await ctx.execute_activity(shout, name)  # DIVERGES
    loud, again = await asyncio.gather(ctx.execute_activity(shout, hello), ctx.execute_activity(greet, hello))
    return f"{loud} / {again}"


@duro.workflow(name="replay_failing")
async def failing(ctx: duro.WorkflowContext, name: str) -> str:
    """Unchanged: its runs replay."""
    await ctx.execute_activity(greet, name)
    raise duro.ApplicationError("refused", type="Refused", non_retryable=True)


@duro.workflow(name="replay_waiting")
async def waiting(ctx: duro.WorkflowContext, name: str) -> str:
    """Version 1 waited for "go" after greet: now it finishes at once."""
    return str(await ctx.execute_activity(greet, name))  # returns in the workflow task where it waited
