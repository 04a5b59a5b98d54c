// The API client of the UI: one fetch wrapper that adds the bearer token (kept in
// sessionStorage, so it leaves with the tab), reads problem+json refusals, and a
// Server-Sent Events reader over fetch, so the stream sends the token in its
// Authorization header like every other request (EventSource cannot).

const TOKEN_KEY = "foldflow.token";
const GRANTS = { read: ["read"], write: ["read", "write"], admin: ["read", "write", "admin"] };

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export const session = {
  mode: "unknown", // "open": the API takes no token; "token": it wants one
  listeners: [],
  get token() { return sessionStorage.getItem(TOKEN_KEY); },
  set token(value) {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    for (const fn of this.listeners) fn();
  },
  // The scopes the token's claims grant: only to decide which actions to offer; the API decides.
  scopes() {
    if (this.mode === "open") return new Set(["read", "write", "admin"]);
    const claims = decodeClaims(this.token);
    if (!claims) return new Set();
    const raw = claims.scope ?? claims.scp ?? "";
    const names = typeof raw === "string" ? raw.split(/\s+/) : Array.isArray(raw) ? raw.map(String) : [];
    return new Set(names.flatMap((n) => GRANTS[n] || []));
  },
  can(scope) { return this.scopes().has(scope); },
  onChange(fn) { this.listeners.push(fn); },
};

function decodeClaims(token) {
  if (!token) return null;
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const text = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    return JSON.parse(text);
  } catch {
    return null;
  }
}

let askToken = async () => false;
export function onTokenNeeded(fn) { askToken = fn; }

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const token = session.token;
  if (token) out.Authorization = `Bearer ${token}`;
  return out;
}

async function problemOf(response) {
  const text = await response.text();
  try {
    const doc = JSON.parse(text);
    if (doc && typeof doc === "object") return doc;
  } catch { /* not JSON: fall through */ }
  return { status: response.status, title: response.statusText, detail: text.slice(0, 300) };
}

// Discover whether the API wants a token: an unauthenticated GET either answers or says 401.
export async function probe() {
  const response = await fetch("/workflows?limit=1", { headers: { Accept: "application/json" } });
  session.mode = response.status === 401 ? "token" : "open";
  return session.mode;
}

export async function request(method, path, body, { retry = true } = {}) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  if (response.status === 401 && retry && (await askToken(await problemOf(response.clone())))) {
    return request(method, path, body, { retry: false });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export const get = (path) => request("GET", path);
export const post = (path, body) => request("POST", path, body);
export const put = (path, body) => request("PUT", path, body);
export const del = (path) => request("DELETE", path);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
  const text = q.toString();
  return text ? `?${text}` : "";
}

export const enc = encodeURIComponent;

// Server-Sent Events over fetch. Calls onMessage({id, event, data}) per message and
// resolves when the server ends the stream (or the signal aborts it).
export async function stream(path, { onMessage, signal, lastId }) {
  const extra = { Accept: "text/event-stream" };
  if (lastId) extra["Last-Event-ID"] = lastId;
  const response = await fetch(path, { headers: headers(extra), signal, cache: "no-store" });
  if (response.status === 401 && (await askToken(await problemOf(response.clone())))) {
    return stream(path, { onMessage, signal, lastId });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const message = parseBlock(block);
      if (message) onMessage(message);
    }
  }
}

function parseBlock(block) {
  const message = { id: null, event: "message", data: "" };
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue; // a comment: the heartbeat
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length && !message.id) return null;
  const text = data.join("\n");
  try { message.data = JSON.parse(text); } catch { message.data = text; }
  return message;
}

// A live subscription that reconnects (from the last id) after a drop, until stopped
// or until the server closes it for good (`event: close`, kind final).
export function follow(pathOf, { onMessage, onState, lastId = null }) {
  const control = new AbortController();
  let last = lastId;
  let stopped = false;
  const run = async () => {
    let backoff = 500;
    while (!stopped) {
      let final = false;
      try {
        onState?.("live");
        await stream(pathOf(last), {
          signal: control.signal, lastId: last,
          onMessage: (m) => {
            if (m.event === "close") { final = m.data?.kind === "final" || m.data?.kind === undefined; onState?.("closed", m.data); return; }
            if (m.id) last = m.id;
            backoff = 500;
            onMessage(m);
          },
        });
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        onState?.("error", err);
        if (err instanceof ApiError && err.status < 500 && err.status !== 429) return;
      }
      if (final || stopped) return;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 10000);
    }
  };
  run();
  return { stop() { stopped = true; control.abort(); }, get last() { return last; } };
}
