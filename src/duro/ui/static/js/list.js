// The workflows page: filters (status, type, search attribute, start time range), counts per status,
// a page of runs with links, next/previous pages; it re-reads the counts and the page every two seconds.

import {get} from "./api.js";
import {h, message, poller, replace, statusBadge, timeEl, workflowHref} from "./dom.js";

const POLL_MS = 2000;
const PAGE = 50;
const STATUSES = ["running", "completed", "failed", "canceled", "terminated", "continued_as_new", "timed_out"];

/** A datetime-local input's value (local time) as ISO UTC, or "" . */
function toIso(local) {
  if (!local) return "";
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

/** ISO text as a datetime-local input's value (local time). */
function toLocal(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** The route of the list with these filters. */
export function listHref(filters) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(filters)) if (value) params.set(key, value);
  const text = params.toString();
  return text ? `#/workflows?${text}` : "#/workflows";
}

/** The workflows page; filters come from the route: {status, type, attr, started_after, started_before, limit}. */
export function listView(root, filters) {
  const pages = [null]; // page tokens: pages[i] is the token of page i (null: the first)
  let index = 0;
  let nextToken = null;

  const status = h("select", {id: "filter-status", name: "status"},
    h("option", {value: ""}, "any status"), STATUSES.map((s) => h("option", {value: s}, s.replace(/_/g, " "))));
  status.value = filters.status || "";
  const type = h("input", {id: "filter-type", name: "type", type: "text", placeholder: "workflow type", value: filters.type || ""});
  const attr = h("input", {id: "filter-attr", name: "attr", type: "text", placeholder: "key=value", value: filters.attr || "",
    title: "a search attribute equal to a value: customer=alice, amount=5, vip=true, code=\"5\" (a string)"});
  const after = h("input", {id: "filter-after", name: "started_after", type: "datetime-local", value: toLocal(filters.started_after)});
  const before = h("input", {id: "filter-before", name: "started_before", type: "datetime-local", value: toLocal(filters.started_before)});
  const form = h("form", {class: "filters", id: "filters"},
    h("label", null, "Status", status), h("label", null, "Type", type), h("label", null, "Search attribute", attr),
    h("label", null, "Started after", after), h("label", null, "Started before", before),
    h("div", {class: "buttons"},
      h("button", {type: "submit", class: "primary", id: "filter-apply"}, "Apply"),
      h("a", {href: "#/workflows", class: "button", id: "filter-clear"}, "Clear")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    window.location.hash = listHref({status: status.value, type: type.value.trim(), attr: attr.value.trim(),
      started_after: toIso(after.value), started_before: toIso(before.value), limit: filters.limit});
  });
  status.addEventListener("change", () => form.requestSubmit());

  const counts = h("div", {class: "counts", id: "counts"});
  const error = h("div", {id: "list-error"});
  const body = h("tbody", {id: "workflows-body"});
  const pageInfo = h("span", {class: "muted", id: "page-info"});
  const prev = h("button", {type: "button", id: "page-prev"}, "← Previous");
  const next = h("button", {type: "button", id: "page-next"}, "Next →");
  prev.addEventListener("click", () => { if (index > 0) { index -= 1; poll.refresh(); } });
  next.addEventListener("click", () => {
    if (!nextToken) return;
    pages[index + 1] = nextToken;
    index += 1;
    poll.refresh();
  });

  replace(root,
    h("div", {class: "page-head"}, h("h1", null, "Workflows")),
    form, counts, error,
    h("table", {class: "grid-table", id: "workflows"},
      h("thead", null, h("tr", null, ["Workflow id", "Type", "Status", "Started", "Closed", "Task queue"].map((x) => h("th", null, x)))),
      body),
    h("div", {class: "pager"}, prev, pageInfo, next));

  const query = () => ({
    status: filters.status, type: filters.type, attr: filters.attr,
    started_after: filters.started_after, started_before: filters.started_before,
  });
  const pageSize = Number(filters.limit) > 0 ? Number(filters.limit) : PAGE;

  function renderCounts(c) {
    const chip = (label, value, statusValue) => {
      const active = (filters.status || "") === statusValue;
      return h("a", {href: listHref({...filters, status: statusValue}), class: ["chip", active && "active", statusValue && `status-${statusValue}`],
        id: `count-${statusValue || "all"}`}, `${label} `, h("b", null, String(value)));
    };
    replace(counts, chip("all", c.total, ""), STATUSES.filter((s) => c.by_status[s] || s === filters.status)
      .map((s) => chip(s.replace(/_/g, " "), c.by_status[s], s)));
  }

  function renderRows(list) {
    if (!list.length) {
      replace(body, h("tr", null, h("td", {colspan: 6, class: "muted"}, "No workflow matches.")));
      return;
    }
    replace(body, list.map((w) => h("tr", {dataset: {workflowId: w.workflow_id}},
      h("td", null, h("a", {href: workflowHref(w.workflow_id), class: "wf-link"}, w.workflow_id)),
      h("td", null, w.workflow_type), h("td", null, statusBadge(w.status)),
      h("td", null, timeEl(w.start_time)), h("td", null, timeEl(w.close_time)), h("td", null, w.task_queue))));
  }

  const poll = poller(async () => {
    try {
      const [c, page] = await Promise.all([
        get("counts", query()),
        get("workflows", {...query(), limit: pageSize, page_token: pages[index]}),
      ]);
      replace(error);
      renderCounts(c);
      renderRows(page.workflows);
      nextToken = page.next_page_token;
      prev.disabled = index === 0;
      next.disabled = !nextToken;
      replace(pageInfo, `page ${index + 1}`);
    } catch (e) {
      replace(error, message("error", `Cannot list workflows: ${e.message}`, "list-error-message"));
    }
    return true;
  }, POLL_MS);

  return {stop: () => poll.stop()};
}
