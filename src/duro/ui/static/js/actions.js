// The workflow page's actions: signal, cancel, terminate, reset. Each asks for confirmation in the page,
// then POSTs; the result (or the server's error) shows in the page.

import {ApiError, post, workflowPath} from "./api.js";
import {confirmAction} from "./confirm.js";
import {h, jsonText, message, replace, workflowHref} from "./dom.js";

/** Parse the signal payload field: a JSON array is the argument list, any other JSON value the one argument. */
export function parsePayload(text) {
  const trimmed = text.trim();
  if (!trimmed) return [];
  const value = JSON.parse(trimmed);
  return Array.isArray(value) ? value : [value];
}

function errorText(e) {
  if (e instanceof ApiError && e.status === 501) return `Not available on this store: ${e.message}`;
  return e.message || String(e);
}

/**
 * The actions bar of a workflow page. ctx: {workflowId, runId(), detail() (the last /api/workflows answer),
 * refresh() (poll now), navigate(href)}. Returns {el, update(detail)}.
 */
export function workflowActions(ctx) {
  const panel = h("div", {class: "action-panel", id: "action-panel"});
  const flash = h("div", {id: "action-flash", class: "flash"});
  const buttons = {
    signal: h("button", {type: "button", id: "action-signal"}, "Signal"),
    cancel: h("button", {type: "button", id: "action-cancel"}, "Cancel"),
    terminate: h("button", {type: "button", id: "action-terminate", class: "danger"}, "Terminate"),
    reset: h("button", {type: "button", id: "action-reset"}, "Reset"),
  };
  const unsupported = new Set(); // actions the store said it cannot do (501): they stay disabled
  const show = (kind, text) => replace(flash, message(kind, text, kind === "error" ? "action-error" : "action-ok"));
  const target = () => `workflow ${ctx.workflowId} (run ${ctx.runId()})`;

  async function run(path, body, okText) {
    try {
      const answer = await post(workflowPath(ctx.workflowId, path), {run_id: ctx.runId(), ...body});
      show("ok", okText);
      replace(panel);
      ctx.refresh();
      return answer;
    } catch (e) {
      show("error", `${path} failed: ${errorText(e)}`);
      if (e instanceof ApiError && e.status === 501) {
        unsupported.add(path);
        buttons[path].disabled = true;
      }
      return null;
    }
  }

  buttons.signal.addEventListener("click", () => {
    replace(flash);
    const name = h("input", {id: "signal-name", type: "text", required: true, placeholder: "approve",
      autocomplete: "off"});
    const payload = h("textarea", {id: "signal-payload", rows: 4, spellcheck: "false",
      placeholder: '[{"by": "alice"}]   (a JSON array of arguments, or one JSON value)'});
    const formError = h("div", {class: "form-error", id: "signal-form-error"});
    const form = h("form", {class: "action-form", id: "signal-form"},
      h("h3", null, "Send a signal"),
      h("label", null, "Signal name", name),
      h("label", null, "Payload (JSON)", payload),
      formError,
      h("div", {class: "buttons"},
        h("button", {type: "button", on: {click: () => replace(panel)}}, "Close"),
        h("button", {type: "submit", class: "primary", id: "signal-send"}, "Send")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      replace(formError);
      const signalName = name.value.trim();
      if (!signalName) {
        replace(formError, "Give the signal's name.");
        return;
      }
      let args;
      try {
        args = parsePayload(payload.value);
      } catch (e) {
        replace(formError, `The payload is not valid JSON: ${e.message}`);
        return;
      }
      const ok = await confirmAction({
        title: `Send signal "${signalName}"?`,
        message: `To ${target()}, with these arguments:`,
        details: jsonText(args),
        confirmLabel: "Send signal",
      });
      if (ok) await run("signal", {name: signalName, args}, `Signal "${signalName}" sent.`);
    });
    replace(panel, form);
    name.focus();
  });

  buttons.cancel.addEventListener("click", async () => {
    replace(flash);
    const ok = await confirmAction({
      title: "Cancel this workflow?",
      message: `${target()} will see a cancellation at its current await; it may clean up before it ends.`,
      confirmLabel: "Request cancellation",
      danger: true,
    });
    if (ok) await run("cancel", {}, "Cancellation requested.");
  });

  buttons.terminate.addEventListener("click", async () => {
    replace(flash);
    const ok = await confirmAction({
      title: "Terminate this workflow?",
      message: `${target()} ends at once; its code does not run again.`,
      input: {label: "Reason", placeholder: "why (recorded in the history)"},
      confirmLabel: "Terminate",
      danger: true,
    });
    if (ok) await run("terminate", {reason: ok.value}, "Workflow terminated.");
  });

  buttons.reset.addEventListener("click", () => {
    replace(flash);
    const points = (ctx.detail() || {}).reset_points || [];
    if (!points.length) {
      show("error", "This run has no WorkflowTaskCompleted event to reset to yet.");
      return;
    }
    const select = h("select", {id: "reset-event"},
      points.map((p) => h("option", {value: String(p.event_id)}, `event ${p.event_id} — WorkflowTaskCompleted`)));
    select.value = String(points[points.length - 1].event_id);
    const reason = h("input", {id: "reset-reason", type: "text", placeholder: "why (recorded in both runs)"});
    const form = h("form", {class: "action-form", id: "reset-form"},
      h("h3", null, "Reset to a workflow task"),
      h("p", {class: "muted"}, "A new run replays the history before that event with the workers' current code; " +
        "signals received after it are kept. An open run is terminated."),
      h("label", null, "WorkflowTaskCompleted event", select),
      h("label", null, "Reason", reason),
      h("div", {class: "buttons"},
        h("button", {type: "button", on: {click: () => replace(panel)}}, "Close"),
        h("button", {type: "submit", class: "danger", id: "reset-submit"}, "Reset")));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const eventId = Number(select.value);
      const ok = await confirmAction({
        title: `Reset to event ${eventId}?`,
        message: `${target()} is reset: a new run starts from event ${eventId}.`,
        confirmLabel: "Reset",
        danger: true,
      });
      if (!ok) return;
      const answer = await run("reset", {event_id: eventId, reason: reason.value}, "Reset: a new run started.");
      if (answer && answer.run_id) ctx.navigate(workflowHref(ctx.workflowId, answer.run_id));
    });
    replace(panel, form);
  });

  const el = h("section", {class: "actions", id: "actions"},
    h("div", {class: "buttons"}, buttons.signal, buttons.cancel, buttons.terminate, buttons.reset), flash, panel);

  function update(detail) {
    const running = detail.execution.status === "running";
    for (const key of ["signal", "cancel", "terminate"]) {
      buttons[key].disabled = !running;
      buttons[key].title = running ? "" : `the run is ${detail.execution.status}`;
    }
    buttons.reset.disabled = !(detail.reset_points || []).length;
    for (const key of unsupported) {
      buttons[key].disabled = true;
      buttons[key].title = "not available on this store";
    }
  }

  return {el, update};
}
