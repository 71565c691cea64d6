"""Small asyncio helpers shared by the worker and the store."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, or ``timeout`` seconds pass (then the event is set for us).

    Neither ``asyncio.wait_for`` nor ``asyncio.timeout``: on Python 3.11 both cancel the waiting
    task at the deadline, and a cancellation racing with ``event.set()`` can be swallowed (a loop
    would then not stop on shutdown) or left pending (measured here: a poll loop that never woke
    again). Callers clear the event before they look again, so a timer setting it is harmless.
    """
    if event.is_set():
        return
    timer = asyncio.get_running_loop().call_later(timeout, event.set)
    try:
        await event.wait()
    finally:
        timer.cancel()
