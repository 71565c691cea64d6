"""``python versioned_worker.py STORE_URL TASK_QUEUE BUILD_ID``: a versioned worker process for tests.

It runs the workflows of ``tests.engine.versioning_wfs`` as build BUILD_ID, prints "ready", and stops
on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import duro  # noqa: E402
from tests.engine import versioning_wfs  # noqa: E402


async def main(url: str, task_queue: str, build_id: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=task_queue, workflows=versioning_wfs.workflows(build_id),
                               build_id=build_id):
            print("ready", flush=True)
            await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
