"""Schedules: start a workflow on a cron expression or at a fixed interval, durably.

* ``client.create_schedule(id, workflow, *args, task_queue=..., every=...)`` (or ``cron="0 3 * * *"``)
  stores the schedule; a worker of the task queue fires it at each due time (any worker of the
  queue, in any process: each due time starts one run, even if workers race or crash).
* each run's workflow id is ``<schedule id>-<scheduled time>``, and its search attributes
  ``DuroScheduleId`` / ``DuroScheduledTime`` name the schedule and the time it ran for.
* the handle describes it (next due times, recent runs), pauses and unpauses it with a note,
  triggers it now, backfills a past range, updates and deletes it. ``duro schedule ...`` does the
  same from a shell.

The interval here is 0.2 s so the example ends in a few seconds; real schedules say every hour, or
``cron="0 3 * * *"``.

    .venv/bin/python examples/schedules.py [DATA_DIR | STORE_URL]    # default: ./duro-data/schedules-<timestamp>
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import time

import duro

QUEUE = "reports"


@duro.activity
async def build_report(ctx: duro.ActivityContext, team: str, workflow_id: str) -> str:
    print(f"  [activity] report for {team} ({workflow_id})")
    return f"report-{workflow_id}"


@duro.workflow
async def team_report(ctx: duro.WorkflowContext, team: str) -> str:
    report: str = await ctx.execute_activity(build_report, team, ctx.info.workflow_id, start_to_close_timeout=10)
    return report


def hms(t: datetime.datetime | None) -> str:
    return t.strftime("%H:%M:%S.%f")[:-3] if t is not None else "-"


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue=QUEUE, workflows=[team_report], activities=[build_report]):
            every = datetime.timedelta(seconds=0.2)
            sh = await client.create_schedule("ops-report", team_report, "ops", task_queue=QUEUE, every=every,
                                              note="demo")
            desc = await sh.describe()
            print(f"created schedule {sh.id}: every {every.total_seconds()}s, next runs at "
                  + ", ".join(hms(t) for t in desc.next_run_times[:3]))

            while (await sh.describe()).fired_count < 3:  # the worker fires it meanwhile
                await asyncio.sleep(0.05)
            await sh.pause(note="enough for the demo")
            desc = await sh.describe()
            print(f"paused ({desc.note!r}) after {desc.fired_count} runs:")
            for run in desc.recent_runs[:3]:
                print(f"  {run.workflow_id}  scheduled {hms(run.scheduled_time)}")
                assert await client.get_handle(run.workflow_id).result() == f"report-{run.workflow_id}"

            started = await sh.trigger(overlap="allow_all")  # fire now, although paused
            assert started is not None
            print(f"trigger started {started}")
            day = datetime.datetime(2026, 1, 1, 9, 0, tzinfo=datetime.UTC)
            backfilled = await sh.backfill(day, day + datetime.timedelta(seconds=1), overlap="allow_all")
            print(f"backfill of 09:00:00-09:00:01 on 2026-01-01 started {len(backfilled)} runs: "
                  f"{backfilled[0]} ... {backfilled[-1]}")
            for wid in [started, *backfilled]:
                await client.get_handle(wid).result()
            again = await sh.backfill(day, day + datetime.timedelta(seconds=1), overlap="allow_all")
            print(f"the same backfill again started {len(again)} runs (each time runs once)")

            nightly = await client.create_schedule("nightly", team_report, "finance", task_queue=QUEUE,
                                                   cron="0 3 * * *", time_zone="Europe/Paris")
            times = (await nightly.describe()).next_run_times[:2]
            print("nightly (cron '0 3 * * *' in Europe/Paris) runs next at "
                  + ", ".join(t.strftime("%Y-%m-%d %H:%M UTC") for t in times))

            runs = await client.list_workflows(search_attributes={"DuroScheduleId": "ops-report"}, limit=1000)
            print(f"list_workflows(DuroScheduleId='ops-report'): {len(runs)} runs, "
                  f"{sum(r.status == 'completed' for r in runs)} completed")
            print(f"schedules: {[d.id for d in await client.list_schedules()]}")
            await sh.delete()
            await nightly.delete()
            print(f"deleted; schedules left: {[d.id for d in await client.list_schedules()]}")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/schedules-{time.strftime('%Y%m%d-%H%M%S')}"
    asyncio.run(main(directory))
