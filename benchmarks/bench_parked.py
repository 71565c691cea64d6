"""Many workflows parked on wait_signal: memory while parked, and how fast they all resume.

    python benchmarks/bench_parked.py [--n 100000] [--concurrency 200]

Starts N `approval` workflows (uuid4 ids; each waits for signal "approve") through the public API
with C concurrent callers (C coroutines, each starting one workflow after another), waits until
every one has run its first workflow task and is parked, reports the process RSS, then signals all
of them and times until every result is in (signal + result per call, by C callers again). Worker
and client in one process (uvloop), LMDB store with fsync. Prints one JSON object: the start rate
(start_workflow acknowledged, durable), the rate to parked, the resume rate, the RSS split into
anonymous memory (the Python heap) and file pages (LMDB's memory map: clean pages of data.mdb the
kernel can drop and read again), and per phase the CPU time per workflow and the store's group
commits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

import duro

T = TypeVar("T")


def rss_mb() -> dict[str, float]:
    """VmRSS and its anonymous and file-backed parts, in MB (Linux; elsewhere the peak RSS only)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        out["VmRSS"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def map_rss_mb(path: str) -> float:
    """Resident pages of the store's data.mdb mapping (from /proc/self/smaps), in MB."""
    total, inside = 0, False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=5)
                if head and "-" in head[0] and not head[0].endswith(":"):
                    inside = len(head) == 6 and head[5].rstrip("\n") == path
                elif inside and head[0] == "Rss:":
                    total += int(head[1])
    except OSError:
        return 0.0
    return total / 1024


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each live thread of this process, by name (Linux)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: dict[str, float] = {}
    for t in threading.enumerate():
        try:
            with open(f"/proc/self/task/{t.native_id}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out[t.name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
    return out


class Phase:
    """CPU time (the process's, and the event loop's and the store writer's threads') and the store's group
    commits over one phase of the run: CPU per workflow is what the GIL-bound rates follow."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.cpu = time.process_time()
        self.threads = thread_cpu_s()
        self.commits = getattr(store, "commits", 0)
        self.ops = getattr(store, "ops_committed", 0)

    def report(self, n: int) -> dict[str, object]:
        commits = getattr(self.store, "commits", 0) - self.commits
        ops = getattr(self.store, "ops_committed", 0) - self.ops
        now = thread_cpu_s()
        per_thread = {name: round((now[name] - self.threads.get(name, 0.0)) * 1e6 / n, 1)
                      for name in ("MainThread", "duro-lmdb-writer") if name in now}
        return {"cpu_us_per_workflow": round((time.process_time() - self.cpu) * 1e6 / n, 1),
                "cpu_us_per_workflow_by_thread": per_thread,
                "commits": commits, "ops_per_commit": round(ops / commits, 1) if commits else 0.0}


async def callers(count: int, items: Iterable[T], call: Callable[[T], Awaitable[None]]) -> None:
    """``count`` concurrent callers, each calling ``call`` on the next item until none is left."""
    it = iter(items)

    async def caller() -> None:
        for item in it:
            await call(item)

    await asyncio.gather(*(caller() for _ in range(count)))


async def main(n: int, concurrency: int) -> dict[str, object]:
    tmp = tempfile.mkdtemp(prefix="duro-parked-")
    try:
        async with duro.Client.connect(f"lmdb://{tmp}") as client:
            rss_before = rss_mb()
            async with duro.Worker(client, task_queue="p", workflows=[c.approval], activities=[c.echo],
                                   max_cached_workflows=n + 1000, max_concurrent_workflow_tasks=1000) as worker:
                handles: list[duro.WorkflowHandle] = []

                async def start(i: int) -> None:
                    handles.append(await client.start_workflow(c.approval, id=str(uuid.uuid4()), task_queue="p"))

                phase = Phase(client.store)
                t0 = time.perf_counter()
                await callers(concurrency, range(n), start)
                acked_s = time.perf_counter() - t0
                # Every workflow ran up to wait_signal (the worker's own counter: the public API has
                # no cheap "is it parked?" for 100,000 runs; this wait is not part of the start rate).
                while worker.stats["workflow_tasks"] < n:
                    await asyncio.sleep(0.05)
                start_s = time.perf_counter() - t0
                start_phase = phase.report(n)
                parked_rss = rss_mb()
                parked_map = map_rss_mb(str(Path(getattr(client.store, "path", tmp)) / "data.mdb"))

                async def resume(h: duro.WorkflowHandle) -> None:
                    await h.signal("approve", {"by": "alice"})
                    assert (await h.result())["by"] == "alice"

                phase = Phase(client.store)
                t1 = time.perf_counter()
                await callers(concurrency, handles, resume)
                resume_s = time.perf_counter() - t1
                resume_phase = phase.report(n)
                cached = len(worker._cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "system": "duro-lmdb", "version": duro.__version__, "workload": "parked", "n": n,
        "wall_s": round(resume_s, 3), "throughput_per_s": round(n / resume_s, 1),
        "latency_ms": {}, "rss_parked_mb": round(parked_rss["VmRSS"], 1),
        "rss_before_mb": round(rss_before["VmRSS"], 1),  # the process with its store and worker, before any start
        "rss_per_parked_workflow_kb": round((parked_rss["VmRSS"] - rss_before["VmRSS"]) * 1024 / n, 2),
        # VmRSS = anonymous memory (the Python heap) + file pages (nearly all of them data.mdb's map).
        "rss_anon_parked_mb": round(parked_rss.get("RssAnon", 0.0), 1),
        "rss_anon_per_parked_workflow_kb": round(
            (parked_rss.get("RssAnon", 0.0) - rss_before.get("RssAnon", 0.0)) * 1024 / n, 2),
        "rss_file_parked_mb": round(parked_rss.get("RssFile", 0.0), 1), "rss_data_mdb_mb": round(parked_map, 1),
        "start": start_phase, "resume": resume_phase,
        "start_per_s": round(n / acked_s, 1), "parked_per_s": round(n / start_s, 1),
        "durable": c.LMDB_DURABLE, "notes": f"started (acknowledged) at {n / acked_s:.0f}/s, all parked after "
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
