"""Restate peer for the side-by-side benchmark (see shared/WORKLOADS.md).

Run with the venv made by setup_restate.sh, against the server and services started by start_restate.sh:

    .envs/restate/bin/python bench_restate.py --workload {W1,W1L,W2,W3,W4} [--n N] [--concurrency C] [--out result.json]

The script starts nothing: it is an HTTP client (httpx, asyncio) of restate-server's ingress on
127.0.0.1 (and of its admin API for W4). The workflows themselves are in restate_service.py, run
by the Restate Python SDK under hypercorn. Its last stdout line is the result JSON object, also
written to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import uuid
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
RUN_DIR = Path(os.environ.get("BENCH_RESTATE_RUN_DIR", HERE / ".envs" / "run" / "restate"))
HOST = "127.0.0.1"
FANOUT_K = 500
FANOUT_RUNS = 5
WARMUP = 20
# In-flight requests per httpx.AsyncClient. One client holding all C=200 connections spends ~13 ms
# of CPU per request in its pool (httpx issue #3215) and would measure httpx, not Restate; with
# 10 per client the client costs ~3 ms per request.
PER_CLIENT = 10


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_s) * 1000.0
    return {f"p{p}": round(float(np.percentile(arr, p)), 3) for p in (50, 90, 99)}


def check(resp: httpx.Response, what: str) -> httpx.Response:
    if resp.status_code >= 300:
        raise RuntimeError(f"{what}: HTTP {resp.status_code}: {resp.text[:500]}")
    return resp


# --------------------------------------------------------------------------- workloads
async def w1(ingress: list[httpx.AsyncClient], n: int, c: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    lat: list[float] = []
    todo = iter(range(n))

    async def worker(j: int) -> None:
        # C workers, each taking the next workflow when its last one is done: at most C in flight.
        http = ingress[j // PER_CLIENT]
        for i in todo:
            oid = f"o-{run_id}-{i}"
            t0 = time.perf_counter()
            r = check(await http.post(f"/order/{oid}/run", json={"order_id": oid, "amount": 100 + i % 50}),
                      "order")
            lat.append(time.perf_counter() - t0)
            res = r.json()
            assert res == {"order_id": oid, "tracking": "T-" + oid}, res

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(j) for j in range(c)))
    wall = time.perf_counter() - t0
    assert len(lat) == n, len(lat)
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles_ms(lat),
            "notes": (f"N={n} workflows (Restate Workflow 'order', key = order id), at most C={c} in flight; "
                      f"3 sequential ctx.run steps each; one request-response POST /order/<id>/run per workflow")}


async def w1l(http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    lat: list[float] = []
    for i in range(WARMUP + n):
        oid = f"l-{run_id}-{i}"
        t0 = time.perf_counter()
        r = check(await http.post(f"/order/{oid}/run", json={"order_id": oid, "amount": 100}), "order")
        dt = time.perf_counter() - t0
        assert r.json()["tracking"] == "T-" + oid, r.text
        if i >= WARMUP:
            lat.append(dt)
    wall = sum(lat)
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles_ms(lat),
            "notes": f"{WARMUP} warm-up + {n} measured runs one at a time; wall_s = sum of measured latencies"}


async def w2(http: httpx.AsyncClient, k: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    times: list[float] = []
    expected = k * (k - 1) // 2
    for r in range(FANOUT_RUNS):
        t0 = time.perf_counter()
        resp = check(await http.post(f"/fanout/f-{run_id}-{r}/run", json=k), "fanout")
        times.append(time.perf_counter() - t0)
        assert resp.json() == expected, resp.text
    med = statistics.median(times)
    return {"n": k, "wall_s": med, "throughput_per_s": k / med, "latency_ms": percentiles_ms(times),
            "notes": (f"one workflow starting K={k} ctx.run steps concurrently (restate.gather), "
                      f"{FANOUT_RUNS} runs sequentially, wall_s = median; latency_ms = percentiles of the "
                      f"{FANOUT_RUNS} run times; runs_s=" + ",".join(f"{t:.3f}" for t in times))}


async def w3(http: httpx.AsyncClient, n: int) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    lat: list[float] = []
    for i in range(WARMUP + n):
        key = f"a-{run_id}-{i}"
        t0 = time.perf_counter()
        check(await http.post(f"/approval/{key}/run/send"), "start approval")
        check(await http.post(f"/approval/{key}/approve", json={"by": "alice"}), "approve")
        r = check(await http.get(f"/restate/workflow/approval/{key}/attach"), "attach")
        dt = time.perf_counter() - t0
        assert r.json() == {"by": "alice"}, r.text
        if i >= WARMUP:
            lat.append(dt)
    wall = sum(lat)
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles_ms(lat),
            "notes": (f"{WARMUP} warm-up + {n} measured, one at a time: start (POST /approval/<key>/run/send), "
                      f"signal (POST /approval/<key>/approve {{'by': 'alice'}}, a shared handler resolving the "
                      f"workflow's durable promise 'approve'), await result (GET /restate/workflow/approval/<key>/"
                      f"attach); wall_s = sum of measured latencies")}


async def admin_query(admin: httpx.AsyncClient, sql: str) -> list[dict[str, Any]]:
    r = check(await admin.post("/query", json={"query": sql}, headers={"accept": "application/json"}), "query")
    rows: list[dict[str, Any]] = r.json()["rows"]
    return rows


async def steps_executed(service_url: str) -> int:
    async with httpx.AsyncClient(base_url=service_url, timeout=10) as svc:
        return int(check(await svc.get("/_bench/stats"), "stats").json()["steps_executed"])


async def w4(http: httpx.AsyncClient, admin: httpx.AsyncClient, service_url: str, n: int,
             replays: int) -> dict[str, Any]:
    expected = n * (n - 1) // 2
    t0 = time.perf_counter()
    r = check(await http.post("/long/run", json=n), "long")
    run_s = time.perf_counter() - t0
    assert r.json() == expected, r.text
    inv_id = r.headers["x-restate-id"]

    # Where the recorded steps end in the journal (not timed): entries are Input, then a Run
    # command and its Run notification per step, then Output.
    rows = await admin_query(admin, f"SELECT index, entry_type FROM sys_journal WHERE id = '{inv_id}'")
    run_cmds = [row["index"] for row in rows if row["entry_type"] == "Command: Run"]
    assert len(run_cmds) == n, (len(run_cmds), n)
    last_run = max(run_cmds)
    copied = sum(1 for row in rows if row["index"] <= last_run + 1)  # + the last step's notification

    before = await steps_executed(service_url)
    times: list[float] = []
    new_ids: list[str] = []
    for _ in range(replays):
        t0 = time.perf_counter()
        pr = check(await admin.patch(f"/invocations/{inv_id}/restart-as-new", params={"from": last_run}),
                   "restart-as-new")
        new_id = pr.json()["new_invocation_id"]
        ar = check(await http.get(f"/restate/invocation/{new_id}/attach"), "attach")
        times.append(time.perf_counter() - t0)
        assert ar.json() == expected, ar.text
        new_ids.append(new_id)
    reexecuted = await steps_executed(service_url) - before
    if reexecuted:
        raise RuntimeError(f"replay executed {reexecuted} step bodies again; it should have executed none")
    # The copied prefix must be the original journal; only the Output is new.
    rows = await admin_query(admin, f"SELECT index, entry_type FROM sys_journal WHERE id = '{new_ids[-1]}'")
    assert sum(1 for row in rows if row["entry_type"] == "Command: Run") == n, len(rows)

    med = statistics.median(times)
    return {"wall_s": med, "throughput_per_s": copied / med, "activities_per_s": n / med,
            "latency_ms": percentiles_ms(times),
            "notes": (f"run_s={run_s:.3f} (Service handler long(n={n}): {n} sequential ctx.run steps, "
                      f"request->response); Restate has no client-side replayer: timed is the server re-running "
                      f"the finished invocation from its recorded journal: PATCH admin /invocations/<id>/"
                      f"restart-as-new?from={last_run} (copies the journal prefix of {copied} entries: Input + "
                      f"{n} Run commands + their {n} completions, into a new invocation) then GET /restate/"
                      f"invocation/<new id>/attach until its result; in between restate-server sends that journal "
                      f"to the service over HTTP/2 and the Python SDK re-executes the handler, resolving all {n} "
                      f"ctx.run from the journal (step bodies executed again: {reexecuted}, checked) and appends "
                      f"the Output. Includes the server-side journal copy (appended durably) and the HTTP hop, "
                      f"unlike an in-process replayer. {replays} replays, wall_s = median (replays_s="
                      + ",".join(f"{t:.3f}" for t in times) + f"); throughput_per_s = journal entries replayed/s "
                      f"({copied} per replay); activities_per_s = {n / med:.1f} (steps/s)")}


# --------------------------------------------------------------------------- main
def partitions() -> str:
    try:
        for line in (Path((RUN_DIR / "basedir").read_text().strip()) / "restate.toml").read_text().splitlines():
            if line.startswith("default-num-partitions"):
                return line.split("=")[1].strip()
    except OSError:
        pass
    return "?"


def durable_text() -> str:
    base = ""
    try:
        base = f" under {(RUN_DIR / 'basedir').read_text().strip()}/data"
    except OSError:
        pass
    return ("restate-server file-backed RocksDB stores on disk" + base + ": every journal entry, promise and "
            "invocation result is appended to the Bifrost log (replicated loglet, replication 1, this node's "
            "log-server) whose RocksDB commits each write batch with WAL fsync (fdatasync; "
            "log-server.rocksdb-disable-wal-fsync=false, the default, set explicitly) before acknowledging the "
            "appends in it (group commit: appends arriving together share one fsync); a ctx.run result is "
            "acknowledged to the handler and a result returned to the client only after it is in the log. "
            "The partition store (RocksDB) is derived state, rebuilt from the log")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    defaults = {"W1": 2000, "W1L": 200, "W2": FANOUT_K, "W3": 200, "W4": 2000}
    n = args.n if args.n is not None else defaults[args.workload]
    c = args.concurrency
    timeout = httpx.Timeout(args.timeout)
    ingress = [httpx.AsyncClient(base_url=args.ingress, timeout=timeout,
                                 limits=httpx.Limits(max_connections=PER_CLIENT, max_keepalive_connections=PER_CLIENT))
               for _ in range(-(-c // PER_CLIENT))]
    try:
        async with httpx.AsyncClient(base_url=args.admin, timeout=timeout) as admin:
            info = check(await admin.get("/version"), "admin version").json()
            http = ingress[0]
            if args.workload == "W1":
                out = await w1(ingress, n, c)
            elif args.workload == "W1L":
                out = await w1l(http, n)
            elif args.workload == "W2":
                out = await w2(http, n)
            elif args.workload == "W3":
                out = await w3(http, n)
            else:
                out = await w4(http, admin, args.service, n, args.replays)
    finally:
        for client in ingress:
            await client.aclose()
    server_version = info.get("version", "?")
    result: dict[str, Any] = {
        "system": "restate",
        "version": (f"restate-server {server_version} (npm @restatedev/restate-server-linux-x64), "
                    f"restate-sdk {_pkg_version('restate-sdk')}, hypercorn {_pkg_version('hypercorn')}"),
        "workload": args.workload,
        "n": out.pop("n", n),
        "wall_s": round(out.pop("wall_s"), 6),
        "throughput_per_s": round(out.pop("throughput_per_s"), 3),
        "latency_ms": out.pop("latency_ms"),
        "durable": durable_text(),
    }
    if "activities_per_s" in out:
        result["activities_per_s"] = round(out.pop("activities_per_s"), 3)
    result["notes"] = (f"{out.pop('notes')}; client: httpx {_pkg_version('httpx')} over HTTP/1.1 keep-alive to "
                       f"the ingress at {args.ingress} ({PER_CLIENT} connections per AsyncClient); services: "
                       f"restate_service.py, Restate Python SDK under one hypercorn process (asyncio); "
                       f"restate-server defaults otherwise ({partitions()} partitions)")
    result["machine"] = f"{platform.machine()} {os.cpu_count()} cores, Python {sys.version.split()[0]}"
    return result


def main() -> None:
    ingress_port = os.environ.get("BENCH_RESTATE_INGRESS_PORT", "18080")
    admin_port = os.environ.get("BENCH_RESTATE_ADMIN_PORT", "19070")
    service_port = os.environ.get("BENCH_RESTATE_SERVICE_PORT", "19080")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", required=True, choices=["W1", "W1L", "W2", "W3", "W4"])
    ap.add_argument("--n", type=int, default=None,
                    help="W1: 2000 workflows, W1L/W3: 200 measured, W2: K=500 steps, W4: 2000 steps")
    ap.add_argument("--concurrency", type=int, default=200, help="W1: workflows in flight")
    ap.add_argument("--out", default=None, help="also write the result JSON here")
    ap.add_argument("--replays", type=int, default=3, help="W4: number of timed replays (median)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, seconds")
    ap.add_argument("--ingress", default=f"http://{HOST}:{ingress_port}")
    ap.add_argument("--admin", default=f"http://{HOST}:{admin_port}")
    ap.add_argument("--service", default=f"http://{HOST}:{service_port}")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    text = json.dumps(result)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
