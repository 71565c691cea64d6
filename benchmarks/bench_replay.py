"""W4 (replay of a long history) of ../shared/WORKLOADS.md on duro's LMDB store.

    python benchmarks/bench_replay.py [--n 2000]

Runs ``long(n)`` (n sequential activities) once, then times, five times, reading its history from
LMDB and replaying it with ``duro.testing.Replayer`` (re-run the code, match every command);
prints one JSON object with the median. The workload lives in peers/bench_duro.py.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.argv[1:1] = ["--workload", "W4"]
    runpy.run_path(str(Path(__file__).resolve().parent / "peers" / "bench_duro.py"), run_name="__main__")
