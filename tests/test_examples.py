"""The runnable examples run to the end and print what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_order_demo(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    proc = subprocess.run(
        [sys.executable, "examples/order_demo.py", str(data_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    out = proc.stdout
    assert f"store: lmdb://{data_dir}" in out
    for line in ("[activity] validate order A-1001 ... ok", "[workflow] waiting for approval...",
                 "sending approval signal from alice", "[activity] ship order A-1001 ... ok"):
        assert line in out
    assert "id      +ms  event type" in out  # the history table header
    for event in ("WorkflowExecutionStarted", "ActivityTaskScheduled", "WorkflowExecutionSignaled",
                  "WorkflowExecutionCompleted"):
        assert event in out
    assert ("result: Receipt(order_id='A-1001', payment_id='PAY-A-1001', reservation_id='RSV-A-1001', "
            "tracking_number='TRK-A-1001', approved_by='alice')") in out
    # The count varies: the two parallel results may reach the workflow in one task or in two.
    assert re.search(r"reopened the store: order-A-1001 is completed, \d+ events, same result: True", out)
    assert data_dir.is_dir()
