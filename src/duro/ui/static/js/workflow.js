// One workflow's page: summary, input and outcome, pending work, where it waits, the timeline chart,
// the history (with, on demand, a query's answer at each workflow task), and the actions. While the
// run is open it re-reads all of it every second.

import {workflowActions} from "./actions.js";
import {ApiError, get, workflowPath} from "./api.js";
import {
  fmtDuration, h, jsonBlock, jsonInline, jsonText, message, poller, replace, statusBadge, timeEl, workflowHref,
} from "./dom.js";
import {drawTimeline} from "./timeline.js";

const POLL_MS = 1000;
const STACK_EVERY_MS = 3000;

function field(label, value) {
  return [h("dt", null, label), h("dd", null, value)];
}

function section(title, id, ...children) {
  return h("section", {class: "card", id}, h("h2", null, title), ...children);
}

function table(id, headers, rows, empty) {
  if (!rows.length) return h("p", {class: "muted", id}, empty);
  return h("table", {class: "grid-table", id},
    h("thead", null, h("tr", null, headers.map((x) => h("th", null, x)))),
    h("tbody", null, rows.map((cells) => h("tr", null, cells.map((c) => h("td", null, c))))));
}

function summary(exe, parent) {
  const attrs = Object.keys(exe.search_attributes || {}).length ? jsonBlock(exe.search_attributes, "wf-attrs")
    : h("span", {class: "muted"}, "none");
  const memo = Object.keys(exe.memo || {}).length ? jsonBlock(exe.memo, "wf-memo") : h("span", {class: "muted"}, "none");
  const took = exe.close_time ? fmtDuration(Date.parse(exe.close_time) - Date.parse(exe.start_time)) : "";
  return h("dl", {class: "summary"},
    field("Workflow id", h("code", {id: "wf-id"}, exe.workflow_id)),
    field("Run id", h("code", {id: "wf-run-id"}, exe.run_id)),
    field("Type", h("span", {id: "wf-type"}, exe.workflow_type)),
    field("Task queue", exe.task_queue),
    field("Status", statusBadge(exe.status, "wf-status")),
    field("Started", timeEl(exe.start_time)),
    field("Closed", exe.close_time ? [timeEl(exe.close_time), took ? ` (after ${took})` : ""] : h("span", {class: "muted"}, "—")),
    field("History length", h("span", {id: "wf-history-length"}, String(exe.history_length))),
    exe.task_failures ? field("Workflow task failures", h("span", {class: "bad"}, String(exe.task_failures))) : null,
    parent && parent.wid ? field("Parent", h("a", {href: workflowHref(parent.wid, parent.run), id: "wf-parent"}, parent.wid)) : null,
    exe.next_run_id ? field("Next run", h("a", {href: workflowHref(exe.workflow_id, exe.next_run_id)}, exe.next_run_id)) : null,
    field("Search attributes", attrs),
    field("Memo", memo));
}

function outcome(detail) {
  const out = detail.outcome;
  if (!out) return h("p", {class: "muted", id: "wf-result"}, "The workflow has not closed yet.");
  if (out.status === "completed") return [h("h3", null, "Result"), jsonBlock(out.value, "wf-result")];
  if (out.status === "continued_as_new") {
    return [h("h3", null, "Continued as new with"), jsonBlock(out.value, "wf-result")];
  }
  const value = out.value;
  const head = value && typeof value === "object" && "message" in value
    ? `${value.type ? value.type + ": " : ""}${value.message}` : null;
  return [h("h3", null, `Failure (${out.status.replace(/_/g, " ")})`),
    head ? h("p", {class: "bad", id: "wf-failure-message"}, head) : null,
    value && value.stack ? h("details", null, h("summary", null, "stack"), h("pre", {class: "json"}, value.stack)) : null,
    jsonBlock(value, "wf-result")];
}

function pendingActivities(list) {
  return table("wf-pending-activities",
    ["Seq", "Activity", "State", "Scheduled", "Attempt", "Last heartbeat", "Heartbeat details", "Last failure"],
    list.map((a) => [String(a.seq), a.name,
      a.state ? [String(a.state).replace(/_/g, " "), a.next_attempt_time ? [" until ", timeEl(a.next_attempt_time)] : null] : "—",
      timeEl(a.start), String(a.attempt || 1),
      a.last_heartbeat_time ? timeEl(a.last_heartbeat_time) : "—", jsonInline(a.heartbeat_details),
      a.last_failure ? h("span", {class: "bad"}, String(a.last_failure)) : "—"]),
    "No activity is pending.");
}

function pendingTimers(list) {
  return table("wf-pending-timers", ["Seq", "Duration", "Started", "Due"],
    list.map((t) => [String(t.seq), t.label || "", timeEl(t.start), timeEl(t.due)]), "No timer is pending.");
}

function pendingChildren(list) {
  return table("wf-pending-children", ["Seq", "Child workflow", "Type", "Started"],
    list.map((c) => [String(c.seq), c.child_id ? h("a", {href: workflowHref(c.child_id, c.child_run_id)}, c.child_id) : "",
      c.workflow_type || "", timeEl(c.start)]), "No child workflow is pending.");
}

// states: null (no state column), or the answers known so far by event id (a row without one: an empty cell).
function historyRow(e, states) {
  const answer = states ? states.get(String(e.event_id)) : undefined;
  return h("tr", {dataset: {eventId: String(e.event_id)}},
    h("td", {class: "num"}, String(e.event_id)), h("td", null, timeEl(e.time)),
    h("td", {class: `event-type ev-${e.type}`}, e.type), h("td", null, e.name || ""),
    h("td", {class: "num"}, e.ref ? String(e.ref) : ""), h("td", {class: "num"}, e.attempt ? String(e.attempt) : ""),
    h("td", null, jsonInline(e.data)), states ? h("td", {class: "state-cell"}, answer ? stateCell(answer) : "") : null);
}

/** A state cell: the query's answer as of that workflow task, or what it raised there. */
function stateCell(answer) {
  if (answer.error) return h("span", {class: "bad"}, `${answer.error.type}: ${answer.error.message}`);
  return jsonInline(answer.result);
}

/** The history's state form: which query to ask at each workflow task (time travel), and its arguments. */
function stateForm(onShow) {
  const query = h("input", {id: "wf-state-query", type: "text", placeholder: "a query, e.g. status", size: 18});
  const args = h("input", {id: "wf-state-args", type: "text", placeholder: "arguments: [] (JSON)", size: 18});
  const status = h("span", {class: "muted small", id: "wf-state-status"});
  const form = h("form", {class: "buttons state-form", id: "wf-state-form"},
    h("span", {class: "muted small"}, "State at each workflow task:"), query, args,
    h("button", {type: "submit", id: "wf-state-show"}, "Show"),
    h("button", {type: "button", id: "wf-state-hide", on: {click: () => onShow(null)}}, "Hide"), status);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const name = query.value.trim();
    if (!name) { replace(status, "Give a query's name."); return; }
    let values = [];
    try {
      values = args.value.trim() ? JSON.parse(args.value) : [];
    } catch (e) {
      replace(status, `The arguments are not valid JSON: ${e.message}`); return;
    }
    if (!Array.isArray(values)) { replace(status, "The arguments must be a JSON array, e.g. [1, \"a\"]."); return; }
    onShow({query: name, args: values});
  });
  return {el: form, status};
}

/** The page of workflow workflowId (its latest run unless runId). */
export function workflowView(root, workflowId, runId) {
  let detail = null;
  let shownRun = runId || null;
  let loadedEvents = 0;
  let lastStackAt = 0;
  let stackBusy = false;
  // The state column: the question ({query, args}) while it is shown, and its answers by event id.
  // An answer as of a past workflow task never changes, so answers only accumulate; one request at
  // a time (a replay may take seconds), and one more after it when the history grew meanwhile.
  let stateAsked = null;
  let states = null;
  let stateLoading = false;
  let stateAgain = false;
  const els = {
    header: h("div", {class: "page-head"}),
    error: h("div", {id: "wf-error"}),
    summary: h("div"),
    io: h("div", {class: "io"}),
    stack: h("pre", {class: "json muted", id: "wf-stack"}, "asking the workers…"),
    activities: h("div"),
    timers: h("div"),
    children: h("div"),
    timeline: h("div", {class: "timeline", id: "wf-timeline"}),
    historyBody: h("tbody", {id: "wf-history-body"}),
    historyHead: h("tr"),
  };
  const state = stateForm((asked) => {
    stateAsked = asked;
    states = asked ? new Map() : null;
    renderHistoryHead();
    for (const row of els.historyBody.rows) setStateCell(row, asked ? "" : null);
    replace(state.status);
    if (asked) loadStates();
  });
  const actions = workflowActions({
    workflowId,
    runId: () => shownRun,
    detail: () => detail,
    refresh: () => poll.refresh(),
    navigate: (href) => { window.location.hash = href; },
  });
  replace(root,
    els.header, els.error, actions.el,
    h("div", {class: "columns"},
      section("Summary", "wf-summary", els.summary),
      section("Input and outcome", "wf-io", h("h3", null, "Input"), els.io)),
    section("Where the workflow is waiting now", "wf-where", els.stack),
    section("Timeline", "wf-timeline-card", els.timeline),
    section("Pending activities", "wf-activities", els.activities),
    h("div", {class: "columns"},
      section("Pending timers", "wf-timers", els.timers),
      section("Pending child workflows", "wf-children", els.children)),
    section("History", "wf-history", state.el,
      h("table", {class: "grid-table history"}, h("thead", null, els.historyHead), els.historyBody)));
  renderHistoryHead();

  function renderHistoryHead() {
    replace(els.historyHead, ["Id", "Time", "Type", "Name", "Ref", "Attempt", "Data"].map((x) => h("th", null, x)),
      stateAsked ? h("th", {id: "wf-state-head"}, `State: ${stateAsked.query}`) : null);
  }

  // The row's state cell: added (content: a node or text), emptied (""), or removed (null).
  function setStateCell(row, content) {
    let cell = row.querySelector("td.state-cell");
    if (content === null) { if (cell) cell.remove(); return; }
    if (!cell) cell = row.appendChild(h("td", {class: "state-cell"}));
    replace(cell, content);
  }

  // One request: whoever has the workflow's code replays the run once and answers at every task.
  async function loadStates() {
    if (stateLoading) { stateAgain = true; return; }
    const asked = stateAsked;
    if (!asked) return;
    stateLoading = true;
    if (!states.size) replace(state.status, "replaying…");
    try {
      const answer = await get(workflowPath(workflowId, "states"),
        {run_id: shownRun, query: asked.query, args: JSON.stringify(asked.args)});
      if (stateAsked !== asked) return; // hidden, or another question asked meanwhile
      for (const a of answer.answers) states.set(String(a.event_id), a);
      for (const row of els.historyBody.rows) {
        const a = states.get(row.dataset.eventId);
        if (a) setStateCell(row, stateCell(a));
      }
      replace(state.status, `${states.size} workflow task(s), as of each one`);
    } catch (e) {
      if (stateAsked !== asked) return;
      replace(state.status, h("span", {class: "bad"}, `Cannot show the state: ${e.message}`));
    } finally {
      stateLoading = false;
      if (stateAgain) { stateAgain = false; loadStates(); }
    }
  }

  async function loadStack() {
    if (stackBusy) return;
    stackBusy = true;
    lastStackAt = Date.now();
    try {
      const answer = await get(workflowPath(workflowId, "stack"), {run_id: shownRun});
      if (detail && detail.execution.status !== "running") return; // closed meanwhile: that says more
      if (answer.answered) {
        els.stack.classList.remove("muted");
        replace(els.stack, typeof answer.stack === "string" ? answer.stack : jsonText(answer.stack));
      } else {
        els.stack.classList.add("muted");
        replace(els.stack, `no worker answered (${answer.error})`);
      }
    } catch (e) {
      if (detail && detail.execution.status !== "running") return;
      els.stack.classList.add("muted");
      replace(els.stack, `no worker answered (${e.message})`);
    } finally {
      stackBusy = false;
    }
  }

  async function loadHistory() {
    for (;;) {
      const page = await get(workflowPath(workflowId, "history"), {run_id: shownRun, after: loadedEvents});
      for (const e of page.events) els.historyBody.appendChild(historyRow(e, states));
      loadedEvents += page.events.length;
      if (!page.more || !page.events.length) return;
    }
  }

  function render() {
    const exe = detail.execution;
    replace(els.header,
      h("h1", null, "Workflow ", h("code", null, exe.workflow_id), " ", statusBadge(exe.status, "wf-status-head")),
      h("p", {class: "muted"}, `${exe.workflow_type} · run ${exe.run_id}`,
        exe.status === "running" ? h("span", {class: "live", title: "refreshing every second"}, " ● live") : null));
    replace(els.summary, summary(exe, detail.parent));
    replace(els.io, jsonBlock(detail.input, "wf-input"), outcome(detail));
    replace(els.activities, pendingActivities(detail.pending_activities));
    replace(els.timers, pendingTimers(detail.pending_timers));
    replace(els.children, pendingChildren(detail.pending_children));
    drawTimeline(els.timeline, detail);
    actions.update(detail);
  }

  const poll = poller(async () => {
    try {
      const next = await get(workflowPath(workflowId), {run_id: shownRun});
      if (shownRun && next.execution.run_id !== shownRun) return true; // raced with a route change
      const grew = detail === null || next.execution.history_length !== detail.execution.history_length;
      detail = next;
      shownRun = next.execution.run_id;
      replace(els.error);
      render();
      if (grew) {
        await loadHistory();
        if (stateAsked) loadStates(); // new workflow tasks: their state too
      }
      const running = detail.execution.status === "running";
      if (running && (grew || Date.now() - lastStackAt > STACK_EVERY_MS)) loadStack();
      else if (!running) replace(els.stack, `the run is ${detail.execution.status.replace(/_/g, " ")}`);
      return running; // a closed run does not change any more: stop polling
    } catch (e) {
      replace(els.error, message("error", e instanceof ApiError && e.status === 404
        ? `No such workflow: ${e.message}` : `Cannot load the workflow: ${e.message}`, "wf-load-error"));
      return !(e instanceof ApiError && e.status === 404);
    }
  }, POLL_MS);

  return {stop: () => poll.stop()};
}
