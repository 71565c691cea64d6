"""``replay_runs.other`` changed to read the wall clock: what the determinism guard refuses in a replay."""

from __future__ import annotations

import time

import duro


@duro.workflow(name="replay_other")
async def other(ctx: duro.WorkflowContext) -> str:
    if time.time() < 0:  # a decision taken on the wall clock: another value in every replay
        return "never"
    return "other"
