"""duro's entry in the side-by-side harness: any workload of ../shared/WORKLOADS.md on any store URL.

    python benchmarks/peers/bench_duro.py --workload {W1,W1L,W2,W3,W4} [--n N] [--concurrency C]
                                          [--store lmdb://DIR] [--out result.json]
                                          [--ids {uuid4,sequential}] [--determinism {raise,warn,off}]

Worker and client run in one process on uvloop; every commit is fsynced before any caller is answered.
Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as c

import duro

DEFAULT_N = {"W1": 2000, "W1L": 200, "W2": 500, "W3": 200, "W4": 2000}

# Workflow ids as users make them: uuid4 (the default), or "w1-0", "w1-1"... (--ids sequential, a
# labelled extra: sequential ids cluster in the store's B-trees and flatter the numbers).
ID_STYLE = "uuid4"


def wid(prefix: str, i: int) -> str:
    return str(uuid.uuid4()) if ID_STYLE == "uuid4" else f"{prefix}-{i}"


async def w1(client: duro.Client, n: int, concurrency: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            r = await client.execute_workflow(c.order, {"order_id": f"O{i}", "amount": i}, id=wid("w1", i),
                                              task_queue="bench")
            lat.append(time.perf_counter() - t)
            assert r["tracking"] == f"T-O{i}"

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": c.percentiles_ms(lat)}


async def sequential(n: int, one: Any) -> dict[str, Any]:
    lat: list[float] = []
    for i in range(20 + n):
        t = time.perf_counter()
        await one(i)
        if i >= 20:
            lat.append(time.perf_counter() - t)
    wall = sum(lat)
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": c.percentiles_ms(lat)}


async def w2(client: duro.Client, k: int) -> dict[str, Any]:
    times = []
    for i in range(5):
        t = time.perf_counter()
        assert await client.execute_workflow(c.fanout, k, id=wid("w2", i), task_queue="bench") == sum(range(k))
        times.append(time.perf_counter() - t)
    wall = statistics.median(times)
    return {"wall_s": wall, "throughput_per_s": k / wall, "latency_ms": c.percentiles_ms(times),
            "notes": f"K={k} activities gathered in one workflow; 5 runs, median"}


async def w3_one(client: duro.Client, i: int) -> None:
    handle = await client.start_workflow(c.approval, id=wid("w3", i), task_queue="bench")
    await handle.signal("approve", {"by": "alice"})
    assert (await handle.result())["by"] == "alice"


async def w4(client: duro.Client, n: int, determinism: str = "raise") -> dict[str, Any]:
    t0 = time.perf_counter()
    handle = await client.start_workflow(c.long, n, id=wid("w4", 0), task_queue="bench")
    assert await handle.result() == sum(range(n))
    run_s = time.perf_counter() - t0
    replayer = duro.testing.Replayer(workflows=[c.long], determinism=determinism)
    times, events = [], 0
    for _ in range(5):
        t = time.perf_counter()
        history = await handle.fetch_history()
        await replayer.replay(history)
        times.append(time.perf_counter() - t)
        events = len(history)
    wall = statistics.median(times)
    return {"wall_s": wall, "throughput_per_s": events / wall, "latency_ms": c.percentiles_ms(times),
            "notes": f"run_s={run_s:.3f}; timed: handle.fetch_history() ({events} events) + "
                     f"duro.testing.Replayer.replay (re-run the code, match every command), median of 5; "
                     f"{n / wall:.0f} activities/s"}


DURABLE = {
    "lmdb": c.LMDB_DURABLE,
    "postgresql": "PostgreSQL (synchronous_commit as the server has it, on by default): each group commit is one "
                  "transaction, answered only after COMMIT returns",
}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = None
    url = args.store
    if url is None:
        tmp = tempfile.mkdtemp(prefix="duro-bench-")
        url = f"lmdb://{tmp}"
    try:
        async with duro.Client.connect(url) as client:
            async with duro.Worker(client, task_queue="bench", workflows=[c.order, c.fanout, c.approval, c.long],
                                   activities=[c.validate, c.charge, c.ship, c.echo], determinism=args.determinism):
                w = args.workload
                if w == "W1":
                    res = await w1(client, args.n, args.concurrency)
                elif w == "W1L":
                    res = await sequential(args.n, lambda i: client.execute_workflow(
                        c.order, {"order_id": f"L{i}", "amount": i}, id=wid("w1l", i), task_queue="bench"))
                elif w == "W2":
                    res = await w2(client, args.n)
                elif w == "W3":
                    res = await sequential(args.n, lambda i: w3_one(client, i))
                else:
                    res = await w4(client, args.n, args.determinism)
                store = client.store
                notes = res.pop("notes", "")
                notes = (notes + "; " if notes else "") + (
                    f"worker+client in one process (uvloop); {store.commits} group commits for "
                    f"{store.ops_committed} store operations")
                res["store"] = {k: round(v, 4) for k, v in c.store_counters(store).items()}
                if hasattr(store, "round_trips"):  # the PostgreSQL store counts its round trips
                    notes += (f", {store.round_trips} round trips in batches, {store.retried_batches} batches "
                              f"run again, {store.time_in_batches:.2f} s in batches")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    res["wall_s"] = round(res["wall_s"], 5)
    res["throughput_per_s"] = round(res["throughput_per_s"], 1)
    scheme = url.split("://", 1)[0]
    return {"system": f"duro-{scheme}", "version": duro.__version__, "workload": args.workload, "n": args.n,
            "ids": ID_STYLE, **res,
            "durable": DURABLE.get(scheme, DURABLE["lmdb"]),
            "notes": notes}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", required=True, choices=list(DEFAULT_N))
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--store", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--ids", default="uuid4", choices=["uuid4", "sequential"],
                   help="workflow ids: uuid4 as users make them (default), or sequential (a labelled extra)")
    p.add_argument("--determinism", default="raise", choices=["raise", "warn", "off"],
                   help="the determinism guard (off: not installed in this process; for measuring its cost)")
    a = p.parse_args()
    if a.n is None:
        a.n = DEFAULT_N[a.workload]
    ID_STYLE = a.ids
    try:
        import uvloop

        result = uvloop.run(main(a))
    except ImportError:
        result = asyncio.run(main(a))
    c.emit(result, a.out)
