"""Durable timers: a reminder that sleeps, and a confirmation that times out (``asyncio.wait_for``).

``ctx.sleep`` (and ``asyncio.sleep`` inside a workflow) is a timer recorded in the store: if every
worker stopped during the sleep, the timer would still be due, and the workflow would wake up when
a worker runs again. ``asyncio.wait_for`` and ``asyncio.timeout`` work in workflows on the same
durable timers. The durations are short so the example ends in about a second; real ones can be
days.

    .venv/bin/python examples/timers.py [DATA_DIR | STORE_URL]    # default: ./duro-data/timers-<timestamp>
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import duro

REMIND_AFTER = 0.3  # seconds (think: one day)
CONFIRM_WITHIN = 0.3  # seconds (think: 48 hours)


@duro.activity
async def send_email(ctx: duro.ActivityContext, to: str, text: str) -> None:
    print(f"  [activity] email to {to}: {text}")


@duro.workflow
async def reminder(ctx: duro.WorkflowContext, to: str, about: str, delay: float) -> float:
    """Sleep durably, then send the reminder; returns the seconds slept on the workflow clock."""
    t0 = ctx.now()
    await ctx.sleep(delay)
    await ctx.execute_activity(send_email, to, f"reminder: {about}", start_to_close_timeout=10)
    return (ctx.now() - t0).total_seconds()


@duro.workflow
async def confirmation(ctx: duro.WorkflowContext, to: str, within: float) -> dict[str, Any]:
    """Wait for a "confirm" signal, but only so long; escalate when it does not come."""
    await ctx.execute_activity(send_email, to, "please confirm your booking", start_to_close_timeout=10)
    try:
        confirmed = await asyncio.wait_for(ctx.wait_signal("confirm"), timeout=within)
    except TimeoutError:
        await ctx.execute_activity(send_email, "support@example.com", f"{to} did not confirm in time",
                                   start_to_close_timeout=10)
        return {"confirmed": False}
    return {"confirmed": True, "by": confirmed["by"]}


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    t_start = time.perf_counter()

    def stamp() -> str:
        return f"[{time.perf_counter() - t_start:5.2f}s]"

    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="timers", workflows=[reminder, confirmation],
                               activities=[send_email]):
            # All three run at once; the worker wakes each when its timer is due.
            remind = await client.start_workflow(reminder, "alice@example.com", "dentist at 9:00", REMIND_AFTER,
                                                 id="reminder-1", task_queue="timers")
            late = await client.start_workflow(confirmation, "bob@example.com", CONFIRM_WITHIN,
                                               id="confirm-bob", task_queue="timers")
            prompt = await client.start_workflow(confirmation, "carol@example.com", CONFIRM_WITHIN,
                                                 id="confirm-carol", task_queue="timers")
            print(f"{stamp()} started {remind.id}, {late.id} and {prompt.id}")

            await asyncio.sleep(0.05)
            await prompt.signal("confirm", {"by": "carol"})
            print(f"{stamp()} carol confirmed; bob does not answer")
            print(f"{stamp()} {prompt.id}: {await prompt.result()}")
            slept = await remind.result()
            print(f"{stamp()} {remind.id}: reminder sent after {slept:.2f}s on the workflow clock")
            print(f"{stamp()} {late.id}: {await late.result()}")
            history = await remind.fetch_history()

    print(f"\nthe reminder's history: {', '.join(e.event_type for e in history)}")
    print(f"finished in {time.perf_counter() - t_start:.2f}s")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/timers-{time.strftime('%Y%m%d-%H%M%S')}"
    asyncio.run(main(directory))
