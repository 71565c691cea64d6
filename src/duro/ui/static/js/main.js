// Start-up and routing: #/workflows?filters, #/workflow/<id>?run_id=, #/schedules.

import {adoptToken, get, hasToken} from "./api.js";
import {h, message, replace} from "./dom.js";
import {listView} from "./list.js";
import {schedulesView} from "./schedules.js";
import {workflowView} from "./workflow.js";

let current = null;

function parseRoute() {
  const hash = window.location.hash.replace(/^#/, "") || "/workflows";
  const [path, search] = hash.split("?", 2);
  const params = new URLSearchParams(search || "");
  const parts = path.split("/").filter(Boolean);
  return {parts, params};
}

function route() {
  if (current) current.stop();
  const view = document.getElementById("view");
  const {parts, params} = parseRoute();
  document.querySelectorAll("nav a").forEach((a) => a.classList.remove("active"));
  let page = parts[0] || "workflows";
  if (page === "workflow" && parts.length >= 2) {
    let id;
    try {
      id = decodeURIComponent(parts.slice(1).join("/"));
    } catch (e) {
      id = parts.slice(1).join("/");
    }
    page = "workflows";
    document.title = `${id} · duro`;
    current = workflowView(view, id, params.get("run_id"));
  } else if (page === "schedules") {
    document.title = "Schedules · duro";
    current = schedulesView(view);
  } else {
    page = "workflows";
    document.title = "Workflows · duro";
    current = listView(view, {
      status: params.get("status") || "", type: params.get("type") || "", attr: params.get("attr") || "",
      started_after: params.get("started_after") || "", started_before: params.get("started_before") || "",
      limit: params.get("limit") || "",
    });
  }
  const nav = document.getElementById(`nav-${page}`);
  if (nav) nav.classList.add("active");
  window.scrollTo(0, 0);
}

async function showInfo() {
  const info = document.getElementById("server-info");
  const banner = document.getElementById("banner");
  try {
    const answer = await get("info");
    replace(info, `duro ${answer.version} · ${answer.store} store`);
    if (answer.token_required && !hasToken()) {
      replace(banner, message("error", "Actions on this server need its token: open the link `duro ui` printed " +
        "(the one with ?token=). Until then the pages are read-only.", "token-missing"));
      banner.hidden = false;
    }
  } catch (e) {
    replace(info, h("span", {class: "bad"}, `server unreachable: ${e.message}`));
  }
}

adoptToken();
window.addEventListener("hashchange", route);
route();
showInfo();
