"""The web UI's JSON API over each store: reads, actions, bad inputs, and the security rules."""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

import duro
import duro.ui
from duro.client import WorkflowExecution
from duro.ui import create_app, serve
from duro.ui._views import run_view
from tests.ui import ui_wfs
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def http(client: duro.Client) -> AsyncIterator[TestClient[Any, Any]]:
    app = await create_app(client, query_timeout=0.3)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture
async def worker(client: duro.Client) -> AsyncIterator[duro.Worker]:
    ui_wfs.GATES.clear()  # each test's gates are its own (and of its event loop)
    async with duro.Worker(client, task_queue="ui", workflows=ui_wfs.WORKFLOWS, activities=ui_wfs.ACTIVITIES) as w:
        yield w
    for gate in ui_wfs.GATES.values():
        gate.set()


async def get_json(http: TestClient[Any, Any], path: str, expect: int = 200, **params: Any) -> Any:
    resp = await http.get(path, params=params)
    body = await resp.json()
    assert resp.status == expect, body
    return body


async def post_json(http: TestClient[Any, Any], path: str, body: Any, expect: int = 200,
                    headers: dict[str, str] | None = None) -> Any:
    resp = await http.post(path, json=body, headers=headers)
    answer = await resp.json()
    assert resp.status == expect, answer
    return answer


async def status_of(client: duro.Client, workflow_id: str, run_id: str | None = None) -> str:
    return (await client.get_handle(workflow_id, run_id).describe()).status


# ---------------------------------------------------------------------------------------------- the page

async def test_page_static_files_and_headers(http: TestClient[Any, Any]) -> None:
    resp = await http.get("/")
    html = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    # No inline script anywhere: every <script> loads a file (the CSP would block an inline one anyway).
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/static/js/main.js">']
    scripts = sorted((Path(duro.ui.__file__).parent / "static" / "js").glob("*.js"))
    assert {p.stem for p in scripts} >= {"main", "api", "dom", "list", "workflow", "timeline", "actions"}
    for script in scripts:
        js = await http.get(f"/static/js/{script.name}")
        assert js.status == 200 and "javascript" in js.content_type, script.name
        # Data reaches the DOM as text only: no HTML parsing sink anywhere in the page's code.
        assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|eval\(", await js.text())
    css = await http.get("/static/app.css")
    assert css.status == 200 and css.content_type == "text/css"
    assert (await http.get("/static/../_app.py")).status in (403, 404)
    assert (await http.get("/static/")).status in (403, 404)  # no directory listing
    info = await get_json(http, "/api/info")
    assert info["version"] == duro.__version__ and info["store"] in ("lmdb", "postgresql")
    assert info["token_required"] is False


# ---------------------------------------------------------------------------------------------- reads

async def test_list_filters_counts_and_pages(client: duro.Client, http: TestClient[Any, Any]) -> None:
    # No worker: the runs stay running unless terminated, which is all a list needs.
    handles = []
    for i in range(5):
        handles.append(await client.start_workflow(
            "job", {"n": i}, id=f"job-{i}", task_queue="nobody",
            search_attributes={"customer": "alice" if i % 2 == 0 else "bob", "amount": i}))
    other = await client.start_workflow("other", id="other-1", task_queue="nobody")
    await handles[1].terminate("test")
    await handles[2].terminate("test")

    listed = await get_json(http, "/api/workflows")
    assert [w["workflow_id"] for w in listed["workflows"]] == ["other-1", "job-4", "job-3", "job-2", "job-1", "job-0"]
    assert listed["next_page_token"] is None
    first = listed["workflows"][-1]
    assert first["workflow_type"] == "job" and first["status"] == "running" and first["task_queue"] == "nobody"
    assert first["search_attributes"] == {"customer": "alice", "amount": 0} and first["close_time"] is None
    assert datetime.datetime.fromisoformat(first["start_time"]).tzinfo is not None

    def ids(body: Any) -> list[str]:
        return [w["workflow_id"] for w in body["workflows"]]

    assert ids(await get_json(http, "/api/workflows", status="terminated")) == ["job-2", "job-1"]
    assert ids(await get_json(http, "/api/workflows", type="other")) == ["other-1"]
    assert ids(await get_json(http, "/api/workflows", attr="customer=alice")) == ["job-4", "job-2", "job-0"]
    assert ids(await get_json(http, "/api/workflows", attr="amount=3")) == ["job-3"]  # typed: the int 3
    assert ids(await get_json(http, "/api/workflows", attr='amount="3"')) == []  # the string "3" is another value
    both = await http.get("/api/workflows", params=[("attr", "customer=alice"), ("attr", "amount=4")])
    assert ids(await both.json()) == ["job-4"]
    started_2 = (await handles[2].describe()).start_time
    after = await get_json(http, "/api/workflows", started_after=started_2.isoformat())
    assert ids(after) == ["other-1", "job-4", "job-3"]
    before = await get_json(http, "/api/workflows", started_before=started_2.isoformat().replace("+00:00", "Z"))
    assert ids(before) == ["job-1", "job-0"]
    assert ids(await get_json(http, "/api/workflows", status="running", type="job", attr="customer=bob")) == ["job-3"]

    counts = await get_json(http, "/api/counts")
    assert counts["total"] == 6
    assert counts["by_status"]["running"] == 4 and counts["by_status"]["terminated"] == 2
    assert counts["by_status"]["completed"] == 0
    assert (await get_json(http, "/api/counts", type="job"))["by_status"]["running"] == 3
    # The counts are per status whatever status the list is filtered on.
    assert (await get_json(http, "/api/counts", status="terminated"))["total"] == 6

    seen: list[str] = []
    token = None
    while True:
        page = await get_json(http, "/api/workflows", limit=2, **({"page_token": token} if token else {}))
        seen += ids(page)
        token = page["next_page_token"]
        if token is None:
            break
        assert len(page["workflows"]) == 2
    assert seen == ids(listed)
    assert other.id == "other-1"


async def test_workflow_page_data_and_signal(client: duro.Client, http: TestClient[Any, Any],
                                             worker: duro.Worker) -> None:
    order = {"id": "A1", "amount": 5}
    await client.start_workflow(ui_wfs.approval, order, id="order A1/ü", task_queue="ui",
                                search_attributes={"customer": "alice"}, memo={"note": "vip"})
    path = "/api/workflows/order%20A1%2F%C3%BC"  # any id: spaces, a slash, non-ASCII

    async def waiting() -> Any:
        body = await get_json(http, path)
        return body if [t["duration"] for t in body["pending_timers"]] == [3600] else None

    detail = await eventually(waiting, "the one-hour timer around wait_signal")
    exe = detail["execution"]
    assert exe["workflow_id"] == "order A1/ü" and exe["status"] == "running" and exe["workflow_type"] == "approval"
    assert exe["search_attributes"] == {"customer": "alice"} and exe["memo"] == {"note": "vip"}
    assert detail["input"] == [order] and detail["outcome"] is None
    [timer] = detail["pending_timers"]
    assert timer["duration"] == 3600 and timer["end"] is None
    due = datetime.datetime.fromisoformat(timer["due"]) - datetime.datetime.fromisoformat(timer["start"])
    assert due == datetime.timedelta(hours=1)
    spans = {(s["kind"], s["label"]): s for s in detail["spans"]}
    assert spans[("activity", "prepare")]["outcome"] == "completed" and spans[("activity", "prepare")]["end"]
    assert spans[("timer", "0.05s")]["outcome"] == "fired"
    assert spans[("timer", "1h")]["outcome"] == "open"
    assert detail["pending_activities"] == [] and detail["pending_children"] == []
    assert detail["reset_points"] and all(p["event_id"] > 1 for p in detail["reset_points"])

    history = await get_json(http, f"{path}/history")
    assert history["total"] >= exe["history_length"] and not history["more"]
    types = [e["type"] for e in history["events"]]
    assert types[0] == "WorkflowExecutionStarted" and "TimerFired" in types
    assert history["events"][0]["data"]["args"] == [order]
    tail = await get_json(http, f"{path}/history", after=2, limit=2)
    assert [e["event_id"] for e in tail["events"]] == [3, 4] and tail["more"]

    # Time travel: the query's answer as of each workflow task, in one replay.
    states = await get_json(http, f"{path}/states", query="stage")
    tasks = [e["event_id"] for e in history["events"] if e["type"] == "WorkflowTaskCompleted"]
    assert states["run_id"] == exe["run_id"] and states["query"] == "stage" and states["args"] == []
    assert [a["event_id"] for a in states["answers"]] == tasks
    assert [a["result"] for a in states["answers"]] == ["preparing", "pausing", "waiting for approval"]
    assert all(a["error"] is None for a in states["answers"])
    unknown = await get_json(http, f"{path}/states", query="nope")
    assert all(a["result"] is None and a["error"]["type"] == "DuroError" and "'nope'" in a["error"]["message"]
               for a in unknown["answers"])

    stack = await get_json(http, f"{path}/stack")
    assert isinstance(stack["answered"], bool)
    if stack["answered"]:  # the worker's __stack_trace: the code's await points and what they wait for
        assert "signal 'approve'" in stack["stack"] and "ui_wfs.py" in stack["stack"], stack
    else:  # a duro without the built-in query: the reason is shown
        assert stack["error"]

    assert await post_json(http, f"{path}/signal", {"name": "approve", "args": [{"by": "bob"}],
                                                    "run_id": exe["run_id"]}) == {"ok": True}

    async def closed() -> Any:
        body = await get_json(http, path)
        return body if body["execution"]["status"] == "completed" else None

    done = await eventually(closed, "the workflow to complete after the signal")
    assert done["outcome"]["status"] == "completed"
    assert done["outcome"]["value"] == {"prepared": "A1", "approved_by": "bob", "done": "done-A1"}
    assert [s["name"] for s in done["signals"]] == ["approve"]
    assert done["pending_timers"] == [] and {s["outcome"] for s in done["spans"]} <= {"completed", "fired", "canceled"}
    assert (await get_json(http, f"{path}/stack")) == {"answered": False, "error": "the run is completed"}


async def test_pending_activity_child_and_failure(client: duro.Client, http: TestClient[Any, Any],
                                                  worker: duro.Worker) -> None:
    await client.start_workflow(ui_wfs.waits_on_gate, "gate-1", id="gated", task_queue="ui")
    await client.start_workflow(ui_wfs.parent, {"id": "P1"}, id="parent", task_queue="ui")
    await client.start_workflow(ui_wfs.declined, {"id": "D1"}, id="declined", task_queue="ui")

    async def pending(path: str, key: str) -> Any:
        body = await get_json(http, path)
        return body if body[key] else None

    gated = await eventually(lambda: pending("/api/workflows/gated", "pending_activities"), "a pending activity")
    [activity] = gated["pending_activities"]
    assert activity["name"] == "gated" and activity["kind"] == "activity" and activity["end"] is None
    if "pending_activities" in WorkflowExecution.__dataclass_fields__:  # describe() tells attempts and heartbeats
        async def heartbeat() -> Any:
            [a] = (await get_json(http, "/api/workflows/gated"))["pending_activities"]
            return a if a.get("heartbeat_details") else None

        activity = await eventually(heartbeat, "the gated activity's heartbeat")
        assert activity["heartbeat_details"] == {"waiting_for": "gate-1"} and activity["attempt"] == 1
        assert activity["state"] == "started" and activity["last_heartbeat_time"] and activity["last_failure"] is None
    assert [s["outcome"] for s in gated["spans"]] == ["open"]

    parent = await eventually(lambda: pending("/api/workflows/parent", "pending_children"), "a pending child")
    [child] = parent["pending_children"]
    assert child["child_id"] == "parent-child" and child["workflow_type"] == "approval" and child["child_run_id"]
    child_page = await get_json(http, "/api/workflows/parent-child")
    assert child_page["parent"]["wid"] == "parent"

    async def failed() -> Any:
        body = await get_json(http, "/api/workflows/declined")
        return body if body["execution"]["status"] == "failed" else None

    failure = (await eventually(failed, "the declined workflow to fail"))["outcome"]
    assert failure["status"] == "failed" and failure["value"]["type"] == "PaymentError"
    assert failure["value"]["message"] == "card declined for D1"

    ui_wfs.GATES.setdefault("gate-1", asyncio.Event()).set()
    assert await client.get_handle("gated").result() == "gate-1"
    await client.get_handle("parent-child").signal("approve", {"by": "carol"})
    assert (await client.get_handle("parent").result())["approved_by"] == "carol"
    finished = await get_json(http, "/api/workflows/parent")
    assert [s["outcome"] for s in finished["spans"] if s["kind"] == "child"] == ["completed"]


async def test_stack_when_no_worker_answers(client: duro.Client, http: TestClient[Any, Any]) -> None:
    await client.start_workflow("job", id="lonely", task_queue="nobody")
    answer = await get_json(http, "/api/workflows/lonely/stack")
    assert answer["answered"] is False and "no worker answered within 0.3s" in answer["error"]


# ---------------------------------------------------------------------------------------------- actions

async def test_terminate_cancel_reset(client: duro.Client, http: TestClient[Any, Any], worker: duro.Worker) -> None:
    await client.start_workflow(ui_wfs.approval, {"id": "T"}, id="to-terminate", task_queue="ui")
    assert await post_json(http, "/api/workflows/to-terminate/terminate", {"reason": "from the UI"}) == {"ok": True}
    assert await status_of(client, "to-terminate") == "terminated"
    last = (await client.get_handle("to-terminate").fetch_history())[-1]
    assert last.event_type == "WorkflowExecutionTerminated" and "from the UI" in str(last.data())

    handle = await client.start_workflow(ui_wfs.approval, {"id": "C"}, id="to-cancel", task_queue="ui")
    assert await post_json(http, "/api/workflows/to-cancel/cancel", {}) == {"ok": True}
    with pytest.raises(duro.WorkflowFailedError):
        await handle.result()
    assert await status_of(client, "to-cancel") == "canceled"

    handle = await client.start_workflow(ui_wfs.approval, {"id": "R"}, id="to-reset", task_queue="ui")
    await handle.signal("approve", {"by": "dave"})
    await handle.result()
    detail = await get_json(http, "/api/workflows/to-reset")
    first_task = detail["reset_points"][0]["event_id"]
    reset = await post_json(http, "/api/workflows/to-reset/reset", {"event_id": first_task, "reason": "bad deploy",
                                                                   "run_id": handle.run_id})
    assert reset["ok"] and reset["run_id"] != handle.run_id
    new = await get_json(http, "/api/workflows/to-reset", run_id=reset["run_id"])
    assert new["execution"]["run_id"] == reset["run_id"]
    old = await get_json(http, "/api/workflows/to-reset", run_id=handle.run_id)
    assert old["execution"]["next_run_id"] == reset["run_id"]


async def test_schedules(client: duro.Client, http: TestClient[Any, Any]) -> None:
    assert await get_json(http, "/api/schedules") == {"available": True, "schedules": []}
    await client.create_schedule("nightly", "job", {"n": 1}, task_queue="nobody", cron="0 3 * * *")
    [sched] = (await get_json(http, "/api/schedules"))["schedules"]
    assert sched["id"] == "nightly" and sched["cron"] == "0 3 * * *" and sched["paused"] is False
    assert sched["workflow_type"] == "job" and sched["args"] == [{"n": 1}] and len(sched["next_run_times"]) == 5

    assert await post_json(http, "/api/schedules/nightly/pause", {"note": "maintenance"}) == {"ok": True}
    [sched] = (await get_json(http, "/api/schedules"))["schedules"]
    assert sched["paused"] is True and sched["note"] == "maintenance" and sched["next_run_times"] == []
    assert await post_json(http, "/api/schedules/nightly/unpause", {}) == {"ok": True}
    assert (await client.get_schedule_handle("nightly").describe()).paused is False

    started = await post_json(http, "/api/schedules/nightly/trigger", {})
    assert started["workflow_id"].startswith("nightly-")
    assert await status_of(client, started["workflow_id"]) == "running"
    [sched] = (await get_json(http, "/api/schedules"))["schedules"]
    assert [r["workflow_id"] for r in sched["recent_runs"]] == [started["workflow_id"]]
    assert sched["recent_runs"][0]["trigger"] == "trigger" and sched["fired_count"] == 1

    missing = await post_json(http, "/api/schedules/nope/pause", {}, expect=404)
    assert "nope" in missing["error"]


# ---------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize(("params", "says"), [
    ({"status": "bogus"}, "unknown status 'bogus'"),
    ({"attr": "novalue"}, "key=value"),
    ({"attr": "=5"}, "key=value"),
    ({"started_after": "yesterday"}, "ISO 8601"),
    ({"started_before": "2026-01-01T00:00:00"}, "time zone"),
    ({"limit": "0"}, "limit must be an integer from 1 to 1000"),
    ({"limit": "many"}, "limit must be an integer"),
    ({"page_token": "zz"}, "page_token"),
])
async def test_bad_list_filters(http: TestClient[Any, Any], params: dict[str, str], says: str) -> None:
    body = await get_json(http, "/api/workflows", expect=400, **params)
    assert says in body["error"]


async def test_bad_requests_get_clear_errors(client: duro.Client, http: TestClient[Any, Any]) -> None:
    handle = await client.start_workflow("job", id="j", task_queue="nobody")
    assert "nope" in (await get_json(http, "/api/workflows/nope", expect=404))["error"]
    assert "nope" in (await get_json(http, "/api/workflows/nope/history", expect=404))["error"]
    assert (await get_json(http, "/api/nothing-here", expect=404))["error"]
    assert "after" in (await get_json(http, "/api/workflows/j/history", expect=400, after="-1"))["error"]
    assert "?query=NAME" in (await get_json(http, "/api/workflows/j/states", expect=400))["error"]
    states = "/api/workflows/j/states"
    assert "not valid JSON" in (await get_json(http, states, expect=400, query="q", args="{x"))["error"]
    assert "JSON array" in (await get_json(http, states, expect=400, query="q", args="{}"))["error"]
    assert "nope" in (await get_json(http, "/api/workflows/nope/states", expect=404, query="q"))["error"]
    assert (await get_json(http, "/api/workflows/j/signal", expect=405))["error"]

    signal = "/api/workflows/j/signal"
    assert "'name'" in (await post_json(http, signal, {"args": []}, expect=400))["error"]
    assert "'name' must be a string" in (await post_json(http, signal, {"name": 5}, expect=400))["error"]
    assert "JSON array" in (await post_json(http, signal, {"name": "s", "args": {"a": 1}}, expect=400))["error"]
    assert "signal name" in (await post_json(http, signal, {"name": "", "args": []}, expect=400))["error"]
    assert "JSON object" in (await post_json(http, signal, [1, 2], expect=400))["error"]
    resp = await http.post(signal, data=b"{not json", headers=JSON)
    assert resp.status == 400 and "not valid JSON" in (await resp.json())["error"]
    resp = await http.post(signal, data=b'{"name": "s"}', headers={"Content-Type": "text/plain"})
    assert resp.status == 415 and "application/json" in (await resp.json())["error"]
    resp = await http.post(signal, data=b"name=s", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415
    assert "nope" in (await post_json(http, "/api/workflows/nope/signal", {"name": "s"}, expect=404))["error"]

    reset = "/api/workflows/j/reset"
    assert "event_id" in (await post_json(http, reset, {}, expect=400))["error"]
    assert "event_id" in (await post_json(http, reset, {"event_id": "x"}, expect=400))["error"]
    assert "event_id" in (await post_json(http, reset, {"event_id": 0}, expect=400))["error"]
    assert "no completed workflow task" in (await post_json(http, reset, {"event_id": 1}, expect=409))["error"]
    assert "'reason' must be a string" in (await post_json(http, "/api/workflows/j/terminate", {"reason": 1},
                                                           expect=400))["error"]
    assert len(await handle.fetch_history()) == 1  # nothing refused was written

    await handle.terminate()
    closed = await post_json(http, signal, {"name": "s"}, expect=409)
    assert "terminated" in closed["error"]
    assert "terminated" in (await post_json(http, "/api/workflows/j/cancel", {}, expect=409))["error"]


# ---------------------------------------------------------------------------------------------- security

async def test_cross_site_posts_are_refused(client: duro.Client, http: TestClient[Any, Any]) -> None:
    handle = await client.start_workflow("job", id="victim", task_queue="nobody")
    path = "/api/workflows/victim/terminate"
    assert http.port is not None
    own = f"http://{http.host}:{http.port}"
    for headers, says in [
        ({"Origin": "http://evil.example"}, "Origin"),
        ({"Origin": "null"}, "Origin"),
        ({"Origin": f"http://{http.host}:{http.port + 1}"}, "Origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site"),
        ({"Origin": own, "Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site"),
    ]:
        body = await post_json(http, path, {"reason": "x"}, expect=403, headers=headers)
        assert "cross-site" in body["error"] and says in body["error"], headers
    assert await status_of(client, "victim") == "running"
    # A page that names another site in Host (DNS rebinding onto 127.0.0.1) reads nothing.
    resp = await http.get("/api/workflows", headers={"Host": "evil.example:8233"})
    assert resp.status == 403 and "localhost" in (await resp.json())["error"]
    assert (await http.get("/", headers={"Host": "localhost:8233"})).status == 200
    # Another site's page cannot make the browser run reads that cost work (replays, worker queries)...
    for read in ("/api/workflows/victim/states?query=q", "/api/workflows/victim/stack", "/api/workflows"):
        resp = await http.get(read, headers={"Sec-Fetch-Site": "cross-site"})
        assert resp.status == 403 and "cross-site" in (await resp.json())["error"], read
    # ...while a link from elsewhere still opens the page, and the page's own reads go through.
    assert (await http.get("/", headers={"Sec-Fetch-Site": "cross-site"})).status == 200
    assert (await http.get("/api/workflows", headers={"Sec-Fetch-Site": "same-origin"})).status == 200
    # The page's own requests go through.
    await post_json(http, path, {"reason": "x"}, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
    assert await status_of(client, handle.id) == "terminated"


async def test_token_required(client: duro.Client) -> None:
    with pytest.raises(ValueError, match="needs a token"):
        await create_app(client, require_token=True)
    await client.start_workflow("job", id="guarded", task_queue="nobody")
    app = await create_app(client, token="s3cret", require_token=True)
    async with TestClient(TestServer(app)) as http:
        path = "/api/workflows/guarded/signal"
        missing = await post_json(http, path, {"name": "s"}, expect=401)
        assert "token" in missing["error"]
        wrong = await post_json(http, path, {"name": "s"}, expect=401, headers={"X-Duro-Token": "guess"})
        assert "wrong token" in wrong["error"]
        assert len(await client.get_handle("guarded").fetch_history()) == 1
        await post_json(http, path, {"name": "s"}, headers={"X-Duro-Token": "s3cret"})
        assert len(await client.get_handle("guarded").fetch_history()) == 2
        # Reads stay open, and any Host is served (the server was bound for other machines on purpose).
        info = await get_json(http, "/api/info")
        assert info["token_required"] is True
        assert (await http.get("/api/workflows", headers={"Host": "duro.internal:8233"})).status == 200
    # A token given on loopback is checked too; other names are served then (a reverse proxy's).
    app = await create_app(client, token="t")
    async with TestClient(TestServer(app)) as http:
        await post_json(http, "/api/workflows/guarded/signal", {"name": "s"}, expect=401)
        assert (await get_json(http, "/api/info"))["token_required"] is True
        assert (await http.get("/api/info", headers={"Host": "duro.example.com"})).status == 200


def test_serve_without_aiohttp_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)  # what an import of a missing package does
    with pytest.raises(ImportError, match=r"pip install 'duro\[ui\]'"):
        serve("lmdb:///nowhere")


async def _serve_process(store: str, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    code = f"from duro.ui import serve; serve({store!r}, {', '.join(args)})"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.stdout is not None
    line = b""
    while not line.startswith(b"open "):
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, "serve() exited before printing its address"
    return proc, line.decode().split(" ", 1)[1].strip()


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
async def test_serve_prints_its_address_and_stops_on_ctrl_c(client: duro.Client, store: str, host: str) -> None:
    await client.start_workflow("job", id="served", task_queue="nobody")
    proc, link = await _serve_process(store, f"host={host!r}", "port=0")
    try:
        match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/(\?token=(.+))?", link)
        assert match, link
        base, token = f"http://127.0.0.1:{match[1]}", match[3]
        assert (token is not None) == (host == "0.0.0.0")  # a token is made for a non-loopback bind
        async with ClientSession() as session:
            async with session.get(f"{base}/api/workflows") as resp:
                assert [w["workflow_id"] for w in (await resp.json())["workflows"]] == ["served"]
            async with session.post(f"{base}/api/workflows/served/signal", json={"name": "s"}) as resp:
                assert resp.status == (401 if token else 200)
            if token:
                async with session.post(f"{base}/api/workflows/served/signal", json={"name": "s"},
                                        headers={"X-Duro-Token": token}) as resp:
                    assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    assert len(await client.get_handle("served").fetch_history()) == 2


async def test_a_store_without_an_operation_gets_501_and_a_bug_is_not_taken_for_one(
        client: duro.Client, http: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    await client.start_workflow("nobody_runs_this", id="ns", task_queue="nobody")

    def unsupported(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("no schedules here")

    monkeypatch.setattr(duro.Client, "list_schedules", unsupported)
    assert (await get_json(http, "/api/schedules"))["available"] is False
    monkeypatch.setattr(duro.WorkflowHandle, "cancel", unsupported)
    assert "does not support" in (await post_json(http, "/api/workflows/ns/cancel", {}, expect=501))["error"]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("a bug, not a missing feature")

    monkeypatch.setattr(duro.WorkflowHandle, "cancel", broken)
    resp = await http.post("/api/workflows/ns/cancel", json={})
    assert resp.status == 500


@pytest.mark.parametrize("name", ["cancel_requests", "cancel_requests_as_signals"])
def test_cancelled_children_show_as_canceled_in_either_recorded_form(name: str) -> None:
    """ChildWorkflowExecutionCanceled, and the ChildWorkflowExecutionFailed "canceled" of older histories."""
    history = duro.History.from_json((ROOT / "tests" / "golden" / f"{name}.json").read_bytes())
    children = {s["label"]: s for s in run_view(history)["spans"] if s["kind"] == "child"}
    wid = f"golden-{name}"
    assert {label: s["outcome"] for label, s in children.items()} == {
        f"{wid}-signalled": "completed", f"{wid}-kid": "canceled", f"{wid}-other": "canceled"}
    assert children[f"{wid}-kid"]["detail"] == "CancelledError: the workflow was cancelled"
    # A RequestCancelExternalWorkflowExecutionInitiated names its target; the older form did not.
    requested = sorted(label for label, s in children.items() if s.get("cancel_requested"))
    assert requested == ([] if name == "cancel_requests_as_signals" else [f"{wid}-kid", f"{wid}-other"])
