"""DBOS Transact (dbos-transact-py) peer of the side-by-side benchmark harness.

Runs ONE workload of shared/WORKLOADS.md per call against a DBOS system database on
an SQLite file (a fresh file in a temp dir) or on the local PostgreSQL server (a
dedicated database created for the run and dropped afterwards), and prints one JSON
object as the last stdout line (also written to --out).

    .envs/dbos/bin/python bench_dbos.py --workload W1 --db sqlite --out r.json

W1/W1L on PostgreSQL also run with separate processes (W6): ``--workers N`` starts N worker
processes that each launch DBOS on the same system database and dequeue from one DBOS queue;
this process is then only a DBOSClient that enqueues and polls for the results.

Set up the environment with setup_dbos.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from importlib.metadata import version as pkg_version
from typing import Any

import numpy as np
from dbos import DBOS, DBOSConfig

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_URL = "postgresql://postgres@127.0.0.1:5432/{db}"
FANOUT_K = 500
FANOUT_RUNS = 5
WARMUP = 20


# --- workflows (the same work every peer does) ------------------------------


@DBOS.step()
async def validate(order: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True}


@DBOS.step()
async def charge(order: dict[str, Any]) -> dict[str, Any]:
    return {"charged": order["amount"]}


@DBOS.step()
async def ship(order: dict[str, Any]) -> dict[str, Any]:
    return {"tracking": "T-" + order["order_id"]}


@DBOS.workflow()
async def order_wf(order: dict[str, Any]) -> dict[str, Any]:
    await validate(order)
    await charge(order)
    shipped = await ship(order)
    return {"order_id": order["order_id"], "tracking": shipped["tracking"]}


@DBOS.step()
async def item(i: int) -> int:
    return i


@DBOS.workflow()
async def fanout_wf(k: int) -> int:
    # DBOS assigns each step its id when the coroutine is created, so gathering
    # async steps is deterministic and runs them concurrently.
    results = await asyncio.gather(*(item(i) for i in range(k)))
    return sum(results)


@DBOS.workflow()
async def approval_wf() -> Any:
    return await DBOS.recv_async("approve", timeout_seconds=60)


@DBOS.step()
async def echo(i: int) -> int:
    _ECHO_CALLS[0] += 1
    return i


# Set by the body of long_wf each time it (re-)executes: when execution begins and ends.
_LONG_BODY_STARTS: list[float] = []
_LONG_BODY_ENDS: list[float] = []
# How many times echo's body actually ran (a replayed step must not run it).
_ECHO_CALLS = [0]


@DBOS.workflow()
async def long_wf(n: int) -> int:
    _LONG_BODY_STARTS.append(time.perf_counter())
    total = 0
    for i in range(n):
        total += await echo(i)
    _LONG_BODY_ENDS.append(time.perf_counter())
    return total


# --- helpers ----------------------------------------------------------------


def percentiles(samples_s: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_s, dtype=np.float64) * 1000.0
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3)}


def _order_input(i: int) -> dict[str, Any]:
    return {"order_id": f"o{i}", "amount": 100 + i % 7}


async def _one_order(i: int) -> float:
    inp = _order_input(i)
    t0 = time.perf_counter()
    handle = await DBOS.start_workflow_async(order_wf, inp)
    res = await handle.get_result()
    dt = time.perf_counter() - t0
    assert res == {"order_id": inp["order_id"], "tracking": "T-" + inp["order_id"]}, res
    return dt


# --- workloads --------------------------------------------------------------


async def w1(n: int, c: int) -> dict[str, Any]:
    lat: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            lat.append(await _one_order(i))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(c, n))))
    wall = time.perf_counter() - t0
    assert len(lat) == n
    return {
        "wall_s": wall,
        "throughput_per_s": n / wall,
        "latency_ms": percentiles(lat),
        "notes": (
            f"{n} workflows, at most {min(c, n)} in flight (C coroutines each doing "
            "await DBOS.start_workflow_async(order) then await handle.get_result()); "
            "order = 3 sequential async @DBOS.step()s; wall = first start to last result"
        ),
    }


async def w1l(n: int) -> dict[str, Any]:
    for i in range(WARMUP):
        await _one_order(-1 - i)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        lat.append(await _one_order(i))
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "throughput_per_s": n / wall,
        "latency_ms": percentiles(lat),
        "notes": (f"{WARMUP} warm-up + {n} measured, one at a time: start_workflow_async(order) -> get_result()"),
    }


async def w2(k: int, runs: int) -> dict[str, Any]:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        handle = await DBOS.start_workflow_async(fanout_wf, k)
        res = await handle.get_result()
        walls.append(time.perf_counter() - t0)
        assert res == k * (k - 1) // 2, res
    med = statistics.median(walls)
    return {
        "wall_s": med,
        "throughput_per_s": k / med,
        "latency_ms": percentiles(walls),
        "notes": (
            f"one workflow doing asyncio.gather of {k} async @DBOS.step()s "
            f"(no child workflows or queues needed); {runs} runs, wall_s = median, "
            f"latency_ms over the {runs} runs; runs_s=" + json.dumps([round(w, 4) for w in walls])
        ),
    }


async def _one_signal() -> float:
    t0 = time.perf_counter()
    handle = await DBOS.start_workflow_async(approval_wf)
    await DBOS.send_async(handle.get_workflow_id(), {"by": "alice"}, topic="approve")
    res = await handle.get_result()
    dt = time.perf_counter() - t0
    assert res == {"by": "alice"}, res
    return dt


async def w3(n: int, poll_s: float | None) -> dict[str, Any]:
    for _ in range(WARMUP):
        await _one_signal()
    lat = []
    t0 = time.perf_counter()
    for _ in range(n):
        lat.append(await _one_signal())
    wall = time.perf_counter() - t0
    how = (
        f"SQLite has no push notifications: DBOS's listener thread polls the notifications table "
        f"every notification_listener_polling_interval_sec={poll_s} s (DBOS default 1.0 s)"
        if poll_s is not None
        else "PostgreSQL: DBOS's LISTEN/NOTIFY (trigger pg_notify) wakes recv"
    )
    return {
        "wall_s": wall,
        "throughput_per_s": n / wall,
        "latency_ms": percentiles(lat),
        "notes": (
            f"{WARMUP} warm-up + {n} measured, one at a time: start_workflow_async(approval) "
            "whose body is await DBOS.recv_async('approve'); client await DBOS.send_async(id, "
            "{'by':'alice'}, topic='approve'); await get_result(). " + how
        ),
    }


REPLAYS = 5


async def w4(n: int) -> dict[str, Any]:
    # 1. run long(n) once
    t0 = time.perf_counter()
    handle = await DBOS.start_workflow_async(long_wf, n)
    res = await handle.get_result()
    run_s = time.perf_counter() - t0
    expected = n * (n - 1) // 2
    assert res == expected, res
    wf_id = handle.get_workflow_id()
    steps = await DBOS.list_workflow_steps_async(wf_id)
    n_steps = len(steps)
    last_fid = max(s["function_id"] for s in steps)
    assert n_steps == n and _ECHO_CALLS[0] == n, (n_steps, _ECHO_CALLS, n)

    # 2. rewind it past its last step, REPLAYS times: DBOS keeps every recorded step
    # output, re-enqueues the SAME workflow id on its internal queue, and a queue worker
    # re-executes the workflow function; each of the n step calls finds its recorded
    # output and returns it without running the step (checked with a call counter).
    times, calls, waits, totals = [], [], [], []
    for _ in range(REPLAYS):
        _LONG_BODY_STARTS.clear()
        _LONG_BODY_ENDS.clear()
        t_req = time.perf_counter()
        rh = await DBOS.rewind_workflow_async(wf_id, start_step=last_fid + 1)
        t_rewound = time.perf_counter()
        res2 = await rh.get_result(polling_interval_sec=0.1)
        t_done = time.perf_counter()
        assert res2 == expected, res2
        assert len(_LONG_BODY_STARTS) == 1 and len(_LONG_BODY_ENDS) == 1, _LONG_BODY_STARTS
        t_body = _LONG_BODY_STARTS[0]
        times.append(_LONG_BODY_ENDS[0] - t_body)
        calls.append(t_rewound - t_req)
        waits.append(t_body - t_rewound)
        totals.append(t_done - t_req)
    assert _ECHO_CALLS[0] == n, ("a replay re-ran steps", _ECHO_CALLS, n)
    steps_after = await DBOS.list_workflow_steps_async(wf_id)
    assert len(steps_after) == n, len(steps_after)
    med = statistics.median(times)

    # 3. for reference, once: fork_workflow past the last step (copies the n recorded
    # outputs to a NEW workflow id, which a queue worker then re-executes the same way).
    _LONG_BODY_STARTS.clear()
    _LONG_BODY_ENDS.clear()
    f_req = time.perf_counter()
    fh = await DBOS.fork_workflow_async(wf_id, last_fid + 1)
    res3 = await fh.get_result(polling_interval_sec=0.1)
    f_done = time.perf_counter()
    assert res3 == expected and _ECHO_CALLS[0] == n, (res3, _ECHO_CALLS)
    fork_body_s = _LONG_BODY_ENDS[0] - _LONG_BODY_STARTS[0]

    def fmt(xs: list[float]) -> str:
        return ",".join(f"{x:.3f}" for x in xs)

    return {
        "wall_s": med,
        "throughput_per_s": n_steps / med,
        "latency_ms": percentiles(times),
        "notes": (
            f"run_s={run_s:.3f} (long({n}): {n} sequential async @DBOS.step()s, first run, "
            f"start->result). Replay = DBOS.rewind_workflow_async(id, start_step={last_fid + 1}) of "
            f"the finished workflow: all {n_steps} recorded step outputs kept, the same workflow id "
            "re-enqueued and re-executed by DBOS, each step call returning its recorded output "
            "(one DB read per step) without running it (a call counter proves no step re-ran). "
            "TIMED (wall_s): from the first to the last line of the re-executed workflow body, "
            f"i.e. the {n} replayed step calls (timestamps taken inside the body); NOT timed: the "
            "rewind call, the wait for DBOS's internal queue poller (1 s interval) to pick the "
            "workflow up, and DBOS recording the result again + the client's get_result (0.1 s "
            "polling; 1 ms polling was tried but its reads slowed the replay itself up to 2x on "
            f"PostgreSQL). {REPLAYS} replays, wall_s = median (replays_s={fmt(times)}; "
            f"rewind_call_s={fmt(calls)}; queue_wait_s={fmt(waits)}; "
            f"total rewind->get_result_s={fmt(totals)}). throughput_per_s = recorded steps / wall_s. "
            f"Reference: fork_workflow_async past the last step (copies the {n_steps} outputs to a "
            f"new id; same re-execution) body {fork_body_s:.3f} s, fork->get_result "
            f"{f_done - f_req:.3f} s."
        ),
    }


# --- storage setup / teardown -----------------------------------------------


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql)


def _durable_desc(engine: Any, db: str, path: str | None) -> str:
    import sqlalchemy as sa

    with engine.connect() as conn:
        if db == "sqlite":
            jm = conn.execute(sa.text("PRAGMA journal_mode")).scalar()
            sync = conn.execute(sa.text("PRAGMA synchronous")).scalar()
            names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
            return (
                f"DBOS system database in an SQLite FILE ({path}); DBOS sets no journal/sync pragma "
                f"(only busy_timeout, foreign_keys, BEGIN IMMEDIATE), so SQLite's defaults apply: "
                f"journal_mode={jm}, synchronous={sync} ({names.get(sync, '?')}) = fsync of the "
                "rollback journal and the db file on every commit; DBOS commits the workflow status "
                "and every step output before going on"
            )
        fsync = conn.execute(sa.text("SHOW fsync")).scalar()
        sc = conn.execute(sa.text("SHOW synchronous_commit")).scalar()
        wsm = conn.execute(sa.text("SHOW wal_sync_method")).scalar()
        ver = conn.execute(sa.text("SHOW server_version")).scalar()
        return (
            f"DBOS system database on local PostgreSQL {ver} (127.0.0.1:5432, database created for "
            f"the run and dropped after): fsync={fsync}, synchronous_commit={sc}, "
            f"wal_sync_method={wsm} = WAL flushed on every commit; DBOS commits the workflow status "
            "and every step output before going on"
        )


# --- several worker processes (W6): DBOS queue workers + a DBOSClient ----------

QUEUE = "bench_w1"
APP_VERSION = "bench-w6"
DONE = ["SUCCESS", "ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"]


def serve_worker(args: argparse.Namespace) -> int:
    """A worker process: launch DBOS on the shared system database, listen to QUEUE until SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    config: DBOSConfig = {"name": "dbos-bench", "log_level": "WARNING", "system_database_url": args.db_url,
                          "executor_id": f"bench-worker-{args.worker_index}", "application_version": APP_VERSION}
    DBOS(config=config)
    DBOS.launch()
    try:
        DBOS.register_queue(QUEUE, polling_interval_sec=args.queue_poll_ms / 1000.0)
        # Ready once DBOS's queue manager runs the queue's dequeue thread (it checks every 1 s).
        deadline = time.monotonic() + 30
        while not any(t.name == f"queue-worker-{QUEUE}" and t.is_alive() for t in threading.enumerate()):
            if time.monotonic() > deadline or stop.is_set():
                raise RuntimeError(f"DBOS started no dequeue thread for {QUEUE}")
            time.sleep(0.01)
        with open(args.ready_file, "w") as f:
            f.write(str(os.getpid()))
        stop.wait()
    finally:
        DBOS.destroy(workflow_completion_timeout_sec=5)
    return 0


def start_workers(procs: list[subprocess.Popen[bytes]], k: int, db_url: str, args: argparse.Namespace,
                  tmp: str) -> None:
    def wait_ready(i: int) -> None:
        path, deadline = os.path.join(tmp, f"ready-{i}"), time.monotonic() + 60
        while not os.path.exists(path):
            if procs[i].poll() is not None:
                raise RuntimeError(f"DBOS worker {i} exited with code {procs[i].returncode} before it was ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"DBOS worker {i} not ready after 60 s")
            time.sleep(0.02)

    for i in range(k):
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--workload", "W1", "--role",
                                       "worker", "--worker-index", str(i), "--db-url", db_url, "--ready-file",
                                       os.path.join(tmp, f"ready-{i}"), "--queue-poll-ms", str(args.queue_poll_ms)],
                                      stdin=subprocess.DEVNULL))
        if i == 0:
            wait_ready(0)  # the first one creates the system database's tables; the others then start at once
    for i in range(1, k):
        wait_ready(i)


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for i, p in enumerate(procs):
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            print(f"warning: DBOS worker {i} did not stop within 30 s of SIGTERM: killed", file=sys.stderr)
            p.kill()
            p.wait()


async def w1_remote(client: Any, n: int, c: int, poll_s: float, first: int = 0) -> tuple[float, list[float]]:
    """Enqueue n orders (uuid4 ids) on QUEUE with at most c in flight; one batched status poll for all of them."""
    inflight: dict[str, tuple[float, dict[str, Any]]] = {}
    lat: list[float] = []
    nxt = first

    async def enqueue(i: int) -> None:
        inp, wid = _order_input(i), str(uuid.uuid4())
        t = time.perf_counter()
        await client.enqueue_async({"workflow_name": order_wf.dbos_function_name, "queue_name": QUEUE,
                                    "workflow_id": wid, "app_version": APP_VERSION}, inp)
        inflight[wid] = (t, inp)

    async def refill(k: int) -> None:
        nonlocal nxt
        todo = range(nxt, min(nxt + k, first + n))
        nxt = todo.stop
        await asyncio.gather(*(enqueue(i) for i in todo))

    t0 = time.perf_counter()
    await refill(c)
    while inflight:
        done = await client.list_workflows_async(workflow_ids=list(inflight), status=DONE, load_input=False)
        now = time.perf_counter()
        for st in done:
            t, inp = inflight.pop(st.workflow_id)
            want = {"order_id": inp["order_id"], "tracking": "T-" + inp["order_id"]}
            assert st.status == "SUCCESS" and st.output == want, (st.workflow_id, st.status, st.output, st.error)
            lat.append(now - t)
        if done:
            await refill(len(done))
        else:
            await asyncio.sleep(poll_s)
    return time.perf_counter() - t0, lat


async def run_remote(args: argparse.Namespace, client: Any, n: int) -> dict[str, Any]:
    poll_s = args.client_poll_ms / 1000.0
    how = (f"{args.workers} worker process(es), each DBOS.launch() on the same PostgreSQL system database + "
           f"DBOS.register_queue({QUEUE!r}, polling_interval_sec={args.queue_poll_ms / 1000.0}); this process "
           "is a DBOSClient: enqueue_async (uuid4 ids), and ONE list_workflows_async(workflow_ids=in-flight, "
           f"status=done) poll every {poll_s} s while nothing finished (latency includes up to that interval)")
    if args.workload == "W1L":
        await w1_remote(client, WARMUP, 1, poll_s, first=-WARMUP)
        wall, lat = await w1_remote(client, n, 1, poll_s)
        how = f"{WARMUP} warm-up + {n} measured, one at a time; " + how
    else:
        wall, lat = await w1_remote(client, n, args.concurrency, poll_s)
        how = f"{n} workflows, at most {min(args.concurrency, n)} in flight; " + how
    return {"wall_s": wall, "throughput_per_s": n / wall, "latency_ms": percentiles(lat), "notes": how}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", required=True, choices=["W1", "W1L", "W2", "W3", "W4"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--sqlite-poll-ms",
        type=float,
        default=1.0,
        help="SQLite only: notification_listener_polling_interval_sec in ms (DBOS default 1000; "
        "DBOS minimum 1). Only W3 (recv) waits on it.",
    )
    ap.add_argument("--workers", type=int, default=0,
                    help="PostgreSQL W1/W1L: N separate DBOS worker processes on a queue, this process a "
                    "DBOSClient (0: workflows run in this process, started with DBOS.start_workflow_async)")
    ap.add_argument("--queue-poll-ms", type=float, default=10.0,
                    help="--workers: the queue's polling_interval_sec in ms (DBOS default 1000)")
    ap.add_argument("--client-poll-ms", type=float, default=5.0,
                    help="--workers: how often the client polls for finished workflows")
    ap.add_argument("--role", choices=["driver", "worker"], default="driver", help=argparse.SUPPRESS)
    ap.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--db-url", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "worker":
        return serve_worker(args)
    if args.workers and (args.db != "postgres" or args.workload not in ("W1", "W1L")):
        ap.error("--workers runs W1 or W1L with --db postgres")

    # W2: n is K, the number of concurrent steps (default 500); it always runs 5 times.
    defaults = {"W1": 2000, "W1L": 200, "W2": FANOUT_K, "W3": 200, "W4": 2000}
    n = args.n if args.n is not None else defaults[args.workload]

    # Turn SIGTERM into SystemExit so the database / temp dir are still cleaned up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    tmpdir: str | None = None
    pg_db: str | None = None
    sqlite_path: str | None = None
    poll_s: float | None = None
    config: DBOSConfig = {"name": "dbos-bench", "log_level": "WARNING"}
    if args.db == "sqlite":
        tmpdir = tempfile.mkdtemp(prefix="dbos_bench_")
        sqlite_path = os.path.join(tmpdir, "dbos_sys.sqlite")
        config["system_database_url"] = f"sqlite:///{sqlite_path}"
        poll_s = args.sqlite_poll_ms / 1000.0
        config["notification_listener_polling_interval_sec"] = poll_s
    else:
        pg_db = f"dbos_bench_{os.getpid()}"
        if args.workers:
            tmpdir = tempfile.mkdtemp(prefix="dbos_bench_")

    result: dict[str, Any] = {}
    dbos: DBOS | None = None
    try:
        if pg_db is not None:
            _pg_admin(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
            _pg_admin(f'CREATE DATABASE "{pg_db}"')
            config["system_database_url"] = PG_URL.format(db=pg_db)
        if args.workers:
            assert pg_db is not None and tmpdir is not None
            from dbos import DBOSClient

            workers: list[subprocess.Popen[bytes]] = []
            try:
                start_workers(workers, args.workers, PG_URL.format(db=pg_db), args, tmpdir)
                client = DBOSClient(system_database_url=PG_URL.format(db=pg_db), application_name="dbos-bench",
                                    system_database_pool_size=10)
                try:
                    durable = _durable_desc(client._sys_db.engine, args.db, None)
                    r = asyncio.run(run_remote(args, client, n))
                finally:
                    client.destroy()
            finally:
                stop_workers(workers)
        else:
            dbos = DBOS(config=config)
            DBOS.launch()
            durable = _durable_desc(dbos._sys_db.engine, args.db, sqlite_path)

            async def run() -> dict[str, Any]:
                if args.workload == "W1":
                    return await w1(n, args.concurrency)
                if args.workload == "W1L":
                    return await w1l(n)
                if args.workload == "W2":
                    return await w2(n, FANOUT_RUNS)
                if args.workload == "W3":
                    return await w3(n, poll_s)
                return await w4(n)

            r = asyncio.run(run())
        result = {
            "system": f"dbos-{args.db}",
            "version": pkg_version("dbos"),
            "workload": args.workload,
            "n": n,
            "wall_s": round(r["wall_s"], 6),
            "throughput_per_s": round(r["throughput_per_s"], 3),
            "latency_ms": r["latency_ms"],
            "durable": durable,
            "notes": r["notes"],
        }
        if args.workload == "W1":
            result["concurrency"] = min(args.concurrency, n)
        if args.db == "postgres":
            result["workers"] = args.workers or 1
            result["client"] = "separate process (DBOSClient)" if args.workers else "in the worker's process"
    finally:
        if dbos is not None:
            DBOS.destroy(workflow_completion_timeout_sec=5)
        if pg_db is not None:
            try:
                _pg_admin(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
            except Exception as e:  # pragma: no cover - reported, not hidden
                print(f"warning: could not drop database {pg_db}: {e}", file=sys.stderr)
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)

    line = json.dumps(result)
    if args.out:
        with open(args.out, "w") as f:
            f.write(line + "\n")
    sys.stdout.flush()
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    logging.getLogger("dbos").setLevel(logging.WARNING)
    sys.exit(main())
