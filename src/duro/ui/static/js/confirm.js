// The confirmation step of every action: a modal <dialog> in the page (no window.confirm, so it can be
// styled, show what will be sent, and take an input such as a pause note).

import {h, replace} from "./dom.js";

let dialog = null;

function ensureDialog() {
  if (dialog) return dialog;
  dialog = h("dialog", {id: "confirm-dialog", class: "confirm", "aria-labelledby": "confirm-title"});
  document.body.appendChild(dialog);
  return dialog;
}

/**
 * Ask to confirm; resolves to null (cancelled) or {value} (the input's text, "" without an input).
 * options: {title, message, details (text shown in a <pre>), confirmLabel, danger, input: {label, placeholder}}.
 */
export function confirmAction(options) {
  const dlg = ensureDialog();
  return new Promise((resolve) => {
    const input = options.input
      ? h("input", {id: "confirm-input", type: "text", placeholder: options.input.placeholder || ""})
      : null;
    const ok = h("button", {type: "submit", id: "confirm-ok", class: options.danger ? "danger" : "primary"},
      options.confirmLabel || "Confirm");
    const cancel = h("button", {type: "button", id: "confirm-cancel"}, "Cancel");
    const form = h("form", {method: "dialog"},
      h("h2", {id: "confirm-title"}, options.title),
      options.message ? h("p", null, options.message) : null,
      options.details ? h("pre", {class: "json", id: "confirm-details"}, options.details) : null,
      input ? h("label", null, options.input.label, input) : null,
      h("div", {class: "buttons"}, cancel, ok));
    let done = false;
    const finish = (value) => {
      if (done) return;
      done = true;
      if (dlg.open) dlg.close();
      resolve(value);
    };
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      finish({value: input ? input.value : ""});
    });
    cancel.addEventListener("click", () => finish(null));
    dlg.addEventListener("close", () => finish(null), {once: true});
    replace(dlg, form);
    dlg.showModal();
    (input || ok).focus();
  });
}
