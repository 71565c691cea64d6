"""``list_workflows`` on PostgreSQL is served by an index for each combination of filters, never a scan.

The plan is read with EXPLAIN on a schema holding 20,000 workflows (statistics gathered), with the
statement the store runs, prepared as asyncpg prepares it, and also forced to a generic plan (what
a prepared statement settles on after five runs).
"""

from __future__ import annotations

import pytest

from duro.stores.base import ListQuery
from duro.stores.pg_conn import PgSettings, connect_one
from duro.stores.pg_schema import migrate
from duro.stores.postgres import count_runs_query, list_runs_query

pytest_plugins = ("tests.pg",)

N = 20_000
STATUSES = ["running", "completed", "failed", "canceled", "terminated", "continued_as_new", "timed_out"]
FILL = """
INSERT INTO runs (run_key, workflow_id, workflow_type, task_queue, status, start_us, next_event_id, epoch,
                  last_input, record)
SELECT decode(lpad(to_hex(i), 32, '0'), 'hex'), 'wf-' || i, 'type-' || (i % 50), 'q', ($1::text[])[1 + i % 7],
       i, 2, 0, 1, '{}'::jsonb
FROM generate_series(1, $2::integer) AS i;
"""
FILL_INDEX = """
INSERT INTO workflows (workflow_id, run_key, status, workflow_type, start_us, search_attributes)
SELECT workflow_id, run_key, status, workflow_type, start_us,
       jsonb_build_object('customer', 'c-' || (start_us % 1000), 'tier', start_us % 3) FROM runs
"""


@pytest.mark.parametrize(("status", "workflow_type", "index"), [
    (None, None, "workflows_by_start"),
    ("failed", None, "workflows_by_status"),
    (None, "type-7", "workflows_by_type"),
    ("completed", "type-7", None),  # either index, then the other condition as a filter
])
async def test_each_filter_combination_uses_an_index(pg_settings: PgSettings, status: str | None,
                                                     workflow_type: str | None, index: str | None) -> None:
    conn = await connect_one(pg_settings)
    try:
        await migrate(conn, pg_settings.schema)
        await conn.execute(FILL, STATUSES, N)
        await conn.execute(FILL_INDEX)
        await conn.execute("ANALYZE runs; ANALYZE workflows")
        sql, args = list_runs_query(ListQuery(status=status, workflow_type=workflow_type), 50)
        for mode in ("auto", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
            assert "Seq Scan on workflows" not in plan, plan
            assert "Index" in plan, plan
            if index is not None:
                assert index in plan, plan
        rows = await conn.fetch(sql, *args)
        assert len(rows) == 50
        assert [r["start_us"] for r in rows] == sorted((r["start_us"] for r in rows), reverse=True)
        assert all((status is None or r["status"] == status)
                   and (workflow_type is None or r["workflow_type"] == workflow_type) for r in rows)
    finally:
        await conn.close()


async def test_search_attributes_use_their_index_and_pages_follow_the_start_order(pg_settings: PgSettings) -> None:
    conn = await connect_one(pg_settings)
    try:
        await migrate(conn, pg_settings.schema)
        await conn.execute(FILL, STATUSES, N)
        await conn.execute(FILL_INDEX)
        await conn.execute("ANALYZE runs; ANALYZE workflows")
        q = ListQuery(search_attributes={"customer": "c-7"})
        sql, args = count_runs_query(q)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + sql, *args))
        assert "workflows_by_attributes" in plan and "Seq Scan on workflows" not in plan, plan
        assert await conn.fetchval(sql, *args) == N // 1000
        seen: list[str] = []
        after = None
        while True:
            sql, args = list_runs_query(q, 7, after)
            rows = await conn.fetch(sql, *args)
            seen += [r["workflow_id"] for r in rows]
            if len(rows) < 7:
                break
            after = (rows[-1]["start_us"], rows[-1]["workflow_id"])
        assert len(seen) == len(set(seen)) == N // 1000
    finally:
        await conn.close()
