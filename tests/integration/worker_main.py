"""A worker process for the integration tests: ``python worker_main.py STORE_URL TASK_QUEUE``.

Runs a ``duro.Worker`` with every workflow and activity of ``tests.engine.wfs`` on the given store
and queue until it is killed (SIGKILL in the crash tests) or gets SIGTERM/SIGINT (a clean shutdown).
Prints ``ready`` (flushed) once the worker polls, so a test can wait for it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

# Run as a script, this file's directory is sys.path[0]; the repository root must be importable
# too so that ``tests.engine.wfs`` resolves (PYTHONPATH normally says so as well).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import duro  # noqa: E402
from tests.engine import wfs  # noqa: E402


def _dump_tasks() -> None:
    """SIGUSR1: print every asyncio task's stack to stderr (for debugging a stuck worker)."""
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def main(url: str, task_queue: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=task_queue, workflows=wfs.ALL_WORKFLOWS,
                               activities=wfs.ALL_ACTIVITIES, identity=f"worker-main-{os.getpid()}"):
            print("ready", flush=True)
            await stop.wait()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: worker_main.py STORE_URL TASK_QUEUE")
    asyncio.run(main(sys.argv[1], sys.argv[2]))
