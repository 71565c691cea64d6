"""W6 side by side on ONE PostgreSQL: duro and DBOS, one run after another, then a table of ratios.

    python benchmarks/peers/run_pg.py [--workers 1 3] [--quick]        (make bench-pg)

Runs, each in its own process tree, on the local server (127.0.0.1:5432, database ``test``; every run
makes its own schema / database and drops it):

- duro W1 with 1 and 3 worker processes and a client process (bench_scale.py), W1L the same way with
  1 worker, and W1 / W1L with worker and client in one process (bench_duro.py on a fresh schema);
- DBOS (bench_dbos.py --db postgres) W1 / W1L with 1 and 3 queue worker processes and a DBOSClient
  process (--workers N), and W1 / W1L in one process (DBOS.start_workflow_async).

The results go to benchmarks/peers/results/pg_*.json; the table is printed and written to
benchmarks/peers/results/pg_table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from typing import Any

from bench_scale import make_store
from run_all import HERE, RESULTS, ROOT, RUN_TIMEOUT_S, SYSTEMS, metric, python_of, sh

OUT = RESULTS  # files pg_*.json (git-ignored, and not matched by run_all's *-W*.json) and pg_table.md
DBOS = SYSTEMS["dbos-postgres"]
DURO = SYSTEMS["duro-lmdb"]  # duro's own .venv


def run(name: str, cmd: list[str]) -> list[dict[str, Any]]:
    """Run one benchmark command (its --out is OUT/pg_NAME.json); its result(s), or one error record."""
    out = OUT / f"pg_{name}.json"
    cmd = [*cmd, "--out", str(out)]
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    t = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, timeout=RUN_TIMEOUT_S, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        return [{"error": f"timed out after {RUN_TIMEOUT_S} s"}]
    if proc.returncode != 0 or not out.exists():
        err = (proc.stderr or proc.stdout)[-1500:]
        print(f"   failed ({proc.returncode}): {err}", flush=True)
        return [{"error": err}]
    if proc.stderr.strip():
        print("   stderr: " + proc.stderr.strip()[-800:].replace("\n", "\n   "), flush=True)
    result = json.loads(out.read_text())
    runs = result.get("runs", [result])
    for r in runs:
        print(f"   {time.monotonic() - t:.1f}s: workers={r.get('workers')} {r['workload']} "
              f"{r['throughput_per_s']}/s latency_ms={r['latency_ms']}", flush=True)
        if r.get("errors"):
            print(f"   ERRORS: {json.dumps(r['errors'])}", flush=True)
    return runs


def duro_in_process(pg: str, workload: str, n: list[str]) -> list[dict[str, Any]]:
    """bench_duro.py (worker and client in one process) on a fresh schema, dropped afterwards."""
    url, _, cleanup = make_store(pg)
    try:
        return run(f"duro_1proc_{workload}", [python_of(DURO), str(HERE / "bench_duro.py"), "--workload", workload,
                                              "--store", url, *n])
    finally:
        cleanup()


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.4g}"


def table(rows: list[tuple[str, bool, float | None, float | None]]) -> str:
    lines = ["| measure | duro | DBOS | duro/DBOS |", "|---|---|---|---|"]
    for label, higher, d, b in rows:
        ratio = "n/a"
        if d and b:
            r = d / b
            better = r >= 1 if higher else r <= 1
            ratio = f"{r:.2f} ({'duro' if better else 'DBOS'} better)"
        lines.append(f"| {label} ({'higher' if higher else 'lower'} is better) | {fmt(d)} | {fmt(b)} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test",
                   help="duro's server (bench_dbos.py always uses 127.0.0.1:5432)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 3])
    p.add_argument("--quick", action="store_true", help="small n, to check the harness end to end")
    a = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for f in OUT.glob("pg_*.json"):
        f.unlink()
    n_w1 = ["--n", "300"] if a.quick else []
    n_w1l = ["--n", "30"] if a.quick else []
    sh(f"setup_{DBOS['setup']}.sh")
    duro_py, dbos_py = python_of(DURO), python_of(DBOS)
    scale = [duro_py, str(HERE / "bench_scale.py"), "--store", a.pg]
    dbos = [dbos_py, str(HERE / DBOS["script"]), *DBOS["args"]]

    duro_w1 = {r.get("workers"): r for r in run("duro_W1", [*scale, "--workload", "W1", "--workers",
                                                            *map(str, a.workers), *n_w1])}
    duro_w1l = run("duro_W1L", [*scale, "--workload", "W1L", "--workers", "1", *n_w1l])[0]
    duro_1p = {"W1": duro_in_process(a.pg, "W1", n_w1)[0], "W1L": duro_in_process(a.pg, "W1L", n_w1l)[0]}
    dbos_w1 = {k: run(f"dbos_W1_workers{k}", [*dbos, "--workload", "W1", "--workers", str(k), *n_w1])[0]
               for k in a.workers}
    dbos_w1l = run("dbos_W1L_workers1", [*dbos, "--workload", "W1L", "--workers", "1", *n_w1l])[0]
    dbos_1p = {w: run(f"dbos_1proc_{w}", [*dbos, "--workload", w, *(n_w1 if w == "W1" else n_w1l)])[0]
               for w in ("W1", "W1L")}

    def m(r: dict[str, Any] | None, w: str) -> float | None:
        return None if r is None else metric(r, w)

    rows = [(f"W1 wf/s, {k} worker process{'es' if k > 1 else ''} + 1 client process", True,
             m(duro_w1.get(k), "W1"), m(dbos_w1[k], "W1")) for k in a.workers]
    rows += [("W1 wf/s, worker and client in one process", True, m(duro_1p["W1"], "W1"), m(dbos_1p["W1"], "W1")),
             ("W1L p50 ms, 1 worker process + 1 client process", False, m(duro_w1l, "W1L"), m(dbos_w1l, "W1L")),
             ("W1L p50 ms, worker and client in one process", False, m(duro_1p["W1L"], "W1L"),
              m(dbos_1p["W1L"], "W1L"))]
    text = table(rows)
    first, last = min(a.workers), max(a.workers)
    for name, runs in (("duro", duro_w1), ("DBOS", dbos_w1)):
        lo, hi = m(runs.get(first), "W1"), m(runs.get(last), "W1")
        if lo and hi and first != last:
            text += f"\n\n{name}: {last} worker processes / {first} = {hi / lo:.2f}x"
    text += (f"\n\nMachine: {os.cpu_count()} cores shared by PostgreSQL, the workers and the clients. "
             "DBOS with --workers: its queue polled every 10 ms, the client polling for finished workflows "
             "every 5 ms (see the notes in the JSON files).")
    print("\n" + text)
    (OUT / "pg_table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
