"""What the determinism guard costs: W1 and W4 without it and with it, and calls outside workflows.

    python benchmarks/bench_guard.py [--pairs 4] [--reps 3] [--w1-n 1000] [--w4-n 2000]

A block is one process on a fresh LMDB store: ``--reps`` repetitions of W1 (workflows/s, uuid4
ids, the public API; and the process's CPU time per workflow, all threads, which a guard would
raise and which the disk's fsync latency does not blur) and W4 (replay of one recorded history,
events/s), either without the guard
(``determinism="off"`` everywhere: it is never installed) or with it (``"raise"``). The guard
cannot be taken out of a process again, so each block is its own process, and ``--pairs`` pairs of
blocks run in the order off, on, on, off, off, on, ... : a machine that drifts slower or faster
during the run weighs on both sides alike. The best repetition of each side is the primary figure
(on a shared machine other load only ever slows a run down), the medians are printed too.

Outside workflow code, the guarded functions are timed against the originals they wrap (no
WorkflowLoop running: the path every other caller takes). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
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
SERIES = ("W1", "W1_cpu_us", "W4")
LOWER_IS_BETTER = frozenset(("W1_cpu_us",))  # the others are rates
ACTIVITIES = [c.validate, c.charge, c.ship, c.echo]


async def w1_rep(client: duro.Client, n: int) -> tuple[float, float]:
    """W1 once: (workflows/s, CPU µs of this process per workflow)."""
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            await client.execute_workflow(c.order, {"order_id": f"O{i}", "amount": i}, id=str(uuid.uuid4()),
                                          task_queue="guard")

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0), (time.process_time() - cpu0) / n * 1e6


async def block(mode: str, history: duro.History, reps: int, n: int) -> dict[str, list[float]]:
    """``reps`` repetitions of W1 and W4 in ``mode``, on a fresh store (W1 slows as a store grows)."""
    out: dict[str, list[float]] = {"W1": [], "W1_cpu_us": [], "W4": []}
    tmp = tempfile.mkdtemp(prefix="duro-guard-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            async with duro.Worker(client, task_queue="guard", workflows=WORKFLOWS, activities=ACTIVITIES,
                                   determinism=mode):
                replayer = duro.testing.Replayer(workflows=[c.long], determinism=mode)
                await w1_rep(client, 100)  # warm up
                for _ in range(reps):
                    rate, cpu_us = await w1_rep(client, n)
                    out["W1"].append(rate)
                    out["W1_cpu_us"].append(cpu_us)
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


async def record_history(w4_n: int) -> duro.History:
    """One W4 run (``w4_n`` activities) recorded without the guard; its history is what W4 replays."""
    tmp = tempfile.mkdtemp(prefix="duro-guard-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            async with duro.Worker(client, task_queue="guard", workflows=WORKFLOWS, activities=ACTIVITIES,
                                   determinism="off"):
                handle = await client.start_workflow(c.long, w4_n, id=str(uuid.uuid4()), task_queue="guard")
                await handle.result()
            return await handle.fetch_history()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def one_block(a: argparse.Namespace) -> dict[str, Any]:
    """The ``--block`` child: one block in this process, its runs as JSON."""
    history = await record_history(a.w4_n)
    runs = await block(a.block, history, a.reps, a.w1_n)
    assert _determinism._installed == (a.block == "raise")
    return {"mode": a.block, "w4_events": len(history), **runs}


def run_block(mode: str, a: argparse.Namespace) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, "--block", mode, "--reps", str(a.reps),
                           "--w1-n", str(a.w1_n), "--w4-n", str(a.w4_n)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {mode!r} block failed (exit {done.returncode}):\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(a: argparse.Namespace) -> dict[str, Any]:
    # Taken before installing (datetime.datetime.now binds the C method at lookup: this one stays).
    originals = callers()
    original_ns = {name: per_call_ns(fn) for name, fn in originals.items()}
    runs: dict[str, dict[str, list[float]]] = {mode: {w: [] for w in SERIES} for mode in ("off", "raise")}
    # Per pair, the guard's cost from its two neighbouring blocks (their medians): the machine's
    # drift over the whole run cancels out of it, where it does not out of the overall medians.
    paired: dict[str, list[float]] = {w: [] for w in SERIES}
    events = 0
    for i in range(a.pairs):
        pair: dict[str, dict[str, float]] = {}
        for mode in (("off", "raise") if i % 2 == 0 else ("raise", "off")):
            got = run_block(mode, a)
            events = got["w4_events"]
            pair[mode] = {w: statistics.median(got[w]) for w in SERIES}
            for w in SERIES:
                runs[mode][w].extend(got[w])
            print(f"pair {i + 1}/{a.pairs} {mode}: " + " ".join(f"{w} {[round(x) for x in got[w]]}" for w in SERIES),
                  file=sys.stderr)
        for w in SERIES:
            change = (pair["raise"][w] - pair["off"][w]) / pair["off"][w] * 100
            paired[w].append(change if w in LOWER_IS_BETTER else -change)
    off, on = runs["off"], runs["raise"]
    workloads = {}
    for w in SERIES:
        # Rates: higher is better, the best is the largest. CPU per workflow: the best is the least.
        lower = w in LOWER_IS_BETTER
        pick = min if lower else max
        best_off, best_on = pick(off[w]), pick(on[w])
        med_off, med_on = statistics.median(off[w]), statistics.median(on[w])
        sign = -1 if lower else 1
        workloads[w] = {"guard_off": round(best_off, 1), "guard_on": round(best_on, 1),
                        "median_off": round(med_off, 1), "median_on": round(med_on, 1),
                        "cost_pct": round(sign * (best_off - best_on) / best_off * 100, 2),
                        "median_cost_pct": round(sign * (med_off - med_on) / med_off * 100, 2),
                        "paired_cost_pct": round(statistics.median(paired[w]), 2),
                        "pairs_costlier_with_guard": f"{sum(x > 0 for x in paired[w])}/{len(paired[w])}",
                        "runs": {"off": [round(x, 1) for x in off[w]], "raise": [round(x, 1) for x in on[w]]}}
    _determinism.install_determinism_guard()
    outside = {}
    for name, fn in callers().items():
        guarded = per_call_ns(fn)
        outside[name] = {"original_ns": round(original_ns[name], 1), "guarded_ns": round(guarded, 1),
                         "added_ns": round(guarded - original_ns[name], 1)}
    return {"benchmark": "determinism guard cost", "pairs": a.pairs, "reps": a.reps, "w1_n": a.w1_n,
            "w4_events": events, "workloads": workloads, "outside_workflow_calls": outside,
            "notes": "W1: workflows/s (uuid4 ids, 200 concurrent callers); W1_cpu_us: CPU µs of the process per "
                     "workflow (lower is better; cost_pct > 0 means the guard costs); W4: events replayed/s; "
                     "paired_cost_pct: the median over pairs of the cost between a pair's two blocks; "
                     "one process per block, blocks alternating; best repetition (median_cost_pct: of the "
                     "medians); LMDB, every commit fsynced"}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--pairs", type=c.positive_int, default=4,
                   help="pairs of blocks, one without the guard, one with it")
    p.add_argument("--reps", type=c.positive_int, default=3, help="repetitions of W1 and W4 in each block")
    p.add_argument("--w1-n", type=c.positive_int, default=1000)
    p.add_argument("--w4-n", type=c.positive_int, default=2000)
    p.add_argument("--block", choices=("off", "raise"), help=argparse.SUPPRESS)  # one block, in a child
    args = p.parse_args()
    if args.block is None:
        c.emit(main(args), None)
    else:
        try:
            import uvloop

            print(json.dumps(uvloop.run(one_block(args))))
        except ImportError:
            print(json.dumps(asyncio.run(one_block(args))))
