"""``python schedule_worker.py STORE_URL TASK_QUEUE LABEL``: a worker process for the schedule tests.

It registers the workflows of ``tests.engine.test_schedules`` by name, with bodies that answer
``LABEL``: a run's result says which process ran its first workflow task (the process whose worker
fired the schedule, which leases the new run's task to itself). Prints "ready" once it polls.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import duro

LABEL = sys.argv[3] if len(sys.argv) > 3 else "sub"


@duro.workflow(name="sched_probe")
async def probe(ctx: duro.WorkflowContext) -> str:
    return LABEL


@duro.workflow(name="sched_waiter")
async def waiter(ctx: duro.WorkflowContext) -> str:
    await ctx.wait_signal("go")
    return LABEL


async def main(url: str, task_queue: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=task_queue, workflows=[probe, waiter]):
            print("ready", flush=True)
            await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
