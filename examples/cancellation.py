"""Cancellation: a workflow waits on a long durable timer and an activity, is cancelled, cleans up.

``handle.cancel()`` raises ``asyncio.CancelledError`` inside the workflow at the ``await`` where
it is waiting (an ``await`` on an activity raises the cancelled activity's ``duro.ActivityError``
instead, as in Temporal). Everything it was waiting on is cancelled with it: the durable timer is
dropped, and the running activity gets ``asyncio.CancelledError`` once its next heartbeat has
learned of it. The workflow may catch the error and still run activities (here: a cleanup)
before it ends as cancelled.

    .venv/bin/python examples/cancellation.py [DATA_DIR | STORE_URL]    # default: ./duro-data/cancellation-<timestamp>
"""

from __future__ import annotations

import asyncio
import sys
import time

import duro

DEADLINE = 24 * 3600  # seconds: the export may take up to a day (a durable timer)
# Only for this demo, where the activity runs in the same process: main() watches it with these.
EXPORT_RUNNING, EXPORT_STOPPED = asyncio.Event(), asyncio.Event()


@duro.activity
async def create_workspace(ctx: duro.ActivityContext, report: str) -> str:
    print(f"  [activity] create workspace for {report} ... ok")
    return f"ws-{report}"


@duro.activity
async def export_rows(ctx: duro.ActivityContext, report: str) -> int:
    """A long export. It heartbeats; a heartbeat's reply is also how the worker learns it is no longer wanted.

    The worker then cancels it as asyncio cancels a task: ``asyncio.CancelledError`` is raised at
    the ``await`` where it waits (a sync ``def`` activity sees ``ctx.is_cancelled``, and its next
    ``ctx.heartbeat()`` raises ``duro.CancelledError``).
    """
    EXPORT_RUNNING.set()
    rows = 0
    try:
        while True:
            rows += 1000
            ctx.heartbeat(rows)
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        print(f"  [activity] export {report}: a heartbeat says it was cancelled; stopping after {rows} rows")
        EXPORT_STOPPED.set()
        raise  # the attempt ends as cancelled


@duro.activity
async def delete_workspace(ctx: duro.ActivityContext, workspace: str) -> None:
    await asyncio.sleep(0.1)  # stands in for deleting the export's temporary files
    print(f"  [activity] delete workspace {workspace} ... ok")


@duro.workflow
async def export_report(ctx: duro.WorkflowContext, report: str) -> str:
    workspace = await ctx.execute_activity(create_workspace, report, start_to_close_timeout=10)
    try:
        # Two things are pending here: the export activity and the durable timer of wait_for.
        rows = await asyncio.wait_for(
            ctx.execute_activity(export_rows, report, heartbeat_timeout=2), timeout=DEADLINE)
        return f"exported {rows} rows"
    except (asyncio.CancelledError, duro.ActivityError):
        # The cancellation arrives as asyncio.CancelledError from wait_for here (Python 3.11), or
        # as the cancelled activity's duro.ActivityError (caused by duro.CancelledError) when the
        # await is on the activity itself, as in Temporal. (A failed export lands here too.)
        if not ctx.is_replaying:
            print("  [workflow] cancelled: cleaning up before it ends")
        await ctx.execute_activity(delete_workspace, workspace, start_to_close_timeout=10)
        raise  # end as cancelled; returning a value here would complete the workflow instead


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    t0 = time.perf_counter()
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="reports", workflows=[export_report],
                               activities=[create_workspace, export_rows, delete_workspace]):
            print("starting workflow export-Q3-sales")  # before the call: the worker may begin before it returns
            handle = await client.start_workflow(export_report, "Q3-sales", id="export-Q3-sales",
                                                 task_queue="reports")
            await EXPORT_RUNNING.wait()
            await asyncio.sleep(0.2)  # let the export run a little
            print("client: cancel the workflow")
            await handle.cancel()
            try:
                print(f"result: {await handle.result()}")
            except duro.WorkflowFailedError as e:
                print(f"result: WorkflowFailedError, caused by {type(e.__cause__).__name__}: {e.__cause__}")
            print(f"status: {(await handle.describe()).status}")
            await asyncio.wait_for(EXPORT_STOPPED.wait(), timeout=10)
            history = await handle.fetch_history()

    print(f"\nthe history ({len(history)} events):")
    for event in history:
        if event.event_type != "WorkflowTaskCompleted":
            detail = event.name or (f"#{event.ref}" if event.ref else "")  # ref: the activity or timer number
            print(f"  {event.event_id:>3}  {event.event_type:<34} {detail}")
    print(f"finished in {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/cancellation-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(directory))
    else:
        uvloop.run(main(directory))
