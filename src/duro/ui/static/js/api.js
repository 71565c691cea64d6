// The JSON API: GETs for reading, POSTs (JSON, with the token when the server has one) for actions.

const TOKEN_KEY = "duro-ui-token";

/** Take ?token= from the address once, keep it for this tab, and drop it from the address bar. */
export function adoptToken() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

/** Whether this tab holds a token. */
export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN_KEY));
}

/** An error the API answered (its message is the server's). */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function answer(response) {
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const text = body && typeof body.error === "string" ? body.error : `${response.status} ${response.statusText}`;
    throw new ApiError(text, response.status);
  }
  return body;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value === null || value === undefined || value === "") continue;
    for (const one of Array.isArray(value) ? value : [value]) search.append(key, one);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** GET /api/<path> with query parameters; the JSON answer, or an ApiError. */
export async function get(path, params) {
  let response;
  try {
    response = await fetch(`/api/${path}${query(params)}`, {headers: {Accept: "application/json"}});
  } catch (e) {
    throw new ApiError(`cannot reach the duro ui server (${e.message})`, 0);
  }
  return answer(response);
}

/** POST /api/<path> with a JSON body; the JSON answer, or an ApiError. */
export async function post(path, body) {
  const headers = {"Content-Type": "application/json", Accept: "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["X-Duro-Token"] = token;
  let response;
  try {
    response = await fetch(`/api/${path}`, {method: "POST", headers, body: JSON.stringify(body || {})});
  } catch (e) {
    throw new ApiError(`cannot reach the duro ui server (${e.message})`, 0);
  }
  return answer(response);
}

/** The path of a workflow's API (ids may hold any character). */
export function workflowPath(workflowId, action) {
  return `workflows/${encodeURIComponent(workflowId)}${action ? "/" + action : ""}`;
}
