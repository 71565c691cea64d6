"""Two builds of one worker's code, for the worker versioning tests (tests.engine.test_versioning).

``workflows(build)`` makes the workflows of a build: the same registered names in every build, each
returning the build whose code finished the run, so a test can tell which build ran it. The
integration worker process (tests/integration/versioned_worker.py) registers them too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import duro

# Set by a test to hold ``gate`` until it is released (same process as the worker).
GATES: dict[str, asyncio.Event] = {}


@duro.activity
async def gate(ctx: duro.ActivityContext, name: str) -> str:
    """Wait until the test releases ``GATES[name]``."""
    await GATES[name].wait()
    return name


def workflows(build: str) -> list[Any]:
    """The workflows of build ``build`` (names shared by every build)."""

    @duro.workflow(name="pinned_wf")
    async def pinned_wf(ctx: duro.WorkflowContext) -> str:
        """Pinned (the worker default): waits for "go" signals until one says "stop"; update "build" says its build."""
        ctx.set_update_handler("build", lambda: build)
        while await ctx.wait_signal("go") != "stop":
            pass
        return build

    @duro.workflow(name="upgrading_wf", versioning_behavior="auto_upgrade")
    async def upgrading_wf(ctx: duro.WorkflowContext) -> str:
        """Auto-upgrade: the same, moving to the task queue's current build at each workflow task."""
        while await ctx.wait_signal("go") != "stop":
            pass
        return build

    @duro.workflow(name="gated_wf", versioning_behavior=duro.VersioningBehavior.AUTO_UPGRADE)
    async def gated_wf(ctx: duro.WorkflowContext, name: str) -> str:
        """Auto-upgrade, waiting for an activity (``gate``) that the test holds."""
        await ctx.execute_activity(gate, name, start_to_close_timeout=60)
        return build

    @duro.workflow(name="parent_wf")
    async def parent_wf(ctx: duro.WorkflowContext, continued: bool = False) -> list[str]:
        """Pinned: on "go", continues as new; the new run starts a child on its queue and returns its result."""
        if not continued:
            await ctx.wait_signal("go")
            ctx.continue_as_new(True)
        child = await ctx.execute_child_workflow(pinned_child, id=f"{ctx.info.workflow_id}-child")
        return [build, child]

    @duro.workflow(name="pinned_child")
    async def pinned_child(ctx: duro.WorkflowContext) -> str:
        await ctx.wait_signal("go")
        return build

    return [pinned_wf, upgrading_wf, gated_wf, parent_wf, pinned_child]
