"""Waiting in tests: for a condition, with a deadline, never for a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

POLL_S = 0.01


def _timed_out(what: str, timeout: float, details: Callable[[], str] | None) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{details()}" if details else ""))


async def eventually(check: Callable[[], Any], what: str, timeout: float = 20.0,
                     details: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` (sync, or returning an awaitable) until it gives a truthy value, and return it.

    Fails naming ``what`` (and what ``details`` says then) when ``timeout`` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise _timed_out(what, timeout, details)
        await asyncio.sleep(POLL_S)


def eventually_sync(check: Callable[[], Any], what: str, timeout: float = 20.0, poll_s: float = POLL_S) -> Any:
    """``eventually`` for code that runs off an event loop (a synchronous fixture's teardown, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, None)
        time.sleep(poll_s)


async def task_failure(handle: Any, timeout: float = 20.0) -> str:
    """The message of the run's first ``WorkflowTaskFailed`` event, once there is one.

    A workflow that raises an exception that is not a failure (not ``duro.ApplicationError`` and
    the like) fails its workflow task, not the run: the task is retried, the run stays open.
    """

    async def failed() -> str | None:
        for ev in await handle.fetch_history():
            if ev.event_type == "WorkflowTaskFailed":
                data = ev.data()
                return str(data.get("message", data)) if isinstance(data, dict) else str(data)
        return None

    message: str = await eventually(failed, "a workflow task to fail", timeout)
    return message
