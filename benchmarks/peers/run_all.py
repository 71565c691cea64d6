"""Run every system of the side-by-side harness, one after another, and write the results.

    python benchmarks/peers/run_all.py [--systems duro-lmdb,temporal,...] [--workloads W1,W1L,...] [--quick]

For each system: install it into its own environment (setup_<system>.sh), start its server if it
has one (start_<system>.sh), run each workload of ../shared/WORKLOADS.md with that system's
bench_<system>.py, stop the server by its pid (stop_<system>.sh). Never two at once. Then the
table of ratios against the best peer for each workload and a log-scale bar chart go into
BENCHMARKS.md (between the ``peers`` markers) and benchmarks/peers/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = HERE / "results"
ENVS = HERE / ".envs"
WORKLOADS = ["W1", "W1L", "W2", "W3", "W4"]
RUN_TIMEOUT_S = 1200

# name -> how to run it. "env" is the venv under .envs (None: duro's own .venv), "server" the
# start/stop script stem, "args" extra arguments, "setenv" extra environment for the server.
SYSTEMS: dict[str, dict[str, Any]] = {
    "duro-lmdb": {"script": "bench_duro.py", "env": None, "setup": None, "server": None, "args": []},
    "temporal": {"script": "bench_temporal.py", "env": "temporal", "setup": "temporal", "server": "temporal",
                 "args": []},
    "temporal-default": {"script": "bench_temporal.py", "env": "temporal", "setup": "temporal",
                         "server": "temporal", "args": [], "setenv": {"TEMPORAL_SETTINGS": "default"}},
    "dbos-sqlite": {"script": "bench_dbos.py", "env": "dbos", "setup": "dbos", "server": None,
                    "args": ["--db", "sqlite"]},
    "dbos-postgres": {"script": "bench_dbos.py", "env": "dbos", "setup": "dbos", "server": None,
                      "args": ["--db", "postgres"]},
    "restate": {"script": "bench_restate.py", "env": "restate", "setup": "restate", "server": "restate", "args": []},
}

# workload -> (label, field, higher_is_better)
METRICS = {
    "W1": ("W1 throughput (workflows/s)", "throughput_per_s", True),
    "W1L": ("W1L p50 latency (ms)", "p50", False),
    "W2": ("W2 fan-out time (s, 500 activities)", "wall_s", False),
    "W3": ("W3 signal round trip p50 (ms)", "p50", False),
    "W4": ("W4 replay (activities/s)", "activities_per_s", True),
}
TARGETS = {"W1": 10.0, "W1L": 5.0, "W2": 5.0, "W3": 5.0, "W4": 25.0}  # issue 14


def python_of(system: dict[str, Any]) -> str:
    if system["env"] is None:
        return str(ROOT / ".venv" / "bin" / "python")
    return str(ENVS / system["env"] / "bin" / "python")


def sh(script: str, env: dict[str, str] | None = None, timeout: float = 900) -> None:
    path = HERE / script
    subprocess.run(["bash", str(path)], check=True, cwd=HERE, timeout=timeout, env={**os.environ, **(env or {})})


def run_system(name: str, workloads: list[str], quick: bool) -> None:
    system = SYSTEMS[name]
    if system["setup"]:
        sh(f"setup_{system['setup']}.sh")
    started = False
    try:
        if system["server"]:
            sh(f"start_{system['server']}.sh", system.get("setenv"), timeout=180)
            started = True
        for w in workloads:
            out = RESULTS / f"{name}-{w}.json"
            cmd = [python_of(system), str(HERE / system["script"]), "--workload", w, "--out", str(out),
                   *system["args"]]
            if quick:
                cmd += ["--n", {"W1": "200", "W1L": "30", "W2": "500", "W3": "30", "W4": "500"}[w]]
            print(f"== {name} {w}: {' '.join(cmd[1:])}", flush=True)
            t = time.monotonic()
            try:
                proc = subprocess.run(cmd, cwd=ROOT, timeout=RUN_TIMEOUT_S, capture_output=True, text=True,
                                      env={**os.environ, **system.get("setenv", {})})
            except subprocess.TimeoutExpired:
                out.write_text(json.dumps({"system": name, "workload": w, "error": "timed out"}) + "\n")
                continue
            if proc.returncode != 0:
                err = (proc.stderr or proc.stdout)[-1500:]
                print(f"   failed ({proc.returncode}): {err}", flush=True)
                out.write_text(json.dumps({"system": name, "workload": w, "error": err}) + "\n")
                continue
            result = json.loads(out.read_text())
            result["system"] = name
            out.write_text(json.dumps(result) + "\n")
            print(f"   {time.monotonic() - t:.1f}s: {json.dumps(result)[:240]}", flush=True)
    finally:
        if started:
            sh(f"stop_{system['server']}.sh", system.get("setenv"), timeout=120)


def metric(result: dict[str, Any], w: str) -> float | None:
    if "error" in result:
        return None
    _, field, _ = METRICS[w]
    if field == "activities_per_s":  # systems count history events differently; activities are the same work
        wall = result.get("wall_s")
        return float(result["n"]) / float(wall) if wall else None
    value = result["latency_ms"].get(field) if field == "p50" else result.get(field)
    return float(value) if value is not None else None


def load_results() -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for f in sorted(RESULTS.glob("*-W*.json")):
        r = json.loads(f.read_text())
        table.setdefault(r["system"], {})[r["workload"]] = r
    return table


def render(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    systems = [s for s in SYSTEMS if s in table]
    peers = [s for s in systems if not s.startswith("duro")]
    lines = ["| workload | " + " | ".join(systems) + " | best peer | duro vs best peer | target |",
             "|---" * (len(systems) + 4) + "|"]
    for w, (label, _, higher) in METRICS.items():
        vals = {s: metric(table[s].get(w, {"error": "not run"}), w) for s in systems}
        peer_vals = {s: v for s, v in vals.items() if s in peers and v}
        best = (max if higher else min)(peer_vals, key=lambda s: peer_vals[s]) if peer_vals else None
        duro = vals.get("duro-lmdb")
        ratio = "n/a"
        if best and duro:
            r = duro / peer_vals[best] if higher else peer_vals[best] / duro
            ratio = f"{r:.1f}x {'faster' if r >= 1 else 'slower'}"
        cells = [("-" if v is None else f"{v:,.4g}") for v in vals.values()]
        goal = f">= {TARGETS[w]:g}x" if higher else f"<= 1/{TARGETS[w]:g}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {best or '-'} | {ratio} | {goal} |")
    return "\n".join(lines)


def chart(table: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in SYSTEMS if s in table]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4))
    for ax, (w, (label, _, higher)) in zip(axes, METRICS.items(), strict=True):
        vals = [metric(table[s].get(w, {"error": "-"}), w) or 0.0 for s in systems]
        colors = ["#d62728" if s.startswith("duro") else "#7f7f7f" for s in systems]
        ax.bar(range(len(systems)), [v if v > 0 else float("nan") for v in vals], color=colors)
        ax.set_yscale("log")
        ax.set_title(label + ("\n(higher is better)" if higher else "\n(lower is better)"), fontsize=9)
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(systems, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_benchmarks_md(table: dict[str, dict[str, dict[str, Any]]]) -> None:
    md = ROOT / "BENCHMARKS.md"
    text = md.read_text() if md.exists() else "# Benchmarks\n"
    begin, end = "<!-- peers:begin -->", "<!-- peers:end -->"
    durable = "\n".join(f"- **{s}**: {next(iter(table[s].values())).get('durable', '-')}" for s in table)
    block = (f"{begin}\n_Run on {time.strftime('%Y-%m-%d')} on this machine ({platform.machine()}, "
             f"{os.cpu_count()} cores) with `make bench-peers`, one system at a time._\n\n{render(table)}\n\n"
             f"![duro vs peers](benchmarks/peers/results/chart.png)\n\nHow each system made results durable:\n"
             f"{durable}\n{end}")
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Side by side with the peers\n\n" + block + "\n"
    md.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--quick", action="store_true", help="small n, to check the harness end to end")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table and chart from results/")
    a = p.parse_args()
    RESULTS.mkdir(exist_ok=True)
    if not a.report_only:
        for name in a.systems.split(","):
            if name not in SYSTEMS:
                sys.exit(f"unknown system {name!r}; known: {', '.join(SYSTEMS)}")
            try:
                run_system(name, a.workloads.split(","), a.quick)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                print(f"== {name}: could not be set up or started: {e}", flush=True)
                for w in a.workloads.split(","):
                    (RESULTS / f"{name}-{w}.json").write_text(
                        json.dumps({"system": name, "workload": w, "error": f"setup/start failed: {e}"}) + "\n")
    table = load_results()
    print(render(table))
    chart(table, RESULTS / "chart.png")
    write_benchmarks_md(table)


if __name__ == "__main__":
    main()
