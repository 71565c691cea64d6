"""What the determinism guard costs: W1 and W4 without it and with it, and calls outside workflows.

    python benchmarks/bench_guard.py [--reps 7] [--w1-n 1000] [--w4-n 2000]

One process, one LMDB store. First without the guard (``determinism="off"`` everywhere: it is not
installed), then it is installed and the same runs repeat with ``"raise"``; each block is
``--reps`` repetitions of W1 (workflows/s, uuid4 ids, the public API) and W4 (replay of one
recorded history, events/s). The guard cannot be taken out again, so the order is fixed; the two
blocks follow each other within seconds. The best repetition of each block is the primary figure
(on a shared machine other load only ever slows a run down), the medians are printed too.

Outside workflow code, the guarded functions are timed against the originals they wrap (no
WorkflowLoop running: the path every other caller takes). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import duro
from duro import _determinism

WORKFLOWS = [c.order, c.long]
ACTIVITIES = [c.validate, c.charge, c.ship, c.echo]


async def w1_rep(client: duro.Client, n: int) -> float:
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            await client.execute_workflow(c.order, {"order_id": f"O{i}", "amount": i}, id=str(uuid.uuid4()),
                                          task_queue="guard")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def block(mode: str, history: duro.History, reps: int, n: int) -> dict[str, list[float]]:
    """``reps`` repetitions of W1 and W4 in ``mode``, on a fresh store (W1 slows as a store grows)."""
    out: dict[str, list[float]] = {"W1": [], "W4": []}
    tmp = tempfile.mkdtemp(prefix="duro-guard-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            async with duro.Worker(client, task_queue="guard", workflows=WORKFLOWS, activities=ACTIVITIES,
                                   determinism=mode):
                replayer = duro.testing.Replayer(workflows=[c.long], determinism=mode)
                await w1_rep(client, 100)  # warm up
                for _ in range(reps):
                    out["W1"].append(await w1_rep(client, n))
                    t = time.perf_counter()
                    await replayer.replay(history)
                    out["W4"].append(len(history) / (time.perf_counter() - t))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def per_call_ns(fn: Any, number: int = 200_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9


def callers() -> dict[str, Any]:
    return {
        "time.time()": time.time,
        "datetime.now()": datetime.datetime.now,
        "random.random()": random.random,
        "uuid.uuid4()": uuid.uuid4,
        "os.urandom(16)": lambda: os.urandom(16),
    }


async def main(a: argparse.Namespace) -> dict[str, Any]:
    assert not _determinism._installed, "the guard must not be installed before the first block"
    # Taken before installing (datetime.datetime.now binds the C method at lookup: this one stays).
    originals = callers()
    original_ns = {name: per_call_ns(fn) for name, fn in originals.items()}
    tmp = tempfile.mkdtemp(prefix="duro-guard-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            async with duro.Worker(client, task_queue="guard", workflows=WORKFLOWS, activities=ACTIVITIES,
                                   determinism="off"):
                handle = await client.start_workflow(c.long, a.w4_n, id=str(uuid.uuid4()), task_queue="guard")
                await handle.result()
            history = await handle.fetch_history()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    off = await block("off", history, a.reps, a.w1_n)
    assert not _determinism._installed
    on = await block("raise", history, a.reps, a.w1_n)
    assert _determinism._installed
    workloads = {}
    for w in ("W1", "W4"):
        best_off, best_on = max(off[w]), max(on[w])
        med_off, med_on = statistics.median(off[w]), statistics.median(on[w])
        workloads[w] = {"guard_off_per_s": round(best_off, 1), "guard_on_per_s": round(best_on, 1),
                        "cost_pct": round((best_off - best_on) / best_off * 100, 2),
                        "median_cost_pct": round((med_off - med_on) / med_off * 100, 2),
                        "runs": {"off": [round(x, 1) for x in off[w]], "raise": [round(x, 1) for x in on[w]]}}
    outside = {}
    for name, fn in callers().items():
        guarded = per_call_ns(fn)
        outside[name] = {"original_ns": round(original_ns[name], 1), "guarded_ns": round(guarded, 1),
                         "added_ns": round(guarded - original_ns[name], 1)}
    return {"benchmark": "determinism guard cost", "reps": a.reps, "w1_n": a.w1_n, "w4_events": len(history),
            "workloads": workloads, "outside_workflow_calls": outside,
            "notes": "W1: workflows/s (uuid4 ids, 200 concurrent callers); W4: events replayed/s; "
                     "best repetition (median_cost_pct: of the medians); LMDB, every commit fsynced"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--w1-n", type=int, default=1000)
    p.add_argument("--w4-n", type=int, default=2000)
    args = p.parse_args()
    try:
        import uvloop

        result = uvloop.run(main(args))
    except ImportError:
        result = asyncio.run(main(args))
    c.emit(result, None)
