"""What the open runs of a PostgreSQL store are waiting for: a failed multi-process test says it.

``open_runs`` lists each open run with the task rows it has. A run with none, whose history ends
with ``WorkflowTaskCompleted`` then ``ActivityTaskCompleted``, is the signature of a bug fixed in
issue 8 (a batch's ops read rows as they were before a mid-batch flush): listed apart, should it
ever come back.
"""

from __future__ import annotations

import time

import duro
from duro.stores.pg_conn import connect_one, parse_pg_url

_TASK_ROWS = """
SELECT w.workflow_id,
       EXISTS (SELECT 1 FROM wtasks t WHERE t.run_key = w.run_key),
       (SELECT string_agg(format('seq %s attempt %s owner %s lease ends in %s s', a.seq, a.attempt, a.owner,
                                 (a.lease_until_us - $1::bigint) / 1000000), '; ')
        FROM atasks a WHERE a.run_key = w.run_key),
       EXISTS (SELECT 1 FROM timers m WHERE m.run_key = w.run_key)
FROM workflows AS w WHERE w.status = 'running'
"""


async def open_runs(client: duro.Client, url: str) -> tuple[list[str], list[str]]:
    """The open runs of the store at ``url``: (those with the old bug's signature, the others, with why)."""
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
