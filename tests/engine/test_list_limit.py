"""``list_workflows`` takes any positive ``limit`` (the client checks only that it is a positive int)."""

from __future__ import annotations

import duro
from tests.engine import wfs


async def test_list_workflows_accepts_a_limit_above_int32(client: duro.Client) -> None:
    await client.start_workflow(wfs.order_workflow, wfs.Order("o1", 5), id="o1", task_queue="t")
    for limit in (2**31 - 1, 2**31, 1 << 40):
        listed = await client.list_workflows(limit=limit)
        assert [d.workflow_id for d in listed] == ["o1"]
