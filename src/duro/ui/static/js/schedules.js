// The schedules page: each schedule with its spec, state and recent runs; pause, unpause and trigger
// (each confirmed in the page). Re-read every three seconds.

import {ApiError, get, post} from "./api.js";
import {confirmAction} from "./confirm.js";
import {fmtDuration, h, message, poller, replace, timeEl, workflowHref} from "./dom.js";

const POLL_MS = 3000;

function specText(s) {
  if (s.cron) return `cron ${s.cron}${s.time_zone ? ` (${s.time_zone})` : " (UTC)"}`;
  if (s.every_seconds) return `every ${fmtDuration(s.every_seconds * 1000)}`;
  return "";
}

/** The schedules page. */
export function schedulesView(root) {
  const flash = h("div", {id: "schedule-flash", class: "flash"});
  const content = h("div", {id: "schedules"});
  replace(root, h("div", {class: "page-head"}, h("h1", null, "Schedules")), flash, content);

  async function act(schedule, action) {
    replace(flash);
    const texts = {
      pause: {title: `Pause schedule ${schedule.id}?`, message: "It stops firing; runs already started go on.",
        input: {label: "Note", placeholder: "why (shown on the schedule)"}, confirmLabel: "Pause"},
      unpause: {title: `Unpause schedule ${schedule.id}?`,
        message: "It fires again from its next due time (times passed while paused are not caught up).",
        confirmLabel: "Unpause"},
      trigger: {title: `Trigger schedule ${schedule.id} now?`,
        message: `Starts ${schedule.workflow_type} once now, under the schedule's overlap policy (${schedule.overlap}).`,
        confirmLabel: "Trigger"},
    };
    const ok = await confirmAction(texts[action]);
    if (!ok) return;
    try {
      const answer = await post(`schedules/${encodeURIComponent(schedule.id)}/${action}`,
        action === "pause" ? {note: ok.value} : {});
      const done = action === "trigger"
        ? (answer.workflow_id ? `Started ${answer.workflow_id}.` : "Nothing started (the overlap policy skipped or buffered it).")
        : `Schedule ${schedule.id} ${action}d.`;
      replace(flash, message("ok", done, "schedule-ok"));
      poll.refresh();
    } catch (e) {
      const text = e instanceof ApiError && e.status === 501 ? `Not available on this store: ${e.message}` : e.message;
      replace(flash, message("error", `${action} failed: ${text}`, "schedule-error"));
    }
  }

  function render(answer) {
    if (!answer.available) {
      replace(content, message("error", `Schedules are not available: ${answer.reason}`, "schedules-unavailable"));
      return;
    }
    if (!answer.schedules.length) {
      replace(content, h("p", {class: "muted"}, "No schedule. Create one with client.create_schedule(...) or `duro schedule create`."));
      return;
    }
    replace(content, h("table", {class: "grid-table", id: "schedules-table"},
      h("thead", null, h("tr", null, ["Schedule", "Workflow", "When", "State", "Next run", "Recent runs", "Fired / skipped / missed", ""]
        .map((x) => h("th", null, x)))),
      h("tbody", null, answer.schedules.map((s) => h("tr", {dataset: {scheduleId: s.id}},
        h("td", null, h("code", null, s.id)),
        h("td", null, s.workflow_type, h("div", {class: "muted small"}, `queue ${s.task_queue}`)),
        h("td", null, specText(s), h("div", {class: "muted small"}, `overlap ${s.overlap}`)),
        h("td", null, s.paused ? h("span", {class: "badge status-paused"}, "paused") : h("span", {class: "badge status-running"}, "active"),
          s.note ? h("div", {class: "muted small"}, s.note) : null),
        h("td", null, timeEl(s.next_fire_time || s.next_run_times[0])),
        h("td", null, s.recent_runs.slice(-3).reverse().map((r) => h("div", null,
          h("a", {href: workflowHref(r.workflow_id, r.run_id)}, r.workflow_id), h("span", {class: "muted small"}, ` ${r.trigger}`)))),
        h("td", {class: "num"}, `${s.fired_count} / ${s.skipped_count} / ${s.missed_count}`),
        h("td", null, h("div", {class: "buttons nowrap"},
          s.paused
            ? h("button", {type: "button", class: "schedule-unpause", on: {click: () => act(s, "unpause")}}, "Unpause")
            : h("button", {type: "button", class: "schedule-pause", on: {click: () => act(s, "pause")}}, "Pause"),
          h("button", {type: "button", class: "schedule-trigger", on: {click: () => act(s, "trigger")}}, "Trigger"))))))));
  }

  const poll = poller(async () => {
    try {
      render(await get("schedules"));
    } catch (e) {
      replace(content, message("error", `Cannot list schedules: ${e.message}`, "schedules-error"));
    }
    return true;
  }, POLL_MS);

  return {stop: () => poll.stop()};
}
