// The timeline chart: one row per activity, timer and child workflow, a bar from its first event to its
// closing one (to "now" while open), coloured by outcome; the run itself on top with its signals.

import {fmtDuration, h, replace, s} from "./dom.js";

const ROW = 24;
const BAR = 14;
const AXIS = 26;
const LABEL = 230;
const KIND_TEXT = {workflow: "workflow", activity: "activity", timer: "timer", child: "child"};

function ticks(total) {
  // About five ticks at a round step (1, 2 or 5 times a power of ten, in ms).
  const raw = total / 5;
  const power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
  const step = [1, 2, 5, 10].map((m) => m * power).find((x) => x >= raw) || raw;
  const out = [];
  for (let t = 0; t <= total + 1e-9; t += step) out.push(t);
  return out;
}

function shorten(text, max) {
  return text.length > max ? text.slice(0, max - 1) + "…" : text;
}

/** Draw detail (an /api/workflows/{id} answer) into host as an SVG chart. */
export function drawTimeline(host, detail) {
  const exe = detail.execution;
  const t0 = Date.parse(exe.start_time);
  const now = Date.parse(detail.now);
  const tEnd = Math.max(exe.close_time ? Date.parse(exe.close_time) : now, t0 + 1);
  const total = tEnd - t0;
  const rows = [{kind: "workflow", label: exe.workflow_type, start: exe.start_time, end: exe.close_time,
    outcome: exe.status === "running" ? "open" : exe.status, seq: null}, ...detail.spans];
  const width = Math.max(host.clientWidth || 0, 640);
  const chart = width - LABEL - 16;
  const height = AXIS + rows.length * ROW + 6;
  const x = (ms) => LABEL + Math.max(0, Math.min(1, (ms - t0) / total)) * chart;

  const svg = s("svg", {width, height, viewBox: `0 0 ${width} ${height}`, class: "timeline-chart",
    role: "img", "aria-label": `timeline of ${rows.length - 1} activities, timers and child workflows`});
  for (const t of ticks(total)) {
    const xt = x(t0 + t);
    svg.appendChild(s("line", {x1: xt, x2: xt, y1: AXIS - 6, y2: height, class: "grid"}));
    svg.appendChild(s("text", {x: xt, y: AXIS - 10, class: "tick", "text-anchor": "middle"}, `+${fmtDuration(t)}`));
  }
  rows.forEach((row, i) => {
    const y = AXIS + i * ROW;
    const start = Date.parse(row.start);
    const end = row.end ? Date.parse(row.end) : tEnd;
    const label = `${KIND_TEXT[row.kind] || row.kind} ${row.label || ""}`.trim();
    const group = s("g", {class: `row row-${row.kind}`, "data-kind": row.kind, "data-outcome": row.outcome});
    if (i % 2 === 1) group.appendChild(s("rect", {x: 0, y, width, height: ROW, class: "stripe"}));
    group.appendChild(s("text", {x: 8, y: y + ROW / 2 + 4, class: "label"}, shorten(label, 34)));
    const x1 = x(start);
    const x2 = Math.max(x(end), x1 + 2);
    const took = fmtDuration(end - start);
    const tip = [`${label}`, `${row.outcome}${row.end ? "" : " (still open)"}`, took,
      row.attempt ? `attempt ${row.attempt}` : "", row.detail || "",
      row.start_event ? `events ${row.start_event}${row.end_event ? "–" + row.end_event : ""}` : ""]
      .filter(Boolean).join(" · ");
    group.appendChild(s("rect", {x: x1, y: y + (ROW - BAR) / 2, width: x2 - x1, height: BAR, rx: 3,
      class: `bar bar-${row.outcome}`}, s("title", null, tip)));
    svg.appendChild(group);
  });
  for (const sig of detail.signals || []) {
    const xs = x(Date.parse(sig.time));
    svg.appendChild(s("path", {d: `M${xs} ${AXIS + 2} l5 5 l-5 5 l-5 -5 z`, class: "signal-mark"},
      s("title", null, `signal ${sig.name} (event ${sig.event_id})`)));
  }
  const note = detail.spans_total > detail.spans.length
    ? `showing the latest ${detail.spans.length} of ${detail.spans_total}` : null;
  replace(host, svg, note ? h("p", {class: "muted small"}, note) : null);
}
