"""``python time_travel_worker.py STORE_URL [old]``: a worker process for tests.engine.time_travel_wfs.

With ``old`` it answers requests from other processes as a worker of a duro without time-travel
queries did: any kind it does not know is taken for a query of the present, named by ``"name"``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import orjson  # noqa: E402

import duro  # noqa: E402
import duro._query  # noqa: E402
from duro.converter import encode_failure  # noqa: E402
from duro.stores.base import pack, unpack  # noqa: E402
from tests.engine import time_travel_wfs as tt  # noqa: E402

_current = duro._query.answer_request


async def _old_answer_request(worker: Any, raw: bytes) -> bytes:
    """The request dispatch of duro before time travel: not an update, so a query named by "name"."""
    head_b, payload = unpack(raw)
    head = orjson.loads(head_b)
    try:
        if head["kind"] not in ("update", "update_accept"):
            head = {"kind": "query", "run": head["run"], "name": head["name"]}
    except Exception as e:  # as the old code: the error goes back to the asking process
        return pack(b'{"ok":false}', encode_failure(e))
    return await _current(worker, pack(orjson.dumps(head), payload))


async def main(url: str, old: bool) -> None:
    if old:
        duro._query.answer_request = _old_answer_request  # type: ignore[assignment]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=tt.QUEUE, workflows=tt.WORKFLOWS, activities=tt.ACTIVITIES):
            print("ready", flush=True)
            await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:] == ["old"]))
