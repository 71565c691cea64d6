"""A PostgreSQL store's reads wait for a server that is briefly down (issue 8, B.4: reconnects).

The cluster is stopped, a read (``describe``) is started, and the cluster is started again: the
read must reconnect with backoff and answer, as writes (batches, under ``run_with_retry``) do. Needs
root and ``pg_ctlcluster`` (else skipped); the cluster is running again afterwards, whatever happens.
"""

from __future__ import annotations

import asyncio

import pytest

import duro
from tests.engine import wfs
from tests.integration.pg_cluster import cluster_cmd, ensure_cluster_running, restartable_cluster  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("restartable_cluster")]


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{' '.join(argv)} failed: {out.decode(errors='replace')}"


async def test_a_read_waits_for_a_server_that_is_briefly_down(pg_url: str) -> None:
    async with duro.Client.connect(pg_url) as client:
        handle = await client.start_workflow(wfs.order_workflow, wfs.Order("o1", 5), id="o1", task_queue="t")
        assert (await handle.describe()).status == "running"
        await _run(*cluster_cmd("stop"))
        try:
            read = asyncio.ensure_future(handle.describe())
            # A read that failed at once instead of waiting for the server would be done within a second.
            await asyncio.wait({read}, timeout=1.0)
            assert not read.done() or read.exception() is None, f"the read failed at once: {read.exception()!r}"
        finally:
            await asyncio.get_running_loop().run_in_executor(None, ensure_cluster_running)
        desc = await asyncio.wait_for(read, 30)
        assert desc.status == "running"
