"""The kill matrix's client process: ``python km_client.py STORE QUEUE ACK_FILE RATE CONCURRENCY``.

Starts ``km_workflow`` runs with uuid4 ids, about RATE per second over CONCURRENCY concurrent
starters, until it is killed (SIGKILL from the driver) or gets SIGTERM/SIGINT. Prints ``ready``
(flushed) once connected.

Every start is acknowledged to the driver only after ``start_workflow`` returned (the start is
durable then): the line ``A wfid run_id`` is appended to ACK_FILE with ``O_APPEND`` and fsynced.
One start in ``RESULT_EVERY`` also waits for its result and appends ``R wfid <json result>``, so
that kills land in result waits too. A start that raised appends ``X wfid <error>`` (not an
acknowledgement: nothing is promised for it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import orjson  # noqa: E402

import duro  # noqa: E402
from tests.integration.km_worker import km_workflow  # noqa: E402
from tests.integration.worker_main import _dump_tasks  # noqa: E402

RESULT_EVERY = 5
RESULT_TIMEOUT_S = 30.0


class _AckFile:
    """The append-only, fsynced record of what this client was told."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, line: str) -> None:
        os.write(self._fd, (line.replace("\n", " ") + "\n").encode())
        os.fsync(self._fd)


async def _starter(client: duro.Client, task_queue: str, acks: _AckFile, interval: float, index: int,
                   stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    n = 0
    next_at = loop.time()
    while not stop.is_set():
        wfid = str(uuid.uuid4())
        try:
            handle = await client.start_workflow(km_workflow, wfid, id=wfid, task_queue=task_queue)
        except Exception as e:  # reported to the driver; the loop goes on
            acks.write(f"X {wfid} {type(e).__name__}: {e}")
        else:
            acks.write(f"A {wfid} {handle.run_id}")
            n += 1
            if (n + index) % RESULT_EVERY == 0:
                try:
                    result = await handle.result(timeout=RESULT_TIMEOUT_S)
                except Exception as e:
                    acks.write(f"Y {wfid} {type(e).__name__}: {e}")
                else:
                    acks.write(f"R {wfid} {orjson.dumps(result).decode()}")
        next_at = max(next_at + interval, loop.time() - interval)
        delay = next_at - loop.time()
        if delay > 0:  # pacing the load, not waiting for a condition
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass


async def main(url: str, task_queue: str, ack_path: str, rate: float, concurrency: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    acks = _AckFile(ack_path)
    interval = concurrency / rate
    async with duro.Client.connect(url) as client:
        print("ready", flush=True)
        await asyncio.gather(*(_starter(client, task_queue, acks, interval, i, stop) for i in range(concurrency)))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit("usage: km_client.py STORE_URL TASK_QUEUE ACK_FILE RATE CONCURRENCY")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5])))
