"""W6 / W7 of ../shared/WORKLOADS.md: W1 "order" with N worker PROCESSES on one store, clients in their own processes.

    python benchmarks/peers/bench_scale.py --store postgresql://postgres@127.0.0.1:5432/test --workers 1 3
    python benchmarks/peers/bench_scale.py --store lmdb:// --workers 1 2 4          (a fresh temp dir)
    python benchmarks/peers/bench_scale.py --store ... --workload W1L --workers 1   (one at a time: latency)

For each worker count: a fresh store (PostgreSQL: a new schema ``bench_<hex>``, dropped at the end; LMDB:
a new temp dir, removed at the end), N worker processes (multiprocessing, "spawn") each running one
``duro.Worker`` with the W1 workflow and activities, K client processes that start their share of the
workflows (uuid4 ids) with at most C in flight in all and wait for every result. Workers report ready
through a pipe once their ``Worker`` is polling; clients connect (W1L: and run their warm-up), report
ready, and all get "go" at once. throughput = n / (earliest first start of any client -> latest last
result of any client), monotonic clocks; latency = each workflow's start -> result, over all clients.
Workers get SIGTERM at the end and shut their ``Worker`` down cleanly.

Prints one JSON line per configuration, then (last line, also --out) {"runs": [...], "scaling": {...}}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing as mp
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as c

import duro

TASK_QUEUE = "bench-scale"
DEFAULT_N = {"W1": 2000, "W1L": 200}
WARMUP_W1L = 20
DURO_PG_OPTIONS = ("schema", "pool_min", "pool_max", "lease_s", "statement_timeout_ms")
READY_TIMEOUT_S = 60.0


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class _CountingHandler(logging.Handler):
    """Counts the warnings and errors a child process logs (they are printed to stderr as well)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 5:
            self.first.append(f"{record.name}: {record.getMessage()}"[:300])


def _child_logging(role: str) -> _CountingHandler:
    logging.basicConfig(level=logging.WARNING, format=f"[{role} pid {os.getpid()}] %(levelname)s %(name)s: %(message)s")
    counter = _CountingHandler()
    logging.getLogger().addHandler(counter)
    return counter


# ---------------------------------------------------------------- worker process


def worker_main(url: str, index: int, conn: Connection) -> None:
    counter = _child_logging(f"worker {index}")

    async def main() -> dict[str, Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with duro.Client.connect(url) as client:
            async with duro.Worker(client, task_queue=TASK_QUEUE, workflows=[c.order],
                                   activities=[c.validate, c.charge, c.ship], identity=f"scale-{index}") as worker:
                conn.send(("ready", os.getpid()))
                cpu0 = time.process_time()
                store0 = c.store_counters(client.store)
                await stop.wait()
                cpu = time.process_time() - cpu0
                store1 = c.store_counters(client.store)
            # The group commit's work while measured, where the store counts it: batches, ops, seconds
            # from a batch's start to its commit (ops, GIL held, plus the wait for LMDB's write lock,
            # also given alone), seconds in commit + syncs (GIL released; the meta sync also alone).
            store = {k: round(store1[k] - store0[k], 3) for k in store0}
            return {**worker.stats, "cpu_s": round(cpu, 2), "store": store}

    stats = _run(main())
    conn.send(("stopped", {"pid": os.getpid(), **stats, "log_warnings": counter.count,
                           "first_warnings": counter.first}))
    conn.close()


# ---------------------------------------------------------------- client process


async def _client(url: str, workload: str, n: int, concurrency: int, result_timeout: float,
                  conn: Connection) -> dict[str, Any]:
    lat: list[float] = []
    errors: list[str] = []
    stuck: list[str] = []

    async def one(client: duro.Client, i: int, record: bool) -> None:
        wid = str(uuid.uuid4())
        inp = {"order_id": wid, "amount": i}
        t = time.monotonic()
        try:
            handle = await client.start_workflow(c.order, inp, id=wid, task_queue=TASK_QUEUE)
            r = await handle.result(timeout=result_timeout)
        except TimeoutError:  # asyncio.TimeoutError (the same class since 3.11)
            stuck.append(wid)
            return
        except Exception as e:  # reported, not hidden
            errors.append(f"{wid}: {type(e).__name__}: {e}"[:300])
            return
        dt = time.monotonic() - t
        if r != {"order_id": wid, "tracking": "T-" + wid}:
            errors.append(f"{wid}: wrong result {r!r}"[:300])
        elif record:
            lat.append(dt)

    loop = asyncio.get_running_loop()
    async with duro.Client.connect(url) as client:
        if workload == "W1L":
            for i in range(WARMUP_W1L):
                await one(client, -1 - i, False)
        conn.send(("ready", os.getpid()))
        msg = await loop.run_in_executor(None, conn.recv)
        assert msg == "go", msg
        t_first = time.monotonic()
        cpu0 = time.process_time()
        if workload == "W1L":
            for i in range(n):
                await one(client, i, True)
        else:
            sem = asyncio.Semaphore(concurrency)

            async def bounded(i: int) -> None:
                async with sem:
                    await one(client, i, True)

            await asyncio.gather(*(bounded(i) for i in range(n)))
        t_last = time.monotonic()
        cpu = time.process_time() - cpu0
    return {"t_first": t_first, "t_last": t_last, "lat": lat, "errors": errors, "stuck": stuck,
            "cpu_s": round(cpu, 2)}


def client_main(url: str, index: int, workload: str, n: int, concurrency: int, result_timeout: float,
                conn: Connection) -> None:
    counter = _child_logging(f"client {index}")
    res = _run(_client(url, workload, n, concurrency, result_timeout, conn))
    conn.send(("result", {**res, "pid": os.getpid(), "log_warnings": counter.count,
                          "first_warnings": counter.first}))
    conn.close()


# ---------------------------------------------------------------- stores


def _pg_dsn(url: str) -> str:
    """The URL without duro's own options (what asyncpg accepts)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in DURO_PG_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("schema", schema)])))


async def _pg(dsn: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def pg_durable(base_url: str) -> str:
    dsn = _pg_dsn(base_url)
    vals = {k: _run(_pg(dsn, f"SHOW {k}"))[0][0]
            for k in ("server_version", "fsync", "synchronous_commit", "wal_sync_method")}
    return (f"PostgreSQL {vals['server_version']} (schema created for the run, dropped after): "
            f"fsync={vals['fsync']}, synchronous_commit={vals['synchronous_commit']}, "
            f"wal_sync_method={vals['wal_sync_method']} = WAL flushed on every group commit before any caller "
            "or worker sees it")




def make_store(base: str) -> tuple[str, str, Any]:
    """(url of a fresh store, kind, cleanup())."""
    scheme = base.split("://", 1)[0]
    if scheme in ("postgresql", "postgres"):
        schema = f"bench_{secrets.token_hex(6)}"
        if "schema=" in urlsplit(base).query:
            print(f"note: the schema of --store is replaced by the fresh schema {schema}", file=sys.stderr)
        dsn = _pg_dsn(base)

        def drop() -> None:
            try:
                _run(_pg(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            except Exception as e:  # reported, not hidden
                print(f"warning: could not drop schema {schema}: {e}", file=sys.stderr)

        return _with_schema(base, schema), "postgresql", drop
    if scheme == "lmdb":
        parent = base.split("://", 1)[1] or None
        if parent:
            Path(parent).mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix="duro-scale-", dir=parent)
        return f"lmdb://{tmp}", "lmdb", lambda: shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(f"--store must be a postgresql:// URL or lmdb://[DIR], not {base!r}")


# ---------------------------------------------------------------- driver


def _await_msg(conn: Connection, proc: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if conn.poll(0.05):
            return conn.recv()
        if not proc.is_alive():
            if conn.poll(0):  # it sent its message and exited meanwhile
                return conn.recv()
            raise RuntimeError(f"{what} (pid {proc.pid}) exited with code {proc.exitcode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} (pid {proc.pid}) not ready after {timeout:.0f} s")


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine (Linux; zeros elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def run_config(args: argparse.Namespace, workers: int, durable: str) -> dict[str, Any]:
    url, kind, cleanup = make_store(args.store)
    ctx = mp.get_context("spawn")
    clients = 1 if args.workload == "W1L" else args.clients
    concurrency = 1 if args.workload == "W1L" else args.concurrency
    wprocs: list[tuple[Any, Connection]] = []
    cprocs: list[tuple[Any, Connection]] = []
    worker_stats: list[dict[str, Any]] = []
    problems: list[str] = []
    results: list[dict[str, Any]] = []
    t_setup = time.monotonic()
    try:
        for i in range(workers):
            r, w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_main, args=(url, i, w), name=f"duro-scale-worker-{i}")
            p.start()
            w.close()
            wprocs.append((p, r))
        for i, (p, r) in enumerate(wprocs):
            msg = _await_msg(r, p, f"worker {i}", READY_TIMEOUT_S)
            assert msg[0] == "ready", msg
        workers_ready_s = time.monotonic() - t_setup
        shares_n, shares_c = _split(args.n, clients), _split(concurrency, clients)
        for i in range(clients):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=client_main, name=f"duro-scale-client-{i}",
                            args=(url, i, args.workload, shares_n[i], max(1, shares_c[i]), args.result_timeout, child))
            p.start()
            child.close()
            cprocs.append((p, parent))
        for i, (p, conn) in enumerate(cprocs):
            msg = _await_msg(conn, p, f"client {i}", READY_TIMEOUT_S)
            assert msg[0] == "ready", msg
        busy0, total0 = _cpu_ticks()
        for _, conn in cprocs:
            conn.send("go")
        for i, (p, conn) in enumerate(cprocs):
            msg = _await_msg(conn, p, f"client {i}", args.timeout)
            assert msg[0] == "result", msg
            results.append(msg[1])
        busy1, total1 = _cpu_ticks()
    finally:
        for p, _ in cprocs:  # a client exits by itself once it sent its result
            p.join(5.0)
            if p.is_alive():
                p.terminate()
        for p, _ in wprocs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker shuts down cleanly and reports its stats
        for i, (p, r) in enumerate(wprocs):
            with contextlib.suppress(EOFError, OSError, RuntimeError):
                msg = _await_msg(r, p, f"worker {i}", 30.0)
                if msg[0] == "stopped":
                    worker_stats.append(msg[1])
            p.join(30.0)
            if p.is_alive():
                problems.append(f"worker {i} (pid {p.pid}) did not stop within 30 s of SIGTERM: killed")
                p.kill()
                p.join()
            elif p.exitcode != 0:
                problems.append(f"worker {i} (pid {p.pid}) exited with code {p.exitcode}")
        for p, _ in cprocs:
            p.join(10.0)
            if p.is_alive():
                p.kill()
                p.join()
        cleanup()

    lat = [x for r in results for x in r["lat"]]
    errors = [e for r in results for e in r["errors"]]
    stuck = [s for r in results for s in r["stuck"]]
    wall = max(r["t_last"] for r in results) - min(r["t_first"] for r in results)
    warn = sum(s.get("log_warnings", 0) for s in worker_stats) + sum(r["log_warnings"] for r in results)
    first_warn = [w for s in [*worker_stats, *results] for w in s.get("first_warnings", [])][:5]
    per_worker = [{k: s.get(k) for k in ("workflow_tasks", "activities", "replays", "fused", "task_failures",
                                         "stale_activities", "cpu_s", "store")} for s in worker_stats]
    busy_pct = round(100.0 * (busy1 - busy0) / (total1 - total0), 1) if total1 > total0 else None
    how = (f"{WARMUP_W1L} warm-up + {args.n} measured, one at a time (1 client process)" if args.workload == "W1L"
           else f"{clients} client process(es), at most {concurrency} in flight in all")
    out: dict[str, Any] = {
        "system": "duro", "version": duro.__version__, "workload": args.workload, "n": args.n,
        "wall_s": round(wall, 5), "throughput_per_s": round(args.n / wall, 1),
        "latency_ms": c.percentiles_ms(lat) if lat else None,
        "durable": durable, "workers": workers, "clients": clients, "concurrency": concurrency, "store": kind,
        "notes": (f"{workers} worker process(es) (multiprocessing spawn, one duro.Worker each, uvloop), {how}; "
                  "uuid4 ids; wall = earliest first start to latest last result across clients; "
                  f"workers ready {workers_ready_s:.2f} s after spawn; store {url.split('?')[0]}"
                  + ("?schema=" + url.split("schema=")[1] if kind == "postgresql" else "")),
        "per_worker": per_worker, "client_cpu_s": [r["cpu_s"] for r in results],
        "machine_cpu_busy_pct": busy_pct, "log_warnings": warn,
    }
    if first_warn:
        out["first_warnings"] = first_warn
    if errors or stuck or problems or len(lat) != args.n:
        out["errors"] = {"failed": len(errors), "stuck": len(stuck), "measured": len(lat),
                         "first_failed": errors[:5], "first_stuck": stuck[:5], "processes": problems}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="postgresql://... (a fresh schema is made) or lmdb://[DIR]")
    p.add_argument("--workers", type=int, nargs="+", default=[1], help="worker process counts, run in turn")
    p.add_argument("--n", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--clients", type=int, default=1, help="client processes (W1; W1L uses one)")
    p.add_argument("--workload", choices=list(DEFAULT_N), default="W1")
    p.add_argument("--result-timeout", type=float, default=120.0,
                   help="a workflow without a result after this many seconds is reported as stuck")
    p.add_argument("--timeout", type=float, default=1200.0, help="limit for one configuration's measured part")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.n is None:
        a.n = DEFAULT_N[a.workload]
    if a.clients < 1 or a.concurrency < 1 or a.n < 1 or min(a.workers) < 1:
        sys.exit("--n, --concurrency, --clients and --workers must be positive")
    # SIGTERM (and SIGINT, which a shell ignores in background jobs) -> SystemExit, so the workers are stopped
    # and the schema / temp dir removed on the way out.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(143))
    kind = a.store.split("://", 1)[0]
    durable = pg_durable(a.store) if kind in ("postgresql", "postgres") else c.LMDB_DURABLE
    runs = []
    for w in a.workers:
        r = run_config(a, w, durable)
        print(json.dumps(r), flush=True)
        runs.append(r)
    combined: dict[str, Any] = {"system": "duro", "version": duro.__version__, "workload": a.workload,
                                "store": runs[0]["store"], "runs": runs}
    if a.workload == "W1" and len(runs) > 1:
        base = runs[0]["throughput_per_s"]
        combined["scaling"] = {str(r["workers"]): {"throughput_per_s": r["throughput_per_s"],
                                                   "vs_first": round(r["throughput_per_s"] / base, 2)}
                               for r in runs}
    c.emit(combined, a.out)


if __name__ == "__main__":
    main()
