"""W4 (replay of a long history) of ../shared/WORKLOADS.md on duro's LMDB store.

    python benchmarks/bench_replay.py [--n 2000] [--repeat 5]

Runs ``long(n)`` (n sequential activities) once, then times a full replay of its recorded history
by ``duro.testing.Replayer`` (decode every event from LMDB, re-run the workflow code, feed each
recorded result to it, and check every command against the history). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import duro
from duro.stores.base import run_key_of


async def main(args: argparse.Namespace) -> dict[str, object]:
    tmp = tempfile.mkdtemp(prefix="duro-bench-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            async with duro.Worker(client, task_queue="bench", workflows=[c.long], activities=[c.echo]):
                t0 = time.perf_counter()
                handle = await client.start_workflow(c.long, args.n, id="w4", task_queue="bench")
                total = await handle.result()
                run_s = time.perf_counter() - t0
            assert total == sum(range(args.n))
            replayer = duro.testing.Replayer(workflows=[c.long])
            store = client.store
            key = run_key_of(handle.run_id or "")
            times, events = [], 0
            for _ in range(args.repeat):
                t = time.perf_counter()
                history = duro.History(handle.id, handle.run_id or "", store.read_history(key))
                await replayer.replay(history)
                times.append(time.perf_counter() - t)
                events = len(history)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = statistics.median(times)
    return {
        "system": "duro", "version": duro.__version__, "workload": "W4", "n": args.n, "wall_s": round(wall, 5),
        "throughput_per_s": round(events / wall, 1), "activities_per_s": round(args.n / wall, 1),
        "latency_ms": {"p50": round(wall * 1000, 3), "p90": round(max(times) * 1000, 3),
                       "p99": round(max(times) * 1000, 3)},
        "durable": "LMDB sync=True (the run being replayed was fsynced event by event)",
        "notes": f"run_s={run_s:.3f}; timed: read {events} events from LMDB + decode + Replayer.replay "
                 f"(re-run the code, match every command); median of {args.repeat}",
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    c.emit(asyncio.run(main(a)), a.out)
