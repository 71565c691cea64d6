// Building the page: every node through createElement and every text through textContent, never
// innerHTML, so a payload is always shown as text (the Content-Security-Policy is the second line).

const SVG_NS = "http://www.w3.org/2000/svg";

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "on") for (const [ev, fn] of Object.entries(value)) el.addEventListener(ev, fn);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "href") el.setAttribute("href", safeHref(value));
    else if (key.startsWith("on")) throw new Error("use on: {...} for event listeners");
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

// Links are built by this page only, as "#/..." routes; anything else (javascript:, data:) is dropped.
function safeHref(value) {
  const text = String(value);
  return text.startsWith("#") || text.startsWith("/") && !text.startsWith("//") ? text : "#";
}

/** An HTML element: h("a", {href: "#/x", class: "c"}, "text", child...). */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  return append(el, children);
}

/** An SVG element with its attributes. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  return append(el, children);
}

/** Remove every child of el (and put children in their place). */
export function replace(el, ...children) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return append(el, children);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** A time as local "YYYY-MM-DD HH:MM:SS.mmm" (the ISO text in UTC is its tooltip). */
export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A <time> element showing fmtTime, with the exact UTC time as its title. */
export function timeEl(iso) {
  if (!iso) return h("span", {class: "muted", text: "—"});
  return h("time", {datetime: iso, title: iso}, fmtTime(iso));
}

/** A duration in ms as "850 ms", "12.3 s", "4 m 5 s", "2 h 3 m". */
export function fmtDuration(ms) {
  if (!Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
  const two = (big, bigUnit, small, smallUnit) => (small ? `${big} ${bigUnit} ${small} ${smallUnit}` : `${big} ${bigUnit}`);
  if (sec < 3600) return two(Math.floor(sec / 60), "m", Math.round(sec % 60), "s");
  if (sec < 86400) return two(Math.floor(sec / 3600), "h", Math.round((sec % 3600) / 60), "m");
  return two(Math.floor(sec / 86400), "d", Math.round((sec % 86400) / 3600), "h");
}

/** A value as indented JSON text (shown in a <pre> by textContent). */
export function jsonText(value) {
  if (value === undefined) return "";
  try {
    return JSON.stringify(value, null, 2);
  } catch (e) {
    return String(value);
  }
}

/** A JSON value in a <pre>, or a dash for nothing. */
export function jsonBlock(value, id) {
  if (value === null || value === undefined) return h("pre", {class: "json muted", id}, "—");
  return h("pre", {class: "json", id}, jsonText(value));
}

/** A compact JSON text of at most max characters, with the whole text a click away. */
export function jsonInline(value, max = 160) {
  if (value === null || value === undefined) return h("span", {class: "muted"}, "");
  const text = JSON.stringify(value);
  if (text.length <= max) return h("code", {class: "inline-json"}, text);
  const code = h("code", {class: "inline-json"}, text.slice(0, max) + "…");
  const toggle = h("button", {type: "button", class: "link small", text: "more"});
  let open = false;
  toggle.addEventListener("click", () => {
    open = !open;
    replace(code, open ? jsonText(value) : text.slice(0, max) + "…");
    code.classList.toggle("expanded", open);
    toggle.textContent = open ? "less" : "more";
  });
  return h("span", null, code, " ", toggle);
}

/** The status of a run as a coloured badge. */
export function statusBadge(status, id) {
  return h("span", {class: `badge status-${status}`, id}, String(status).replace(/_/g, " "));
}

/** The route of a workflow's page. */
export function workflowHref(workflowId, runId) {
  const base = `#/workflow/${encodeURIComponent(workflowId)}`;
  return runId ? `${base}?run_id=${encodeURIComponent(runId)}` : base;
}

/** A message box: kind "error" or "ok". */
export function message(kind, text, id) {
  return h("div", {class: `message ${kind}`, role: kind === "error" ? "alert" : "status", id}, text);
}

/**
 * Call fn now and again intervalMs after each call ends (never two at once), until stop().
 * fn returns false to stop by itself. refresh() runs it at once (after the one in flight).
 */
export function poller(fn, intervalMs) {
  let stopped = false;
  let timer = null;
  let running = false;
  let again = false;
  async function tick() {
    if (stopped) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    clearTimeout(timer);
    let go = true;
    try {
      go = (await fn()) !== false;
    } catch (e) {
      console.error(e);
    }
    running = false;
    if (stopped || !go) return;
    if (again) {
      again = false;
      tick();
    } else {
      timer = setTimeout(tick, intervalMs);
    }
  }
  tick();
  return {
    stop() { stopped = true; clearTimeout(timer); },
    refresh() { tick(); },
    get stopped() { return stopped; },
  };
}
