"""W1 throughput as the store grows: does a store holding a million finished workflows slow duro down?

    python benchmarks/bench_growth.py [--checkpoints 10000,100000,1000000] [--n 2000]

Fills one LMDB store with finished `order` workflows (the W1 workflow, uuid4 ids, 200 in flight) and, at each
checkpoint, measures W1 (n workflows) on that store. Prints one JSON object: throughput at each
checkpoint and the ratio of the last to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import duro


async def run_batch(client: duro.Client, start: int, n: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.execute_workflow(c.order, {"order_id": f"G{i}", "amount": i}, id=str(uuid.uuid4()),
                                          task_queue="g")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(start, start + n)))
    return time.perf_counter() - t0


async def main(checkpoints: list[int], n: int, concurrency: int) -> dict[str, object]:
    tmp = tempfile.mkdtemp(prefix="duro-growth-")
    points = []
    try:
        async with duro.Client.connect(f"lmdb://{tmp}?map_size={1 << 40}") as client:
            async with duro.Worker(client, task_queue="g", workflows=[c.order],
                                   activities=[c.validate, c.charge, c.ship], max_cached_workflows=5000):
                done = 0
                for target in checkpoints:
                    while done < target:  # fill, in chunks
                        step = min(20_000, target - done)
                        await run_batch(client, done, step, concurrency)
                        done += step
                    st = client.store
                    before, cpu0 = c.store_counters(st), time.process_time()
                    wall = await run_batch(client, done, n, concurrency)
                    after = c.store_counters(st)
                    done += n
                    size_mb = os.path.getsize(os.path.join(tmp, "data.mdb")) / 1e6
                    # The B-trees a W1 commit writes into, and LMDB's free-page lists: what grows.
                    with st.env.begin() as txn:
                        trees = {name: {k: v for k, v in txn.stat(db).items() if k in ("depth", "leaf_pages")}
                                 for name, db in (("wf", st.dbs.wf), ("vis", st.dbs.vis), ("runs", st.dbs.runs),
                                                  ("history", st.log.db))}
                        trees["free"] = txn.stat(free_pages=True)
                    points.append({"completed_before": target, "throughput_per_s": round(n / wall, 1),
                                   "store_mb": round(size_mb, 1), "commits": int(after["commits"] - before["commits"]),
                                   "writer_ops_s": round(after["ops_s"] - before["ops_s"], 3),
                                   "writer_commit_s": round(after["commit_s"] - before["commit_s"], 3),
                                   "cpu_s": round(time.process_time() - cpu0, 3), "wall_s": round(wall, 3),
                                   "trees": trees})
                    print(points[-1], file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = points[-1]["throughput_per_s"] / points[0]["throughput_per_s"]  # type: ignore[operator]
    return {"system": "duro-lmdb", "version": duro.__version__, "workload": "W1-growth", "n": n,
            "wall_s": None, "throughput_per_s": points[-1]["throughput_per_s"], "latency_ms": {},
            "points": points, "last_vs_first": round(ratio, 3),
            "durable": c.LMDB_DURABLE, "notes": "W1 measured on one store at each checkpoint of finished workflows"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoints", default="10000,100000,1000000")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    import uvloop

    c.emit(uvloop.run(main([int(x) for x in a.checkpoints.split(",")], a.n, a.concurrency)), a.out)
