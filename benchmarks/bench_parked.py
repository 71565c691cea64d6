"""Many workflows parked on wait_signal: memory while parked, and how fast they all resume.

    python benchmarks/bench_parked.py [--n 100000] [--concurrency 200]

Starts N `approval` workflows (uuid4 ids; each waits for signal "approve") through the public API
with C concurrent callers, waits until every one has run its first workflow task and is parked,
reports the process RSS, then signals all of them and times until every result is in (signal +
result per caller, C at a time). Worker and client in one process (uvloop), LMDB store with fsync.
Prints one JSON object: the start rate (start_workflow acknowledged, durable), the rate to parked,
and the resume rate.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import duro


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(n: int, concurrency: int) -> dict[str, object]:
    tmp = tempfile.mkdtemp(prefix="duro-parked-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            rss_before = rss_mb()
            async with duro.Worker(client, task_queue="p", workflows=[c.approval], activities=[c.echo],
                                   max_cached_workflows=n + 1000, max_concurrent_workflow_tasks=1000) as worker:
                sem = asyncio.Semaphore(concurrency)
                handles: list[duro.WorkflowHandle] = []

                async def start(i: int) -> None:
                    async with sem:
                        handles.append(await client.start_workflow(c.approval, id=str(uuid.uuid4()), task_queue="p"))

                t0 = time.perf_counter()
                await asyncio.gather(*(start(i) for i in range(n)))
                acked_s = time.perf_counter() - t0
                # Every workflow ran up to wait_signal (the worker's own counter: the public API has
                # no cheap "is it parked?" for 100,000 runs; this wait is not part of the start rate).
                while worker.stats["workflow_tasks"] < n:
                    await asyncio.sleep(0.05)
                start_s = time.perf_counter() - t0
                parked_rss = rss_mb()

                async def resume(h: duro.WorkflowHandle) -> None:
                    async with sem:
                        await h.signal("approve", {"by": "alice"})
                        assert (await h.result())["by"] == "alice"

                t1 = time.perf_counter()
                await asyncio.gather(*(resume(h) for h in handles))
                resume_s = time.perf_counter() - t1
                cached = len(worker._cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "system": "duro-lmdb", "version": duro.__version__, "workload": "parked", "n": n,
        "wall_s": round(resume_s, 3), "throughput_per_s": round(n / resume_s, 1),
        "latency_ms": {}, "rss_parked_mb": round(parked_rss, 1),
        "rss_per_parked_workflow_kb": round((parked_rss - rss_before) * 1024 / n, 2),
        "start_per_s": round(n / acked_s, 1), "parked_per_s": round(n / start_s, 1),
        "durable": "LMDB sync=True", "notes": f"started (acknowledged) at {n / acked_s:.0f}/s, all parked after "
        f"{start_s:.1f}s ({n / start_s:.0f}/s); resumed by signal + result at {n / resume_s:.0f}/s; {cached} "
        f"instances cached at the end; {concurrency} concurrent callers; uuid4 ids",
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    import uvloop

    c.emit(uvloop.run(main(a.n, a.concurrency)), a.out)
