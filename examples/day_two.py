"""Day two: start options, search attributes, finding workflows, reset, and deleting what is done.

A ticket workflow records its stage in a search attribute as it goes. The example:

- starts tickets with search attributes and a memo, and one by signal-with-start (start it, or
  signal it if it is already open: the same call twice reaches the same run);
- finds them with ``list_workflows`` / ``count_workflows`` by status and attribute, page by page;
- resets a ticket to an earlier workflow task (the current code runs again from there; the
  signal that arrived after that point is kept);
- deletes a finished ticket, then purges everything closed.

    .venv/bin/python examples/day_two.py [DATA_DIR | STORE_URL]    # default: ./duro-data/day-two-<timestamp>
"""

from __future__ import annotations

import asyncio
import datetime
import sys
import time

import duro


@duro.activity
async def notify(ctx: duro.ActivityContext, ticket: str, stage: str) -> str:
    print(f"  [activity] {ticket}: now {stage}")
    return stage


@duro.workflow
async def ticket(ctx: duro.WorkflowContext, title: str) -> str:
    ctx.logger.info("ticket %s opened", title)
    ctx.upsert_search_attributes({"stage": "triage"})
    await ctx.execute_activity(notify, ctx.info.workflow_id, "triage", start_to_close_timeout=10)
    owner = await ctx.wait_signal("assign")
    ctx.upsert_search_attributes({"stage": "assigned", "owner": owner})
    await ctx.execute_activity(notify, ctx.info.workflow_id, f"assigned to {owner}", start_to_close_timeout=10)
    await ctx.wait_signal("resolve")
    ctx.upsert_search_attributes({"stage": "resolved"})
    return f"{title}: resolved by {owner}"


async def main(where: str) -> None:
    url = where if "://" in where else f"lmdb://{where}"  # a directory, or any store URL
    print(f"store: {url}")
    t0 = time.perf_counter()
    async with duro.Client.connect(url) as client:
        async with duro.Worker(client, task_queue="tickets", workflows=[ticket], activities=[notify]):
            for n, (title, team) in enumerate([("login fails", "web"), ("slow export", "data"),
                                               ("typo on home page", "web")], 1):
                await client.start_workflow(ticket, title, id=f"T-{n}", task_queue="tickets",
                                            search_attributes={"team": team}, memo={"reported_by": "alice"})
            # Signal-with-start: T-4 does not exist yet, so it starts with the signal already in it...
            h4 = await client.start_workflow(ticket, "printer on fire", id="T-4", task_queue="tickets",
                                             search_attributes={"team": "ops"},
                                             start_signal="assign", start_signal_args=["bob"])
            # ...and the same call again reaches the same open run (here: a second, harmless signal).
            again = await client.start_workflow(ticket, "printer on fire", id="T-4", task_queue="tickets",
                                                start_signal="resolve")
            print(f"signal-with-start twice reached one run: {again.run_id == h4.run_id}")
            print(f"T-4: {await h4.result()}")

            async def stage_is(wid: str, stage: str) -> None:
                while (await client.get_handle(wid).describe()).search_attributes.get("stage") != stage:
                    await asyncio.sleep(0.01)

            for wid in ("T-1", "T-2", "T-3"):
                await stage_is(wid, "triage")
            web = await client.list_workflows(status="running", search_attributes={"team": "web"})
            print(f"open web tickets: {sorted(w.workflow_id for w in web)}")
            print(f"tickets in triage: {await client.count_workflows(search_attributes={'stage': 'triage'})}")
            page = await client.list_workflows(limit=2)
            rest = await client.list_workflows(limit=2, page_token=page.next_page_token)
            print(f"newest first, two pages: {[w.workflow_id for w in page]} then {[w.workflow_id for w in rest]}")

            # T-1 is assigned to carol by mistake, and resolved; reset it to its first workflow task:
            # the new run replays up to there, and the later signals are kept in order.
            h1 = client.get_handle("T-1")
            await h1.signal("assign", "carol")
            await h1.signal("resolve")
            print(f"T-1: {await h1.result()}")
            first_task = next(e.event_id for e in await h1.fetch_history() if e.event_type == "WorkflowTaskCompleted")
            reset = await h1.reset(event_id=first_task, reason="assigned by mistake")
            print(f"T-1 reset to event {first_task}: new run {reset.run_id[:8]}..., "
                  f"result again: {await reset.result()}")
            desc = await client.get_handle("T-1").describe()
            print(f"T-1 now: {desc.status}, stage {desc.search_attributes.get('stage')!r}, memo {desc.memo}")

            for wid in ("T-2", "T-3"):
                await client.get_handle(wid).signal("assign", "dave")
                await client.get_handle(wid).signal("resolve")
                await client.get_handle(wid).result()
            await client.get_handle("T-2").delete()
            print(f"deleted T-2; workflows left: {await client.count_workflows()}")
            later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
            purged = 0
            while n := await client.purge(later):
                purged += n
            print(f"purged {purged} closed run(s); workflows left: {await client.count_workflows()}")
    print(f"finished in {time.perf_counter() - t0:.2f}s")


if __name__ == "__main__":
    directory = sys.argv[1] if len(sys.argv) > 1 else f"./duro-data/day-two-{time.strftime('%Y%m%d-%H%M%S')}"
    asyncio.run(main(directory))
