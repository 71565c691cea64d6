"""The runnable examples run to the end and print what they promise, on each store (a directory or a URL)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_order_demo(store: str) -> None:
    out = run_example("order_demo.py", store)
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


def run_example(name: str, store: str) -> str:
    """Run examples/<name> on a fresh store (the ``store`` fixture's URL); its stdout, once it succeeded.

    An LMDB store is given as the directory, the way a user runs an example; other stores by URL.
    """
    where = store.removeprefix("lmdb://")
    proc = subprocess.run([sys.executable, f"examples/{name}", where], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert f"store: {store}" in proc.stdout
    if store.startswith("lmdb://"):
        assert Path(where).is_dir()
    return proc.stdout


def test_saga(store: str) -> None:
    out = run_example("saga.py", store)
    steps = ["[activity] book flight to Lisbon for alice ... ok", "[activity] book hotel in Lisbon, 3 nights ... ok",
             "[activity] book a convertible car in Lisbon ... none left",
             "[activity] cancel hotel HOTEL-T-42 ... ok", "[activity] cancel flight FLIGHT-T-42 ... ok"]
    positions = [out.index(s) for s in steps]
    assert positions == sorted(positions), out  # compensations ran after the failure, in reverse
    assert "cancel car" not in out
    assert "trip T-42 was not booked; the workflow failed with:" in out
    assert "ApplicationError [CarUnavailable]: no convertible available in Lisbon" in out
    recorded = re.findall(r"^\s+\d+\s+(\w+)\s+(ok|FAILED)$", out, re.MULTILINE)
    assert recorded == [("book_flight", "ok"), ("book_hotel", "ok"), ("book_car", "FAILED"),
                        ("cancel_hotel", "ok"), ("cancel_flight", "ok")]
    assert out.rstrip().endswith("WorkflowExecutionFailed")


def test_timers(store: str) -> None:
    out = run_example("timers.py", store)
    assert "confirm-carol: {'confirmed': True, 'by': 'carol'}" in out
    assert "confirm-bob: {'confirmed': False}" in out
    assert "email to support@example.com: bob@example.com did not confirm in time" in out
    assert "email to alice@example.com: reminder: dentist at 9:00" in out
    slept = re.search(r"reminder-1: reminder sent after (\d+\.\d+)s on the workflow clock", out)
    assert slept is not None and float(slept.group(1)) >= 0.3, out
    assert "TimerStarted, TimerFired" in out
    assert out.index("did not confirm") > out.index("carol confirmed")  # the timeout came after the signal
    assert re.search(r"finished in \d+\.\d+s", out)
