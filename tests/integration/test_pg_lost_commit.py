"""A group commit whose COMMIT goes unanswered applies exactly once, whatever the server did with it.

The fault is real: a trigger holds the server inside COMMIT for a moment, and meanwhile the test
either cuts the client's end of that connection (the server goes on and commits, but the answer
is lost) or ends the server's backend (the transaction rolls back). In both cases the signal the
caller sent is recorded once, and the caller gets no error: the store recorded the batch's id in
the transaction and, when it retried, found it (committed) or not (rolled back, so ran it again).
"""

from __future__ import annotations

import asyncio
import os
import socket

import asyncpg
import pytest

import duro
from duro.stores.pg_conn import connect_one, parse_pg_url
from tests.engine import wfs
from tests.waiting import eventually

pytest_plugins = ("tests.pg",)

QUEUE = "lost-commit"

# While armed, the first transaction that writes a history row sleeps inside COMMIT (a deferred
# trigger runs at commit) and disarms the fault; if that transaction rolls back, so does the disarming.
FAULT = """
CREATE TABLE fault (armed boolean NOT NULL);
INSERT INTO fault VALUES (false);
CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT armed FROM fault) THEN
        UPDATE fault SET armed = false;
        PERFORM pg_sleep(1.5);
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON history DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION slow_commit();
"""
SLEEPING = """
SELECT pid, client_port FROM pg_stat_activity
WHERE wait_event = 'PgSleep' AND query = 'COMMIT;' AND datname = current_database()
"""


def _cut_local_socket(port: int) -> bool:
    """Shut down this process's TCP socket whose local port is ``port`` (as a dropped network would)."""
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.getsockname()[1] == port:
                sock.shutdown(socket.SHUT_RDWR)
                return True
        except OSError:
            pass
        finally:
            sock.close()
    return False


@pytest.mark.parametrize("fault", ["answer_lost", "backend_ended"])
async def test_a_signal_whose_commit_is_unanswered_is_recorded_once(pg_url: str, fault: str) -> None:
    settings = parse_pg_url(pg_url)
    async with duro.Client.connect(pg_url) as client:
        admin = await connect_one(settings)
        try:
            await admin.execute(FAULT)
            async with duro.Worker(client, task_queue=QUEUE, workflows=[wfs.signal_workflow]):
                handle = await client.start_workflow(wfs.signal_workflow, 1, id="lost-commit", task_queue=QUEUE)

                async def started() -> bool:
                    history = await handle.fetch_history()
                    return any(e.event_type == "WorkflowTaskCompleted" for e in history)

                await eventually(started, "the workflow to wait for its signal")
                await admin.execute("UPDATE fault SET armed = true")
                signal = asyncio.create_task(handle.signal("item", {"n": 1}))

                async def sleeping_in_commit() -> asyncpg.Record | None:
                    return await admin.fetchrow(SLEEPING)

                row = await eventually(sleeping_in_commit, "the signal's batch to be inside COMMIT")
                if fault == "answer_lost":
                    assert _cut_local_socket(row["client_port"]), "no socket of this process has that port"
                else:
                    assert await admin.fetchval("SELECT pg_terminate_backend($1)", row["pid"])
                await asyncio.wait_for(signal, 30)  # no error: the store found out what happened
                assert await asyncio.wait_for(handle.result(), 30) == [{"n": 1}]
            history = await handle.fetch_history()
            assert [e.event_type for e in history].count("WorkflowExecutionSignaled") == 1
            assert await admin.fetchval("SELECT armed FROM fault") is False
        finally:
            await admin.close()
