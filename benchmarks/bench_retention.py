"""Disk stays flat: order workflows started, finished and purged in rounds on one LMDB store.

    .venv/bin/python benchmarks/bench_retention.py [--rounds 20] [--per-round 2000]

Each round runs ``--per-round`` order workflows (uuid4 ids, public API only) to completion, then
purges every closed run (``client.purge``, as the background retention does). It records the size
of ``data.mdb`` after each round and prints one JSON object: the sizes, how many workflows went
through in all, and the growth from the end of round 2 (after warm-up) to the last round. LMDB
reuses the pages that deleted runs free, so the file should hold its size.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import charge, order, ship, validate

import duro


async def main(rounds: int, per_round: int, concurrency: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="duro-retention-")
    data = Path(tmp) / "data.mdb"
    sizes: list[int] = []
    t0 = time.perf_counter()
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            async with duro.Worker(client, task_queue="bench", workflows=[order], activities=[validate, charge, ship]):
                gate = asyncio.Semaphore(concurrency)

                async def one(i: int) -> None:
                    async with gate:
                        await client.execute_workflow(order, {"order_id": f"o{i}", "amount": i}, id=str(uuid.uuid4()),
                                                      task_queue="bench")

                for r in range(rounds):
                    await asyncio.gather(*(one(r * per_round + i) for i in range(per_round)))
                    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
                    while await client.purge(later, limit=5000):
                        pass
                    sizes.append(os.path.getsize(data))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = sizes[min(1, len(sizes) - 1)]
    return {"benchmark": "retention", "store": "lmdb", "rounds": rounds, "per_round": per_round,
            "workflows": rounds * per_round, "wall_s": round(time.perf_counter() - t0, 2),
            "data_mdb_bytes_per_round": sizes, "growth_after_warmup": round(sizes[-1] / base - 1, 4)}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--per-round", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=200)
    a = p.parse_args()
    print(json.dumps(asyncio.run(main(a.rounds, a.per_round, a.concurrency))))
