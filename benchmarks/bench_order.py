"""W1 (order throughput) and W1L (order latency) of ../shared/WORKLOADS.md on duro's LMDB store.

    python benchmarks/bench_order.py --workload W1 [--n 2000] [--concurrency 200] [--store lmdb://DIR]
    python benchmarks/bench_order.py --workload W1L [--n 200]

Prints one JSON object. Every event goes through group commit with fsync (LMDB sync=True).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import duro


async def w1(client: duro.Client, n: int, concurrency: int) -> dict[str, object]:
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            r = await client.execute_workflow(c.order, {"order_id": f"O{i}", "amount": i}, id=f"w1-{i}",
                                              task_queue="bench")
            lat.append(time.perf_counter() - t)
            assert r["tracking"] == f"T-O{i}"

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 4), "throughput_per_s": round(n / wall, 1), "latency_ms": c.percentiles_ms(lat)}


async def w1l(client: duro.Client, n: int) -> dict[str, object]:
    lat: list[float] = []
    for i in range(20 + n):
        t = time.perf_counter()
        await client.execute_workflow(c.order, {"order_id": f"L{i}", "amount": i}, id=f"w1l-{i}", task_queue="bench")
        if i >= 20:
            lat.append(time.perf_counter() - t)
    wall = sum(lat)
    return {"wall_s": round(wall, 4), "throughput_per_s": round(n / wall, 1), "latency_ms": c.percentiles_ms(lat)}


async def main(args: argparse.Namespace) -> dict[str, object]:
    tmp = None
    url = args.store
    if url is None:
        tmp = tempfile.mkdtemp(prefix="duro-bench-")
        url = f"lmdb://{tmp}"
    try:
        async with duro.Client.connect(url) as client:
            async with duro.Worker(client, task_queue="bench", workflows=[c.order],
                                   activities=[c.validate, c.charge, c.ship]) as worker:
                if args.workload == "W1":
                    res = await w1(client, args.n, args.concurrency)
                else:
                    res = await w1l(client, args.n)
                store = client.store
                notes = (f"worker and client in one process (uvloop); {store.commits} group commits for "
                         f"{store.ops_committed} ops; {worker.stats['fused']} activity results committed together "
                         f"with the next commands; writer: {store.time_in_ops:.3f}s running ops, "
                         f"{store.time_in_commit:.3f}s in commit+fsync")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"system": "duro", "version": duro.__version__, "workload": args.workload, "n": args.n, **res,
            "durable": "LMDB sync=True: every commit fsynced before any result is acknowledged", "notes": notes}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", default="W1", choices=["W1", "W1L"])
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--store", default=None, help="store URL (default: a fresh temporary LMDB directory)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.n is None:
        a.n = 2000 if a.workload == "W1" else 200
    try:
        import uvloop

        result = uvloop.run(main(a))
    except ImportError:
        result = asyncio.run(main(a))
    c.emit(result, a.out)
