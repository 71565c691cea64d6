"""W1 (order throughput) and W1L (order latency) of ../shared/WORKLOADS.md on duro's LMDB store.

    python benchmarks/bench_order.py --workload W1 [--n 2000] [--concurrency 200] [--store lmdb://DIR]
    python benchmarks/bench_order.py --workload W1L [--n 200]

Prints one JSON object. Every event goes through group commit with fsync (LMDB sync=True). The
workloads themselves live in peers/bench_duro.py (duro's entry in the side-by-side harness).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    if "--workload" not in sys.argv:
        sys.argv[1:1] = ["--workload", "W1"]
    if not {"W1", "W1L"} & set(sys.argv):
        sys.exit("bench_order.py runs W1 or W1L; use peers/bench_duro.py for the other workloads")
    runpy.run_path(str(Path(__file__).resolve().parent / "peers" / "bench_duro.py"), run_name="__main__")
