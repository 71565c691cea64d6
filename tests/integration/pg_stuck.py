"""Recognising one known PostgreSQL store bug in the multi-process tests: a run left open with no task.

Seen in the kill matrix and in ``python -m tests.integration.killmatrix --store postgresql://...``
(2 of 1,509 runs in a 60 s run; about one small-matrix test run in five): a run stays ``running`` forever
although nothing can move it. Its history ends with ``WorkflowTaskCompleted`` followed within a few
ms by an ``ActivityTaskCompleted`` (the second of two parallel activities), and ``wtasks``,
``atasks`` and ``timers`` hold no row for it: the activity completion was recorded, but no workflow
task was left to process it.

``stuck_runs`` tells whether every open run of a failed test has exactly this signature, so that a
test can ``pytest.xfail`` on this bug alone (a strict xfail marker cannot be used: the race is
intermittent) and still fail on anything else.
"""

from __future__ import annotations

import time

import duro
from duro.stores.pg_conn import connect_one, parse_pg_url

STUCK_RUN_BUG = (
    "PostgreSQL store bug (issue 8, found by the multi-process tests): under concurrent workers, a run "
    "can stay 'running' with no wtasks/atasks/timers row although its last event, an ActivityTaskCompleted "
    "recorded a few ms after a WorkflowTaskCompleted, was never processed (no workflow task was enqueued "
    "for it, or it was released). Intermittent; see tests/integration/pg_stuck.py")

_TASK_ROWS = """
SELECT w.workflow_id,
       EXISTS (SELECT 1 FROM wtasks t WHERE t.run_key = w.run_key),
       (SELECT string_agg(format('seq %s attempt %s owner %s lease ends in %s s', a.seq, a.attempt, a.owner,
                                 (a.lease_until_us - $1::bigint) / 1000000), '; ')
        FROM atasks a WHERE a.run_key = w.run_key),
       EXISTS (SELECT 1 FROM timers m WHERE m.run_key = w.run_key)
FROM workflows AS w WHERE w.status = 'running'
"""


async def stuck_runs(client: duro.Client, url: str) -> tuple[list[str], list[str]]:
    """The open runs of the store at ``url``: (those with the bug's signature, the others, with why)."""
    conn = await connect_one(parse_pg_url(url))
    try:
        rows = await conn.fetch(_TASK_ROWS, time.time_ns() // 1000)
    finally:
        await conn.close()
    matching: list[str] = []
    others: list[str] = []
    for wfid, has_wtask, atasks, has_timer in rows:
        has_atask = atasks is not None
        if has_wtask or has_atask or has_timer:
            others.append(f"{wfid}: open with tasks (wtask {has_wtask}, timer {has_timer}, atasks: {atasks})")
            continue
        history = await client.get_handle(wfid).fetch_history()
        tail = [e.event_type for e in history][-2:]
        if tail == ["WorkflowTaskCompleted", "ActivityTaskCompleted"]:
            matching.append(wfid)
        else:
            others.append(f"{wfid}: open with no task; history ends {tail}")
    return matching, others
