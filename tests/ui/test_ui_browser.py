"""The web UI in a real browser (Debian's chromium, headless, driven by Playwright) over each store.

One browser serves the whole module (launching one takes about a second); each test gets a fresh
store, a real worker, the UI on an ephemeral port, and a fresh browser context. Nothing here sleeps:
Playwright's ``expect`` and ``eventually`` wait for conditions with a deadline.

``DURO_UI_SCREENSHOTS=1`` writes the documentation's screenshots (docs/images/ui-*.png, from the LMDB
run); otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

import duro
from duro.ui import create_app
from tests.ui import ui_wfs
from tests.waiting import eventually

playwright_api = pytest.importorskip("playwright.async_api", reason="the browser tests need playwright")
Browser = playwright_api.Browser
Page = playwright_api.Page
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
WAIT_MS = 15_000  # Playwright's deadline for each expected condition

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: install Debian's chromium package (apt-get install chromium) "
                    "to run the web UI's browser tests")
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        await launched.close()


@dataclass
class UI:
    """A served UI: its client (with a worker of queue "ui") and its address."""

    client: duro.Client
    url: str


async def _serve(client: duro.Client, **options: Any) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(await create_app(client, **options))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest_asyncio.fixture(loop_scope="module")
async def ui(store: str) -> AsyncIterator[UI]:
    ui_wfs.GATES.clear()
    async with duro.Client.connect(store) as client, duro.Worker(
            client, task_queue="ui", workflows=ui_wfs.WORKFLOWS, activities=ui_wfs.ACTIVITIES):
        runner, url = await _serve(client)
        try:
            yield UI(client, url)
        finally:
            await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 820})
    tab = await context.new_page()
    tab.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    tab.on("console", lambda m: errors.append(f"console: {m.text}") if "Content Security Policy" in m.text else None)
    yield tab
    await context.close()
    assert errors == [], errors  # no script error, no CSP violation: the page runs within its own policy


def shot_path(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> Path:
    if os.environ.get("DURO_UI_SCREENSHOTS") == "1" and "lmdb" in request.node.name:
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        return DOCS_IMAGES / name
    return tmp_path / name


async def waiting_for_approval(client: duro.Client, workflow_id: str) -> None:
    """Until the run waits for its signal (its one-hour timer around wait_signal is started)."""
    async def started() -> bool:
        events = await client.get_handle(workflow_id).fetch_history()
        return any(e.event_type == "TimerStarted" and e.data() == {"duration": 3600} for e in events)

    await eventually(started, f"{workflow_id} to wait for its signal")


async def test_list_filter_open_timeline_and_signal(ui: UI, page: Any, request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    client = ui.client
    done = await client.start_workflow(ui_wfs.approval, {"id": "1039", "customer": "carol", "amount": 80},
                                       id="order-1039", task_queue="ui", search_attributes={"customer": "carol"})
    await done.signal("approve", {"by": "dan"})
    await done.result()
    failed = await client.start_workflow(ui_wfs.declined, {"id": "1040"}, id="order-1040", task_queue="ui")
    with pytest.raises(duro.WorkflowFailedError):
        await failed.result()
    stopped = await client.start_workflow(ui_wfs.approval, {"id": "1041"}, id="order-1041", task_queue="ui")
    await stopped.terminate("duplicate order")
    order = {"id": "1042", "customer": "alice", "amount": 120}
    await client.start_workflow(ui_wfs.approval, order, id="order-1042", task_queue="ui",
                                search_attributes={"customer": "alice", "amount": 120}, memo={"channel": "web"})
    await waiting_for_approval(client, "order-1042")

    # The list: every workflow, counts per status.
    await page.goto(f"{ui.url}/#/workflows")
    rows = page.locator("#workflows-body tr")
    await expect(rows).to_have_count(4)
    await expect(page.locator("#count-all b")).to_have_text("4")
    await expect(page.locator("#count-running b")).to_have_text("1")
    await expect(page.locator("#count-failed b")).to_have_text("1")
    await expect(rows.first).to_contain_text("order-1042")
    pager = await page.locator(".pager").bounding_box()
    assert pager is not None
    await page.screenshot(path=shot_path(request, tmp_path, "ui-workflows.png"),
                          clip={"x": 0, "y": 0, "width": 1280, "height": pager["y"] + pager["height"] + 24})

    # The list follows new workflows by itself.
    await client.start_workflow(ui_wfs.approval, {"id": "1043", "customer": "bob"}, id="order-1043",
                                task_queue="ui", search_attributes={"customer": "bob"})
    await expect(rows).to_have_count(5)
    await expect(page.locator("#count-running b")).to_have_text("2")
    await expect(rows.first).to_contain_text("order-1043")

    # Pages (of 3 here), with the next page's token.
    await page.goto(f"{ui.url}/#/workflows?limit=3")
    await expect(rows).to_have_count(3)
    await page.click("#page-next")
    await expect(page.locator("#page-info")).to_have_text("page 2")
    await expect(rows).to_have_count(2)
    await expect(rows.last).to_contain_text("order-1039")
    await expect(page.locator("#page-next")).to_be_disabled()
    await page.click("#page-prev")
    await expect(rows.first).to_contain_text("order-1043")
    await page.goto(f"{ui.url}/#/workflows")

    # Filter by status (the select applies at once), then by search attribute.
    await page.select_option("#filter-status", "failed")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("order-1040")
    assert "status=failed" in page.url
    await page.select_option("#filter-status", "")
    await page.fill("#filter-attr", "customer=alice")
    await page.click("#filter-apply")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("order-1042")

    # Open it: summary, input, pending timer, timeline bars.
    await page.get_by_role("link", name="order-1042").click()
    await expect(page.locator("#wf-status")).to_have_text("running")
    await expect(page.locator("#wf-input")).to_contain_text('"customer": "alice"')
    await expect(page.locator("#wf-memo")).to_contain_text('"channel": "web"')
    await expect(page.locator("#wf-pending-timers")).to_contain_text("1h")
    bars = page.locator("#wf-timeline svg rect.bar")
    await expect(bars).to_have_count(4)  # the run, activity prepare, the short timer, the one-hour timer
    await expect(page.locator("#wf-timeline svg .row-activity")).to_contain_text("activity prepare")
    await expect(page.locator("#wf-timeline svg .row-activity rect.bar")).to_have_class("bar bar-completed")
    await expect(page.locator("#wf-timeline svg .row-timer rect.bar-open")).to_have_count(1)
    await expect(page.locator("#wf-history-body tr")).to_have_count(
        len(await client.get_handle("order-1042").fetch_history()))
    await expect(page.locator("#wf-stack")).not_to_have_text("asking the workers…")
    await page.screenshot(path=shot_path(request, tmp_path, "ui-workflow.png"), full_page=True)

    # Signal through the form, with the confirmation step; the page updates itself (no reload).
    await page.evaluate("window.__same_page = true")
    await page.click("#action-signal")
    await page.fill("#signal-name", "approve")
    await page.fill("#signal-payload", "{not json")
    await page.click("#signal-send")
    await expect(page.locator("#signal-form-error")).to_contain_text("not valid JSON")
    await expect(page.locator("#confirm-dialog")).to_be_hidden()
    await page.fill("#signal-payload", '{"by": "alice"}')
    await page.click("#signal-send")
    dialog = page.locator("#confirm-dialog")
    await expect(dialog).to_be_visible()
    await expect(dialog.locator("#confirm-details")).to_contain_text('"by": "alice"')
    await dialog.locator("#confirm-ok").click()
    await expect(page.locator("#action-ok")).to_have_text('Signal "approve" sent.')
    await expect(page.locator("#wf-status")).to_have_text("completed")
    await expect(page.locator("#wf-result")).to_contain_text('"approved_by": "alice"')
    await expect(page.locator("#wf-history-body")).to_contain_text("WorkflowExecutionSignaled")
    await expect(page.locator("#action-signal")).to_be_disabled()
    await expect(page.locator("#wf-timeline svg rect.bar-open")).to_have_count(0)
    assert await page.evaluate("window.__same_page") is True
    assert (await client.get_handle("order-1042").describe()).status == "completed"


async def test_the_history_shows_a_querys_answer_at_each_workflow_task(
        ui: UI, page: Any, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    client = ui.client
    handle = await client.start_workflow(ui_wfs.approval, {"id": "S1"}, id="order-s1", task_queue="ui")
    await waiting_for_approval(client, "order-s1")
    tasks = [e.event_id for e in await handle.fetch_history() if e.event_type == "WorkflowTaskCompleted"]
    await page.goto(f"{ui.url}/#/workflow/order-s1")
    await expect(page.locator("#wf-status")).to_have_text("running")

    def state_at(event_id: int) -> Any:
        return page.locator(f'#wf-history-body tr[data-event-id="{event_id}"] td.state-cell')

    # Bad arguments are refused in the page; a good query fills one cell per workflow task.
    await page.fill("#wf-state-query", "stage")
    await page.fill("#wf-state-args", "{not json")
    await page.click("#wf-state-show")
    await expect(page.locator("#wf-state-status")).to_contain_text("not valid JSON")
    await page.fill("#wf-state-args", "")
    await page.click("#wf-state-show")
    await expect(page.locator("#wf-state-head")).to_have_text("State: stage")
    for event_id, stage in zip(tasks, ["preparing", "pausing", "waiting for approval"], strict=True):
        await expect(state_at(event_id)).to_have_text(f'"{stage}"')
    await expect(page.locator("#wf-history-body td.state-cell:not(:empty)")).to_have_count(len(tasks))

    # The run goes on: the new workflow tasks get their state as the page follows the history.
    await handle.signal("approve", {"by": "erin"})
    await handle.result()
    later = [e.event_id for e in await handle.fetch_history() if e.event_type == "WorkflowTaskCompleted"]
    await expect(page.locator("#wf-status")).to_have_text("completed")
    for event_id in later[len(tasks):]:
        await expect(state_at(event_id)).to_have_text('"finishing"')
    await page.locator("#wf-history").screenshot(path=shot_path(request, tmp_path, "ui-history-state.png"))

    # A query the workflow does not have: each cell says so. Hide takes the column away.
    await page.fill("#wf-state-query", "nope")
    await page.click("#wf-state-show")
    await expect(state_at(tasks[0])).to_contain_text("DuroError")
    await page.click("#wf-state-hide")
    await expect(page.locator("#wf-state-head")).to_have_count(0)
    await expect(page.locator("#wf-history-body td.state-cell")).to_have_count(0)


async def test_payloads_are_shown_as_text_never_run(ui: UI, page: Any) -> None:
    client = ui.client
    script = "<script>window.__pwned=1</script>"
    image = '<img src=x onerror="window.__pwned=2">'
    wid = '<img src=x onerror="window.__pwned=3">'
    await client.start_workflow(ui_wfs.approval, {"id": "evil", "note": script, "pic": image}, id=wid,
                                task_queue="ui", search_attributes={"customer": script}, memo={"html": image})
    await waiting_for_approval(client, wid)
    await client.get_handle(wid).signal("note", script)

    await page.goto(f"{ui.url}/#/workflows")
    link = page.get_by_role("link", name=wid)
    await expect(link).to_have_text(wid)  # the id, literally, as a link's text
    await link.click()
    await expect(page.locator("#wf-input")).to_contain_text(f'"note": "{script}"')
    await expect(page.locator("#wf-attrs")).to_contain_text(script)
    await expect(page.locator("#wf-memo")).to_contain_text('onerror=\\"window.__pwned=2\\"')
    await expect(page.locator("#wf-id")).to_have_text(wid)
    await expect(page.locator("#wf-history-body")).to_contain_text(script)
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.evaluate("document.querySelectorAll('#view img, #view script').length") == 0
    assert await page.title() == f"{wid} · duro"

    # Cancelling the confirmation does nothing.
    await page.click("#action-terminate")
    await expect(page.locator("#confirm-dialog")).to_be_visible()
    await page.click("#confirm-cancel")
    await expect(page.locator("#confirm-dialog")).to_be_hidden()
    assert (await client.get_handle(wid).describe()).status == "running"
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def test_token_from_link_and_action_errors(ui: UI, page: Any) -> None:
    client = ui.client
    await client.start_workflow(ui_wfs.approval, {"id": "T"}, id="guarded", task_queue="ui")
    await waiting_for_approval(client, "guarded")
    runner, url = await _serve(client, token="open-sesame", require_token=True)
    try:
        # Without the token: the page says so, and an action's refusal shows as a clear error.
        await page.goto(f"{url}/#/workflow/guarded")
        await expect(page.locator("#token-missing")).to_be_visible()
        await expect(page.locator("#wf-status")).to_have_text("running")
        await page.click("#action-cancel")
        await page.click("#confirm-ok")
        await expect(page.locator("#action-error")).to_contain_text("needs its token")
        assert (await client.get_handle("guarded").describe()).status == "running"

        # With the link serve() prints: the token is kept for the tab and leaves the address bar.
        await page.goto(f"{url}/?token=open-sesame#/workflow/guarded")
        await expect(page.locator("#wf-status")).to_have_text("running")
        assert "token" not in page.url
        await expect(page.locator("#token-missing")).to_have_count(0)
        await page.click("#action-terminate")
        await page.fill("#confirm-input", "from the browser")
        await page.click("#confirm-ok")
        await expect(page.locator("#wf-status")).to_have_text("terminated")
        last = (await client.get_handle("guarded").fetch_history())[-1]
        assert "from the browser" in str(last.data())
    finally:
        await runner.cleanup()


async def test_schedules_page(ui: UI, page: Any) -> None:
    await ui.client.create_schedule("nightly-report", ui_wfs.declined, {"id": "S"}, task_queue="nobody",
                                    cron="0 3 * * *")
    await page.goto(f"{ui.url}/#/schedules")
    row = page.locator("#schedules-table tbody tr")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text("cron 0 3 * * * (UTC)")
    await row.locator(".schedule-pause").click()
    await page.fill("#confirm-input", "maintenance")
    await page.click("#confirm-ok")
    await expect(row).to_contain_text("paused")
    await expect(row).to_contain_text("maintenance")
    assert (await ui.client.get_schedule_handle("nightly-report").describe()).paused
    await row.locator(".schedule-trigger").click()
    await page.click("#confirm-ok")
    await expect(page.locator("#schedule-ok")).to_contain_text("Started nightly-report-")
    await expect(row.locator("a")).to_have_count(1)
    await row.locator(".schedule-unpause").click()
    await page.click("#confirm-ok")
    await expect(row.locator(".schedule-pause")).to_be_visible()
    assert not (await ui.client.get_schedule_handle("nightly-report").describe()).paused


async def test_reset_from_the_page(ui: UI, page: Any) -> None:
    handle = await ui.client.start_workflow(ui_wfs.approval, {"id": "R"}, id="to-reset", task_queue="ui")
    await waiting_for_approval(ui.client, "to-reset")
    await page.goto(f"{ui.url}/#/workflow/to-reset")
    await expect(page.locator("#wf-run-id")).to_have_text(str(handle.run_id))
    await page.click("#action-reset")
    points = [e.event_id for e in await handle.fetch_history() if e.event_type == "WorkflowTaskCompleted"]
    options = page.locator("#reset-event option")
    await expect(options).to_have_count(len(points))
    await page.select_option("#reset-event", str(points[0]))
    await page.fill("#reset-reason", "bad deploy")
    await page.click("#reset-submit")
    await expect(page.locator("#confirm-title")).to_have_text(f"Reset to event {points[0]}?")
    await page.click("#confirm-ok")
    await expect(page.locator("#wf-run-id")).not_to_have_text(str(handle.run_id))
    new_run = (await ui.client.get_handle("to-reset").describe()).run_id
    assert new_run != handle.run_id and f"run_id={new_run}" in page.url
    await expect(page.locator("#wf-run-id")).to_have_text(new_run)
    await expect(page.locator("#wf-status")).to_have_text("running")
    assert (await ui.client.get_handle("to-reset", handle.run_id).describe()).status == "terminated"
