"""Activities for tests/engine/test_activity_executor.py that run in process-pool worker processes.

They live in a module of their own so the pool's processes can import them by name (pickling a
function records its module and name).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Any

import duro


@duro.activity
def where(ctx: duro.ActivityContext, x: int) -> dict[str, Any]:
    """Where it ran, and what its context says; fails its first attempt after a heartbeat."""
    ctx.heartbeat({"attempt": ctx.info.attempt, "pid": os.getpid()})
    if ctx.info.attempt == 1:
        raise duro.ApplicationError("first attempt fails on purpose", type="Retry")
    return {"pid": os.getpid(), "thread": threading.current_thread().name, "x": x,
            "previous": ctx.info.heartbeat_details, "type": type(ctx).__name__,
            "activity_type": ctx.info.activity_type, "attempt": ctx.info.attempt}


@duro.activity
def until_cancelled(ctx: duro.ActivityContext, on_cancel: str) -> str:
    """Heartbeats until its heartbeat raises duro.CancelledError (at most 30 s)."""
    for _ in range(3000):
        try:
            ctx.heartbeat()
        except duro.CancelledError:
            if on_cancel == "return":
                return f"stopped in process {os.getpid()}, is_cancelled={ctx.is_cancelled}"
            raise
        time.sleep(0.01)  # a unit of the activity's work between heartbeats (tests wait on conditions)
    return "never cancelled"


@duro.activity
async def on_the_loop(ctx: duro.ActivityContext) -> dict[str, Any]:
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


@dataclasses.dataclass
class Locked:
    """Decoded from JSON fine, but holds a lock: it cannot be pickled."""

    name: str
    lock: Any = dataclasses.field(default_factory=threading.Lock)


@duro.activity
def takes_locked(ctx: duro.ActivityContext, value: Locked) -> str:
    return value.name
