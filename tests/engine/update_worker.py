"""``python update_worker.py STORE_URL TASK_QUEUE``: a worker process for tests.engine.test_updates.

Prints "ready" once its worker polls. Then each line on stdin, a JSON object
``{"wid", "name", "args", "id"}``, sends that update from this process (through its own worker)
and prints ``{"result": ...}`` or ``{"error": "Type: message"}``. It stops at the end of stdin
or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import duro  # noqa: E402
from tests.engine import updates_wfs  # noqa: E402


async def _serve(client: duro.Client, stop: asyncio.Event) -> None:
    while not stop.is_set():
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        try:
            result = await client.get_handle(cmd["wid"]).execute_update(cmd["name"], *cmd["args"], id=cmd["id"])
            print(json.dumps({"result": result}), flush=True)
        except Exception as e:  # reported to the test
            print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
    stop.set()


async def main(url: str, task_queue: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=task_queue, workflows=updates_wfs.WORKFLOWS):
            print("ready", flush=True)
            serving = asyncio.ensure_future(_serve(client, stop))
            await stop.wait()
            serving.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
