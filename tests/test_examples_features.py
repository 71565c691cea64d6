"""The feature examples (signals/queries/updates, child workflows, cancellation) run and print what they promise."""

from __future__ import annotations

import re

from tests.test_examples import run_example


def in_order(out: str, lines: list[str]) -> None:
    """Every line is in ``out``, in this order."""
    positions = [out.index(line) for line in lines]
    assert positions == sorted(positions), out


def recorded(out: str) -> list[tuple[str, str]]:
    """The (event type, name) rows of the history table an example prints."""
    return [(m[0], m[1].strip()) for m in re.findall(r"^\s+\d+\s{2}(\w+) *(.*)$", out, re.MULTILINE)]


def test_signal_query(store: str) -> None:
    out = run_example("signal_query.py", store)
    in_order(out, [
        "starting workflow cart-alice",
        "signal add_item: 2 x book",
        "signal add_item: 3 x pen",
        "update apply_coupon('WELCOME10'): accepted, new total 3375 cents",
        "query items: ['2 x book', '3 x pen']",
        "query total: 3375 cents",
        "update apply_coupon('FREESTUFF'): rejected by the validator: unknown coupon 'FREESTUFF'",
        "signal checkout",
        "[activity] charge alice $33.75 ... ok",
        "result: {'customer': 'alice', 'items': 2, 'total_cents': 3375, 'payment': 'PAY-alice-3375'}",
    ])
    sizes = re.search(r"\(history: (\d+) events before, (\d+) after\)", out)
    assert sizes is not None and sizes.group(1) == sizes.group(2), out  # the rejected update wrote nothing
    events = recorded(out)
    assert [e for e in events if e[0] not in ("ActivityTaskScheduled", "ActivityTaskCompleted")] == [
        ("WorkflowExecutionStarted", "shopping_cart"),
        ("WorkflowExecutionSignaled", "add_item"), ("WorkflowExecutionSignaled", "add_item"),
        ("WorkflowExecutionUpdateAccepted", "apply_coupon"), ("WorkflowExecutionUpdateCompleted", ""),
        ("WorkflowExecutionSignaled", "checkout"), ("WorkflowExecutionCompleted", ""),
    ], out


def test_child_workflow(store: str) -> None:
    out = run_example("child_workflow.py", store)
    for warehouse in ("berlin", "lyon", "porto"):
        assert f"[activity] pack A-7 in {warehouse} ... ok" in out
    in_order(out, ["starting workflow order-A-7", "[activity] invoice A-7 for 3 parcels ... ok",
                   "result: {'tracking': ['TRK-BER-A-7', 'TRK-LYO-A-7', 'TRK-POR-A-7'], 'invoice': 'INV-A-7'}"])
    rows = re.findall(r"^  (\S+)\s+(\w+)\s+(\w+)\s+-> (.*)$", out, re.MULTILINE)
    assert rows == [
        ("order-A-7", "fulfil_order", "completed",
         "{'tracking': ['TRK-BER-A-7', 'TRK-LYO-A-7', 'TRK-POR-A-7'], 'invoice': 'INV-A-7'}"),
        ("order-A-7/invoice", "invoice", "completed", "INV-A-7"),
        ("order-A-7/ship-berlin", "ship_from", "completed", "TRK-BER-A-7"),
        ("order-A-7/ship-lyon", "ship_from", "completed", "TRK-LYO-A-7"),
        ("order-A-7/ship-porto", "ship_from", "completed", "TRK-POR-A-7"),
    ], out
    events = recorded(out)
    assert events.count(("StartChildWorkflowExecutionInitiated", "ship_from")) == 3, out
    assert events.count(("StartChildWorkflowExecutionInitiated", "invoice")) == 1, out
    assert events.count(("ChildWorkflowExecutionCompleted", "")) == 4, out
    assert ("SignalExternalWorkflowExecutionInitiated", "parcels") in events, out
    assert events[-1] == ("WorkflowExecutionCompleted", ""), out


def test_cancellation(store: str) -> None:
    out = run_example("cancellation.py", store)
    in_order(out, [
        "starting workflow export-Q3-sales",
        "[activity] create workspace for Q3-sales ... ok",
        "client: cancel the workflow",
        "[workflow] cancelled: cleaning up before it ends",
        "[activity] delete workspace ws-Q3-sales ... ok",
        "result: WorkflowFailedError, caused by CancelledError: the workflow was cancelled",
        "status: canceled",
    ])
    # The running activity learned of the cancellation through a heartbeat.
    assert re.search(r"\[activity\] export Q3-sales: a heartbeat says it was cancelled; stopping after \d+ rows",
                     out), out
    types = [t for t, _ in recorded(out)]
    for event in ("TimerStarted", "WorkflowExecutionCancelRequested", "TimerCanceled", "ActivityTaskCancelRequested"):
        assert event in types, out
    in_order("\n".join(types), ["WorkflowExecutionStarted", "WorkflowExecutionCancelRequested",
                                "TimerCanceled", "WorkflowExecutionCanceled"])
    assert ("ActivityTaskCompleted", "delete_workspace") in recorded(out), out  # the cleanup is recorded
    assert types[-1] == "WorkflowExecutionCanceled", out
    finished = re.search(r"finished in (\d+\.\d+)s", out)
    assert finished is not None and float(finished.group(1)) < 20, out  # the day-long timer did not run out


def test_async_completion(store: str) -> None:
    out = run_example("async_completion.py", store)
    in_order(out, [
        "starting workflow expense-E-1",
        "[activity] approval of E-1 requested (41-byte task token); the attempt ends without a result",
        "[webhook] alice is looking at E-1",
        "[webhook] alice approves E-1",
        "[activity] pay 120.00 EUR to ada ... ok",
        "result: {'id': 'E-1', 'status': 'paid', 'approved_by': 'alice', 'payment': 'PAY-E-1'}",
        "starting workflow expense-E-2",
        "[webhook] carol rejects E-2: over the travel budget",
        "result: {'id': 'E-2', 'status': 'rejected', 'reason': 'over the travel budget'}",
        "the same token again: TaskTokenError (completed)",
        "a forged token: TaskTokenError (malformed)",
    ])
    # The loggers: each line once, carrying the workflow's ids (the activity's with its name and attempt).
    assert out.count("expense E-1: 120.00 EUR") == 1, out
    assert re.search(r"\[log\] duro\.activity \[activity_type=request_approval activity_id=1 attempt=1 "
                     r"workflow_type=expense_report workflow_id=expense-E-2 run_id=[0-9a-f]{32} task_queue=expenses\] "
                     r"approval of E-2 requested", out), out
    assert "expense E-2 not approved: over the travel budget" in out, out
    assert [name for _, name in recorded(out)] == ["expense_report", "request_approval", "request_approval", ""], out
    assert [t for t, _ in recorded(out)] == ["WorkflowExecutionStarted", "ActivityTaskScheduled",
                                             "ActivityTaskFailed", "WorkflowExecutionCompleted"], out


def test_schedules(store: str) -> None:
    out = run_example("schedules.py", store)
    in_order(out, ["created schedule ops-report: every 0.2s, next runs at ", "[activity] report for ops (ops-report-",
                   "paused ('enough for the demo') after ", "trigger started ops-report-",
                   "backfill of 09:00:00-09:00:01 on 2026-01-01 started 5 runs: ops-report-2026-01-01T09:00:00Z ... "
                   "ops-report-2026-01-01T09:00:00.800000Z",
                   "the same backfill again started 0 runs (each time runs once)",
                   "nightly (cron '0 3 * * *' in Europe/Paris) runs next at ",
                   "schedules: ['nightly', 'ops-report']", "deleted; schedules left: []"])
    fired = re.search(r"paused \('enough for the demo'\) after (\d+) runs", out)
    assert fired is not None and int(fired.group(1)) >= 3, out
    listed = re.search(r"list_workflows\(DuroScheduleId='ops-report'\): (\d+) runs, (\d+) completed", out)
    assert listed is not None and listed.group(1) == listed.group(2), out
    assert int(listed.group(1)) == int(fired.group(1)) + 6, out  # the fires, the trigger, the backfill


def test_day_two(store: str) -> None:
    out = run_example("day_two.py", store)
    assert "signal-with-start twice reached one run: True" in out
    assert "T-4: printer on fire: resolved by bob" in out
    assert "open web tickets: ['T-1', 'T-3']" in out
    assert "tickets in triage: 3" in out
    assert re.search(r"newest first, two pages: \['T-4', 'T-3'\] then \['T-2', 'T-1'\]", out), out
    assert re.search(r"T-1 reset to event \d+: new run [0-9a-f]{8}\.\.\., result again: login fails: resolved by "
                     r"carol", out), out
    assert "T-1 now: completed, stage 'resolved', memo {'reported_by': 'alice'}" in out
    assert "deleted T-2; workflows left: 3" in out
    assert "purged 4 closed run(s); workflows left: 0" in out
