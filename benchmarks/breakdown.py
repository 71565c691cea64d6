"""Where the time of a workload goes: the GIL's time by thread and component, and the store's waits.

    python benchmarks/breakdown.py --workload W1 [--n 20000] [--rate 250] [--store lmdb://DIR]

Runs ``benchmarks/peers/bench_duro.py`` (worker and client in one process, uvloop, LMDB) under
``py-spy record --gil``: a sample is taken of whichever thread holds the GIL, so the samples say
where the process's Python time goes (one core at most: the GIL is what limits one process). Each
sample is put to its thread (the event loop, the store's writer and syncer, the activity thread
pool) and to the innermost frame that names a component: the workflow loop, the workflow instance, payload
conversion, the worker, the client API, store reads or store operations (engine and records, on
the writer), the hand-off of results to the loop, asyncio/uvloop itself. Samples taken while the
process imports or sets up are left out. The waits that hold no GIL come from the store's own
counters: LMDB's commit (page writes and the data sync, under LMDB's write lock), the meta-page
sync after it, the wait for the write lock.

Prints one JSON object: per unit (a workflow for W1/W1L, an activity for W2, a signal round trip
for W3) the GIL time of each thread and component (from the sample count and rate), the
store's waits, commits and ops, and the workload's own result. Sampling costs the process a few
percent: compare parts of one run, not its throughput with an unsampled run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

HERE = Path(__file__).resolve().parent


class Workload(NamedTuple):
    default_n: int
    unit: str  # what the per-unit figures are per
    units: Callable[[int], int]  # how many of them a run of n makes (warm-up included)


WORKLOADS = {
    "W1": Workload(20000, "workflow", lambda n: n),
    "W1L": Workload(1000, "workflow", lambda n: n + 20),
    "W2": Workload(5000, "activity (of 5 fan-outs of n)", lambda n: 5 * n),
    "W3": Workload(1000, "signal round trip", lambda n: n + 20),
}

PYTHON = [
    ("benchmarks/", "harness (the workload's own code)"),
    ("duro/_loop.py", "workflow loop"),
    ("replay.pyx", "workflow loop"),
    ("duro/_core/replay", "workflow loop"),
    ("duro/_instance.py", "workflow instance"),
    ("duro/_child.py", "workflow instance"),
    ("duro/_interceptor_roots.py", "workflow instance"),
    ("duro/_determinism.py", "workflow instance"),
    ("duro/workflow.py", "workflow instance"),
    ("duro/converter.py", "payloads (encode/decode)"),
    ("codec.pyx", "payloads (encode/decode)"),
    ("duro/stores/batch.py", "handing results to the loop"),
    ("duro/stores/", "store"),
    ("duro/engine/", "store"),
    ("log.pyx", "store"),
    ("mdb.pyx", "store"),
    ("duro/worker.py", "worker (tasks, activities)"),
    ("duro/_local.py", "worker (tasks, activities)"),
    ("duro/activity.py", "worker (tasks, activities)"),
    ("duro/client.py", "client API"),
    ("queue.py", "idle"),
    ("threading.py", "idle"),
    ("asyncio/", "asyncio/uvloop"),
    ("uvloop", "asyncio/uvloop"),
    ("loop.pyx", "asyncio/uvloop"),
]
ROLES = [("_writer_main", "writer (group commit)"), ("_syncer_main", "syncer (meta-page sync, answers)"),
         ("_watch_main", "watcher (other processes' commits)"),
         ("concurrent/futures/thread.py", "activity thread pool"), ("Runner.run", "event loop")]


def classify(frames: list[str]) -> tuple[str, str] | None:
    """(thread role, component) of one sample's stack (root first), None for set-up and imports."""
    if any("_find_and_load" in f or "spawn_main" in f for f in frames):
        return None
    role = next((name for key, name in ROLES if any(key in f for f in frames)), None)
    if role is None:
        return None
    for frame in reversed(frames):
        for key, component in PYTHON:
            if key in frame:
                if role.startswith("writer") and component == "store":
                    component = "store operations (engine, records)"
                elif component == "store":
                    component = "store reads"
                return role, component
    return role, "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workload", required=True, choices=list(WORKLOADS))
    p.add_argument("--n", type=c.positive_int, default=None, help="runs (default: the workload's own)")
    p.add_argument("--rate", type=c.positive_int, default=250, help="samples per second per thread")
    p.add_argument("--store", default=None)
    args = p.parse_args()
    workload = WORKLOADS[args.workload]
    n = args.n if args.n is not None else workload.default_n
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("py-spy is not installed: make .venv/.bench installs it")
    tmp = tempfile.mkdtemp(prefix="duro-breakdown-")
    try:
        raw, out = os.path.join(tmp, "samples.txt"), os.path.join(tmp, "result.json")
        cmd = [sys.executable, str(HERE / "peers" / "bench_duro.py"), "--workload", args.workload,
               "--n", str(n), "--out", out]
        if args.store:
            cmd += ["--store", args.store]
        done = subprocess.run([py_spy, "record", "--gil", "-r", str(args.rate), "-f", "raw", "-o", raw, "--", *cmd],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"py-spy failed (exit {done.returncode}); it needs ptrace (root, or a container with "
                     f"--cap-add SYS_PTRACE). What it said:\n{done.stderr[-2000:]}")
        result = json.loads(Path(out).read_text())
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        with open(raw) as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                found = classify(stack.split(";"))
                if found is not None:
                    counts[found[0]][found[1]] += int(count)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per = workload.units(n)
    gil: dict[str, Any] = {}
    for role, components in sorted(counts.items(), key=lambda kv: -sum(kv[1].values())):
        gil[role] = {c: round(k / args.rate / per * 1e6, 1) for c, k in components.most_common()}
        gil[role]["total"] = round(sum(components.values()) / args.rate / per * 1e6, 1)
    store = result.get("store", {})
    waits = {  # the writer's (the meta-page sync mostly on the syncer thread, beside it)
        "commit: page writes + data sync (LMDB write lock held)": store.get("commit_s", 0.0),
        "meta page sync (after the lock)": store.get("meta_sync_s", 0.0),
        "waiting for LMDB's write lock (and the GIL after it)": store.get("lock_wait_s", 0.0),
    }
    print(json.dumps({
        "workload": args.workload, "n": n, "unit": workload.unit, "units": per, "rate_hz": args.rate,
        "wall_us_per_unit": round(result["wall_s"] / n * 1e6, 1),  # W2: the median fan-out's, per activity
        "gil_us_per_unit": gil,
        "store_waits_us_per_unit": {k: round(v / per * 1e6, 1) for k, v in waits.items()},
        "commits_per_unit": round(store.get("commits", 0) / per, 3),
        "ops_per_unit": round(store.get("ops", 0) / per, 3),
        "result": result,
    }, indent=1))


if __name__ == "__main__":
    main()
